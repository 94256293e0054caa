"""The generated .cu compiles and links with the real toolchain: nvcc for sm_80 and sm_90a (Hopper's
arch-specific target) against cuBLASLt's real headers and library (the CUDA install, or the nvidia-cublas
wheel .ci/run installs where nvcc exists). Nothing runs: there is no GPU here. Skipped, saying why, without nvcc or
without cuBLASLt."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmgen.codegen import Options, render
from llmgen.runtime.build import build_cuda, cublas_dirs
from llmgen.spec import PRESETS, GPT2Spec

TINY = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=64)

BUILDS = {
    # name: (spec, options)
    "gpt2-124m-fp32": (PRESETS["gpt2"], Options(target="cuda")),
    "gpt2-124m-bf16": (PRESETS["gpt2"].replace(dtype="bf16"), Options(target="cuda")),
    "tiny-bf16-recompute2": (TINY.replace(dtype="bf16"), Options(target="cuda", recompute=2)),
    "tiny-fp32-unfused": (TINY, Options(target="cuda", fuse=False)),
}


def test_nvcc_builds_sm80_and_sm90a(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: the CUDA compile check needs the CUDA toolkit")
    if cublas_dirs() is None:
        pytest.skip("cuBLASLt headers/library not found (CUDA install or `pip install nvidia-cublas`)")

    def one(name):
        spec, options = BUILDS[name]
        d = tmp_path / name
        d.mkdir()
        (d / "train.cu").write_text(render(spec, options))
        return build_cuda(d / "train.cu", d / "train", archs=["sm_80", "sm_90a"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, binary in zip(BUILDS, pool.map(one, BUILDS)):
            assert binary.is_file(), name
