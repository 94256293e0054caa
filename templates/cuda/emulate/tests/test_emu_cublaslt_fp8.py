"""cuBLASLt's FP8 matmul under emulation (emu_cublaslt.h), against numpy on the dequantised values.

The math the emulation promises (emu_cublaslt.h's CONTRACT, from cublasLtMatmul()'s documentation):
    D = scale_D * epilogue(alpha * scale_A * scale_B * (A^T B) + beta * scale_C * C + bias)
with exact FP8 products summed in fp32 in k order, alpha*scale_A*scale_B and beta*scale_C formed first in
fp32, AMAX_D = max |D| before scale_D, and an FP8 D rounded to nearest even and saturated. The reference
does exactly those float32 operations in numpy (an FP8 x FP8 product is exact in float32: at most 4 x 4
significant bits, exponents far inside the range), so every case without GELU is compared bit for bit:
D's bytes (bf16 / fp16 rounded by numpy, FP8 by torch's cast of the clamped value, fp32 as is) and the
amax. GELU / DGELU use tanh: within the bf16 rounding of D, as in test_emu_cublaslt.py.

The refusals follow the documented requirements ("To use FP8 kernels": TN layout, CUBLAS_COMPUTE_32F,
the type table, 16-byte alignment) with CUBLAS_STATUS_NOT_SUPPORTED from both the heuristic query (no
algorithm) and the matmul, and INVALID_VALUE for scale pointers on an unsupported combination.

Where a GPU and nvcc are present, the same program is built with nvcc -lcublasLt and runs the same cases
against the same references (the "gpu" parameters; skipped otherwise), with a bound for the tensor cores'
own accumulation order instead of bit equality: that run is what holds the emulation's reading of the
documentation against the library."""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest

from emu_helpers import (
    KERNELS,
    bf16_to_f32,
    cublas_include,
    f32_to_bf16,
    gpu_arch,
    max_report,
    nvcc_path,
    programs,
    run_program,
)  # noqa: F401 (fixture)

torch = pytest.importorskip("torch")

R32F, R16F, R16BF, E4M3, E5M2 = 0, 2, 14, 28, 29  # cudaDataType_t
COMPUTE_32F, COMPUTE_32F_FAST_TF32 = 68, 77
EPI = {
    "DEFAULT": 1,
    "BIAS": 4,
    "GELU": 32,
    "GELU_BIAS": 36,
    "GELU_AUX": 160,
    "GELU_AUX_BIAS": 164,
    "DGELU": 192,
    "DGELU_BGRAD": 208,
    "BGRADA": 256,
    "BGRADB": 512,
}
NOT_SUPPORTED, INVALID_VALUE = 15, 7
FP8 = {E4M3: (torch.float8_e4m3fn, 448.0), E5M2: (torch.float8_e5m2, 57344.0)}
NAMES = {R32F: "fp32", R16F: "fp16", R16BF: "bf16", E4M3: "e4m3", E5M2: "e5m2"}


# ---- values in each type -------------------------------------------------------------------------
def to_raw(x: np.ndarray, t: int) -> np.ndarray:
    """float values -> the type's bytes (rounded to nearest even; FP8 clamped to the finite range first:
    torch's float8 cast does not saturate)"""
    x = np.ascontiguousarray(x, np.float32)
    if t == R32F:
        return x
    if t == R16BF:
        return f32_to_bf16(x)
    if t == R16F:
        return x.astype(np.float16)
    dtype, fmax = FP8[t]
    return torch.from_numpy(x).clamp(-fmax, fmax).to(dtype).view(torch.uint8).numpy()


def from_raw(raw: np.ndarray, t: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw)
    if t == R32F:
        return raw.view(np.float32)
    if t == R16BF:
        return bf16_to_f32(raw.view(np.uint16))
    if t == R16F:
        return raw.view(np.float16).astype(np.float32)
    return torch.from_numpy(raw.view(np.uint8).copy()).view(FP8[t][0]).float().numpy()


def rounded(x: np.ndarray, t: int) -> np.ndarray:
    return from_raw(to_raw(x, t), t)


def tbytes(t: int) -> int:
    return {R32F: 4, R16F: 2, R16BF: 2}.get(t, 1)


def store(mats: list[np.ndarray], ld: int, order: int) -> np.ndarray:
    out = []
    for M in mats:
        rows, cols = M.shape
        buf = np.zeros((cols, ld) if order == 0 else (rows, ld), np.float32)
        if order == 0:
            buf[:, :rows] = M.T
        else:
            buf[:, :cols] = M
        out.append(buf.ravel())
    return np.concatenate(out)


def load(flat: np.ndarray, rows: int, cols: int, ld: int, batch: int) -> list[np.ndarray]:
    span = ld * cols
    return [flat[b * span : (b + 1) * span].reshape(cols, ld)[:, :rows].T for b in range(batch)]


# ---- one case ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    m: int = 48
    n: int = 32
    k: int = 64
    type_a: int = E4M3
    type_b: int = E4M3
    type_c: int = R16BF
    type_d: int = R16BF
    epilogue: str = "DEFAULT"
    alpha: float = 1.0
    beta: float = 0.0
    scale_a: float | None = None
    scale_b: float | None = None
    scale_c: float | None = None
    scale_d: float | None = None
    amax: bool = True
    batch: int = 1
    pad: int = 0  # extra rows in every leading dimension
    transa: int = 1  # the documented TN layout
    transb: int = 0
    order: int = 0
    compute: int = COMPUTE_32F
    bias_type: int = -1
    aux_type: int = -1
    misalign_a: int = 0
    fast_accum: int = 0
    seed: int = 0

    @property
    def bias_t(self) -> int:
        return self.bias_type if self.bias_type >= 0 else (R16F if self.type_c == R16F else R16BF)


def fp8_values(rng, shape, t: int) -> np.ndarray:
    """FP8-representable values spread over many binades (both signs, subnormals included)"""
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-9 if t == E4M3 else -14, 6, shape)
    return rounded(x.astype(np.float32), t) if t in FP8 else rounded(x.astype(np.float32), t)


def run_case(prog, tmp_path, c: Case):
    rng = np.random.default_rng(c.seed + 1000 * c.m + c.k)
    a_shape = (c.m, c.k) if c.transa == 0 else (c.k, c.m)
    b_shape = (c.k, c.n) if c.transb == 0 else (c.n, c.k)
    A = [fp8_values(rng, a_shape, c.type_a) for _ in range(c.batch)]
    B = [fp8_values(rng, b_shape, c.type_b) for _ in range(c.batch)]
    C = [rounded(rng.standard_normal((c.m, c.n)).astype(np.float32) * 4, c.type_c) for _ in range(c.batch)]
    bias_len = c.n if c.epilogue == "BGRADB" else c.m
    bias = [rounded(rng.standard_normal(bias_len).astype(np.float32), c.bias_t) for _ in range(c.batch)]
    aux_t = c.aux_type if c.aux_type >= 0 else c.type_d
    aux_ld = (c.m + 7) // 8 * 8 + 8
    aux_in = [
        rounded(rng.standard_normal((c.m, c.n)).astype(np.float32) * 2, aux_t if aux_t in NAMES else R16BF)
        for _ in range(c.batch)
    ]
    ld = lambda shape: (shape[0] if c.order == 0 else shape[1]) + c.pad  # noqa: E731
    lda, ldb, ldc = ld(a_shape), ld(b_shape), ld((c.m, c.n))
    params = np.array(
        [
            c.m,
            c.n,
            c.k,
            c.transa,
            c.transb,
            EPI[c.epilogue],
            lda,
            ldb,
            ldc,
            ldc,
            c.batch,
            c.type_a,
            c.type_b,
            c.type_c,
            c.type_d,
            c.bias_type,
            c.aux_type,
            aux_ld,
            c.order,
            c.compute,
            c.scale_a is not None,
            c.scale_b is not None,
            c.scale_c is not None,
            c.scale_d is not None,
            int(c.amax),
            c.misalign_a,
            c.fast_accum,
        ],
        np.int64,
    )
    scalars = np.array(
        [c.alpha, c.beta] + [1.0 if s is None else s for s in (c.scale_a, c.scale_b, c.scale_c, c.scale_d)], np.float32
    )
    inputs = {
        "params": params,
        "scalars": scalars,
        "A": to_raw(store(A, lda, c.order), c.type_a),
        "B": to_raw(store(B, ldb, c.order), c.type_b),
        "C": to_raw(store(C, ldc, c.order), c.type_c),
        "bias": to_raw(np.concatenate(bias), c.bias_t),
        "aux": to_raw(store(aux_in, aux_ld, 0), aux_t if aux_t in NAMES else R16BF),
    }
    r = run_program(prog, "matmul", tmp_path, inputs)
    return r, dict(A=A, B=B, C=C, bias=bias, aux=aux_in, lds=(lda, ldb, ldc), aux_ld=aux_ld)


def reference(c: Case, x: dict) -> dict:
    """the contract's float32 operations, batch by batch (GELU / DGELU in float64 from torch)"""
    f32 = np.float32
    al = f32(f32(c.alpha) * f32(1.0 if c.scale_a is None else c.scale_a)) * f32(1.0 if c.scale_b is None else c.scale_b)
    be = f32(c.beta) * f32(1.0 if c.scale_c is None else c.scale_c)
    out = {"D": [], "aux": [], "bgrad": [], "absprod": []}
    amax = f32(0)
    for b in range(c.batch):
        opA = x["A"][b] if c.transa == 0 else x["A"][b].T
        opB = x["B"][b] if c.transb == 0 else x["B"][b].T
        acc = np.zeros((c.m, c.n), np.float32)
        for p in range(c.k):  # exact products, fp32 sums in k order
            acc = acc + opA[:, p : p + 1] * opB[p : p + 1, :]
        v = al * acc
        if be != 0:
            v = v + be * x["C"][b]
        if EPI[c.epilogue] & 4:
            v = v + x["bias"][b][:, None]
        v = v.astype(np.float32)
        if c.epilogue in ("GELU_AUX", "GELU_AUX_BIAS"):
            out["aux"].append(v.copy())
        if EPI[c.epilogue] & 32:
            t = torch.tensor(v, dtype=torch.float64)
            v = torch.nn.functional.gelu(t, approximate="tanh").numpy()
        if EPI[c.epilogue] & 64:
            t = torch.tensor(x["aux"][b], dtype=torch.float64, requires_grad=True)
            torch.nn.functional.gelu(t, approximate="tanh").sum().backward()
            v = v * t.grad.numpy()
        if c.epilogue == "DGELU_BGRAD":
            out["bgrad"].append(v.sum(1))
        amax = max(amax, f32(np.abs(v).max()))
        if c.scale_d is not None:
            v = v.astype(np.float32) * f32(c.scale_d)
        out["D"].append(v)
        out["absprod"].append(np.abs(al) * (np.abs(opA.astype(np.float64)) @ np.abs(opB)))
    out["amax"] = amax
    return out


def check(prog, tmp_path, c: Case, exact: bool):
    r, x = run_case(prog, tmp_path, c)
    status = list(r.out("status", np.int32))
    assert status == [0, 1, 0], f"statuses (heuristic, found, matmul): {status}"
    ref = reference(c, x)
    ldc = x["lds"][2]
    D = load(from_raw(r.out("D", np.uint8), c.type_d), c.m, c.n, ldc, c.batch)
    smooth = EPI[c.epilogue] & (32 | 64)
    for b in range(c.batch):
        want = ref["D"][b]
        if exact and not smooth:
            np.testing.assert_array_equal(to_raw(D[b], c.type_d), to_raw(want, c.type_d), err_msg=f"D[{b}] bytes")
        else:  # half an ulp of D's type (relative), plus fp32 sums in another order on a GPU
            u = {R32F: 2.0**-23, R16F: 2.0**-10, R16BF: 2.0**-8}.get(c.type_d, 2.0**-3 if c.type_d == E4M3 else 2.0**-2)
            sd = 1.0 if c.scale_d is None else c.scale_d
            if c.type_d in FP8:  # saturated like D; it can round either way when the fp32 value moved
                want = np.clip(want, -FP8[c.type_d][1], FP8[c.type_d][1])
            tol = (2 if c.type_d in FP8 else 1) * u * np.abs(want) + 2.0**-22 * c.k * ref["absprod"][b] * abs(sd)
            tol = tol + {E4M3: 2.0**-9, E5M2: 2.0**-16}.get(c.type_d, 0.0)  # the smallest subnormal step
            d = max_report(f"D[{b}]", D[b], want)
            bad = np.abs(D[b] - want) > tol
            assert not bad.any(), f"D[{b}]: {bad.sum()} outside the bound (max diff {d:.3g})"
    if c.amax:
        got = r.out("amax", np.float32)[0]
        if exact and not smooth:
            assert got == ref["amax"], (got, ref["amax"])
        else:
            assert abs(got - ref["amax"]) <= 1e-2 * ref["amax"], (got, ref["amax"])
    if ref["aux"]:
        aux = load(from_raw(r.out("aux_out", np.uint8), c.type_d), c.m, c.n, x["aux_ld"], c.batch)
        for b in range(c.batch):
            np.testing.assert_array_equal(to_raw(aux[b], c.type_d), to_raw(ref["aux"][b], c.type_d))
    if ref["bgrad"]:
        g = from_raw(r.out("bgrad", np.uint8), c.bias_t).reshape(c.batch, -1)
        for b in range(c.batch):
            want = ref["bgrad"][b]
            assert np.all(np.abs(g[b] - want) <= 2.0**-8 * np.abs(want) + 1e-3 * np.abs(ref["D"][b]).sum(1)), b
    return r


def refused(prog, tmp_path, c: Case) -> list[int]:
    r, _ = run_case(prog, tmp_path, c)
    return list(r.out("status", np.int32))


# ---- the two builds ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lt8_gpu(tmp_path_factory):
    """kernels/cublaslt_fp8.cu built by nvcc against the real cuBLASLt, for the visible GPU"""
    arch, nvcc, inc = gpu_arch(), nvcc_path(), cublas_include()
    if arch is None or nvcc is None or inc is None:
        pytest.skip("needs nvcc, cuBLAS headers and an NVIDIA GPU: the emulated build runs the same cases")
    if int(arch[3:]) < 89:
        pytest.skip(f"FP8 matmuls need sm_89 or newer; the GPU is {arch}")
    out = tmp_path_factory.mktemp("lt8_gpu") / "cublaslt_fp8"
    lib = inc.parent / "lib"
    cmd = [
        nvcc,
        "-O2",
        f"-arch={arch}",
        f"-I{KERNELS.parent.parent}",
        f"-I{KERNELS}",
        f"-I{inc}",
        str(KERNELS / "cublaslt_fp8.cu"),
        f"-L{lib}",
        f"-Xlinker=-rpath,{lib}",
        "-lcublasLt",
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


BUILDS = ["emulated", "gpu"]


@pytest.fixture
def lt8(request, programs):
    return (request.getfixturevalue("lt8_gpu"), False) if request.param == "gpu" else (programs["cublaslt_fp8"], True)


# ---- cases ----------------------------------------------------------------------------------------
TYPE_CASES = [  # (A, B, C, D): every row of the documented table
    (E4M3, E4M3, R16BF, R16BF),
    (E4M3, E4M3, R16BF, E4M3),
    (E4M3, E4M3, R16F, R16F),
    (E4M3, E4M3, R16F, E4M3),
    (E4M3, E4M3, R32F, R32F),
    (E4M3, E5M2, R16BF, R16BF),
    (E4M3, E5M2, R16BF, E4M3),
    (E4M3, E5M2, R16BF, E5M2),
    (E4M3, E5M2, R16F, R16F),
    (E4M3, E5M2, R16F, E5M2),
    (E4M3, E5M2, R32F, R32F),
    (E5M2, E4M3, R16BF, R16BF),
    (E5M2, E4M3, R16BF, E5M2),
    (E5M2, E4M3, R16F, E4M3),
    (E5M2, E4M3, R32F, R32F),
]


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
@pytest.mark.parametrize("types", TYPE_CASES, ids=lambda t: "x".join(NAMES[v] for v in t))
def test_type_table_with_scales_bias_and_amax(lt8, tmp_path, types):
    """A and B scales (not powers of two), the bias epilogue, AMAX_D, and for an FP8 D its scale"""
    prog, exact = lt8
    ta, tb, tc, td = types
    c = Case(
        type_a=ta,
        type_b=tb,
        type_c=tc,
        type_d=td,
        epilogue="BIAS",
        scale_a=0.37,
        scale_b=1.9,
        scale_d=0.013 if td in FP8 else None,
    )
    check(prog, tmp_path, c, exact)


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
@pytest.mark.parametrize("td", [R16BF, E4M3], ids=["bf16", "e4m3"])
def test_beta_and_c_scale(lt8, tmp_path, td):
    """D = alpha sA sB A^T B + beta sC C, C in bf16 while D is bf16 or E4M3 (C and D types may differ)"""
    prog, exact = lt8
    check(
        prog,
        tmp_path,
        Case(
            type_d=td, alpha=0.5, beta=-1.5, scale_a=2.0, scale_b=0.25, scale_c=3.0, scale_d=4.0 if td in FP8 else None
        ),
        exact,
    )


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
def test_the_three_training_gemms(lt8, tmp_path):
    """forward out = W x (E4M3 x E4M3), dX = W^T dout (E4M3 x E5M2), dW = x^T dout (E4M3 x E5M2 on the
    transposed copies): TN, bf16 out, the scale inverses as A/B scales, with llm.c-like shapes"""
    prog, exact = lt8
    BT, Cin, OC = 64, 48, 80
    check(
        prog,
        tmp_path / "fwd",
        Case(m=OC, n=BT, k=Cin, type_a=E4M3, type_b=E4M3, epilogue="BIAS", scale_a=1 / 96.0, scale_b=1 / 7.5),
        exact,
    )
    check(
        prog,
        tmp_path / "dx",
        Case(m=Cin, n=BT, k=OC, type_a=E4M3, type_b=E5M2, scale_a=1 / 96.0, scale_b=1 / 4096.0),
        exact,
    )
    check(
        prog,
        tmp_path / "dw",
        Case(
            m=Cin,
            n=OC,
            k=BT,
            type_a=E4M3,
            type_b=E5M2,
            type_c=R32F,
            type_d=R32F,
            beta=1.0,
            scale_a=1 / 7.5,
            scale_b=1 / 4096.0,
        ),
        exact,
    )


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
@pytest.mark.parametrize("epilogue", ["GELU", "GELU_BIAS", "GELU_AUX_BIAS", "DGELU", "DGELU_BGRAD"])
def test_gelu_epilogues(lt8, tmp_path, epilogue):
    prog, exact = lt8
    check(prog, tmp_path, Case(epilogue=epilogue, scale_a=0.5, scale_b=0.125), exact)


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
def test_gelu_into_fp8_output(lt8, tmp_path):
    prog, exact = lt8
    check(prog, tmp_path, Case(epilogue="GELU_BIAS", type_d=E4M3, scale_a=0.5, scale_b=0.25, scale_d=0.05), exact)


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
def test_large_tiled_batched_padded(lt8, tmp_path):
    """shapes crossing the emulation's 64 x 128 output tiles on both OpenMP threads; 2 strided batches
    (amax over both); leading dimensions padded by 16"""
    prog, exact = lt8
    check(
        prog,
        tmp_path,
        Case(
            m=160,
            n=144,
            k=96,
            batch=2,
            pad=16,
            type_b=E5M2,
            type_d=E5M2,
            scale_a=0.75,
            scale_b=3.0,
            scale_d=0.0625,
            epilogue="BIAS",
        ),
        exact,
    )


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
def test_saturation_and_no_amax(lt8, tmp_path):
    """a D scale far too large: every FP8 output saturates to +-448 (no NaN); without AMAX_D_POINTER
    nothing is written to it"""
    prog, exact = lt8
    r = check(prog, tmp_path, Case(type_d=E4M3, scale_d=1e6, amax=False), exact)
    D = from_raw(r.out("D", np.uint8), E4M3)
    assert np.isin(np.abs(D), [0.0, 448.0]).all() and (np.abs(D) == 448).mean() > 0.9
    assert r.out("amax", np.float32)[0] == -1.0


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
def test_fast_accum_is_accepted(lt8, tmp_path):
    prog, exact = lt8
    check(prog, tmp_path, Case(fast_accum=1, scale_a=2.0), exact)


REFUSALS = {  # name: (case, (heuristic status, matmul status)), NOT_SUPPORTED unless said
    "NN layout": (Case(transa=0), NOT_SUPPORTED),
    "NT layout": (Case(transa=0, transb=1), NOT_SUPPORTED),
    "TT layout": (Case(transb=1), NOT_SUPPORTED),
    "E5M2 x E5M2": (Case(type_a=E5M2, type_b=E5M2), NOT_SUPPORTED),
    "E4M3 x bf16": (Case(type_b=R16BF), NOT_SUPPORTED),
    "E4M3 x E4M3 -> E5M2": (Case(type_d=E5M2), NOT_SUPPORTED),
    "C fp32, D bf16": (Case(type_c=R32F), NOT_SUPPORTED),
    "C bf16, D fp16": (Case(type_d=R16F), NOT_SUPPORTED),
    "k not a multiple of 16": (Case(k=40), NOT_SUPPORTED),
    "bf16 D rows not a multiple of 8": (Case(m=44), NOT_SUPPORTED),
    "FP8 D rows not a multiple of 16": (Case(m=40, type_d=E4M3), NOT_SUPPORTED),
    "lda not a multiple of 16": (Case(pad=8), NOT_SUPPORTED),
    "ROW order": (Case(order=1, transa=0, transb=1), NOT_SUPPORTED),
    "compute 32F_FAST_TF32": (Case(compute=COMPUTE_32F_FAST_TF32), NOT_SUPPORTED),
    "BGRADB": (Case(epilogue="BGRADB"), NOT_SUPPORTED),
    "GELU_AUX into an FP8 D": (Case(epilogue="GELU_AUX", type_d=E4M3), NOT_SUPPORTED),
    "bias type fp32": (Case(epilogue="BIAS", bias_type=R32F), NOT_SUPPORTED),
    "D scale with a bf16 D": (Case(scale_d=2.0), INVALID_VALUE),
}


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
@pytest.mark.parametrize("name", list(REFUSALS))
def test_documented_refusals(lt8, tmp_path, name):
    """both the heuristic query (no algorithm) and the matmul refuse, so a program's bf16 fallback runs"""
    prog, _ = lt8
    c, st = REFUSALS[name]
    status = refused(prog, tmp_path, c)
    assert status == [st, 0, st], f"{name}: (heuristic, found, matmul) = {status}"


@pytest.mark.parametrize("lt8", BUILDS, indirect=True)
def test_misaligned_pointer_is_refused_by_the_matmul(lt8, tmp_path):
    """the heuristic sees no pointers; cublasLtMatmul refuses an A that is not 16-byte aligned"""
    prog, _ = lt8
    status = refused(prog, tmp_path, Case(misalign_a=8))
    assert status[2] == NOT_SUPPORTED and status[:2] == [0, 1], status


def test_scale_pointers_without_fp8_are_invalid(programs, tmp_path):
    """a bf16 GEMM given an A scale: INVALID_VALUE (the documented answer to an unsupported combination);
    a bf16 GEMM writing an FP8 D: NOT_SUPPORTED"""
    prog = programs["cublaslt_fp8"]
    assert refused(prog, tmp_path / "s", Case(type_a=R16BF, type_b=R16BF, scale_a=2.0, amax=False))[2] == INVALID_VALUE
    assert refused(prog, tmp_path / "a", Case(type_a=R16BF, type_b=R16BF, amax=True))[2] == INVALID_VALUE
    assert refused(prog, tmp_path / "d", Case(type_a=R16BF, type_b=R16BF, type_d=E4M3, amax=False))[2] == NOT_SUPPORTED
    # and the same bf16 GEMM without them still runs (the behaviour before FP8 was added)
    st = refused(prog, tmp_path / "ok", Case(type_a=R16BF, type_b=R16BF, amax=False))
    assert st == [0, 1, 0]
