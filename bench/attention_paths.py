"""The two attention paths of a bf16 CUDA build against PyTorch, on the CPU (emulated):

    python bench/attention_paths.py [--out DIR]

One train.cu is built twice through the emulation header: as generated (tensor-core attention,
wmma) and with -DLLMGEN_NO_TC_ATTENTION (the CUDA-core kernels). Each writes its step-0 dump (--dump)
for a GPT-2 and a Llama (GQA 2:1) model with head size 64, T = 192 (three 64-row tiles) and
sharpened attention scores; the table is the max error of each against PyTorch in fp32 (logits:
abs; grads: relative to each tensor's largest value). Both paths store bf16 activations, so
their errors should be alike; a path much worse than the other would point at it.
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

B, T = 2, 192
MODELS = {
    "gpt2 (2 heads of 64, qk x8)": (
        "gpt2",
        dict(n_layer=2, n_head=2, n_embd=128, vocab_size=300, n_positions=256, seed=7, qk_scale=8.0),
    ),
    "llama GQA 2:1 (qk x4)": (
        "llama",
        dict(
            dim=256,
            n_layers=1,
            n_heads=4,
            n_kv_heads=2,
            vocab_size=300,
            intermediate_size=128,
            max_position_embeddings=256,
            rope_scaling=None,
            tie_word_embeddings=False,
            rope_theta=500000.0,
            seed=5,
            qk_scale=4.0,
        ),
    ),
}


def main() -> int:
    import oracle
    from llmgen.checkpoint import read_safetensors
    from llmgen.runtime.build import build_cuda

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="work folder [a temporary one]")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="llmgen-attention-paths-"))
    print("| model | attention | logits max abs err | grads max rel err |")
    print("| --- | --- | ---: | ---: |")
    for label, (arch, cfg) in MODELS.items():
        d = root / arch
        if arch == "gpt2":
            oracle.make_gpt2_model_dir(d / "model", **cfg)
        else:
            oracle.make_llama_model_dir(d / "model", **cfg)
        pat = oracle.random_shards(d / "data", vocab_size=300, n_tokens=4000, n_shards=2, seed=2)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "llmgen",
                "build",
                str(d / "model" / "config.json"),
                "--dtype",
                "bf16",
                "--target",
                "cuda",
                "--emulate",
                "-o",
                str(d / "build"),
            ],
            check=True,
            capture_output=True,
        )
        ref = (oracle.step0_dump if arch == "gpt2" else oracle.llama_step0_dump)(d / "model", pat, B, T)
        for path, flags in (("tensor cores", []), ("CUDA cores", ["-DLLMGEN_NO_TC_ATTENTION"])):
            tag = "tc" if flags == [] else "cc"
            exe = build_cuda(d / "build" / "train.cu", d / f"train-{tag}", emulate=True, extra_flags=flags)
            subprocess.run(
                [
                    str(exe),
                    "-e",
                    str(d / "model"),
                    "-i",
                    pat,
                    "-b",
                    str(B),
                    "-t",
                    str(T),
                    "--dump",
                    str(d / f"dump-{tag}"),
                ],
                check=True,
                capture_output=True,
            )
            got = read_safetensors(d / f"dump-{tag}")
            logits = float(np.abs(got["logits"] - ref["logits"]).max())
            grads = max(float(np.abs(got["grad." + k] - w).max() / np.abs(w).max()) for k, w in ref["grads"].items())
            print(f"| {label} | {path} | {logits:.2e} | {grads:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
