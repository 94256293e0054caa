"""A small GPT-2 learns Shakespeare on the CPU twin in a few minutes (the README's first command).

    python examples/gpt2_shakespeare.py [--steps 500] [--out runs/shakespeare]

Data -> build -> train -> sample -> plot, each step an `llmgen` command you can run yourself.
As a spec file (`llmgen train examples/gpt2_shakespeare.py ...`) it defines `spec` below.
"""

import argparse
import importlib.util
import json
import time
from pathlib import Path

from llmgen.cli import run_llmgen
from llmgen.spec import GPT2Spec

# 4 layers, 4 heads, 128 wide, GPT-2's 50257-token vocabulary: ~7M parameters, most of them the
# tied embedding, so the classifier dominates each step. Context 256; we train at T=128.
spec = GPT2Spec(n_layer=4, n_head=4, n_embd=128, max_seq_len=256)


def llmgen(*args):
    """Run one llmgen command; Ctrl-C reaches it once, it is waited for, and then this exits 130 (a training
    run stops at a checkpoint: `-y 1` on the same command resumes it)."""
    run_llmgen(*args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--data", default="data/shakespeare")
    ap.add_argument("--out", default="runs/shakespeare")
    args = ap.parse_args()
    t0 = time.time()
    llmgen("data", "shakespeare", "-o", args.data)
    resume = []
    if (Path(args.out) / "latest").is_file():  # run again: continue (or just reuse) that run, never overwrite it
        print(f"{args.out} holds a run: continuing it with -y 1 (--out DIR for a fresh one)")
        resume = ["-y", 1]
    llmgen(
        "train",
        __file__,
        "--data",
        args.data,
        *resume,
        "-b",
        8,
        "-t",
        128,
        "-x",
        args.steps,
        "-l",
        "2e-3",
        "-u",
        20,
        "-q",
        0.1,
        "-c",
        0.0,
        "-v",
        50,
        "-m",
        8,
        "-s",
        args.steps,
        "-g",
        48,
        "-o",
        args.out,
    )
    llmgen("sample", args.out, "--prompt", "ROMEO:", "-n", 40, "--seed", 1)
    if importlib.util.find_spec("matplotlib"):
        llmgen("plot", args.out)
        plot = f"plot: {Path(args.out) / 'loss.png'}"
    else:
        plot = "no plot: `llmgen plot` needs matplotlib (pip install 'llmgen[plot]')"
    log = [json.loads(line) for line in open(Path(args.out) / "log.jsonl")]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    print(
        f"\nval loss {vals[0]:.3f} -> {vals[-1]:.3f} ({100 * (1 - vals[-1] / vals[0]):.0f}% lower) "
        f"in {time.time() - t0:.0f} s; {plot}"
    )


if __name__ == "__main__":
    main()
