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
    assert set(runs) == {"gpt2-2l-64c-fp32", "gpt2-2l-64c-bf16", "gpt2-2l-64c-fp8"}  # --quick: one config per dtype
    assert all(c["ok"] and c["deterministic"] for c in runs.values()), runs
    assert runs["gpt2-2l-64c-fp32"]["max_rel_loss_err"] < 1e-4
    # the FP8 row: every block linear in FP8 (gpu_check's FP8_EVERYWHERE), against the bf16 build and the FP8 oracle
    fp8 = runs["gpt2-2l-64c-fp8"]
    assert fp8["vs_bf16_rel"] <= 1e-2 and fp8["vs_oracle_rel"] <= 1e-3 and len(fp8["oracle_losses"]) == 10
    assert fp8["losses"] != runs["gpt2-2l-64c-bf16"]["losses"]  # FP8 really ran
    assert (tmp_path / "logs.txt").is_file()
    # the roofline row needs no GPU: --skip-bench still makes it (the benchmark shape on an H200 here)
    roof = summary["roofline"]
    assert roof["name"].startswith("roofline prediction (H200")
    assert 1 < roof["ms"] < 1000 and roof["tokens_per_s"] == pytest.approx(16 * 1024 / (roof["ms"] / 1e3))
    assert "roofline prediction" in r.stdout
    # and the FP8 rows' predictions: GPT-2 124M and Llama-3.2-1B, fp8 against bf16
    for preset in ("gpt2", "llama3.2-1b"):
        f8 = summary["roofline_fp8"][preset]
        assert f8["fp8_ms"] < f8["bf16_ms"] and f8["fp8_gemms"] > 0, f8
    assert "roofline fp8 llama3.2-1b" in r.stdout
