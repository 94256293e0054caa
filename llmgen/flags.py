"""The trainer's flags: one table, the source of everything that lists them.

The emitted program's usage text and argument parser (templates/common/trainer.c.j2), the
flags `llmgen train` forwards to the binary, and the README's flag table are all made from
TRAINER_FLAGS below, so they cannot drift apart. Letters keep llm.c's meaning where llm.c has
the flag (train_gpt2.cu); where our default or meaning differs from llm.c's, `llmc` says so and
the usage text and the README show it. Flags llm.c does not have are long options (--dump) or
letters llm.c leaves free (-S).

`python -m llmgen.flags README.md` rewrites the README's table (between the marker comments
README_BEGIN and README_END); tests/test_flags.py fails when it is out of date.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Flag:
    name: str  # as typed: "-b", or a long option such as "--dump" (also --dump=VALUE)
    field: str  # the C Options field (and the Python-side dest: flag_<field>)
    kind: str  # value type: str | int | long | float | u64
    metavar: str  # shown in the usage: <int>, <glob>, ...
    default: str  # the default as the usage shows it
    c_default: str  # the default as the trainer's parser reads it ("" = zero / NULL); {T} and
    # {recompute} stand for the build's min(1024, max_seq_len) and recompute level
    help: str  # one line
    llmc: str = ""  # where llm.c's meaning or default differs, said here
    forward: bool = True  # `llmgen train` passes it through to the binary
    lo: str = ""  # smallest allowed value, a C expression over the model constants ("" = none)
    hi: str = ""  # largest allowed value, likewise (MAX_SEQ_LEN for -t)
    choices: tuple[str, ...] = ()  # allowed words of a str flag

    @property
    def dest(self) -> str:
        return f"flag_{self.field}"

    @property
    def bounds(self) -> tuple[str, ...]:
        """lo and hi, those that are set."""
        return tuple(b for b in (self.lo, self.hi) if b)

    @property
    def named_bounds(self) -> tuple[str, ...]:
        """The bounds that are C expressions rather than numbers (MAX_SEQ_LEN): errors show their value."""
        return tuple(b for b in self.bounds if not re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", b))


KINDS = ("str", "int", "long", "float", "u64")

TRAINER_FLAGS: tuple[Flag, ...] = (
    Flag(
        "-i",
        "train_pattern",
        "str",
        "<glob>",
        "required",
        "",
        "train token shards (llm.c format)",
        llmc="its tiny Shakespeare shards by default",
    ),
    Flag("-j", "val_pattern", "str", "<glob>", "none", "", "val token shards"),
    Flag(
        "-e",
        "init_from",
        "str",
        "<path>",
        "random init from -S",
        "",
        "initial weights: a Hugging Face folder, a .safetensors file or llm.c's GPT-2 model file (.bin)",
        llmc="gpt2_124M_bf16.bin by default",
    ),
    Flag("-o", "out_dir", "str", "<dir>", "none", "", "run folder: log.jsonl, ckpt_NNNNNNNN/, latest", forward=False),
    Flag(
        "-y",
        "resume",
        "int",
        "<0|1>",
        "0",
        "",
        "resume from the latest checkpoint in -o",
        llmc="-y 0 overwrites a used run folder, refused here",
        lo="0",
        hi="1",
    ),
    Flag("-b", "B", "int", "<int>", "4", "4", "micro-batch size B", lo="1"),
    Flag("-t", "T", "int", "<int>", "min(1024, max_seq_len)", "{T}", "sequence length T", lo="1", hi="MAX_SEQ_LEN"),
    Flag("-d", "total_batch", "long", "<int>", "B*T", "", "total batch in tokens (gradient accumulation)"),
    Flag("-x", "steps", "int", "<int>", "-1", "-1", "optimizer steps; -1 = one pass over the train shards", lo="-1"),
    Flag("-l", "lr", "float", "<float>", "3e-4", "3e-4", "peak learning rate", lo="0"),
    Flag("-u", "warmup", "int", "<int>", "0", "", "warmup steps", lo="0"),
    Flag(
        "-q",
        "final_frac",
        "float",
        "<float>",
        "0.0",
        "",
        "final learning rate as a fraction of -l",
        llmc="default 1.0, no decay",
        lo="0",
        hi="1",
    ),
    Flag(
        "-k",
        "schedule",
        "str",
        "<name>",
        "cosine",
        "cosine",
        "schedule: cosine | linear | constant | wsd",
        choices=("cosine", "linear", "constant", "wsd"),
    ),
    Flag("-c", "weight_decay", "float", "<float>", "0.0", "", "weight decay (2-D weights only)", lo="0"),
    Flag("-v", "val_every", "int", "<int>", "20", "20", "val loss every N steps (0 = never)", lo="0"),
    Flag("-m", "val_batches", "int", "<int>", "20", "20", "val batches", lo="1"),
    Flag(
        "-n",
        "ckpt_every",
        "int",
        "<int>",
        "0",
        "",
        "checkpoint every N steps (0 = only at the end)",
        llmc="0 writes no checkpoint",
        lo="0",
    ),
    Flag(
        "-s",
        "sample_every",
        "int",
        "<int>",
        "0",
        "",
        "print a text sample every N steps (0 = never)",
        llmc="default 20",
        lo="0",
    ),
    Flag("-g", "gen_tokens", "int", "<int>", "64", "64", "tokens per sample", lo="1"),
    Flag("-S", "seed", "u64", "<int>", "1337", "1337", "seed for init and sampling", llmc="no such flag"),
    Flag(
        "-r",
        "recompute",
        "int",
        "<0|1|2>",
        "the build's",
        "{recompute}",
        "activation recompute (0 none, 1 GELU, 2 GELU + layernorm): must be the build's level",
        llmc="chosen at run time, default 1; here `llmgen build --recompute N`",
        lo="0",
        hi="2",
    ),
    Flag(
        "-w",
        "master_weights",
        "int",
        "<0|1>",
        "1",
        "1",
        "keep fp32 master weights (0 is refused: every build keeps them or computes in fp32)",
        llmc="-w 0 drops them; no build here has that mode",
        lo="0",
        hi="1",
    ),
    Flag(
        "-z",
        "zero_stage",
        "int",
        "<0|1>",
        "0",
        "",
        "ZeRO stage: optimizer state sharded across processes (one process: 0 and 1 are the same)",
        llmc="also stages 2 and 3",
        lo="0",
        hi="1",
    ),
    Flag(
        "--tokenizer",
        "tokenizer_path",
        "str",
        "<file>",
        "tokenizer.bin beside the binary",
        "",
        "token table for samples; the Hugging Face tokenizer files beside it go into every checkpoint",
        llmc="no such flag; its -w is master weights",
    ),
    Flag(
        "--dump",
        "dump_path",
        "str",
        "<file>",
        "none",
        "",
        "debug: write step 0's logits, loss and gradients (HF layout) as safetensors and exit",
        llmc="no such flag",
        forward=False,
    ),
)

# -h takes no value (llm.c's -h 1, its HellaSwag eval, is refused): parsed by hand, listed with the rest
HELP = Flag(
    "-h", "help", "", "", "", "", "print this text and exit", llmc="-h 1 runs HellaSwag, refused here", forward=False
)

# the README's table lies between these two lines
README_BEGIN = "<!-- flags table: generated by `python -m llmgen.flags README.md` from llmgen/flags.py -->"
README_END = "<!-- end of the flags table -->"


def table(distributed: bool = False) -> tuple[Flag, ...]:
    """TRAINER_FLAGS as a build reads them: a distributed build (`llmgen build --distributed`) defaults -z to 1
    when it runs as several processes (-1 in C: chosen once the world size is known) and counts -d over all
    of them."""
    if not distributed:
        return TRAINER_FLAGS
    changed = {
        "-z": dict(
            default="1 with several processes, else 0",
            c_default="-1",
            lo="-1",
            help="ZeRO stage: 1 shards the AdamW moments across the processes, 0 all-reduces the gradients",
        ),
        "-d": dict(default="N*B*T", help="total batch in tokens over all N processes (gradient accumulation)"),
    }
    return tuple(replace(f, **changed[f.name]) if f.name in changed else f for f in TRAINER_FLAGS)


def _check_table(flags: tuple[Flag, ...]) -> None:
    names = [f.name for f in flags]
    fields = [f.field for f in flags]
    assert len(set(names)) == len(names) and len(set(fields)) == len(fields), "a flag name or field twice"
    for f in flags:
        assert f.kind in KINDS, f"{f.name}: kind {f.kind}"
        assert re.fullmatch(r"-[A-Za-z]|--[a-z][a-z0-9-]*", f.name), f"{f.name}: not a flag name"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", f.field), f"{f.name}: field {f.field}"
        assert not f.choices or f.kind == "str", f"{f.name}: choices on a {f.kind} flag"
        assert not (f.lo or f.hi) or f.kind != "str", f"{f.name}: a range on a str flag"


_check_table(TRAINER_FLAGS)


def usage_lines(width: int = 100, distributed: bool = False) -> list[str]:
    """The trainer's usage text, wrapped at `width` (the program prints lines about its build first)."""
    lines = []
    for f in table(distributed) + (HELP,):
        head = f"{f.name} {f.metavar}" if f is not HELP else "-h, --help"
        text = f.help + (f" [{f.default}]" if f.default else "") + (f"; llm.c: {f.llmc}" if f.llmc else "")
        for i, part in enumerate(textwrap.wrap(text, width - 21)):
            lines.append(f"  {head if i == 0 else '':<18} {part}")
    return lines


C_TYPES = {"str": "const char *", "int": "int ", "long": "long ", "float": "double ", "u64": "unsigned long long "}


def c_options(width: int = 116) -> list[str]:
    """The members of the trainer's C Options struct: one declaration per C type (in the table's order),
    broken within `width` columns."""
    lines = []
    for kind in dict.fromkeys(f.kind for f in TRAINER_FLAGS):
        names = [("*" if kind == "str" else "") + f.field for f in TRAINER_FLAGS if f.kind == kind]
        head = C_TYPES[kind].replace(" *", " ")
        lines += textwrap.wrap(
            head + ", ".join(names) + ";", width, subsequent_indent=" " * len(head), break_on_hyphens=False
        )
    return lines


def c_rows(max_seq_len: int, recompute: int, distributed: bool = False) -> list[str]:
    """The rows of the trainer's FLAGS table for a build with this context and recompute level:
    { name, kind, field, default text, lo, hi, hi's name, choices } (NAN: no bound)."""

    def text(s: str) -> str:
        return f'"{s}"' if s else "NULL"

    rows = []
    for f in table(distributed):
        default = f.c_default.format(T=min(1024, max_seq_len), recompute=recompute)
        named = f.hi.lower() if f.hi in f.named_bounds else ""
        rows.append(
            f"{{ {text(f.name)}, FLAG_{f.kind.upper()}, offsetof(Options, {f.field}), {text(default)}, "
            f"{f.lo or 'NAN'}, {f.hi or 'NAN'}, {text(named)}, {text(', '.join(f.choices))} }},"
        )
    return rows


def readme_table() -> str:
    """The README's markdown table of the flags (between README_BEGIN and README_END)."""
    rows = ["| flag | meaning | default | llm.c |", "| --- | --- | --- | --- |"]
    for f in TRAINER_FLAGS + (HELP,):
        name = f"`{f.name} {f.metavar}`" if f.metavar else "`-h`, `--help`"
        cells = [name, f.help, f.default, f.llmc or "same"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def readme_block() -> str:
    return f"{README_BEGIN}\n{readme_table()}{README_END}"


def update_readme(path: Path) -> bool:
    """Rewrite the table between the markers in `path`; True when it changed."""
    text = path.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path}: no flags table markers ({README_BEGIN!r} ... {README_END!r})")
    new = text[:begin] + readme_block() + text[end + len(README_END) :]
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m llmgen.flags README.md   (rewrites its flags table)")
    print(f"{sys.argv[1]}: " + ("table updated" if update_readme(Path(sys.argv[1])) else "table already current"))
