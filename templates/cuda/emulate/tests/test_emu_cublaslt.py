"""cuBLASLt under emulation: every supported epilogue in fp32 and bf16, transposes, padded leading
dimensions, ROW order, strided batches, in-place accumulation (C == D, beta = 1), a fp32 bias with
bf16 output, TF32 input rounding, and argument checking. References: float64 numpy GEMM; GELU and
its derivative from torch (tanh approximation, derivative by autograd in float64)."""

import dataclasses

import numpy as np
import pytest

from emu_helpers import bf16_to_f32, f32_to_bf16, max_report, run_program, programs  # noqa: F401 (fixture)

torch = pytest.importorskip("torch")

R32F, R16BF = 0, 14  # cudaDataType_t
COMPUTE_32F, COMPUTE_32F_FAST_TF32 = 68, 77
EPI = {
    "DEFAULT": 1,
    "BIAS": 4,
    "GELU": 32,
    "GELU_AUX": 160,
    "GELU_BIAS": 36,
    "GELU_AUX_BIAS": 164,
    "DGELU": 192,
    "DGELU_BGRAD": 208,
    "BGRADA": 256,
    "BGRADB": 512,
}


@dataclasses.dataclass
class Case:
    m: int = 24
    n: int = 20
    k: int = 40
    transa: int = 1  # llm.c's forward: A = weight, transposed
    transb: int = 0
    epilogue: str = "DEFAULT"
    dtype: int = R32F  # A, B, C, D
    pad: int = 0  # extra rows in every leading dimension
    batch: int = 1
    alpha: float = 1.0
    beta: float = 0.0
    bias_type: int = -1
    aux_type: int = -1
    compute: int = COMPUTE_32F
    order: int = 0  # 0 column-major, 1 row-major
    inplace: bool = False
    aux_ld: int | None = None


def quantize(x: np.ndarray, dtype: int) -> np.ndarray:
    return x.astype(np.float32) if dtype == R32F else bf16_to_f32(f32_to_bf16(x.astype(np.float32)))


def raw(x: np.ndarray, dtype: int) -> np.ndarray:
    return x.astype(np.float32) if dtype == R32F else f32_to_bf16(x.astype(np.float32))


def from_raw(path_arr: np.ndarray, dtype: int) -> np.ndarray:
    return path_arr.view(np.float32) if dtype == R32F else bf16_to_f32(path_arr.view(np.uint16))


def store(mats: list[np.ndarray], ld: int, order: int) -> np.ndarray:
    """Batch of (rows, cols) matrices -> flat buffer: column-major (or row-major) with ld."""
    out = []
    for M in mats:
        rows, cols = M.shape
        if order == 0:
            buf = np.zeros((cols, ld), np.float32)
            buf[:, :rows] = M.T
        else:
            buf = np.zeros((rows, ld), np.float32)
            buf[:, :cols] = M
        out.append(buf.ravel())
    return np.concatenate(out)


def load(flat: np.ndarray, rows: int, cols: int, ld: int, order: int, batch: int) -> list[np.ndarray]:
    span = ld * cols if order == 0 else ld * rows
    mats = []
    for b in range(batch):
        part = flat[b * span : (b + 1) * span]
        mats.append(part.reshape(cols, ld)[:, :rows].T if order == 0 else part.reshape(rows, ld)[:, :cols])
    return mats


def gelu_and_grad(x: np.ndarray):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.gelu(t, approximate="tanh")
    y.sum().backward()
    return y.detach().numpy(), t.grad.numpy()


def tf32(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def run_case(programs, tmp_path, c: Case):
    rng = np.random.default_rng(hash((c.m, c.n, c.k, c.epilogue, c.dtype, c.transa, c.transb)) % 2**32)
    ep = EPI[c.epilogue]
    a_shape = (c.m, c.k) if c.transa == 0 else (c.k, c.m)
    b_shape = (c.k, c.n) if c.transb == 0 else (c.n, c.k)
    A = [quantize(rng.standard_normal(a_shape), c.dtype) for _ in range(c.batch)]
    B = [quantize(rng.standard_normal(b_shape), c.dtype) for _ in range(c.batch)]
    C = [quantize(rng.standard_normal((c.m, c.n)), c.dtype) for _ in range(c.batch)]
    bias_t = c.bias_type if c.bias_type >= 0 else c.dtype
    aux_t = c.aux_type if c.aux_type >= 0 else c.dtype
    bias_len = c.n if c.epilogue == "BGRADB" else c.m
    bias = [quantize(rng.standard_normal(bias_len), bias_t) for _ in range(c.batch)]
    aux_ld = c.aux_ld if c.aux_ld is not None else (c.m + 7) // 8 * 8 + 8
    aux_in = [quantize(rng.standard_normal((c.m, c.n)) * 2, aux_t) for _ in range(c.batch)]
    ld = lambda shape: (shape[0] if c.order == 0 else shape[1]) + c.pad  # noqa: E731
    lda, ldb, ldc = ld(a_shape), ld(b_shape), ld((c.m, c.n))
    params = np.array(
        [
            c.m,
            c.n,
            c.k,
            c.transa,
            c.transb,
            ep,
            lda,
            ldb,
            ldc,
            ldc,
            c.batch,
            c.dtype,
            c.dtype,
            aux_ld,
            c.bias_type,
            c.aux_type,
            c.compute,
            c.order,
            int(c.inplace),
        ],
        np.int64,
    )
    inputs = {
        "params": params,
        "scalars": np.array([c.alpha, c.beta], np.float32),
        "A": raw(store(A, lda, c.order), c.dtype),
        "B": raw(store(B, ldb, c.order), c.dtype),
        "C": raw(store(C, ldc, c.order), c.dtype),
        "bias": raw(np.concatenate(bias), bias_t),
        "aux": raw(store(aux_in, max(aux_ld, c.m), 0), aux_t),
    }
    r = run_program(programs["cublaslt"], "matmul", tmp_path, inputs)
    status = r.out("status", np.int32)

    # reference, batch by batch, in float64
    refs = {"D": [], "aux_out": [], "bgrad": []}
    for b in range(c.batch):
        opA = A[b] if c.transa == 0 else A[b].T
        opB = B[b] if c.transb == 0 else B[b].T
        if c.compute == COMPUTE_32F_FAST_TF32:
            opA, opB = tf32(opA), tf32(opB)
        v = c.alpha * (opA.astype(np.float64) @ opB) + c.beta * C[b]
        if ep & 4:
            v = v + bias[b][:, None]
        if ep in (EPI["GELU_AUX"], EPI["GELU_AUX_BIAS"]):
            refs["aux_out"].append(v)
        if ep & 32:
            v = gelu_and_grad(v)[0]
        if ep & 64:
            v = v * gelu_and_grad(aux_in[b])[1]
        refs["D"].append(v)
        if ep == EPI["DGELU_BGRAD"]:
            refs["bgrad"].append(v.sum(1))
        if ep == EPI["BGRADA"]:
            refs["bgrad"].append(opA.astype(np.float64).sum(1))
        if ep == EPI["BGRADB"]:
            refs["bgrad"].append(opB.astype(np.float64).sum(0))
    return r, status, refs, aux_ld, (lda, ldb, ldc), bias_t, aux_t


def assert_close(name, got, ref, dtype, k):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = np.sqrt(k) * 4.0  # typical |value| of a length-k dot product of N(0,1) entries, generously
    d = max_report(name, got, ref)
    if dtype == R32F:
        tol = 2e-6 * scale + 2e-6 * np.abs(ref)
    else:  # one rounding to bf16 (half an ulp) plus fp32 accumulation error
        tol = 2.0**-8 * np.abs(ref) + 2e-6 * scale
    bad = np.abs(got - ref) > tol
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.size} outside tolerance (max diff {d:.3g})"


def check(programs, tmp_path, c: Case):
    r, status, refs, aux_ld, (lda, ldb, ldc), bias_t, aux_t = run_case(programs, tmp_path, c)
    assert list(status) == [0, 1], f"cublasLt status {status}"
    D = load(from_raw(r.out("D", np.uint8), c.dtype), c.m, c.n, ldc, c.order, c.batch)
    for b in range(c.batch):
        assert_close(f"D[{b}]", D[b], refs["D"][b], c.dtype, c.k)
    if refs["aux_out"]:
        aux = load(from_raw(r.out("aux_out", np.uint8), aux_t), c.m, c.n, aux_ld, 0, c.batch)
        for b in range(c.batch):
            assert_close(f"aux[{b}]", aux[b], refs["aux_out"][b], aux_t, c.k)
    if refs["bgrad"]:
        g = from_raw(r.out("bgrad", np.uint8), bias_t).reshape(c.batch, -1)
        for b in range(c.batch):
            assert_close(f"bgrad[{b}]", g[b], refs["bgrad"][b], bias_t, c.k * c.n)
    return r


@pytest.mark.parametrize("dtype", [R32F, R16BF], ids=["fp32", "bf16"])
@pytest.mark.parametrize("epilogue", list(EPI))
def test_epilogues(programs, tmp_path, epilogue, dtype):
    check(programs, tmp_path, Case(epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("dtype", [R32F, R16BF], ids=["fp32", "bf16"])
@pytest.mark.parametrize("transa,transb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_transposes_padding_alpha_beta(programs, tmp_path, transa, transb, dtype):
    check(programs, tmp_path, Case(transa=transa, transb=transb, dtype=dtype, pad=3, alpha=0.75, beta=-0.5))


@pytest.mark.parametrize("epilogue", ["GELU_AUX_BIAS", "DGELU_BGRAD", "BGRADB"])
def test_large_tiled_parallel(programs, tmp_path, epilogue):
    """Shapes that cross the 64 x 128 output tiles and run the GEMM on both OpenMP threads."""
    check(programs, tmp_path, Case(m=150, n=131, k=70, epilogue=epilogue, dtype=R16BF))


def test_llmc_training_triple(programs, tmp_path):
    """llm.c's use: forward out = inp W^T + b with GELU (aux = pre-activation); backward
    dinp = W^T-side with DGELU; dW += inp^T dout with the bias gradient from BGRADB."""
    BT, C, OC = 48, 32, 40
    check(programs, tmp_path / "fwd", Case(m=OC, n=BT, k=C, transa=1, transb=0, epilogue="GELU_AUX_BIAS", dtype=R16BF))
    check(programs, tmp_path / "dinp", Case(m=C, n=BT, k=OC, transa=0, transb=0, epilogue="DGELU", dtype=R16BF))
    check(
        programs,
        tmp_path / "dw",
        Case(m=C, n=OC, k=BT, transa=0, transb=1, epilogue="BGRADB", dtype=R16BF, inplace=True, beta=1.0),
    )


def test_row_order(programs, tmp_path):
    check(programs, tmp_path, Case(order=1, pad=2, epilogue="BIAS"))


@pytest.mark.parametrize("epilogue", ["GELU_AUX_BIAS", "DGELU_BGRAD", "BGRADB", "DEFAULT"])
def test_strided_batches(programs, tmp_path, epilogue):
    check(programs, tmp_path, Case(batch=3, epilogue=epilogue, beta=0.5))


def test_inplace_accumulate(programs, tmp_path):
    check(programs, tmp_path, Case(inplace=True, beta=1.0, dtype=R16BF))


def test_fp32_bias_with_bf16_output(programs, tmp_path):
    check(programs, tmp_path, Case(epilogue="GELU_AUX_BIAS", dtype=R16BF, bias_type=R32F, aux_type=R32F))


def test_tf32_rounds_inputs(programs, tmp_path):
    c = Case(m=32, n=32, k=256, compute=COMPUTE_32F_FAST_TF32)
    tf = check(programs, tmp_path / "tf32", c)
    full = check(programs, tmp_path / "fp32", dataclasses.replace(c, compute=COMPUTE_32F))
    # same inputs: the tf32 product must differ from the full fp32 one by tf32's input rounding
    assert np.abs(tf.out("D", np.float32) - full.out("D", np.float32)).max() > 1e-3


def test_bad_aux_ld_is_invalid_value(programs, tmp_path):
    _, status, *_ = run_case(programs, tmp_path, Case(epilogue="GELU_AUX", aux_ld=8))  # < m = 24
    assert status[0] == 7  # CUBLAS_STATUS_INVALID_VALUE


def test_attribute_size_is_checked(programs, tmp_path):
    r = run_program(programs["cublaslt"], "attr_size", tmp_path)
    np.testing.assert_array_equal(r.out("status", np.int32), [7, 0])


def test_heuristic_candidates_alignment_and_capture(programs, tmp_path):
    """The heuristic returns up to 3 candidates (8 requested), all giving the same D; an algorithm chosen
    under the default 256-byte alignment preference refuses an A one float off (NOT_SUPPORTED, 15), one
    chosen with MIN_ALIGNMENT_A_BYTES = 4 accepts it but still refuses a misaligned B; a zeroed algorithm
    carries no requirement; a captured GEMM runs only at cudaGraphLaunch, with the alpha and descriptor of
    capture time."""
    r = run_program(programs["cublaslt"], "algos", tmp_path)
    found, s0, s1, s2, same, mis_a, pref_a, mis_b, zeroed, untouched, replayed = r.out("status", np.int32)
    assert found == 3 and (s0, s1, s2) == (0, 0, 0) and same == 1
    assert (mis_a, pref_a, mis_b, zeroed) == (15, 0, 15, 0)
    assert untouched == 1 and replayed == 1
    assert "PREF_MIN_ALIGNMENT_A_BYTES" in r.stderr
