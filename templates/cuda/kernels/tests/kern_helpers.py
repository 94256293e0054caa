"""Build-and-run helpers for the tests of templates/cuda/kernels/ (imported by the test_kern_*.py
beside it; deliberately not a conftest.py, as in ../../emulate/tests).

The programs in kernels/*.cu include the kernel headers and run their launchers on inputs the tests
write (`prog CASE DIR`, raw files); each is built once per session with g++ through the emulation
headers (no GPU). The bf16 conversions, the CUDA include lookup and the runner are the emulator
tests' own (emu_helpers.py), reused here.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
KERNEL_HEADERS = HERE.parent  # templates/cuda/kernels: the headers under test
CUDA_TEMPLATES = KERNEL_HEADERS.parent  # templates/cuda: ptx.cuh
EMULATE = CUDA_TEMPLATES / "emulate"
DRIVERS = HERE / "kernels"
sys.path.insert(0, str(EMULATE / "tests"))

from emu_helpers import (
    GXX_FLAGS,
    bf16_to_f32,
    cuda_include,
    f32_to_bf16,
    f64_to_bf16,  # noqa: E402,F401
    max_report,
    nvcc_path,
    run_program,
)

# the headers under test first, so a driver's #include "adamw.cuh" finds this folder's (templates/cuda holds the
# family templates and the other headers the drivers include)
INCLUDES = [
    f"-I{EMULATE}",
    f"-I{KERNEL_HEADERS}",
    f"-I{CUDA_TEMPLATES}",
    f"-I{EMULATE / 'tests' / 'kernels'}",
    f"-I{DRIVERS}",
]
# For g++ with -Werror: the emulation headers as system headers, so that the warnings checked are those of
# the kernel headers (g++ 12 -O2 reports a false maybe-uninitialized in emu_ptx.h's ld_shared_run when many
# counted accesses are inlined into one unit).
GXX_INCLUDES = [f"-isystem{EMULATE}", *INCLUDES[1:]]

_BUILT: dict[str, pathlib.Path] = {}
_LOCK = threading.Lock()


def program(name: str, outdir: pathlib.Path) -> pathlib.Path:
    """kernels/<name>.cu built with g++ under the emulation (once per session); skips without g++ or CUDA headers."""
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found: the emulation needs them")
    with _LOCK:
        if name not in _BUILT:
            out = outdir / name
            cmd = [
                "g++",
                *GXX_FLAGS,
                "-fopenmp",
                "-Wall",
                "-Wextra",
                *GXX_INCLUDES,
                f"-I{cuda_include()}",
                str(DRIVERS / f"{name}.cu"),
                "-o",
                str(out),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.fail(f"g++ failed to build {name}:\n{proc.stdout}{proc.stderr}")
            if proc.stderr.strip():
                pytest.fail(f"g++ warned building {name}:\n{proc.stderr}")
            _BUILT[name] = out
    return _BUILT[name]


# ---- storage types --------------------------------------------------------------------------------
def to_storage(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(what to write for a T array, the float64 values the kernel sees): bf16 inputs are rounded first."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "f32":
        return x32, x32.astype(np.float64)
    bits = f32_to_bf16(x32)
    return bits, bf16_to_f32(bits).astype(np.float64)


def read_storage(run, name: str, dtype: str, shape=None) -> np.ndarray:
    """a T output as float64"""
    if dtype == "f32":
        a = run.out(name, np.float32).astype(np.float64)
    else:
        a = bf16_to_f32(run.out(name, np.uint16)).astype(np.float64)
    return a.reshape(shape) if shape is not None else a


def round_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded once to T (round to nearest even), as float64"""
    if dtype == "f32":
        return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)
    return bf16_to_f32(f64_to_bf16(np.asarray(x, np.float64))).astype(np.float64)


def storage_bits(run, name: str, dtype: str) -> np.ndarray:
    """a T output's raw bits (for bit-for-bit comparisons)"""
    return run.out(name, np.float32 if dtype == "f32" else np.uint16).view(np.uint32 if dtype == "f32" else np.uint16)


def check_close(name: str, got: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> None:
    """|got - ref| <= atol + rtol * |ref| elementwise; prints the max difference (pytest -s)"""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    max_report(name, got, ref)
    assert np.all(np.isfinite(got)), f"{name}: non-finite values"
    bad = np.abs(got - ref) > atol + rtol * np.abs(ref)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        pytest.fail(
            f"{name}: {int(bad.sum())} of {bad.size} outside rtol {rtol:g} atol {atol:g}; first at flat "
            f"{i}: got {got.flat[i]!r} ref {ref.flat[i]!r}"
        )
