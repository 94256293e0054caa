"""The llmgen command line: build, inspect, data, train, sample, plot.

Every command returns an exit code; bad input raises one of the project's errors, which
main() prints as `error: ...` with exit status 1 (never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmgen import __version__


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


# --------------------------------------------------------------------------------------------
# build

def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="preset name (gpt2, d12, ...), a .py file defining `spec`, or a config.json")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="override the spec's dtype")
    p.add_argument("--no-fuse", action="store_true", help="skip the fusion passes (for comparison)")


def _options(args):
    from llmgen.codegen import Options
    return Options(target=getattr(args, "target", "c"), fuse=not args.no_fuse,
                   recompute=getattr(args, "recompute", 0))


def build(spec, out_dir: Path, options, emulate: bool = False, quiet: bool = False) -> Path:
    """Render, write (if changed) and compile one trainer; returns the binary's path."""
    from llmgen.codegen import render
    from llmgen.runtime.build import build_c, write_if_changed

    out_dir.mkdir(parents=True, exist_ok=True)
    src = render(spec, options)
    if options.target == "c":
        path = out_dir / "train.c"
        write_if_changed(path, src)
        binary = build_c(path, out_dir / "train")
    else:
        from llmgen.runtime.build import build_cuda
        path = out_dir / "train.cu"
        write_if_changed(path, src)
        binary = build_cuda(path, out_dir / "train", emulate=emulate)
    _write_token_table(spec, out_dir)
    if not quiet:
        print(f"wrote {path} ({len(src.splitlines())} lines), built {binary}")
    return binary


def _write_token_table(spec, out_dir: Path) -> None:
    """Samples print text through llm.c's token table; GPT-2's is written next to the binary."""
    if spec.vocab_size != 50257:
        return
    from llmgen.runtime.build import write_if_changed_bytes
    from llmgen.tokenizer import get_gpt2_encoding, token_table_bytes
    write_if_changed_bytes(out_dir / "tokenizer.bin", token_table_bytes(get_gpt2_encoding()))


def cmd_build(args) -> int:
    from llmgen.spec import load_spec
    spec = load_spec(args.spec, args.dtype)
    if args.emulate and args.target != "cuda":
        raise CliError("--emulate applies to --target cuda only")
    build(spec, Path(args.o), _options(args), emulate=args.emulate)
    return 0


# --------------------------------------------------------------------------------------------
# inspect

def describe_kernel(node) -> str:
    from llmgen.ir.ops import describe
    return describe(node)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def inspect_report(spec, B: int, T: int, fuse: bool = True) -> dict:
    from llmgen.compiler import compile_graph
    from llmgen.codegen.lower import flops_per_token
    g, plan = compile_graph(spec, B=1, T=1, fuse=fuse, dtype=spec.dtype)
    mem = plan.bytes()
    acts = mem["activations"] * B * T
    n_params = sum(p.numel for p in g.params)
    return {
        "graph": g, "plan": plan, "kernels": len(g.nodes), "params": n_params,
        "bytes": {"params": mem["params"], "grads": mem["grads"], "optimizer_state": mem["optimizer_state"],
                  "activations": acts, "activations_unshared": mem["activations_unshared"] * B * T},
        "peak": mem["params"] + mem["grads"] + mem["optimizer_state"] + acts,
        "flops_per_token": flops_per_token(g, T),
    }


def cmd_inspect(args) -> int:
    from llmgen.spec import load_spec
    spec = load_spec(args.spec, args.dtype)
    B, T = args.b, args.t or min(1024, spec.max_seq_len)
    if B < 1 or T < 1:
        raise CliError(f"-b and -t must be >= 1 (got -b {B} -t {T})")
    if T > spec.max_seq_len:
        raise CliError(f"-t {T} exceeds the spec's max_seq_len={spec.max_seq_len}")
    rep = inspect_report(spec, B, T, fuse=not args.no_fuse)
    g = rep["graph"]
    print(f"llmgen {__version__} | spec {spec.digest()} | {spec.arch} n_layer={spec.n_layer} n_head={spec.n_head} "
          f"n_embd={spec.n_embd} vocab={spec.vocab_size} (padded {spec.padded_vocab_size}) | B={B} T={T}")
    print(f"\nparameters: {rep['params']:,}")
    print(f"\nkernels per micro-batch step ({rep['kernels']} launches):")
    counts: dict[tuple, int] = {}
    for n in g.nodes:
        key = (n.phase, n.op, describe_kernel(n))
        counts[key] = counts.get(key, 0) + 1
    for (phase, op, desc), c in counts.items():
        print(f"  [{phase}] {op:<20} x{c:<4} {('fused: ' + desc) if desc else ''}")
    print("\nmemory plan:")
    for k in ("params", "grads", "optimizer_state", "activations"):
        print(f"  {k:<18} {_human(rep['bytes'][k]):>12}")
    print(f"  {'activations if nothing shared':<18} {_human(rep['bytes']['activations_unshared']):>12}")
    print(f"  {'peak':<18} {_human(rep['peak']):>12}")
    fpt = rep["flops_per_token"]
    print(f"\nFLOPs per token (forward + backward): {fpt / 1e9:.3f} GFLOP  "
          f"(x {B * T} tokens = {fpt * B * T / 1e12:.3f} TFLOP per micro-batch)")
    if not args.no_fuse:
        un = inspect_report(spec, B, T, fuse=False)
        dk = un["kernels"] - rep["kernels"]
        da = un["bytes"]["activations"] - rep["bytes"]["activations"]
        print(f"\nfusion: {rep['kernels']} kernels instead of {un['kernels']} (-{dk}, "
              f"{100 * dk / un['kernels']:.0f}% fewer); activations {_human(rep['bytes']['activations'])} instead of "
              f"{_human(un['bytes']['activations'])} (-{_human(da)}, {100 * da / un['bytes']['activations']:.0f}% less)")
    if args.verbose:
        print("\nschedule:")
        print(g.dump())
    return 0


def cmd_convert(args) -> int:
    from llmgen.llmc import convert
    print(convert(args.src, args.o, args.dtype))
    return 0


# --------------------------------------------------------------------------------------------

def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llmgen", description="Compile a model spec into one training program.")
    ap.add_argument("--version", action="version", version=f"llmgen {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="emit and compile a trainer")
    _add_spec_args(p)
    p.add_argument("--target", choices=("c", "cuda"), default="c")
    p.add_argument("--emulate", action="store_true", help="cuda: build the .cu for the CPU through the emulation header")
    p.add_argument("--recompute", type=int, choices=(0, 1, 2), default=0,
                   help="activation recompute in the backward (llm.c's -r): 0 none, 1 GELU, 2 GELU + layernorm [0]")
    p.add_argument("-o", required=True, metavar="DIR", help="output folder (train.c or train.cu, train)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("inspect", help="kernels, fused groups, memory plan and FLOPs of a spec")
    _add_spec_args(p)
    p.add_argument("-b", type=int, default=4, help="micro-batch for the activation sizes [4]")
    p.add_argument("-t", type=int, default=0, help="sequence length [min(1024, max_seq_len)]")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the whole schedule")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="llm.c GPT-2 model file (.bin) <-> Hugging Face folder",
                       description="SRC.bin -o DIR: an llm.c model file (magic 20240326, fp32 or bf16) to "
                                   "model.safetensors + config.json (for -e, from_pretrained). SRC_DIR -o "
                                   "FILE.bin: a Hugging Face GPT-2 folder or an llmgen checkpoint to llm.c's file.")
    p.add_argument("src", help="an llm.c .bin, or a folder with model.safetensors + config.json")
    p.add_argument("-o", required=True, metavar="DST", help="output folder (from .bin) or .bin file")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="parameters of a written .bin: fp32 (version 3) or bf16 (version 5) [fp32]")
    p.set_defaults(func=cmd_convert)

    from llmgen.data import add_data_subparser
    from llmgen.train import add_train_subparsers
    add_data_subparser(sub)
    add_train_subparsers(sub)
    return ap


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    from llmgen.data import DataError, DownloadError
    from llmgen.runtime.build import BuildError
    from llmgen.spec import SpecError
    try:
        return int(args.func(args) or 0)
    except (CliError, SpecError, BuildError, DataError, DownloadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
