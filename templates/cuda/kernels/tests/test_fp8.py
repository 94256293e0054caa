"""templates/cuda/kernels/fp8.cuh, run on the CPU through the emulation (fp8_kernels.cu beside this file, built
with g++ -DLLMGEN_EMULATE), against numpy and torch's float8 dtypes; its shared-memory bank conflicts as the
emulation counts them; its refusals; where nvcc is installed, ptxas's resource use for sm_89 and sm_90a; and,
where a GPU is present, the same cases on the hardware (the "gpu" builds; skipped otherwise). fp8_linear.cu
runs one linear layer's three GEMMs the way a trainer will: the casts feeding cuBLASLt's TN-only FP8 GEMM.

Everything here is exact, so everything is compared bit for bit:
  - a cast is one fp32 multiply of the (exactly widened) bf16 value by the scale and one round-to-nearest-even
    saturating conversion; the reference is torch's float8 cast of float32(x) * float32(scale) clamped to the
    format's finite range first (torch's float8 cast does not saturate: e5m2 overflows to Inf);
  - an amax is a max of absolute values (exact, in any order);
  - a scale is (MAX / amax) * 2^-margin in float32 (a correctly rounded division and an exact power of two),
    its inverse a correctly rounded float32 reciprocal; the delayed recipe's reference is written from
    Transformer Engine's documented algorithm (nvte_delayed_scaling_recipe_amax_and_scale_update: the history
    rotated by -1 and its first entry zeroed at every update, the scale from max(history) or the newest amax,
    the previous scale kept when the amax is 0 or not finite), as a rolled numpy array, independent of the
    kernel's ring buffer."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
KERNELS = HERE.parent  # templates/cuda/kernels: fp8.cuh
CUDA_TEMPLATES = KERNELS.parent  # templates/cuda: ptx.cuh
EMULATE = CUDA_TEMPLATES / "emulate"
TESTIO = EMULATE / "tests" / "kernels"  # testio.h
DRIVER = HERE / "fp8_kernels.cu"

sys.path.insert(0, str(EMULATE / "tests"))
from emu_helpers import (
    GXX_FLAGS,
    bf16_to_f32,
    cublas_include,
    cuda_include,
    f32_to_bf16,
    gpu_arch,  # noqa: E402
    nvcc_path,
)

torch = pytest.importorskip("torch")

FMT = {"e4m3": (0, torch.float8_e4m3fn, 448.0), "e5m2": (1, torch.float8_e5m2, 57344.0)}


# ---- builds ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fp8_emu(tmp_path_factory) -> pathlib.Path:
    """fp8_kernels.cu through the emulation headers, warning-free under -Wall -Wextra"""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found")
    out = tmp_path_factory.mktemp("fp8") / "fp8_kernels"
    cmd = [
        "g++",
        *GXX_FLAGS,
        "-fopenmp",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        f"-I{cuda_include()}",
        str(DRIVER),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def fp8_gpu(tmp_path_factory) -> pathlib.Path:
    """the same program built by nvcc for the visible GPU (FP8 conversions need sm_89 or newer)"""
    arch, nvcc = gpu_arch(), nvcc_path()
    if arch is None or nvcc is None:
        pytest.skip("needs nvcc and an NVIDIA GPU: the emulated build runs the same source on the CPU")
    if int(arch[3:]) < 89:
        pytest.skip(f"the FP8 conversions need sm_89 or newer; the GPU is {arch}")
    out = tmp_path_factory.mktemp("fp8_gpu") / "fp8_kernels"
    cmd = [
        nvcc,
        "-O3",
        f"-arch={arch}",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        str(DRIVER),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture
def prog(request) -> pathlib.Path:
    return request.getfixturevalue("fp8_gpu" if request.param == "gpu" else "fp8_emu")


BUILDS = ["emulated", "gpu"]


def run(
    prog: pathlib.Path,
    case: str,
    workdir: pathlib.Path,
    params: list[int],
    inputs: dict | None = None,
    expect_ok: bool = True,
) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    np.array(params, np.int32).tofile(workdir / "params.bin")
    for name, arr in (inputs or {}).items():
        np.ascontiguousarray(arr).tofile(workdir / f"{name}.bin")
    env = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "passive", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(prog), case, str(workdir)], capture_output=True, text=True, env=env, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def out(workdir: pathlib.Path, name: str, dtype) -> np.ndarray:
    return np.fromfile(workdir / f"{name}.bin", dtype=dtype)


# ---- references ------------------------------------------------------------------------------------
def torch_codes(v: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values -> codes: torch's cast of the value clamped to the finite range (NaN kept)"""
    _, dtype, fmax = FMT[fmt]
    return torch.from_numpy(np.ascontiguousarray(v, np.float32)).clamp(-fmax, fmax).to(dtype).view(torch.uint8).numpy()


def cast_reference(bits: np.ndarray, scale: float, fmt: str) -> np.ndarray:
    """codes of sat(float32(x) * float32(scale)); NaN inputs give cuda_fp8.h's canonical NaN 0x7F"""
    x = bf16_to_f32(bits)
    v = (x * np.float32(scale)).astype(np.float32)
    codes = torch_codes(v, fmt)
    return np.where(np.isnan(v), np.uint8(0x7F), codes)


def scale_reference(amax: float, fmt: str, margin: int, pow2: bool, fallback: float) -> np.float32:
    """(MAX / amax) * 2^-margin in float32; fallback for 0 / NaN / Inf; FLT_MAX on overflow"""
    a = np.float32(amax)
    if not (a > 0) or not np.isfinite(a):
        return np.float32(fallback)
    with np.errstate(over="ignore"):
        s = np.float32(np.float32(FMT[fmt][2]) / a)
        s = np.float32(np.ldexp(s, -margin))
    if not np.isfinite(s):
        s = np.float32(np.finfo(np.float32).max)
    if pow2:
        s = np.float32(np.ldexp(np.float32(1.0), int(np.floor(np.log2(np.float64(s))))))
    return s


def te_delayed_reference(amaxes: list[float], H: int, fmt: str, margin: int, most_recent: bool, pow2: bool):
    """Transformer Engine's delayed scaling, as documented: the cast records its amax in history[0]; the
    update takes max(history) (or history[0]), sets the scale (keeping the previous one when that amax is
    0 or not finite), then rotates the history by -1 and zeroes history[0]. Returns (scale, scale_inv) after
    each update."""
    history = np.zeros(H, np.float32)
    scale = np.float32(1.0)
    out = []
    for a in amaxes:
        history[0] = np.float32(a)
        chosen = history[0] if most_recent else np.float32(np.nanmax(np.where(np.isnan(history), 0, history)))
        scale = scale_reference(chosen, fmt, margin, pow2, scale)
        history = np.roll(history, -1)
        history[0] = 0
        out.append((scale, np.float32(np.float32(1.0) / scale)))
    return out


def random_bf16(rng, n: int, spread: int = 6) -> np.ndarray:
    x = rng.standard_normal(n) * 2.0 ** rng.integers(-spread, spread, n)
    return f32_to_bf16(x.astype(np.float32))


# ---- casts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("prog", BUILDS, indirect=True)
@pytest.mark.parametrize("fmt", list(FMT))
def test_cast_matches_torch(prog, tmp_path, fmt):
    """x * scale rounded and saturated, 16 codes per thread and step, over a grid of 1024 blocks that loops
    (n = 2 x 1024 x 256 x 16 + 16 x 12345); values over many binades, ties, saturating ones, +-Inf, NaN, zeros"""
    rng = np.random.default_rng(1)
    n = 2 * 1024 * 256 * 16 + 16 * 12345
    bits = random_bf16(rng, n, spread=12)
    special = f32_to_bf16(
        np.array(
            [
                0.0,
                -0.0,
                np.inf,
                -np.inf,
                np.nan,
                1e30,
                -1e30,
                448 / 3.7,
                464 / 3.7,
                57344 / 3.7,
                61440 / 3.7,
                2.0**-20,
                -(2.0**-30),
                1.0,
                3.0,
                5.0,
            ],
            np.float32,
        )
    )
    bits[:16] = special
    scale = np.float32(3.7)
    d = tmp_path / "c"
    run(prog, "cast", d, [FMT[fmt][0], n, 1], {"x": bits, "scale": np.array([scale], np.float32)})
    got, want = out(d, "out", np.uint8), cast_reference(bits, scale, fmt)
    bad = got != want
    assert not bad.any(), (
        f"{bad.sum()} codes differ, e.g. x={bf16_to_f32(bits[bad][:4])} got={got[bad][:4]} want={want[bad][:4]}"
    )
    partials = out(d, "partials", np.float32)
    assert partials.size == min(-(-n // 4096), 1024)
    x = bf16_to_f32(bits)
    assert partials.max() == np.nanmax(np.abs(x)) == np.inf  # Inf counts, NaN is ignored
    special_codes = (got & 0x7F) == 0x7F if fmt == "e4m3" else (got & 0x7F) >= 0x7C  # NaN (and e5m2's Inf)
    assert not special_codes[~np.isnan(x)].any()  # saturated: never NaN or Inf


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
@pytest.mark.parametrize("fmt", list(FMT))
@pytest.mark.parametrize(
    "shape", [(16, 16), (64, 256), (80, 272), (208, 48), (48, 784), (400, 528)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_cast_transpose(prog, tmp_path, fmt, shape):
    """out = the row-major codes, out_t its transpose, both equal to torch's cast; the amax partials; tiles
    cut at both edges (rows and columns not multiples of 64 / 256)"""
    rows, cols = shape
    rng = np.random.default_rng(rows * 1000 + cols)
    bits = random_bf16(rng, rows * cols, spread=10)
    scale = np.float32(0.8125 if fmt == "e4m3" else 0.0377)
    d = tmp_path / "t"
    run(prog, "cast_t", d, [FMT[fmt][0], rows, cols, 1, 1], {"x": bits, "scale": np.array([scale], np.float32)})
    want = cast_reference(bits, scale, fmt).reshape(rows, cols)
    np.testing.assert_array_equal(out(d, "out", np.uint8).reshape(rows, cols), want)
    np.testing.assert_array_equal(out(d, "out_t", np.uint8).reshape(cols, rows), want.T)
    partials = out(d, "partials", np.float32)
    assert partials.size == -(-rows // 64) * -(-cols // 256)
    assert partials.max() == np.abs(bf16_to_f32(bits)).max()


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
def test_cast_transpose_without_rows_or_amax(prog, tmp_path):
    """out and partials are optional: only out_t is written"""
    rows, cols = 96, 320
    bits = random_bf16(np.random.default_rng(7), rows * cols)
    d = tmp_path / "t"
    run(prog, "cast_t", d, [1, rows, cols, 0, 0], {"x": bits, "scale": np.array([2.5], np.float32)})
    np.testing.assert_array_equal(
        out(d, "out_t", np.uint8).reshape(cols, rows), cast_reference(bits, 2.5, "e5m2").reshape(rows, cols).T
    )
    assert not (d / "out.bin").exists() and not (d / "partials.bin").exists()


def test_cast_transpose_is_free_of_bank_conflicts(fp8_emu, tmp_path):
    """phase 1's 16-byte tile stores and phase 2's 4-byte column reads: one wavefront per 128-byte phase
    (the emulation's count of the 32 lanes' addresses, emulate/emu_banks.h)"""
    rows, cols = 128, 512
    d = tmp_path / "t"
    run(
        fp8_emu,
        "cast_t",
        d,
        [0, rows, cols, 1, 1],
        {"x": random_bf16(np.random.default_rng(2), rows * cols), "scale": np.array([1.0], np.float32)},
    )
    stats = json.loads((d / "smem.bin").read_text())
    ((name, counts),) = [(k, v) for k, v in stats.items() if "cast_transpose_kernel" in k]
    blocks = (rows // 64) * (cols // 256)
    for kind, per_block in (("st_shared", 8 * 4), ("ld_shared", 8 * 16)):  # 8 warps x 4 stores / 16 loads
        c = counts[kind]
        print(
            f"{name} {kind}: {c['instructions']} instructions, {c['phases']} phases, {c['wavefronts']} wavefronts,"
            f" max {c['max_way']}-way"
        )
        assert c["instructions"] == blocks * per_block
        assert c["wavefronts"] == c["phases"] and c["max_way"] == 1, c


# ---- amax and scales -------------------------------------------------------------------------------
@pytest.mark.parametrize("prog", BUILDS, indirect=True)
def test_amax_partials(prog, tmp_path):
    rng = np.random.default_rng(4)
    for n in (16, 4096 * 3 + 16, 4096 * 1024 + 4096 * 37):
        bits = random_bf16(rng, n)
        bits[rng.integers(0, n)] = f32_to_bf16(np.array([-777.0], np.float32))[0]
        d = tmp_path / f"a{n}"
        run(prog, "amax", d, [n], {"x": bits})
        partials = out(d, "partials", np.float32)
        assert partials.size == min(-(-n // 4096), 1024)
        assert partials.max() == np.abs(bf16_to_f32(bits)).max()
        per_block = np.zeros(partials.size, np.float32)  # the grid-stride ownership: chunk c -> block c % grid
        chunks = np.abs(bf16_to_f32(bits)).reshape(-1, 16).max(1)
        np.maximum.at(per_block, (np.arange(chunks.size) // 256) % partials.size, chunks)
        np.testing.assert_array_equal(partials, per_block)


AMAX_SEQUENCE = [
    3.0,
    0.5,
    0.0,
    1e-30,
    7e4,
    2.5,
    float("inf"),
    float("nan"),
    1e-44,
    3.4e38,
    0.75,
    12.0,
    0.001,
    100.0,
    0.0,
    5.0,
    5.0,
    0.2,
    9.0,
    1.5,
]


def partials_for(amaxes: list[float], n_partials: int, rng) -> np.ndarray:
    """per step, n_partials values whose max is the step's amax (NaN / Inf placed among finite ones)"""
    rows = []
    for a in amaxes:
        p = rng.uniform(0, 1, n_partials).astype(np.float32) * (np.float32(a) if np.isfinite(a) and a > 0 else 0)
        p[rng.integers(0, n_partials)] = a
        rows.append(p)
    return np.stack(rows).astype(np.float32)


def run_scale(prog, d, fmt, H, margin, delayed, most_recent, pow2, amaxes, n_partials=300):
    partials = partials_for(amaxes, n_partials, np.random.default_rng(len(amaxes) + H))
    run(
        prog,
        "scale",
        d,
        [FMT[fmt][0], H, margin, delayed, most_recent, pow2, len(amaxes), n_partials],
        {"partials": partials},
    )
    metas = out(d, "metas", np.uint8).reshape(len(amaxes), 16)
    return (metas[:, :12].copy().view(np.float32).reshape(-1, 3), metas[:, 12:].copy().view(np.int32).ravel())


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
@pytest.mark.parametrize("fmt", list(FMT))
@pytest.mark.parametrize("margin, pow2", [(0, 0), (1, 0), (3, 0), (0, 1), (2, 1)])
def test_current_scaling(prog, tmp_path, fmt, margin, pow2):
    """scale = (MAX / amax) 2^-margin from this step's amax (1 when it is 0, NaN or Inf; FLT_MAX when the
    division overflows), scale_inv = 1 / scale, amax recorded"""
    f, step = run_scale(prog, tmp_path, fmt, 1, margin, 0, 0, pow2, AMAX_SEQUENCE)
    for i, a in enumerate(AMAX_SEQUENCE):
        s = scale_reference(a, fmt, margin, pow2, 1.0)
        assert f[i, 0] == s, (i, a, f[i, 0], s)
        assert f[i, 1] == np.float32(np.float32(1.0) / s), (i, a)
        assert f[i, 2] == np.float32(a) or (np.isnan(a) and f[i, 2] == 0.0), (i, a, f[i, 2])  # fmaxf drops NaN
    assert (step == 0).all()


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
@pytest.mark.parametrize("fmt", list(FMT))
@pytest.mark.parametrize(
    "H, most_recent, margin, pow2",
    [(1, 0, 0, 0), (4, 0, 0, 0), (16, 0, 1, 0), (16, 1, 0, 0), (5, 0, 2, 1), (1024, 0, 0, 0)],
)
def test_delayed_scaling_is_transformer_engines(prog, tmp_path, fmt, H, most_recent, margin, pow2):
    """against the rolled-history algorithm Transformer Engine documents, step by step"""
    amaxes = [a for a in AMAX_SEQUENCE if not np.isnan(a)] * 2  # a NaN never reaches a partial's max
    f, step = run_scale(prog, tmp_path, fmt, H, margin, 1, most_recent, pow2, amaxes)
    ref = te_delayed_reference(amaxes, H, fmt, margin, bool(most_recent), bool(pow2))
    for i, (s, s_inv) in enumerate(ref):
        assert f[i, 0] == s and f[i, 1] == s_inv, (i, amaxes[i], f[i], s, s_inv)
        assert f[i, 2] == np.float32(amaxes[i])
    np.testing.assert_array_equal(step, np.arange(1, len(amaxes) + 1))
    if H == 4:  # the window really slides: a spike leaves the max H updates later
        spikes = [1.0, 1000.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        g, _ = run_scale(prog, tmp_path / "spike", fmt, H, margin, 1, most_recent, pow2, spikes)
        big = scale_reference(1000.0, fmt, margin, pow2, 1.0)
        assert list(g[:, 0] == big) == [False, True, True, True, True, False, False]


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
@pytest.mark.parametrize("fmt", list(FMT))
def test_current_scaling_pipeline(prog, tmp_path, fmt):
    """the current-amax recipe as a program runs it: amax partials -> scale_update -> cast_transpose reading
    the scale from device memory; the largest |x| lands on (or within one rounding of) MAX 2^-margin"""
    rows, cols, margin = 144, 304, 1
    rng = np.random.default_rng(9)
    bits = random_bf16(rng, rows * cols, spread=9)
    d = tmp_path / "p"
    run(prog, "pipeline", d, [FMT[fmt][0], rows, cols, margin, 0], {"x": bits})
    meta = out(d, "meta", np.float32)
    amax = np.abs(bf16_to_f32(bits)).max()
    s = scale_reference(amax, fmt, margin, False, 1.0)
    assert meta[0] == s and meta[1] == np.float32(1) / s and meta[2] == amax
    want = cast_reference(bits, s, fmt).reshape(rows, cols)
    np.testing.assert_array_equal(out(d, "out", np.uint8).reshape(rows, cols), want)
    np.testing.assert_array_equal(out(d, "out_t", np.uint8).reshape(cols, rows), want.T)
    top = torch.from_numpy(want.ravel().copy()).view(FMT[fmt][1]).float().abs().max().item()
    assert FMT[fmt][2] / 2**margin * (1 - 2**-3) <= top <= FMT[fmt][2] / 2**margin  # no saturation


# ---- refusals, the header as text, ptxas -------------------------------------------------------------
BAD = {
    0: "fp8 cast: n must be a positive multiple of 16",
    1: "fp8 cast: x and out must be 16-byte aligned",
    2: "fp8 cast_transpose: rows and cols must be positive multiples of 16",
    3: "fp8 cast_transpose: x, out and out_t must be 16-byte aligned",
    4: "fp8 scale_update: delayed scaling needs a history of H >= 1",
    5: "fp8 scale_update: needs meta and at least one partial",
    6: "fp8 scale_update: margin must be >= 0",
    7: "fp8 amax: n must be a positive multiple of 16",
}


@pytest.mark.parametrize("which", list(BAD))
def test_refusals(fp8_emu, tmp_path, which):
    """one line naming the problem, cudaErrorInvalidValue (1), nothing launched"""
    proc = run(fp8_emu, "bad", tmp_path, [which], expect_ok=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(BAD[which]), proc.stderr


def test_header_passes_through_jinja_unchanged():
    """the generator's environment leaves fp8.cuh's text as it is (it may be pasted into train.cu)"""
    from llmgen.codegen import environment

    text = (KERNELS / "fp8.cuh").read_text()
    assert environment().from_string(text).render() == text


ARCHS = ["arch=compute_89,code=sm_89", "arch=compute_90a,code=sm_90a"]


@pytest.mark.parametrize("arch", ARCHS, ids=["sm_89", "sm_90a"])
def test_ptxas_no_spills(tmp_path, arch):
    """every kernel of fp8.cuh (both formats, with and without amax): zero spill bytes, no stack frame"""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: the emulated tests above run the same source on the CPU")
    cmd = [
        nvcc,
        "-cubin",
        "-gencode",
        arch,
        "-O3",
        "-Xptxas",
        "-v",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        str(DRIVER),
        "-o",
        str(tmp_path / "fp8.cubin"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows, cur = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\w+)'", line)
        if m:
            cur = {"name": m.group(1)}
            rows.append(cur)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur is not None:
            cur.update(stack=int(m.group(1)), spill=int(m.group(2)) + int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and cur is not None:
            cur["registers"] = int(m.group(1))
    names = " ".join(r["name"] for r in rows)
    for kernel in ("amax_kernel", "cast_kernel", "cast_transpose_kernel", "scale_update_kernel", "meta_init_kernel"):
        assert kernel in names, kernel
    assert len(rows) == 12, [r["name"] for r in rows]  # cast x4, cast_transpose x4, scale_update x2, amax, init
    print()
    for r in rows:
        print(f"{arch.split('=')[-1]:7s} {r['name'][:70]:70s} {r['registers']:3d} registers, spill {r['spill']} B")
        assert r["spill"] == 0 and r["stack"] == 0, r


# ---- one linear layer in FP8: the casts feeding cuBLASLt's FP8 GEMM (emulated) -------------------------
LINEAR = HERE / "fp8_linear.cu"


@pytest.fixture(scope="session")
def linear_emu(tmp_path_factory) -> pathlib.Path:
    if shutil.which("g++") is None or cuda_include() is None:
        pytest.skip("g++ or the CUDA headers not found")
    out = tmp_path_factory.mktemp("fp8_linear") / "fp8_linear"
    cmd = [
        "g++",
        *GXX_FLAGS,
        "-fopenmp",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        f"-I{cuda_include()}",
        str(LINEAR),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def linear_gpu(tmp_path_factory) -> pathlib.Path:
    """fp8_linear.cu built by nvcc against the real cuBLASLt for the visible GPU (sm_89 or newer)"""
    arch, nvcc, inc = gpu_arch(), nvcc_path(), cublas_include()
    if arch is None or nvcc is None or inc is None:
        pytest.skip("needs nvcc, cuBLAS headers and an NVIDIA GPU: the emulated build runs the same program")
    if int(arch[3:]) < 89:
        pytest.skip(f"FP8 GEMMs need sm_89 or newer; the GPU is {arch}")
    out = tmp_path_factory.mktemp("fp8_linear_gpu") / "fp8_linear"
    lib = inc.parent / "lib"
    cmd = [
        nvcc,
        "-O3",
        f"-arch={arch}",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        f"-I{inc}",
        str(LINEAR),
        f"-L{lib}",
        f"-Xlinker=-rpath,{lib}",
        "-lcublasLt",
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture
def linear_prog(request) -> tuple[pathlib.Path, bool]:
    """(program, exact): the emulated build is held to the contract bit for bit, a GPU's to a bound"""
    return (
        (request.getfixturevalue("linear_gpu"), False)
        if request.param == "gpu"
        else (request.getfixturevalue("linear_emu"), True)
    )


def tn_reference(
    a_codes: np.ndarray,
    a_fmt: str,
    sa: np.float32,
    b_codes: np.ndarray,
    b_fmt: str,
    sb: np.float32,
    bias: np.ndarray | None = None,
    c: np.ndarray | None = None,
) -> np.ndarray:
    """the emulated FP8 GEMM's contract in float32: A (m, k), B (n, k) codes (the reduction dimension
    contiguous, as TN needs); exact products summed in k order, times (1 sA) sB, plus bias / C; (n, m) out"""
    a = torch.from_numpy(a_codes.copy()).view(FMT[a_fmt][1]).float().numpy()
    b = torch.from_numpy(b_codes.copy()).view(FMT[b_fmt][1]).float().numpy()
    acc = np.zeros((b.shape[0], a.shape[0]), np.float32)
    for p in range(a.shape[1]):
        acc = acc + b[:, p : p + 1] * a[None, :, p]
    v = np.float32(np.float32(1.0) * sa) * sb * acc
    if c is not None:
        v = v + c
    if bias is not None:
        v = v + bias[None, :]
    return v.astype(np.float32)


@pytest.mark.parametrize("linear_prog", BUILDS, indirect=True)
def test_linear_layer_in_fp8(linear_prog, tmp_path):
    """y = x W^T + b, dX = dY W, dW += dY^T x through cast_transpose (row-major and transposed FP8 copies, the
    current-amax scales) and cuBLASLt's TN FP8 GEMM with the scale inverses: the emulated build bit-exact
    against the contract computed in numpy from torch's casts (a GPU's within its accumulation order), and
    close to the float64 product of the bf16 inputs"""
    N, K, M, margin = 96, 64, 80, 1
    rng = np.random.default_rng(11)
    x, w, dy = (random_bf16(rng, n, spread=3) for n in (N * K, M * K, N * M))
    w = f32_to_bf16(bf16_to_f32(w) * np.float32(0.05))
    dy = f32_to_bf16(bf16_to_f32(dy) * np.float32(1e-4))  # gradients: small, E5M2's range
    b = random_bf16(rng, M)
    dw0 = rng.standard_normal(M * K).astype(np.float32)
    d = tmp_path / "lin"
    prog, exact = linear_prog
    run(prog, "run", d, [N, K, M, margin], {"x": x, "w": w, "dy": dy, "b": b, "dw": dw0})
    metas = out(d, "metas", np.float32).reshape(3, 4)
    q = {}
    for i, (name, bits, fmt, shape) in enumerate(
        (("x", x, "e4m3", (N, K)), ("w", w, "e4m3", (M, K)), ("dy", dy, "e5m2", (N, M)))
    ):
        s = scale_reference(np.abs(bf16_to_f32(bits)).max(), fmt, margin, False, 1.0)
        assert metas[i, 0] == s and metas[i, 1] == np.float32(1) / s, name
        q[name] = (cast_reference(bits, s, fmt).reshape(shape), fmt, metas[i, 1])
    (xq, _, sx), (wq, _, sw), (dyq, _, sdy) = q["x"], q["w"], q["dy"]
    y = bf16_to_f32(out(d, "y", np.uint16)).reshape(N, M)
    dx = bf16_to_f32(out(d, "dx", np.uint16)).reshape(N, K)
    dw = out(d, "dw", np.float32).reshape(M, K)
    want_y = tn_reference(wq, "e4m3", sw, xq, "e4m3", sx, bias=bf16_to_f32(b))  # A = W, B = x
    want_dx = tn_reference(np.ascontiguousarray(wq.T), "e4m3", sw, dyq, "e5m2", sdy)  # A = W^T, B = dY
    want_dw = tn_reference(
        np.ascontiguousarray(xq.T), "e4m3", sx, np.ascontiguousarray(dyq.T), "e5m2", sdy, c=dw0.reshape(M, K)
    )  # A = x^T, B = dY^T
    for name, got, want, k, rnd in (
        ("y", y, want_y, K, 2.0**-8),
        ("dx", dx, want_dx, M, 2.0**-8),
        ("dw", dw, want_dw, N, 2.0**-23),
    ):
        if exact:
            np.testing.assert_array_equal(got, bf16_to_f32(f32_to_bf16(want)) if rnd > 2.0**-23 else want, name)
        else:  # the tensor cores sum in their own order: k fp32 roundings of the running sum, then D's rounding
            bound = rnd * np.abs(want) + k * 2.0**-22 * (np.abs(want) + 1.0)
            assert (np.abs(got - want) <= bound).all(), (name, np.abs(got - want).max())
    # and FP8 is an approximation of the bf16 math: relative Frobenius errors of a few percent
    xf, wf, dyf = (bf16_to_f32(v).astype(np.float64) for v in (x, w, dy))
    xf, wf, dyf = xf.reshape(N, K), wf.reshape(M, K), dyf.reshape(N, M)
    for name, got, true in (
        ("y", y, xf @ wf.T + bf16_to_f32(b)),
        ("dx", dx, dyf @ wf),
        ("dw", dw - dw0.reshape(M, K), dyf.T @ xf),
    ):
        rel = np.linalg.norm(got - true) / np.linalg.norm(true)
        print(f"{name}: relative error against the bf16 inputs' float64 product {rel:.3g}")
        assert rel < (0.06 if name == "y" else 0.12), (name, rel)
