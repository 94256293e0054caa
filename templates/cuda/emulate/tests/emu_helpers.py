"""Build-and-run helpers for the emulator's self-tests (imported by the test_emu_*.py beside it;
deliberately not a conftest.py, so that `from conftest import ...` elsewhere keeps meaning tests/conftest.py).

The programs in kernels/*.cu are ordinary CUDA sources. Each test builds them with g++ and the
emulation headers (../emulate.h and its parts: no GPU, no libcudart), runs `prog CASE DIR` with
inputs written by the test into DIR, and compares the outputs with numpy/torch references computed
here. All programs are compiled once per session, two at a time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
HEADER_DIR = HERE.parent  # templates/cuda/emulate: emulate.h and its parts
CUDA_TEMPLATES = HEADER_DIR.parent  # templates/cuda: ptx.cuh, the device functions both builds use
KERNELS = HERE / "kernels"

# The build line the generated train.cu uses under emulation (see the top of emulate.h; -I names HEADER_DIR).
GXX_FLAGS = ["-std=c++17", "-O2", "-x", "c++", "-DLLMGEN_EMULATE", "-fno-strict-aliasing"]

# program name -> (source in kernels/, extra g++ flags)
PROGRAMS = {
    "block_ops": ("block_ops.cu", ["-fopenmp"]),
    # the ucontext fallback switch, and no OpenMP (blocks run one after another)
    "block_ops_ucontext": ("block_ops.cu", ["-DLLMGEN_EMU_UCONTEXT"]),
    # nothing may depend on optimisation (the fiber switch, the compiler fences)
    "block_ops_O0": ("block_ops.cu", ["-O0", "-fopenmp"]),
    # CET shadow-stack marking selects the ucontext switch by itself
    "block_ops_cet": ("block_ops.cu", ["-fcf-protection=full", "-fopenmp"]),
    "warp_ops": ("warp_ops.cu", ["-fopenmp"]),
    "warp_ops_ucontext": ("warp_ops.cu", ["-DLLMGEN_EMU_UCONTEXT", "-fopenmp"]),
    "atomics": ("atomics.cu", ["-fopenmp"]),
    "bf16": ("bf16.cu", ["-fopenmp"]),
    "fp8": ("fp8.cu", ["-fopenmp"]),
    "cublaslt": ("cublaslt.cu", ["-fopenmp"]),
    "cublaslt_fp8": ("cublaslt_fp8.cu", ["-fopenmp"]),
    "runtime": ("runtime.cu", ["-fopenmp"]),
    "graph": ("graph.cu", ["-fopenmp"]),
    "defer": ("defer.cu", ["-fopenmp"]),
    "bench": ("bench.cu", ["-fopenmp"]),
    "wmma": ("wmma.cu", ["-fopenmp"]),
    "ptx": ("ptx.cu", ["-fopenmp"]),
}

# Blocks run on this many OS threads, so cross-thread atomics and per-thread shared memory are
# exercised even on a one-core machine.
RUN_ENV = {"OMP_NUM_THREADS": "2"}


def cuda_include() -> pathlib.Path | None:
    """Where cuda_runtime.h lives: $CUDA_HOME, next to nvcc, or /usr/local/cuda."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(pathlib.Path(nvcc).resolve().parents[1]))
    roots.append("/usr/local/cuda")
    for root in roots:
        if root and (pathlib.Path(root) / "include" / "cuda_runtime.h").is_file():
            return pathlib.Path(root) / "include"
    return None


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    inc = cuda_include()
    if inc and (inc.parent / "bin" / "nvcc").is_file():
        return str(inc.parent / "bin" / "nvcc")
    return None


def cublas_include() -> pathlib.Path | None:
    """A directory holding NVIDIA's cublasLt.h: the CUDA toolkit's, $LLMGEN_CUBLAS_INCLUDE, or the
    one the `nvidia-cublas` wheel installs (nvidia/cu13/include, older wheels nvidia/cublas/include)."""
    cands = []
    inc = cuda_include()
    if inc:
        cands.append(inc)
    if os.environ.get("LLMGEN_CUBLAS_INCLUDE"):
        cands.append(pathlib.Path(os.environ["LLMGEN_CUBLAS_INCLUDE"]))
    try:
        import nvidia  # namespace package of NVIDIA's wheels

        for base in getattr(nvidia, "__path__", []):
            cands += [pathlib.Path(p) for p in glob.glob(os.path.join(base, "*", "include"))]
    except ImportError:
        pass
    for c in cands:
        if (c / "cublasLt.h").is_file():
            return c
    return None


def gxx_command(source: pathlib.Path, out: pathlib.Path, extra: list[str]) -> list[str]:
    return [
        "g++",
        *GXX_FLAGS,
        *extra,
        f"-I{HEADER_DIR}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{cuda_include()}",
        f"-I{KERNELS}",
        str(source),
        "-o",
        str(out),
    ]


@dataclasses.dataclass
class Built:
    path: pathlib.Path | None
    log: str


class Programs:
    """Compiles every program of PROGRAMS once, in parallel, on first use."""

    def __init__(self, outdir: pathlib.Path):
        self.outdir = outdir
        self.built: dict[str, Built] | None = None

    def _build_all(self) -> None:
        def build(name: str) -> tuple[str, Built]:
            src, extra = PROGRAMS[name]
            out = self.outdir / name
            proc = subprocess.run(gxx_command(KERNELS / src, out, extra), capture_output=True, text=True)
            return name, Built(out if proc.returncode == 0 else None, proc.stdout + proc.stderr)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
            self.built = dict(ex.map(build, PROGRAMS))

    def __getitem__(self, name: str) -> pathlib.Path:
        if self.built is None:
            self._build_all()
        b = self.built[name]
        if b.path is None:
            pytest.fail(f"g++ failed to build {name}:\n{b.log}")
        return b.path


_PROGRAMS: Programs | None = None  # one build per test session, shared by every test module


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> Programs:
    """The compiled test programs (import this fixture into a test module to use it)."""
    global _PROGRAMS
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found")
    if _PROGRAMS is None:
        _PROGRAMS = Programs(tmp_path_factory.mktemp("emu_build"))
    return _PROGRAMS


def gpu_arch() -> str | None:
    """sm_XY of the first visible GPU (nvidia-smi), or None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    r = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    cap = r.stdout.strip().splitlines()[0].replace(".", "") if r.returncode == 0 and r.stdout.strip() else ""
    return f"sm_{cap}" if cap.isdigit() else None


_NVCC_BUILT: dict[str, pathlib.Path] = {}


def nvcc_program(source: str, outdir: pathlib.Path) -> pathlib.Path:
    """kernels/<source> built by nvcc for the visible GPU (skips without nvcc or a GPU): the same
    test program on the hardware, to hold the emulation's models against it."""
    arch, nvcc = gpu_arch(), nvcc_path()
    if arch is None or nvcc is None:
        pytest.skip("needs nvcc and an NVIDIA GPU: the emulated run above checks the same cases on the CPU")
    if source not in _NVCC_BUILT:
        out = outdir / (source + ".gpu")
        cmd = [
            nvcc,
            "-O2",
            f"-arch={arch}",
            f"-I{HEADER_DIR}",
            f"-I{CUDA_TEMPLATES}",
            f"-I{KERNELS}",
            str(KERNELS / source),
            "-o",
            str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"nvcc failed to build {source}:\n{proc.stdout}{proc.stderr}")
        _NVCC_BUILT[source] = out
    return _NVCC_BUILT[source]


@dataclasses.dataclass
class Run:
    dir: pathlib.Path
    returncode: int
    stdout: str
    stderr: str

    def out(self, name: str, dtype, shape=None) -> np.ndarray:
        a = np.fromfile(self.dir / f"{name}.bin", dtype=dtype)
        return a.reshape(shape) if shape is not None else a


def run_program(
    prog: pathlib.Path,
    case: str,
    workdir: pathlib.Path,
    inputs: dict | None = None,
    expect_ok: bool = True,
    env: dict | None = None,
    timeout: float = 120,
) -> Run:
    """Write inputs (name -> array) to workdir, run `prog case workdir`, return its outputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, arr in (inputs or {}).items():
        np.ascontiguousarray(arr).tofile(workdir / f"{name}.bin")
    full_env = {**os.environ, **RUN_ENV, **(env or {})}
    proc = subprocess.run(
        [str(prog), case, str(workdir)], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{prog.name} {case} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return Run(workdir, proc.returncode, proc.stdout, proc.stderr)


# ---- bf16 as raw uint16 bits -------------------------------------------------------------------
def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bf16 bits (NaN kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def f64_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float64 -> bf16 bits in one step (normal range only)."""
    u = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    drop = np.uint64(45)  # 52 - 7 fraction bits
    lsb = (u >> drop) & np.uint64(1)
    r = (u + (np.uint64(1) << (drop - np.uint64(1))) - np.uint64(1) + lsb) & ~((np.uint64(1) << drop) - np.uint64(1))
    return f32_to_bf16(r.view(np.float64).astype(np.float32))  # exact: r has 8 significant bits


def max_report(name: str, got: np.ndarray, ref: np.ndarray) -> float:
    """llm.c style: print the max difference per tensor (shown with pytest -s)."""
    d = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)))) if got.size else 0.0
    print(f"{name}: max |diff| {d:.3g}")
    return d
