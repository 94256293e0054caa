"""The emulated CUDA trainer's training micro-step as a CUDA Graph: captured at the second micro-step and replayed,
it prints the losses and grad norms of the run that launches every kernel one by one (LLMGEN_NO_GRAPH=1) bit for
bit; so does the run with the GEMM warm-up micro-step (LLMGEN_GEMM_TUNE=1, on by default on a GPU), whose
gradients are discarded. Gradient accumulation (-d) makes several micro-steps per step, each loss kept on the
device until the step's one read."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import oracle

REPO = Path(__file__).resolve().parents[2]


def _build(tmp_path, model_cfg, dtype, extra):
    out = tmp_path / f"build-{dtype}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "llmgen", "build", str(model_cfg), "--target", "cuda", "--emulate", "--dtype", dtype]
    subprocess.run([*cmd, *extra, "-o", str(out)], check=True, capture_output=True, env=env)
    return out / "train"


def _steps(binary, model_dir, pattern, env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="2", **env_extra)
    flags = ["-b", "2", "-t", "32", "-d", "128", "-x", "4", "-l", "1e-3", "-v", "0", "-s", "0"]
    r = subprocess.run(
        [str(binary), "-e", str(model_dir), "-i", pattern, *flags], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "grad_accum=2" in r.stdout
    # the numbers of each step line, without its time
    lines = [line for line in r.stdout.splitlines() if line.startswith("step")]
    return [re.sub(r" \| [\d.]+ ms \| \d+ tok/s", "", line) for line in lines]


@pytest.mark.parametrize(
    "dtype, extra",
    [("fp32", []), ("bf16", []), ("fp32", ["--no-fuse", "--recompute", "2"])],
    ids=["fp32", "bf16", "unfused-r2"],
)
def test_graph_replay_prints_the_eager_losses(tmp_path, dtype, extra):
    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 2, 2, 32, 100, 64, seed=4)
    pattern = str(oracle.random_shards(tmp_path / "d", 100, 3000))
    binary = _build(tmp_path, mdir / "config.json", dtype, extra)
    graph = _steps(binary, mdir, pattern, {})
    eager = _steps(binary, mdir, pattern, {"LLMGEN_NO_GRAPH": "1"})
    tuned = _steps(binary, mdir, pattern, {"LLMGEN_GEMM_TUNE": "1"})
    assert len(graph) == 4
    assert graph == eager
    assert tuned == eager
