"""LayerNorm and RMSNorm of norms.cuh, run emulated (kernels/norms_test.cu) against numpy float64
references of the same formulas, for fp32 and bf16 storage (bf16 inputs rounded first, so the
reference sees exactly the kernel's inputs) and for row lengths that take every path of the layout:
768 (GPT-2: one warp per row), 1600 (two warps per row, idle vector slots), 4096 (Llama-3 8B: four
warps per row with bf16), 100 (not a multiple of 8: 4-element vectors) and 37 (odd: scalar accesses).
Any C works: the kernels narrow their vectors to what C allows instead of refusing it.

Tolerance table: |got - ref| <= rtol * |ref| + atol * rms(ref).
  tensor             fp32           bf16            why
  out, dx            1e-5, 1e-5     2^-8, 1e-5      fp32 row sums of <= 4096 terms (about 1e-6 relative
                                                    here); bf16 adds one rounding of the output (half an
                                                    ulp, 2^-9) which that error can push to a whole ulp
  mean, rstd         1e-5, 1e-6     1e-5, 1e-6      fp32, from the same (rounded) inputs in both dtypes
  dw, db             1e-5, 1e-5     1e-5, 1e-5      fp32 sums over <= 131 rows of fp32 products
  dbias_prev         1e-5, 1e-6     1e-5, 1e-6      the column sum of dx AS STORED (the contract): the
                                                    reference adds the kernel's own dx in float64
  resid              bit-exact                      T(a + b) with the sum in fp32: numpy does the same
"""

import json

import numpy as np
import pytest

from kern_helpers import check_close, program, read_storage, round_storage, run_program, storage_bits, to_storage

SIZES = [768, 1600, 4096, 100, 37]
ROWS = {768: 67, 1600: 41, 4096: 19, 100: 131, 37: 131}
DTYPES = ["f32", "bf16"]
EPS = 1e-5
TOL = {  # (tensor, dtype) -> (rtol, atol as a fraction of the reference's RMS)
    ("out", "f32"): (1e-5, 1e-5),
    ("out", "bf16"): (2**-8, 1e-5),
    ("dx", "f32"): (1e-5, 1e-5),
    ("dx", "bf16"): (2**-8, 1e-5),
    ("stat", "f32"): (1e-5, 1e-6),
    ("stat", "bf16"): (1e-5, 1e-6),
    ("dw", "f32"): (1e-5, 1e-5),
    ("dw", "bf16"): (1e-5, 1e-5),
    ("dbias", "f32"): (1e-5, 1e-6),
    ("dbias", "bf16"): (1e-5, 1e-6),
}
ACC_DW, ACC_DB, ACC_DBIAS = 1, 2, 4


def close(name, got, ref, kind, dtype):
    rtol, atol = TOL[(kind, dtype)]
    check_close(f"{name} ({dtype})", got, ref, rtol, atol * float(np.sqrt(np.mean(np.square(ref)))) + 1e-30)


def params(N, flags=0, max_blocks=0, has_dres=0, has_dbias=0, in_place=0):
    return {
        "params": np.array([N, flags, max_blocks, has_dres, has_dbias, in_place], np.int32),
        "eps": np.array([EPS], np.float32),
    }


def ln_ref(x, w, b):
    mean = x.mean(1)
    rstd = 1 / np.sqrt(((x - mean[:, None]) ** 2).mean(1) + EPS)
    return (x - mean[:, None]) * rstd[:, None] * w + b, mean, rstd


def rms_ref(x, w):
    rstd = 1 / np.sqrt((x**2).mean(1) + EPS)
    return w * x * rstd[:, None], rstd


def inputs(rng, N, C, dtype):
    x, xv = to_storage(rng.standard_normal((N, C)) * 1.5 + 0.3, dtype)
    w, wv = to_storage(1 + 0.2 * rng.standard_normal(C), dtype)
    b, bv = to_storage(0.1 * rng.standard_normal(C), dtype)
    return (x, xv), (w, wv), (b, bv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", SIZES)
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_forward(tmp_path, kind, C, dtype):
    rng = np.random.default_rng(C)
    N = ROWS[C]
    (x, xv), (w, wv), (b, bv) = inputs(rng, N, C, dtype)
    r = run_program(
        program("norms_test", tmp_path), f"{kind}_fwd:{dtype}:{C}", tmp_path, {**params(N), "x": x, "w": w, "b": b}
    )
    if kind == "ln":
        out, mean, rstd = ln_ref(xv, wv, bv)
        close("mean", r.out("mean", np.float32), mean, "stat", dtype)
    else:
        out, rstd = rms_ref(xv, wv)
    close("rstd", r.out("rstd", np.float32), rstd, "stat", dtype)
    close("out", read_storage(r, "out", dtype, (N, C)), out, "out", dtype)


@pytest.mark.parametrize("in_place", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", SIZES)
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_residual_forward(tmp_path, kind, C, dtype, in_place):
    """resid = T(a + b) bit-exact (also written over a), then the norm of the ROUNDED sum"""
    rng = np.random.default_rng(C + 1)
    N = ROWS[C]
    (a, av), (w, wv), (b, bv) = inputs(rng, N, C, dtype)
    b2, b2v = to_storage(rng.standard_normal((N, C)), dtype)
    r = run_program(
        program("norms_test", tmp_path),
        f"{kind}_fwd_res:{dtype}:{C}",
        tmp_path,
        {**params(N, in_place=in_place), "a": a, "b2": b2, "w": w, "b": b},
    )
    s32 = (av.astype(np.float32) + b2v.astype(np.float32)).astype(np.float64)  # the sum in fp32
    resid = round_storage(s32, dtype)
    np.testing.assert_array_equal(read_storage(r, "resid", dtype, (N, C)), resid)
    if kind == "ln":
        out, mean, rstd = ln_ref(resid, wv, bv)
        close("mean", r.out("mean", np.float32), mean, "stat", dtype)
    else:
        out, rstd = rms_ref(resid, wv)
    close("rstd", r.out("rstd", np.float32), rstd, "stat", dtype)
    close("out", read_storage(r, "out", dtype, (N, C)), out, "out", dtype)


def backward_case(tmp_path, kind, C, dtype, N, full, max_blocks=0, seed=0, env=None, workdir=None):
    """Run the backward (twice in one process). full: with dres (in place), dbias_prev and every
    accumulate flag; otherwise the bare backward overwriting dw (and db)."""
    rng = np.random.default_rng(1000 * C + seed)
    (x, xv), (w, wv), _ = inputs(rng, N, C, dtype)
    dy, dyv = to_storage(rng.standard_normal((N, C)), dtype)
    dres, dresv = to_storage(rng.standard_normal((N, C)) * 0.5, dtype)
    if kind == "ln":
        mean = xv.mean(1).astype(np.float32)
        rstd = (1 / np.sqrt(((xv - mean[:, None]) ** 2).mean(1) + EPS)).astype(np.float32)
    else:
        mean = np.zeros(N, np.float32)
        rstd = (1 / np.sqrt((xv**2).mean(1) + EPS)).astype(np.float32)
    dw0, db0, dp0 = (rng.standard_normal(C).astype(np.float32) for _ in range(3))
    flags = (ACC_DW | ACC_DB | ACC_DBIAS) if full else 0
    ins = {
        **params(N, flags, max_blocks, int(full), int(full), int(full)),
        "dy": dy,
        "x": x,
        "w": w,
        "rstd": rstd,
        "dres": dres if full else np.zeros(0, np.float32),
        "dw0": dw0,
        "db0": db0,
        "dp0": dp0,
    }
    if kind == "ln":
        ins["mean"] = mean
    r = run_program(program("norms_test", tmp_path), f"{kind}_bwd:{dtype}:{C}", workdir or tmp_path, ins, env=env)
    m64, r64 = mean.astype(np.float64)[:, None], rstd.astype(np.float64)[:, None]
    gw = dyv * wv
    if kind == "ln":
        xh = (xv - m64) * r64
        dx = r64 * (gw - gw.mean(1, keepdims=True) - xh * (gw * xh).mean(1, keepdims=True))
    else:
        xh = xv * r64
        dx = r64 * (gw - xh * (gw * xh).mean(1, keepdims=True))
    if full:
        dx = dx + dresv
    ref = {"dx": dx, "dw": (dyv * xh).sum(0) + (dw0 if full else 0), "db": dyv.sum(0) + (db0 if full else 0)}
    return r, ref, dp0


@pytest.mark.parametrize("full", [True, False], ids=["dres-dbias-acc", "bare"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", SIZES)
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_backward(tmp_path, kind, C, dtype, full):
    N = ROWS[C]
    r, ref, dp0 = backward_case(tmp_path, kind, C, dtype, N, full)
    dx = read_storage(r, "dx", dtype, (N, C))
    close("dx", dx, ref["dx"], "dx", dtype)
    close("dw", r.out("dw", np.float32), ref["dw"], "dw", dtype)
    if kind == "ln":
        close("db", r.out("db", np.float32), ref["db"], "dw", dtype)
    if full:  # the preceding projection's bias gradient: the column sums of dx as stored
        close("dbias_prev", r.out("dbias", np.float32), dx.sum(0) + dp0, "dbias", dtype)
    names = ["dx", "dw"] + (["db"] if kind == "ln" else []) + (["dbias"] if full else [])
    for n in names:  # the second launch in the process: counters came back zero, same bits
        a = storage_bits(r, n, dtype) if n == "dx" else r.out(n, np.float32).view(np.uint32)
        b = storage_bits(r, n + "_2", dtype) if n == "dx" else r.out(n + "_2", np.float32).view(np.uint32)
        np.testing.assert_array_equal(a, b, err_msg=f"{n}: the second launch differs")
    assert not r.out("counters", np.uint32).any(), "the launch left a counter non-zero"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["ln", "rms"])
def test_backward_deterministic_across_block_order(tmp_path, kind, dtype):
    """Blocks finish in a different order with 1 and 3 OS threads (so different blocks do the group
    and final sums); 40 blocks make 3 first-level groups. The gradients must be the same bits,
    and equal the reference."""
    C, N = 768, 300
    outs = []
    for threads in ["1", "3"]:
        wd = tmp_path / f"t{threads}"
        r, ref, dp0 = backward_case(
            tmp_path, kind, C, dtype, N, True, max_blocks=40, seed=7, env={"OMP_NUM_THREADS": threads}, workdir=wd
        )
        outs.append(r)
    dx = read_storage(outs[0], "dx", dtype, (N, C))
    close("dx", dx, ref["dx"], "dx", dtype)
    close("dw", outs[0].out("dw", np.float32), ref["dw"], "dw", dtype)
    close("dbias_prev", outs[0].out("dbias", np.float32), dx.sum(0) + dp0, "dbias", dtype)
    grads = ["dw", "dbias"] + (["db"] if kind == "ln" else [])
    for n in grads:
        np.testing.assert_array_equal(
            outs[0].out(n, np.float32).view(np.uint32), outs[1].out(n, np.float32).view(np.uint32), err_msg=n
        )
    np.testing.assert_array_equal(storage_bits(outs[0], "dx", dtype), storage_bits(outs[1], "dx", dtype))
    # 40 blocks: 40 partials and 3 group sums of 2 x 768 (dw, dbias) or 3 x 768 floats
    nacc = 3 if kind == "ln" else 2
    assert outs[0].out("scratch_floats", np.int32)[0] >= (40 + 3) * nacc * C


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [768, 1600, 37])
def test_shared_memory_is_conflict_free(tmp_path, C, dtype):
    """The weights and the column accumulators go through ptx.cuh's counted shared accesses: every
    128-byte phase of them takes one wavefront (consecutive lanes touch consecutive words)."""
    report = tmp_path / "banks.json"
    N = ROWS[C]
    backward_case(
        tmp_path, "ln", C, dtype, N, True, env={"LLMGEN_EMU_BANK_CONFLICTS": str(report)}, workdir=tmp_path / "bwd"
    )
    stats = json.loads(report.read_text())
    seen = 0
    for kernel, kinds in stats.items():
        for kind in ("ld_shared", "st_shared"):
            s = kinds.get(kind)
            if s and s["instructions"]:
                seen += 1
                assert s["wavefronts"] == s["phases"], f"{kernel} {kind}: {s}"
    assert seen >= 2, stats


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_rows_are_refused_in_one_line(tmp_path, dtype):
    """C = 768 rows moved in 16-byte vectors: a base pointer one element off is refused on the host
    with one line naming the launcher and the cause, exit status 1 (no launch, no garbage)"""
    rng = np.random.default_rng(0)
    (x, _), (w, _), (b, _) = inputs(rng, 4, 768, dtype)
    r = run_program(
        program("norms_test", tmp_path),
        f"misaligned:{dtype}:768",
        tmp_path,
        {**params(4), "x": x, "w": w, "b": b},
        expect_ok=False,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        "llmgen kernels: layernorm_forward: a T array is not aligned to the vector width (VEC * sizeof(T) bytes)"
    ]
