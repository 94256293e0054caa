"""`llmgen train SPEC --data DIR [flags]`: check everything, build the trainer once per spec (cached),
run it with a progress bar, and never lose the user's work.

Before anything compiles: the spec (llmgen.spec), the trainer's flags (the bounds and choices of
llmgen.flags.TRAINER_FLAGS, -t against the spec's context, -d a multiple of B*T), the data (shards
exist and have valid headers) and the run folder (one that holds a run is only continued with
-y 1). The CUDA target when nvcc and an NVIDIA GPU are present, the CPU twin otherwise.

Interrupts: the trainer runs in its own session, so a Ctrl-C in the terminal reaches only this
wrapper, which passes it on exactly once; the trainer writes a checkpoint at the current step and
exits, this wrapper waits for it and exits 128 + the signal's number (130 for Ctrl-C). A trainer
that dies by a signal is reported by name with the step it reached.
"""

from __future__ import annotations

import glob as globlib
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmgen.cli import CliError, add_spec_args, check_fp8_target
from llmgen.flags import TRAINER_FLAGS, Flag

# one step line of the trainer (templates/common/trainer.c.j2's training loop)
STEP_RE = re.compile(
    r"^step (\d+)/(\d+) \| loss ([-\d.eE+naif]+).*?\| ([\d.]+) ms \| ([\d.]+) tok/s"
    r"(?: \| val loss ([-\d.eE+naif]+))?"
)
RESUMED_RE = re.compile(r"^resumed from .* at step (\d+)")

# the table's flags `llmgen train` takes and passes on (-h is argparse's own; -o is handled here)
FORWARDED = tuple(f for f in TRAINER_FLAGS if f.forward and f.name not in ("-h", "--help", "-o"))


def _flag(field: str) -> Flag | None:
    return next((f for f in TRAINER_FLAGS if f.field == field), None)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="check, build (cached) and run a trainer with a progress bar",
        description="Build the trainer of SPEC once (cached per spec) and run it. The trainer's "
        "own flags (llm.c's letters) are passed on; `llmgen train SPEC -h` lists them.",
    )
    add_spec_args(p)
    p.add_argument("--target", choices=("auto", "c", "cuda"), default="auto")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="a folder of token shards: *train*.bin and *val*.bin (from "
        "`llmgen data`, or llm.c's); sets -i, -j and the token table",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data parallel: N local processes of a distributed trainer, started with torchrun-style variables on "
        "127.0.0.1 (CUDA: one GPU each, by LOCAL_RANK); -b is per process, -d counts all of them [1]",
    )
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where built trainers are kept [~/.cache/llmgen]")
    p.add_argument("-o", metavar="DIR", help="run folder [runs/<spec name>-<spec digest>]")
    p.add_argument(
        "--wandb", metavar="PROJECT", help="also log each step to Weights & Biases (needs `pip install wandb`)"
    )
    for f in FORWARDED:
        extra = f" [{f.default}]" if f.default else ""
        note = f" ({f.llmc})" if f.llmc else ""
        p.add_argument(f.name, dest=f.dest, metavar=f.metavar.strip("<>").upper() or None, help=f.help + extra + note)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
# checks before the trainer compiles


def _constants(spec) -> dict[str, int]:
    """The model constants the flag table's bounds may name (the emitted program's #defines)."""
    return {
        "MAX_SEQ_LEN": spec.max_seq_len,
        "VOCAB_SIZE": spec.vocab_size,
        "PADDED_VOCAB_SIZE": spec.padded_vocab_size,
        "N_LAYER": spec.n_layer,
    }


def _bound(expr: str, consts: dict[str, int]):
    """A bound of the table (a number, or a C expression over the model constants) as a number,
    or None when it is not a plain Python expression too (the binary still checks it)."""
    if not expr:
        return None
    try:
        return eval(expr, {"__builtins__": {}}, consts)  # noqa: S307 -- our own table, not user input
    except Exception:  # noqa: BLE001
        return None


def _parse(f: Flag, raw: str):
    try:
        if f.kind in ("int", "long", "u64"):
            return int(raw, 10)
        if f.kind == "float":
            v = float(raw)
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError
            return v
    except ValueError:
        raise CliError(
            f"{f.name} ({f.help}) expects {'an integer' if f.kind != 'float' else 'a number'}, got '{raw}'"
        ) from None
    return raw


def check_flags(spec, raw: dict[str, str], nproc: int = 1) -> dict[str, object]:
    """{field: value} of the given flags, parsed and checked against the table's bounds and choices,
    -t against the spec's context and -d against N*B*T (nproc N); a bad one raises CliError naming the flag."""
    consts = _constants(spec)
    values: dict[str, object] = {}
    for f in FORWARDED:
        if f.field not in raw:
            continue
        v = _parse(f, raw[f.field])
        if f.choices and v not in f.choices:
            raise CliError(f"{f.name} ({f.help}) must be one of {', '.join(f.choices)}; got '{v}'")
        lo, hi = _bound(f.lo, consts), _bound(f.hi, consts)
        why = " (the spec's max_seq_len)" if "MAX_SEQ_LEN" in f.hi else ""
        if lo is not None and hi is not None and not lo <= v <= hi:
            raise CliError(f"{f.name} ({f.help}) must be in [{lo}, {hi}]{why}, got {v}")
        if lo is not None and v < lo:
            raise CliError(f"{f.name} ({f.help}) must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise CliError(f"{f.name} ({f.help}) must be <= {hi}{why}, got {v}")
        values[f.field] = v
    B = values.get("B", 4)
    T = values.get("T", min(1024, spec.max_seq_len))
    if "total_batch" in values:
        d = values["total_batch"]
        if nproc > 1 and (d < nproc * B * T or d % (nproc * B * T)):
            raise CliError(
                f"-d (total batch, D = {d} tokens) must be a positive multiple of N*B*T = {nproc}*{B}*{T} = "
                f"{nproc * B * T}: each of the --nproc {nproc} processes trains on B*T tokens per micro-step"
            )
        if d < B * T or d % (B * T):
            raise CliError(f"-d (total batch, {d} tokens) must be a positive multiple of B*T = {B}*{T} = {B * T}")
    return values


def _check_shards(paths: list[Path]) -> None:
    from llmgen.data.shards import read_shard_header

    for p in paths:
        read_shard_header(p)  # ShardFormatError (a ValueError) names the file


def data_flags(data: Path, raw: dict[str, str]) -> list[str]:
    """--data DIR: -i/-j globs of the shards there (ours: PREFIX_train_NNNNNN.bin; llm.c's:
    tiny_shakespeare_train.bin, TinyStories_val.bin, fineweb_train_000001.bin) and the token table."""
    if not data.is_dir():
        raise CliError(f"--data {data}: not a folder (make one with `llmgen data shakespeare -o {data}`)")
    trains = sorted(data.glob("*train*.bin"))
    if not trains:
        raise CliError(f"--data {data}: no token shards named *train*.bin there (make them with `llmgen data`)")
    prefixes = sorted({p.name[: p.name.index("train")] for p in trains})
    if len(prefixes) > 1:
        raise CliError(
            f"--data {data}: shards of {len(prefixes)} datasets ("
            + ", ".join(f"{q}train*.bin" for q in prefixes)
            + "): choose one with -i GLOB"
        )
    prefix = globlib.escape(prefixes[0])
    flags = []
    if "train_pattern" not in raw:
        flags += ["-i", str(data / f"{prefix}train*.bin")]
    vals = sorted(data.glob(f"{prefix}val*.bin"))
    if "val_pattern" not in raw and vals:
        flags += ["-j", str(data / f"{prefix}val*.bin")]
    _check_shards([p for p in trains + vals if p.name.startswith(prefixes[0])])
    if (data / "tokenizer.bin").is_file() and "tokenizer_path" not in raw:
        flags += [_flag("tokenizer_path").name, str(data / "tokenizer.bin")]
    return flags


def _check_globs(raw: dict[str, str]) -> None:
    for field, name in (("train_pattern", "-i"), ("val_pattern", "-j")):
        if field in raw:
            hits = sorted(globlib.glob(raw[field]))
            if not hits:
                raise CliError(f"{name} {raw[field]}: no file matches")
            _check_shards([Path(h) for h in hits])


def default_run_dir(source: str, spec) -> Path:
    """runs/<spec name>-<digest>: a preset's name, a spec file's stem or a model folder's name."""
    from llmgen.spec import PRESETS

    path = Path(source)
    if source in PRESETS:
        name = source
    elif path.is_dir():
        name = path.resolve().name
    elif path.suffix == ".json":
        name = path.resolve().parent.name or spec.arch
    else:
        name = path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or spec.arch
    return Path("runs") / f"{name}-{spec.digest()}"


def check_run_dir(out: Path, resume: bool) -> None:
    """A folder that holds a run (a checkpoint, or a non-empty log.jsonl) is only continued with -y 1."""
    if out.exists() and not out.is_dir():
        raise CliError(f"-o {out}: exists and is not a folder")
    if resume or not out.is_dir():
        return
    ckpts = sorted(out.glob("ckpt_*"))
    log = out / "log.jsonl"
    if (out / "latest").exists() or ckpts or (log.is_file() and log.stat().st_size > 0):
        what = (
            f"checkpoint {(out / 'latest').read_text().strip()}"
            if (out / "latest").is_file()
            else ckpts[-1].name
            if ckpts
            else "log.jsonl"
        )
        raise CliError(
            f"{out} already holds a run ({what}): continue it with -y 1, or pass a fresh -o; nothing was changed"
        )


# --------------------------------------------------------------------------------------------
# building (cached) and running


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


def train_precision(spec, target: str, requested: str | None):
    """The spec to train and a line saying its precision. On a GPU, bf16 mixed precision (fp32 master
    weights, as llm.c trains) unless --dtype asked for fp32; the CPU twin always computes in fp32 (and refuses
    --dtype fp8, which only the CUDA target has)."""
    check_fp8_target(spec, target)
    if target == "cuda":
        if requested is None and spec.dtype == "fp32":
            return spec.replace(dtype="bf16"), "bf16 mixed precision with fp32 master weights (--dtype fp32: all fp32)"
        mixed = {"bf16": " mixed precision with fp32 master weights", "fp8": " (bf16, block linears in FP8)"}
        return spec, f"{spec.dtype}{mixed.get(spec.dtype, '')}"
    return spec.replace(dtype="fp32"), "fp32 (the CPU twin computes in fp32)"


@dataclass
class TrainerExit:
    rc: int  # the trainer's exit status (negative: killed by that signal)
    step: int  # the last step it reported (0: none)
    interrupted: int | None  # the signal this wrapper received and passed on, if any
    last_error: str  # the trainer's last "error: ..." line


def _die_with_parent() -> None:
    """In the child: SIGTERM when the wrapper dies (even by SIGKILL), so the trainer checkpoints and
    stops instead of training on unseen (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def rank_envs(nproc: int) -> list[dict[str, str] | None]:
    """The environments of `nproc` local ranks, torchrun style (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR 127.0.0.1, a free MASTER_PORT), each with its share of the cores unless OMP_NUM_THREADS is set;
    [None] (the inherited environment) for one process."""
    import os
    import socket

    if nproc <= 1:
        return [None]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # free now; rank 0 binds it within moments
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM_WORLD", "PMI_", "PMIX_", "SLURM_"))}
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    world = {"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1"}
    world.update(MASTER_PORT=str(port), OMP_NUM_THREADS=threads)
    return [{**base, **world, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(nproc)]


def run_trainer(binary: Path, flags: list[str], progress, on_step=None, nproc: int = 1) -> TrainerExit:
    """Run the binary, its output lines into the progress bar (steps) and the scroll-back (the
    rest). The trainer gets its own session: a terminal's Ctrl-C reaches this process only, which
    passes SIGINT/SIGTERM (SIGHUP as SIGTERM) on once per signal and keeps reading until the
    trainer has written its checkpoint and exited. nproc > 1: that many ranks of a distributed trainer
    (rank_envs); rank 0's lines are read (the others print only errors, on this process's stderr), every
    signal goes to all of them, and the exit status is rank 0's, or else the first failing rank's."""
    procs = [
        subprocess.Popen(
            [str(binary), *flags],
            stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if r == 0 else None,
            text=True,
            bufsize=1,
            errors="replace",
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=env,
        )
        for r, env in enumerate(rank_envs(nproc))
    ]
    proc = procs[0]
    state = TrainerExit(rc=0, step=0, interrupted=None, last_error="")

    def forward(sig, _frame):
        again = state.interrupted is not None
        state.interrupted = state.interrupted or sig
        for q in procs[1:]:
            if q.poll() is None:
                q.send_signal(signal.SIGTERM if sig == signal.SIGHUP else sig)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if sig == signal.SIGHUP else sig)
            progress.note(
                f"llmgen train: {signal.Signals(sig).name}: "
                + (
                    "passed on again"
                    if again
                    else "the trainer finishes this step, writes a checkpoint and stops; waiting for it"
                )
            )

    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {s: signal.signal(s, forward) for s in handled}
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            m = STEP_RE.match(line)
            if m:
                step, total, loss, _ms, tok_s, val = m.groups()
                state.step = int(step)
                progress.update(int(step), int(total), loss, float(tok_s), val)
                if on_step is not None:
                    on_step(int(step), float(loss), float(tok_s), float(val) if val else None)
                continue
            r = RESUMED_RE.match(line)
            if r:
                state.step = int(r.group(1))
            if line.startswith("error:"):
                state.last_error = line
            if line:
                progress.note(line)
        state.rc = proc.wait()
        for q in procs[1:]:  # the others stop within moments of rank 0 (comm.h names the rank that failed)
            rc = q.wait()
            state.rc = state.rc or rc
    finally:
        for q in procs:
            if q.poll() is None:  # this wrapper itself failed: do not leave a trainer running
                q.terminate()
                q.wait()
        for s, h in old.items():
            signal.signal(s, h)
        progress.close()
    return state


def report_exit(res: TrainerExit, out: Path) -> int:
    """Say how the trainer ended and return this command's exit status."""
    latest = out / "latest"
    ckpt = f"{out / latest.read_text().strip()}" if latest.is_file() else None
    resume = (
        f"the last checkpoint is {ckpt}: continue with the same command and -y 1"
        if ckpt
        else "no checkpoint was written"
    )
    if res.rc < 0:
        name = signal.Signals(-res.rc).name
        why = " (the kernel's OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        print(f"error: the trainer was killed by {name} at step {res.step}{why}; {resume}", file=sys.stderr)
        return 128 - res.rc
    if res.interrupted is not None:
        name = signal.Signals(res.interrupted).name
        print(f"llmgen train: stopped by {name} at step {res.step}; {resume}", file=sys.stderr)
        return 128 + int(res.interrupted)
    if res.rc > 128 and res.rc - 128 in {int(s) for s in signal.Signals}:
        name = signal.Signals(res.rc - 128).name
        print(f"llmgen train: the trainer stopped on {name} at step {res.step}; {resume}", file=sys.stderr)
        return res.rc
    return res.rc


# --------------------------------------------------------------------------------------------


def run(args) -> int:
    from llmgen.codegen import Options
    from llmgen.files import cache_dir
    from llmgen.progress import TrainProgress
    from llmgen.runtime.build import cached_build
    from llmgen.spec import load_spec

    spec = load_spec(args.spec, args.dtype)
    raw = {f.field: getattr(args, f.dest) for f in FORWARDED if getattr(args, f.dest) is not None}
    target, why = pick_target(args.target)
    spec, precision = train_precision(spec, target, args.dtype)
    if args.nproc < 1:
        raise CliError(f"--nproc must be >= 1, got {args.nproc}")
    values = check_flags(spec, raw, args.nproc)
    flags = data_flags(Path(args.data), raw) if args.data else []
    _check_globs(raw)
    if "train_pattern" not in raw and "-i" not in flags:
        raise CliError("no training data: pass --data DIR (from `llmgen data`) or -i GLOB")
    out = Path(args.o) if args.o else default_run_dir(args.spec, spec)
    check_run_dir(out, resume=values.get("resume", 0) == 1)
    for f in FORWARDED:
        if f.field in raw:
            flags += [f.name, raw[f.field]]
    flags += ["-o", str(out)]
    wandb_log = _wandb(args.wandb, spec, out) if args.wandb else None

    print(f"llmgen train: {why}; {precision}", file=sys.stderr)
    recompute = int(values.get("recompute", 0) or 0)
    options = Options(
        target=target,
        fuse=not args.no_fuse,
        recompute=recompute,
        distributed=args.nproc > 1,
        fp8_recipe=args.fp8_recipe,
    )
    binary = cached_build(spec, options, Path(args.cache_dir) if args.cache_dir else cache_dir())
    print(
        f"llmgen train: trainer {binary.parent / ('train.c' if target == 'c' else 'train.cu')}; run folder {out}",
        file=sys.stderr,
    )
    if args.nproc > 1:
        print(f"llmgen train: {args.nproc} processes, data parallel (-b {values.get('B', 4)} each)", file=sys.stderr)
    res = run_trainer(binary, flags, TrainProgress(), on_step=wandb_log, nproc=args.nproc)
    rc = report_exit(res, out)
    if rc == 0:
        print(
            f"llmgen train: run folder {out} (log.jsonl, checkpoints); `llmgen sample {out} --prompt ...`, "
            f"`llmgen plot {out}`",
            file=sys.stderr,
        )
    return rc


def _wandb(project: str, spec, out: Path):
    """--wandb PROJECT: one wandb run fed by the parsed step lines (the log.jsonl stays the record)."""
    try:
        import wandb
    except ImportError:
        raise CliError("--wandb needs the wandb package: pip install wandb") from None
    run = wandb.init(project=project, name=out.name, config={"spec": spec.digest(), **spec.hf_config()})

    def log(step: int, loss: float, tok_s: float, val: float | None) -> None:
        run.log(
            {"train_loss": loss, "tokens_per_s": tok_s, **({"val_loss": val} if val is not None else {})}, step=step
        )

    return log
