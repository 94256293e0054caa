"""A tiny Llama 3 learns Shakespeare on the CPU twin (the same trainer a Llama 3.2 1B gets, smaller).

    python examples/llama3_tiny.py [--steps 300] [--out runs/llama3_tiny]

Data -> inspect -> build + train (with samples) -> sample -> plot, each step an `llmgen` command you can run yourself.
As a spec file (`llmgen train examples/llama3_tiny.py ...`) it defines `spec` below.

The architecture is Llama 3's: RMSNorm, rotary embeddings with Llama 3.1's frequency scaling,
grouped-query attention (8 query heads share 2 K/V heads), a SwiGLU MLP, no biases. Only the
tokenizer is GPT-2's (vocabulary 50257, from `llmgen data shakespeare`): Llama 3's 128256-token
vocabulary would make a model this small almost all embedding. Checkpoints are Hugging Face
LlamaForCausalLM folders:

    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained("runs/llama3_tiny/ckpt_00000300")

The real shapes are presets; `llmgen inspect` prints their kernels, fused groups, memory plan
and FLOPs without building anything:

    llmgen inspect llama3.2-1b              # 1.24B: 16 layers, 32 heads over 8 K/V heads, tied head
    llmgen inspect llama3.2-3b -b 1 -t 4096
    llmgen inspect llama3.1-8b -v           # -v also prints the whole schedule
    llmgen inspect path/to/Llama-3.2-1B     # a Hugging Face folder (its config.json)
"""

import argparse
import importlib.util
import json
import time
from pathlib import Path

from llmgen.cli import run_llmgen
from llmgen.spec import LlamaSpec

# 4 layers, dim 128, 8 query heads over 2 K/V heads (head_dim 16), SwiGLU hidden size from Meta's
# formula (2/3 * 4 * 128 rounded up to 32: 352), tied embeddings: ~7M parameters, most of them the
# embedding. RoPE base 500000 with Llama 3.1's scaling (factor 8), its "original" context shrunk to
# 64 so the scaling has an effect at this length (the preset llama3-tiny). Context 256; we train at T=128.
spec = LlamaSpec(
    dim=128,
    n_layers=4,
    n_heads=8,
    n_kv_heads=2,
    vocab_size=50257,
    multiple_of=32,
    rope_theta=500000.0,
    use_scaled_rope=True,
    rope_original_max_seq_len=64,
    max_seq_len=256,
    tie_embeddings=True,
)


def llmgen(*args):
    """Run one llmgen command; Ctrl-C reaches it once, it is waited for, and then this exits 130 (a training
    run stops at a checkpoint: `-y 1` on the same command resumes it)."""
    run_llmgen(*args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--data", default="data/shakespeare")
    ap.add_argument("--out", default="runs/llama3_tiny")
    args = ap.parse_args()
    t0 = time.time()
    llmgen("data", "shakespeare", "-o", args.data)
    llmgen("inspect", __file__, "-b", 8, "-t", 128)
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
