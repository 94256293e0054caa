"""Where a bias gradient comes from (issue 13, Deliver 3: "bias gradients wherever measured fastest"): the dW
GEMM's BGRADB epilogue or the plain GEMM plus colsum's kernels, chosen per call site at start-up by timing both
(templates/cuda/device.cuh, bgrad_choose). The emulation cannot time a GPU, so it keeps the epilogue; these tests
force each path with LLMGEN_BGRAD and hold the emulated GPT-2 trainers (every block linear but c_proj has a bias
here) to PyTorch's step 0 under the matrix's tolerance tables, and check a bad value is refused by name."""

import pytest

from conftest import check_dump, run_binary
from llmgen.checkpoint import read_safetensors
from matrix import ROWS, params

GPT2_CUDA = [r for r in ROWS if r.target.cuda and r.arch.name == "gpt2-tiny" and r.target.name != "cuda-fp8"]


@pytest.mark.parametrize("path", ["epilogue", "kernel"])
@pytest.mark.parametrize("row", **params(GPT2_CUDA))
def test_each_bias_gradient_path_matches_pytorch(row, path, matrix_data, trainer, oracle_runs, tmp_path, monkeypatch):
    m, ref = matrix_data(row), oracle_runs(row, train=False)
    monkeypatch.setenv("LLMGEN_BGRAD", path)
    args = ["-e", m["model"], "-i", m["pattern"], "-b", row.B, "-t", row.T, "--dump", tmp_path / "dump"]
    run_binary(trainer(row), *args, timeout=900)
    check_dump(row, read_safetensors(tmp_path / "dump"), ref["dump"])


def test_a_bad_path_is_refused(matrix_data, trainer, tmp_path, monkeypatch):
    row = GPT2_CUDA[0]
    m = matrix_data(row)
    monkeypatch.setenv("LLMGEN_BGRAD", "fastest")
    args = ["-e", m["model"], "-i", m["pattern"], "-b", row.B, "-t", row.T, "--dump", tmp_path / "dump"]
    r = run_binary(trainer(row), *args, check=False, timeout=900)
    assert r.returncode != 0 and "LLMGEN_BGRAD=fastest: expected epilogue or kernel" in r.stdout + r.stderr
