"""`llmgen sample` speed: 100 tokens of GPT-2 124M (random weights saved with transformers) on each
backend, after the build, as a user runs it (a fresh `llmgen sample` process, wall clock).

    python bench/sample.py [--tokens 100] [--out out/bench-sample]

Prints per backend: the whole command's wall time, and the model's own load and generation times
(`llmgen sample -v`), with the machine's load average beside them (other processes on the cores
slow every number down; compare runs made at the same load).
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--out", default="out/bench-sample")
    args = ap.parse_args()
    out = Path(args.out)
    model = out / "gpt2-124m"
    if not (model / "model.safetensors").is_file():
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(model)
    cmd = [
        sys.executable,
        "-m",
        "llmgen",
        "sample",
        str(model),
        "--prompt",
        "ROMEO:",
        "-n",
        str(args.tokens),
        "--seed",
        "1",
        "--cache-dir",
        str(out / "cache"),
        "-v",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the build (the compiled backend's library) is made once, outside the timings
    subprocess.run([*cmd[:6], "1", *cmd[7:], "--backend", "compiled"], check=True, env=env, capture_output=True)
    print(f"{'backend':<13} {'command wall':>12} {'load':>7} {'generate':>9}  tok/s  load average")
    for backend in ("transformers", "compiled"):
        t0 = time.perf_counter()
        r = subprocess.run([*cmd, "--backend", backend], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(f"{backend:<13} failed: {r.stderr.strip().splitlines()[-1]}")
            continue
        m = re.search(r"loaded in ([\d.]+) s; (\d+) steps x \d+ sample\(s\) in ([\d.]+) s, ([\d.]+) tok/s", r.stderr)
        load, steps, gen, rate = m.groups()
        print(
            f"{backend:<13} {wall:>10.2f} s {float(load):>5.2f} s {float(gen):>7.2f} s  {float(rate):>5.1f}  "
            f"{os.getloadavg()[0]:.2f} ({steps} tokens)"
        )


if __name__ == "__main__":
    main()
