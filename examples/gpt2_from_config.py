"""A trainer from a Hugging Face config.json (examples/gpt2_config/config.json, or pass your own).

    python examples/gpt2_from_config.py [CONFIG_OR_MODEL_DIR] [--steps 50]

The same spec can come from a model folder saved with save_pretrained; then its weights are
the starting point (-e), and the checkpoints the trainer writes load back with from_pretrained.
"""

import argparse
from pathlib import Path

from llmgen.cli import run_llmgen

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(HERE / "gpt2_config" / "config.json"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--data", default="data/shakespeare")
    ap.add_argument("--out", default="runs/from_config")
    args = ap.parse_args()
    llmgen = run_llmgen  # one llmgen command: Ctrl-C is passed on once and waited for (then exit 130)
    llmgen("data", "shakespeare", "-o", args.data)
    flags = ["-e", Path(args.config).parent] if (Path(args.config).parent / "model.safetensors").is_file() else []
    llmgen(
        "train",
        args.config,
        "--data",
        args.data,
        *flags,
        "-b",
        4,
        "-t",
        128,
        "-x",
        args.steps,
        "-l",
        "1e-3",
        "-v",
        25,
        "-m",
        4,
        "-o",
        args.out,
    )


if __name__ == "__main__":
    main()
