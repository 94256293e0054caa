"""The llmgen command line: build, emit, inspect, convert, data, train, sample, plot.

One module per command (llmgen/cli/<command>.py), each with ``register(subparsers)`` that adds
its parser and ``run(args) -> exit code``. Building the parser imports nothing heavy: a command
imports what it needs (the compiler, tiktoken, the data code, matplotlib) when it runs, so
`llmgen inspect` never loads the tokenizer and `llmgen --help` is instant.

Every command returns an exit code; bad input raises one of the project's errors (CliError, a
ValueError such as SpecError or DataError, an OSError, BuildError, DownloadError), which main()
prints as `error: ...` with exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from llmgen import __version__

COMMANDS = ("build", "emit", "inspect", "convert", "data", "train", "sample", "plot")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The arguments every command that compiles a spec takes."""
    p.add_argument(
        "spec",
        help="preset name (gpt2, d12, llama3.2-1b, ...), a .py file defining `spec`, "
        "or a Hugging Face config.json / model folder",
    )
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp8"),
        default=None,
        help="override the spec's dtype (fp8: bf16 with the block linears in FP8, --target cuda only, sm_89 or newer)",
    )
    p.add_argument("--no-fuse", action="store_true", help="skip the fusion passes (for comparison)")
    p.add_argument(
        "--fp8-recipe",
        choices=("current", "delayed"),
        default="current",
        help="--dtype fp8: each tensor's scale from its current amax, or delayed from a 16-step amax history [current]",
    )


def check_fp8_target(spec, target: str, distributed: bool = False) -> None:
    """--dtype fp8 is the CUDA target's (cuBLASLt's FP8 GEMM on sm_89 / sm_90, one process or --distributed); the C twin
    has no FP8."""
    if spec.dtype == "fp8" and target != "cuda":
        raise CliError(f"--dtype fp8 needs --target cuda (the {target} target has no FP8 GEMMs)")
    if spec.dtype == "fp8":
        from llmgen.compiler import compile_graph
        from llmgen.passes.precision import FP8_MIN_ENV, fp8_min_weights

        plan = compile_graph(spec, B=1, T=1, dtype="fp8")[1]
        if plan.fp8 is not None and not any(c.fp8 for c in plan.fp8.choices):  # a note, not an error: it builds
            print(
                f"note: --dtype fp8: no block linear runs in FP8 (each weight has at most "
                f"{fp8_min_weights()} elements, too small for FP8 to pay for its casts, or sizes not multiples of 16); "
                f"the program is the bf16 one. {FP8_MIN_ENV}=0 puts every aligned linear in FP8.",
                file=sys.stderr,
            )


def build_options(args):
    """The Options of the commands that write a trainer's source (build, emit), from their shared flags."""
    from llmgen.codegen import Options

    return Options(
        target=args.target,
        fuse=not args.no_fuse,
        recompute=args.recompute,
        distributed=args.distributed,
        fp8_recipe=args.fp8_recipe,
    )


def add_distributed_arg(p: argparse.ArgumentParser) -> None:
    """--distributed, of the commands that write a trainer's source (build, emit)."""
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data parallel over processes: mpirun -np N, torchrun-style RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, "
        "srun, or `llmgen train --nproc N` (C: built with mpicc where MPI is installed; CUDA: NCCL, and with MPI's "
        "flags where MPI is installed, --emulate too)",
    )


def make_parser() -> argparse.ArgumentParser:
    import importlib

    ap = argparse.ArgumentParser(prog="llmgen", description="Compile a model spec into one training program.")
    ap.add_argument("--version", action="version", version=f"llmgen {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"llmgen.cli.{name}").register(sub)
    return ap


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's input going wrong (printed as one line). Errors of
    modules that were never imported cannot have been raised, so they are looked up, not imported."""
    errors: list[type[BaseException]] = [CliError, ValueError, OSError]
    for module, name in (("llmgen.runtime.build", "BuildError"), ("llmgen.data.shards", "DownloadError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- sorted below: the user's errors in one line, bugs re-raised
        if not isinstance(e, _user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_llmgen(*args, echo: bool = True) -> None:
    """Run `python -m llmgen ARGS` as a child (what the examples do), safe to interrupt: the child gets
    its own process group, so a terminal's Ctrl-C reaches this process alone, which passes SIGINT
    (or SIGTERM) on once and waits for the child (`llmgen train` then checkpoints and stops). Returns
    when the child succeeded; otherwise exits: 130 after an interrupt, else the child's status."""
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "llmgen", *map(str, args)]
    if echo:
        print("$ llmgen " + " ".join(map(str, args)), flush=True)
    proc = (
        subprocess.Popen(cmd, process_group=0)
        if sys.version_info >= (3, 11)
        else subprocess.Popen(cmd, preexec_fn=lambda: __import__("os").setpgid(0, 0))
    )
    got: list[int] = []

    def forward(sig, _frame):
        got.append(sig)
        if proc.poll() is None:
            proc.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        print(f"interrupted: `llmgen {args[0]}` stopped ({'exit ' + str(rc)})", file=sys.stderr)
        raise SystemExit(128 + int(got[0]))
    if rc != 0:
        raise SystemExit(rc if rc > 0 else 128 - rc)
