"""The trainer's flags: one table, the source of everything that lists them.

The emitted program's usage text and argument parser (templates/common/trainer.c.j2), the
flags `llmgen train` forwards to the binary, and the README's flag table are all made from
TRAINER_FLAGS below, so they cannot drift apart. Letters keep llm.c's meaning where llm.c has
the flag (train_gpt2.cu); where our default differs from llm.c's, `llmc` says so and the usage
text shows it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    name: str             # as typed: "-b", or a long option such as "--dump"
    field: str            # the C Options field (and the Python-side dest: flag_<field>)
    kind: str             # value type: str | int | long | float | u64
    metavar: str          # shown in the usage: <int>, <glob>, ...
    default: str          # the default as the usage shows it
    c_default: str        # C initialiser of the field ("" = zero / NULL)
    help: str             # one line
    llmc: str = ""        # where llm.c's meaning or default differs, said here
    forward: bool = True  # `llmgen train` passes it through to the binary
    lo: str = ""          # smallest allowed value, a C expression over the model constants ("" = none)
    hi: str = ""          # largest allowed value, likewise (MAX_SEQ_LEN for -t)
    choices: tuple[str, ...] = ()   # allowed words of a str flag

    @property
    def dest(self) -> str:
        return f"flag_{self.field}"


TRAINER_FLAGS: tuple[Flag, ...] = (
    Flag("-i", "train_pattern", "str", "<glob>", "required", "", "train token shards (llm.c format)"),
    Flag("-j", "val_pattern", "str", "<glob>", "none", "", "val token shards"),
    Flag("-e", "init_from", "str", "<path>", "random init from -S", "",
         "initial weights: a Hugging Face folder or .safetensors file"),
    Flag("-o", "out_dir", "str", "<dir>", "none", "", "run folder: log.jsonl, ckpt_NNNNNNNN/, latest",
         forward=False),
    Flag("-b", "B", "int", "<int>", "4", "4", "micro-batch size B", lo="1"),
    Flag("-t", "T", "int", "<int>", "min(1024, max_seq_len)", "MAX_SEQ_LEN < 1024 ? MAX_SEQ_LEN : 1024",
         "sequence length T", lo="1", hi="MAX_SEQ_LEN"),
    Flag("-d", "total_batch", "long", "<int>", "B*T", "", "total batch in tokens (gradient accumulation)"),
    Flag("-x", "steps", "int", "<int>", "-1", "-1", "optimizer steps; -1 = one pass over the train shards"),
    Flag("-l", "lr", "float", "<float>", "3e-4", "3e-4", "peak learning rate", lo="0"),
    Flag("-u", "warmup", "int", "<int>", "0", "", "warmup steps", lo="0"),
    Flag("-q", "final_frac", "float", "<float>", "0.0", "", "final learning rate as a fraction of -l",
         llmc="llm.c's default 1.0 means no decay", lo="0", hi="1"),
    Flag("-k", "schedule", "str", "<name>", "cosine", "\"cosine\"", "schedule: cosine | linear | constant | wsd",
         choices=("cosine", "linear", "constant", "wsd")),
    Flag("-c", "weight_decay", "float", "<float>", "0.0", "", "weight decay (2-D weights only)", lo="0"),
    Flag("-v", "val_every", "int", "<int>", "20", "20", "val loss every N steps (0 = never)", lo="0"),
    Flag("-m", "val_batches", "int", "<int>", "20", "20", "val batches", lo="1"),
    Flag("-n", "ckpt_every", "int", "<int>", "0", "", "checkpoint every N steps (0 = only at the end)", lo="0"),
    Flag("-s", "sample_every", "int", "<int>", "0", "", "print a text sample every N steps (0 = never)",
         llmc="llm.c samples every 20 steps", lo="0"),
    Flag("-g", "gen_tokens", "int", "<int>", "64", "64", "tokens per sample", lo="1"),
    Flag("-y", "resume", "int", "<0|1>", "0", "", "resume from the latest checkpoint in -o", lo="0", hi="1"),
    Flag("-S", "seed", "u64", "<int>", "1337", "1337", "seed for init and sampling"),
)
