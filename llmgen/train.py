"""`llmgen train` and `llmgen sample`: the trainer as a product.

train: generate (cached by spec and options), build and run the trainer with a live progress
bar; the CUDA target when nvcc and an NVIDIA GPU are present, the CPU twin otherwise.
sample: continue a prompt from a run or checkpoint folder with the IR's own numpy forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# the binary's flags that `llmgen train` forwards unchanged (llm.c's letters)
BINARY_FLAGS = {
    "i": "train token shards (glob)", "j": "val token shards (glob)", "e": "initial weights (HF folder)",
    "b": "micro-batch size", "t": "sequence length", "d": "total batch in tokens", "x": "steps",
    "l": "learning rate", "u": "warmup steps", "q": "final LR fraction", "k": "schedule",
    "c": "weight decay", "v": "val every N steps", "m": "val batches", "n": "checkpoint every N steps",
    "s": "sample every N steps", "g": "sample length", "y": "resume (1)", "S": "seed",
}

STEP_RE = re.compile(r"^step (\d+)/(\d+) \| loss ([-\d.eE+naif]+).*?\| ([\d.]+) ms \| ([\d.]+) tok/s(?: \| val loss ([\d.]+))?")


def default_cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "llmgen"


def gpu_available() -> bool:
    """nvcc on PATH and an NVIDIA GPU the driver can see."""
    if not shutil.which("nvcc") or not shutil.which("nvidia-smi"):
        return False
    r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


def pick_target(requested: str) -> tuple[str, str]:
    if requested != "auto":
        return requested, f"target {requested} (requested)"
    if gpu_available():
        return "cuda", "target cuda: nvcc and an NVIDIA GPU are present"
    return "c", "target c (the CPU twin): no NVIDIA GPU found"


def cached_build(spec, options, cache_dir: Path) -> Path:
    """Build once per (spec, options, llmgen version); later calls reuse the binary."""
    from llmgen import __version__
    from llmgen.cli import build
    key = json.dumps([spec.digest(), options.target, options.fuse, __version__])
    out = cache_dir / "builds" / f"{spec.arch}-{options.target}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return build(spec, out, options, quiet=True)


class Progress:
    """One line that updates in place on a terminal, or a line per step in a log."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self.first_step = None

    def update(self, step: int, total: int, loss: str, tok_s: float, val: str | None) -> None:
        if self.first_step is None:
            self.first_step = (step, time.monotonic())
        s0, t0 = self.first_step
        done = step - s0 + 1
        elapsed = time.monotonic() - t0
        eta = elapsed / done * (total - step) if done > 0 else 0.0
        width = 30
        fill = int(width * step / max(total, 1))
        bar = "#" * fill + "-" * (width - fill)
        msg = (f"[{bar}] step {step}/{total} | loss {loss} | {tok_s:,.0f} tok/s | ETA {eta:,.0f}s"
               + (f" | val {val}" if val else ""))
        if self.tty:
            self.stream.write("\r" + msg + " " * 4)
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def note(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_trainer(binary: Path, flags: list[str], progress: Progress) -> int:
    """Run the binary, turning its step lines into the progress bar; SIGINT/SIGTERM reach it
    so it writes a final checkpoint before exiting."""
    proc = subprocess.Popen([str(binary), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    forward = lambda sig, _frame: proc.send_signal(sig)   # noqa: E731
    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            m = STEP_RE.match(line)
            if m:
                step, total, loss, _ms, tok_s, val = m.groups()
                progress.update(int(step), int(total), loss, float(tok_s), val)
            elif line:
                progress.note(line)
        rc = proc.wait()
        err = proc.stderr.read()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    progress.close()
    if err:
        sys.stderr.write(err)
    return rc


def train_precision(spec, target: str, requested: str | None):
    """The spec to train and a line saying its precision. On a GPU, bf16 mixed precision (fp32 master
    weights, as llm.c trains) unless --dtype asked for fp32; the CPU twin always computes in fp32."""
    if target == "cuda":
        if requested is None and spec.dtype == "fp32":
            return spec.replace(dtype="bf16"), "bf16 mixed precision with fp32 master weights (--dtype fp32: all fp32)"
        return spec, f"{spec.dtype}{' mixed precision with fp32 master weights' if spec.dtype == 'bf16' else ''}"
    return spec.replace(dtype="fp32"), "fp32 (the CPU twin computes in fp32)"


def cmd_train(args) -> int:
    from llmgen.codegen import Options
    from llmgen.spec import load_spec
    spec = load_spec(args.spec, args.dtype)
    target, why = pick_target(args.target)
    spec, precision = train_precision(spec, target, args.dtype)
    print(f"llmgen train: {why}; {precision}", file=sys.stderr)
    binary = cached_build(spec, Options(target=target, fuse=not args.no_fuse), Path(args.cache_dir))
    print(f"llmgen train: trainer {binary.parent / ('train.c' if target == 'c' else 'train.cu')}", file=sys.stderr)
    flags = []
    if args.data:
        flags += _data_flags(Path(args.data), args)
    for letter in BINARY_FLAGS:
        value = getattr(args, f"flag_{letter}")
        if value is not None:
            flags += [f"-{letter}", str(value)]
    out = args.o or str(Path("runs") / spec.arch)
    flags += ["-o", out]
    if not any(f == "-i" for f in flags):
        from llmgen.cli import CliError
        raise CliError("no training data: pass --data DIR (from `llmgen data`) or -i GLOB")
    rc = run_trainer(binary, flags, Progress())
    if rc == 0:
        print(f"llmgen train: run folder {out} (log.jsonl, checkpoints); `llmgen sample {out} --prompt ...`, "
              f"`llmgen plot {out}`", file=sys.stderr)
    return rc


def _data_flags(data: Path, args) -> list[str]:
    """--data DIR: the train/val shards `llmgen data` wrote there."""
    from llmgen.cli import CliError
    trains = sorted(data.glob("*_train_*.bin"))
    if not trains:
        raise CliError(f"{data}: no *_train_*.bin shards (make them with `llmgen data`)")
    prefix = trains[0].name.split("_train_")[0]
    flags = []
    if args.flag_i is None:
        flags += ["-i", str(data / f"{prefix}_train_*.bin")]
    if args.flag_j is None and list(data.glob(f"{prefix}_val_*.bin")):
        flags += ["-j", str(data / f"{prefix}_val_*.bin")]
    if (data / "tokenizer.bin").is_file():
        flags += ["-w", str(data / "tokenizer.bin")]
    return flags


# --------------------------------------------------------------------------------------------
# sampling with the numpy interpreter

def resolve_checkpoint(path: Path) -> Path:
    from llmgen.cli import CliError
    if (path / "model.safetensors").is_file():
        return path
    if (path / "latest").is_file():
        ck = path / (path / "latest").read_text().strip()
        if (ck / "model.safetensors").is_file():
            return ck
    raise CliError(f"{path}: neither a checkpoint (model.safetensors) nor a run folder with a `latest` checkpoint")


def sample_tokens(ckpt: Path, prompt: list[int], n: int, temperature: float, top_k: int, seed: int):
    """Yield n sampled token ids continuing `prompt` (forward graphs run in the interpreter)."""
    from llmgen.checkpoint import hf_to_params, read_safetensors
    from llmgen.ir import interp
    from llmgen.models import build_forward          # GPT-2 or Llama 3, by spec.arch
    from llmgen.spec import spec_from_hf_config
    spec = spec_from_hf_config(json.loads((ckpt / "config.json").read_text()), str(ckpt / "config.json"))
    hf = read_safetensors(ckpt / "model.safetensors")
    rng = np.random.default_rng(seed)
    tokens = list(prompt)
    params = None
    for _ in range(n):
        ctx = tokens[-spec.max_seq_len:]
        g = build_forward(spec, 1, len(ctx))
        if params is None:
            params = hf_to_params(g, hf)
        st = interp.State(g, params)
        x = np.asarray([ctx], np.int32)
        out = interp.run(g, st, {"tokens": x, "targets": np.zeros_like(x)}, ("fwd",))
        logits = out["logits"][0, -1, : spec.vocab_size].astype(np.float64) / max(temperature, 1e-6)
        if 0 < top_k < logits.size:
            cut = np.partition(logits, -top_k)[-top_k]
            logits[logits < cut] = -np.inf
        p = np.exp(logits - logits.max())
        p /= p.sum()
        nxt = int(rng.choice(p.size, p=p))
        tokens.append(nxt)
        yield nxt


def cmd_sample(args) -> int:
    from llmgen.cli import CliError
    from llmgen.tokenizer import EOT, get_gpt2_encoding
    ckpt = resolve_checkpoint(Path(args.run))
    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg.get("vocab_size") != 50257:
        raise CliError(f"{ckpt}: vocab_size {cfg.get('vocab_size')}: sampling text needs the GPT-2 vocabulary (50257)")
    enc = get_gpt2_encoding()
    prompt = enc.encode_ordinary(args.prompt) if args.prompt else [EOT]
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    pending = b""
    for tok in sample_tokens(ckpt, prompt, args.n, args.temperature, args.top_k, args.seed):
        if tok == EOT:
            break
        pending += enc.decode_single_token_bytes(tok)
        try:
            sys.stdout.write(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue          # a multi-byte character split across tokens: wait for the rest
        sys.stdout.flush()
    sys.stdout.write(pending.decode("utf-8", errors="replace") + "\n")
    return 0


def cmd_plot(args) -> int:
    from llmgen.plot import plot_run
    out = plot_run(Path(args.run), Path(args.o) if args.o else None)
    print(f"wrote {out}")
    return 0


def add_train_subparsers(sub) -> None:
    from llmgen.cli import _add_spec_args
    p = sub.add_parser("train", help="build (cached) and run a trainer with a progress bar")
    _add_spec_args(p)
    p.add_argument("--target", choices=("auto", "c", "cuda"), default="auto")
    p.add_argument("--data", help="a folder made by `llmgen data` (sets -i, -j and the token table)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()), help="where built trainers are kept")
    p.add_argument("-o", help="run folder [runs/<arch>]")
    for letter, help_ in BINARY_FLAGS.items():
        p.add_argument(f"-{letter}", dest=f"flag_{letter}", help=help_)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="continue a prompt from a run folder or checkpoint")
    p.add_argument("run", help="run folder (uses its latest checkpoint) or a checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue [<|endoftext|>]")
    p.add_argument("-n", type=int, default=64, help="tokens to generate [64]")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("plot", help="PNG of train/val loss and tokens/s over steps")
    p.add_argument("run", help="run folder holding log.jsonl")
    p.add_argument("-o", help="output PNG [RUN/loss.png]")
    p.set_defaults(func=cmd_plot)
