"""bench/gpu_check.py runs end to end without a GPU (emulated build, CPU torch): the script a GPU
session will run is exercised here, so it cannot rot between GPU sessions."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_gpu_check_quick_on_the_cpu(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_check.py"),
            str(tmp_path),
            "--quick",
            "--device",
            "cpu",
            "--emulate",
            "--skip-bench",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = {c["name"]: c for c in summary["correctness"]}
    assert set(runs) == {"gpt2-2l-64c-fp32", "gpt2-2l-64c-bf16"}  # --quick: one config per dtype
    assert all(c["ok"] and c["deterministic"] for c in runs.values())
    assert runs["gpt2-2l-64c-fp32"]["max_rel_loss_err"] < 1e-4
    assert (tmp_path / "logs.txt").is_file()
    # the roofline row needs no GPU: --skip-bench still makes it (the benchmark shape on an H200 here)
    roof = summary["roofline"]
    assert roof["name"].startswith("roofline prediction (H200")
    assert 1 < roof["ms"] < 1000 and roof["tokens_per_s"] == pytest.approx(16 * 1024 / (roof["ms"] / 1e3))
    assert "roofline prediction" in r.stdout
