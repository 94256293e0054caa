"""GPT-2 124M: the preset llm.c trains, as llmgen sees it.

    python examples/gpt2_124m.py            # inspect, build the CPU twin, run 2 steps on random data

On a GPU box, `llmgen train gpt2 --data data/shakespeare -b 16 -t 1024` picks the CUDA target.
As a spec file it defines `spec`.
"""

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from llmgen.cli import run_llmgen
from llmgen.spec import PRESETS

spec = PRESETS["gpt2"]


def main():
    run = run_llmgen  # one llmgen command: Ctrl-C is passed on once and waited for (then exit 130)
    run("inspect", "gpt2", "-b", 4, "-t", 64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run("build", "gpt2", "--target", "c", "-o", tmp / "build")
        tokens = np.random.default_rng(0).integers(0, spec.vocab_size, 8 * 65, dtype=np.uint16)
        header = np.zeros(256, np.int32)
        header[:3] = 20240520, 1, tokens.size
        (tmp / "random.bin").write_bytes(header.tobytes() + tokens.tobytes())
        subprocess.run(
            [str(tmp / "build" / "train"), "-i", str(tmp / "random.bin"), "-b", "4", "-t", "64", "-x", "2", "-v", "0"],
            check=True,
        )


if __name__ == "__main__":
    main()
