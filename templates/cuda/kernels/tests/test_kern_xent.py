"""Softmax + cross-entropy + dlogits of xent.cuh, run emulated (kernels/xent_test.cu) against a numpy
float64 reference, fp32 and bf16 logits (bf16 rounded first), for vocabularies that take every path:
GPT-2's 50257 padded to 50304, 1001 of 1024 (the last real vector partly padding), 130 of 132 (4-element
vectors) and 37 unpadded (scalar accesses). Any V and Vp work: the vector width follows Vp.

Tolerance table: |got - ref| <= rtol * |ref| + atol.
  tensor      fp32                       bf16                          why
  losses      rtol 1e-6, atol 1e-5       rtol 1e-6, atol 1e-5          fp32 logsumexp of <= 50257 terms from
                                                                       the same (rounded) logits (seen: 1.3e-6)
  dlogits     rtol 1e-5, atol 1e-6*s     rtol 2^-8, atol 1e-6*s        fp32 softmax; bf16 adds one rounding of
                                                                       the output; s = the dloss scale
  padded columns (V..Vp-1): exactly 0. Two launches: the same bits.
"""

import numpy as np
import pytest

from kern_helpers import check_close, program, read_storage, run_program, storage_bits, to_storage

VOCABS = [(50257, 50304), (1001, 1024), (130, 132), (37, 37)]
ROWS = {50304: 6, 1024: 29, 132: 45, 37: 45}
DTYPES = ["f32", "bf16"]


def reference(z, targets, V, scale):
    """z (N, Vp) float64 -> losses, dlogits (padded columns 0); scale per row"""
    zr = z[:, :V]
    m = zr.max(1, keepdims=True)
    e = np.exp(zr - m)
    s = e.sum(1, keepdims=True)
    losses = np.log(s[:, 0]) + m[:, 0] - zr[np.arange(len(z)), targets]
    d = e / s
    d[np.arange(len(z)), targets] -= 1
    out = np.zeros_like(z)
    out[:, :V] = d * scale[:, None]
    return losses, out


def case(rng, V, Vp, dtype, N):
    z = rng.standard_normal((N, Vp)) * 3.0
    z[:, V:] = rng.standard_normal((N, Vp - V)) * 50  # padding: large values that must not leak in
    z[0, :V] += 20 * (np.arange(V) == V - 1)  # a row whose max is the last real column
    logits, zv = to_storage(z, dtype)
    targets = rng.integers(0, V, N).astype(np.int32)
    targets[1 % N] = V - 1
    return logits, zv, targets


@pytest.mark.parametrize("use_dlosses", [0, 1], ids=["dloss-mean", "dlosses-rows"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,Vp", VOCABS)
def test_softmax_xent_backward(tmp_path, V, Vp, dtype, use_dlosses):
    rng = np.random.default_rng(V)
    N = ROWS[Vp]
    logits, zv, targets = case(rng, V, Vp, dtype, N)
    loss_rows = 4 * N + 3  # the mean is over more rows than this chunk holds
    dloss = np.array([0.75], np.float32)
    dlosses = rng.uniform(0.1, 2.0, N).astype(np.float32)
    r = run_program(
        program("xent_test", tmp_path),
        f"xent_bwd:{dtype}:{V}:{Vp}",
        tmp_path,
        {
            "params": np.array([N, loss_rows, use_dlosses, 1], np.int32),
            "logits": logits,
            "targets": targets,
            "dloss": dloss,
            "dlosses": dlosses,
        },
    )
    scale = (
        dlosses.astype(np.float64) if use_dlosses else np.full(N, np.float32(0.75) / np.float32(loss_rows), np.float64)
    )
    losses, dref = reference(zv, targets, V, scale)
    check_close(f"losses ({dtype})", r.out("losses", np.float32), losses, 1e-6, 1e-5)
    d = read_storage(r, "dlogits", dtype, (N, Vp))
    assert not d[:, V:].any(), "a padded column got a non-zero dlogit"
    check_close(f"dlogits ({dtype})", d, dref, 1e-5 if dtype == "f32" else 2**-8, 1e-6 * scale.max())
    np.testing.assert_array_equal(storage_bits(r, "dlogits", dtype), storage_bits(r, "dlogits_2", dtype))
    np.testing.assert_array_equal(
        r.out("losses", np.float32).view(np.uint32), r.out("losses_2", np.float32).view(np.uint32)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,Vp", [(50257, 50304), (37, 37)])
def test_xent_forward_matches_the_fused_losses(tmp_path, V, Vp, dtype):
    """the evaluation kernel (pass 1 only) gives the reference losses, and the fused kernel's bits"""
    rng = np.random.default_rng(V + 5)
    N = ROWS[Vp]
    logits, zv, targets = case(rng, V, Vp, dtype, N)
    ins = {
        "params": np.array([N, N, 0, 0], np.int32),
        "logits": logits,
        "targets": targets,
        "dloss": np.array([1.0], np.float32),
        "dlosses": np.zeros(N, np.float32),
    }
    fwd = run_program(program("xent_test", tmp_path), f"xent_fwd:{dtype}:{V}:{Vp}", tmp_path / "f", ins)
    bwd = run_program(program("xent_test", tmp_path), f"xent_bwd:{dtype}:{V}:{Vp}", tmp_path / "b", ins)
    losses, _ = reference(zv, targets, V, np.ones(N))
    check_close(f"losses ({dtype})", fwd.out("losses", np.float32), losses, 1e-6, 1e-5)
    np.testing.assert_array_equal(fwd.out("losses", np.float32), bwd.out("losses", np.float32))
