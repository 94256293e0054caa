"""The two attention paths of a bf16 CUDA build against PyTorch, on the CPU (emulated):

    python bench/attention_paths.py [--out DIR]

One train.cu is built twice through the emulation header: as generated (the FlashAttention-2-class
kernels of templates/cuda/kernels/attention_fa2.cuh: mma.sync, ldmatrix, cp.async) and with
-DLLMGEN_NO_TC_ATTENTION (the CUDA-core kernels of templates/cuda/attention.cuh). Each writes its
step-0 dump (--dump) for the bf16 rows of tests/matrix.py that run the FA2 kernels (GPT-2's packed qkv
and Llama's grouped heads, head sizes 64 and 128, sharpened attention scores), at the rows' B and T;
the table is the max error of each against PyTorch in fp32 (logits: abs; grads: relative to each
tensor's largest value). Both paths store bf16 activations, so their errors should be alike; a path
much worse than the other would point at it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def fa2_rows():
    """The matrix's bf16 rows whose trainer runs the FA2 attention (their needles name its header)."""
    from matrix import ROWS

    return [r for r in ROWS if r.target.dtype == "bf16" and any("attention_fa2" in n for n in r.source_needles)]


def main() -> int:
    import oracle
    from llmgen.checkpoint import read_safetensors
    from llmgen.runtime.build import build_cuda

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="work folder [a temporary one]")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="llmgen-attention-paths-"))
    print("| row (B, T) | attention | logits max abs err | grads max rel err |")
    print("| --- | --- | ---: | ---: |")
    for row in fa2_rows():
        arch, d = row.arch, root / row.arch.name
        if arch.family == "gpt2":
            oracle.make_gpt2_model_dir(d / "model", seed=arch.seed, qk_scale=arch.qk_scale, **arch.config)
        else:
            oracle.make_llama_model_dir(
                d / "model", seed=arch.seed, qk_scale=arch.qk_scale, rope_theta=500000.0, **arch.config
            )
        pat = oracle.random_shards(
            d / "data", vocab_size=arch.vocab_size, n_tokens=row.n_tokens, n_shards=2, seed=arch.data_seed
        )
        cmd = [sys.executable, "-m", "llmgen", "build", str(d / "model" / "config.json"), *arch.build_flags]
        subprocess.run([*cmd, *row.target.flags, "-o", str(d / "build")], check=True, capture_output=True)
        step0 = oracle.step0_dump if arch.family == "gpt2" else oracle.llama_step0_dump
        ref = step0(d / "model", pat, row.B, row.T)
        for path, flags in (("FA2 (tensor cores)", []), ("CUDA cores", ["-DLLMGEN_NO_TC_ATTENTION"])):
            tag = "cc" if flags else "fa2"
            exe = build_cuda(d / "build" / "train.cu", d / f"train-{tag}", emulate=True, extra_flags=flags)
            run = [str(exe), "-e", str(d / "model"), "-i", pat, "-b", str(row.B), "-t", str(row.T)]
            subprocess.run([*run, "--dump", str(d / f"dump-{tag}")], check=True, capture_output=True)
            got = read_safetensors(d / f"dump-{tag}")
            logits = float(np.abs(got["logits"] - ref["logits"]).max())
            grads = max(float(np.abs(got["grad." + k] - w).max() / np.abs(w).max()) for k, w in ref["grads"].items())
            print(f"| {row.id} ({row.B}, {row.T}) | {path} | {logits:.2e} | {grads:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
