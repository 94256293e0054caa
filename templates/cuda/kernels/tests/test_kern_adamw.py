"""The optimizer kernels of adamw.cuh, run emulated (kernels/adamw_test.cu).

AdamW is checked BIT-EXACT against a numpy model of the same float32 operations (each rounded
once: the kernel uses __fmul_rn & co., so neither nvcc nor g++ may contract them into FMAs) and of
the trainer's stochastic rounding to bf16 (program.cu.j2's round_param: the hash of the global index
and the value's bits), over a flat array with 16-aligned tensors, a tensor whose start is not a
multiple of 4 (the scalar path), gaps that must stay untouched, and ZeRO-1 shards that cross tensor
boundaries (the optimizer state held only for the shard): the shards' updates together are the
unsharded update, bit for bit.

The gradient norm is checked against numpy's float64 sum (fp32 result within one ulp, the double
sum within 1e-12 relative: the order of the double additions differs) and for the same bits over
two launches and over 1 and 3 OS threads."""

import numpy as np
import pytest

from kern_helpers import bf16_to_f32, program, run_program

F = np.float32
HYPER = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, max_norm=1.0)

# (offset, size, decay): llmgen aligns offsets to 16 elements; 1000 + 3 is a deliberately odd start
TENSORS = [(0, 37, 0), (48, 1000, 1), (1051, 640, 1), (1696, 16, 0), (1712, 2 * 2048 + 5, 1), (5824, 777, 0)]
N = 6608  # 5824 + 777 = 6601, then a gap to the end


def mix32(h):
    h = h & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def round_param(p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """program.cu.j2's round_param in numpy: bf16 bits"""
    bits = p.astype(F).view(np.uint32).astype(np.uint64)
    i = idx.astype(np.uint64)
    r = mix32(((i & 0xFFFFFFFF) * 0x9E3779B9) ^ mix32(bits ^ (i >> 32))) & 0xFFFF
    special = (bits & 0x7F800000) == 0x7F800000
    up = np.where(special, bits, (bits + r) & 0xFFFFFFFF)
    return (up >> 16).astype(np.uint16)


def adamw_model(params, master, m, v, grads, norm, lr, t, dtype, shard=(0, N), opt_base=0):
    """the kernel's float32 operations in order; master/m/v indexed from opt_base"""
    params, master, m, v = params.copy(), master.copy(), m.copy(), v.copy()
    h = HYPER
    step_size = F(lr / (1.0 - h["beta1"] ** t))
    bc2 = F(np.sqrt(1.0 - h["beta2"] ** t))
    keep = F(1.0 - lr * h["weight_decay"])
    omb1, b2, omb2, eps = F(1.0 - h["beta1"]), F(h["beta2"]), F(1.0 - h["beta2"]), F(h["eps"])
    clip = F(1.0)
    if norm is not None:
        clip = min(F(h["max_norm"]) / (F(norm) + F(1e-6)), F(1.0))
    for off, size, decay in TENSORS:
        lo, hi = max(off, shard[0]), min(off + size, shard[1])
        if lo >= hi:
            continue
        i = np.arange(lo, hi)
        j = i - opt_base
        g = grads[i] * clip
        p = master[j] * (keep if decay else F(1.0))
        mi = m[j] + omb1 * (g - m[j])
        vi = v[j] * b2 + (omb2 * g) * g
        new = p - step_size * (mi / (np.sqrt(vi) / bc2 + eps))
        assert new.dtype == F and mi.dtype == F and vi.dtype == F
        m[j], v[j], master[j] = mi, vi, new
        params[i] = round_param(new, i) if dtype == "bf16" else new
    return params, master, m, v


def state(rng, dtype):
    master = (rng.standard_normal(N) * 0.05).astype(F)
    params = round_param(master, np.arange(N)) if dtype == "bf16" else master.copy()
    m = (rng.standard_normal(N) * 1e-3).astype(F)
    v = (rng.random(N) * 1e-5).astype(F)
    grads = (rng.standard_normal(N) * 0.3).astype(F)
    return params, master, m, v, grads


def run_adamw(
    tmp_path, name, dtype, params, master, m, v, grads, norm, lr, t, shard=(0, N), opt_base=0, params_is_master=0
):
    h = HYPER
    ins = {
        "params": params,
        "master": master,
        "m": m,
        "v": v,
        "grads": grads,
        "tensors": np.array(TENSORS, np.int64).ravel(),
        "shard": np.array(shard, np.int64),
        "opt_base": np.array([opt_base], np.int64),
        "hyper": np.array([h["beta1"], h["beta2"], h["eps"], h["weight_decay"], h["max_norm"], lr], np.float64),
        "ints": np.array([t, norm is not None, params_is_master], np.int32),
        "norm": np.array([norm if norm is not None else 0.0], F),
    }
    r = run_program(program("adamw_test", tmp_path), f"adamw:{dtype}", tmp_path / name, ins)
    pdt = np.uint16 if dtype == "bf16" else F
    return r, (r.out("params", pdt), r.out("master", F), r.out("m", F), r.out("v", F))


def assert_bits(got, ref, names=("params", "master", "m", "v")):
    for n, a, b in zip(names, got, ref):
        assert a.shape == b.shape, n
        bad = a.view(np.uint16 if a.dtype == np.uint16 else np.uint32) != b.view(
            np.uint16 if b.dtype == np.uint16 else np.uint32
        )
        assert not bad.any(), f"{n}: {int(bad.sum())} elements differ, first at {np.flatnonzero(bad)[0]}"


@pytest.mark.parametrize("norm", [5.0, 0.25, None], ids=["clipped", "unclipped", "no-clip"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_adamw_bit_exact(tmp_path, dtype, norm):
    rng = np.random.default_rng(3)
    params, master, m, v, grads = state(rng, dtype)
    r, got = run_adamw(tmp_path, "run", dtype, params, master, m, v, grads, norm, 6e-4, 7)
    ref = adamw_model(params, master, m, v, grads, norm, 6e-4, 7, dtype)
    assert_bits(got, ref)
    gap = np.ones(N, bool)
    for off, size, _ in TENSORS:
        gap[off : off + size] = False
    assert gap.sum() == N - sum(s for _, s, _ in TENSORS)
    np.testing.assert_array_equal(got[1][gap], master[gap])  # gaps untouched
    assert (got[1] != master).mean() > 0.99 * (1 - gap.mean())  # and the rest really moved
    if dtype == "bf16":  # the bf16 parameters are not round-to-nearest: some round up, some down
        rn = bf16_to_f32(got[0][~gap]).astype(np.float64)
        assert 0.2 < np.mean(rn > got[1][~gap]) < 0.8
    plan = r.out("plan", np.int32)
    segs = r.out("segs", np.int64).reshape(-1, 4)
    assert plan[0] == len(TENSORS)
    np.testing.assert_array_equal(segs[:, :2], np.array(TENSORS)[:, :2])
    blocks = -(-np.array(TENSORS)[:, 1] // 2048)
    np.testing.assert_array_equal(segs[:, 2], np.concatenate([[0], np.cumsum(blocks)[:-1]]))
    assert plan[1] == blocks.sum()


def test_adamw_fp32_in_place(tmp_path):
    """fp32 builds: the parameters are the master weights themselves"""
    rng = np.random.default_rng(4)
    params, master, m, v, grads = state(rng, "f32")
    _, got = run_adamw(tmp_path, "run", "f32", params, master, m, v, grads, 2.0, 1e-3, 1, params_is_master=1)
    ref = adamw_model(params, master, m, v, grads, 2.0, 1e-3, 1, "f32")
    assert_bits(got, ref)
    np.testing.assert_array_equal(got[0], got[1])


@pytest.mark.parametrize("cut", [1712 + 16, 1503], ids=["aligned-cut", "odd-cut"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_adamw_zero1_shards_equal_the_whole(tmp_path, dtype, cut):
    """Two ranks' shards [0, cut) and [cut, N): each holds only its optimizer state (opt_base =
    shard begin); together they write exactly the unsharded update. A cut inside a tensor, and
    one that is not a multiple of 4 (the second shard then takes the scalar path)."""
    rng = np.random.default_rng(5)
    params, master, m, v, grads = state(rng, dtype)
    _, whole = run_adamw(tmp_path, "whole", dtype, params, master, m, v, grads, 3.0, 1e-3, 12)
    parts = []
    for k, (lo, hi) in enumerate([(0, cut), (cut, N)]):
        r, got = run_adamw(
            tmp_path,
            f"shard{k}",
            dtype,
            params,
            master[lo:hi],
            m[lo:hi],
            v[lo:hi],
            grads,
            3.0,
            1e-3,
            12,
            shard=(lo, hi),
            opt_base=lo,
        )
        ref = adamw_model(params, master[lo:hi], m[lo:hi], v[lo:hi], grads, 3.0, 1e-3, 12, dtype, (lo, hi), lo)
        assert_bits(got, ref)
        segs = r.out("segs", np.int64).reshape(-1, 4)
        assert segs[:, 0].min() >= lo and (segs[:, 0] + segs[:, 1]).max() <= hi
        parts.append(got)
    p = np.where(np.arange(N) < cut, parts[0][0], parts[1][0])
    assert_bits([p] + [np.concatenate([a[i], b[i]]) for i in (1, 2, 3) for a, b in [parts]], whole)


@pytest.mark.parametrize("n,nparts", [(100003, 7), (100003, 64), (3, 5), (0, 2)])
def test_grad_norm(tmp_path, n, nparts):
    rng = np.random.default_rng(n)
    g = (rng.standard_normal(n) * 0.01).astype(F)
    g[: min(n, 10)] *= 100
    outs = []
    for threads in ["1", "3"]:
        r = run_program(
            program("adamw_test", tmp_path),
            "gradnorm",
            tmp_path / threads,
            {"grads": g, "nparts": np.array([nparts], np.int32)},
            env={"OMP_NUM_THREADS": threads},
        )
        outs.append(r)
    ref = float(np.sum(g.astype(np.float64) ** 2))
    sumsq, norm = outs[0].out("sumsq", np.float64)[0], outs[0].out("norm", F)[0]
    print(f"sumsq rel {abs(sumsq - ref) / max(ref, 1e-300):.3g}, norm {norm!r} vs {F(np.sqrt(ref))!r}")
    assert abs(sumsq - ref) <= 1e-12 * ref
    assert abs(int(norm.view(np.uint32)) - int(F(np.sqrt(ref)).view(np.uint32))) <= 1
    for r in outs:
        for name, dt in [("sumsq", np.float64), ("norm", F)]:
            assert r.out(name, dt).tobytes() == outs[0].out(name, dt).tobytes()
            assert r.out(name + "_2", dt).tobytes() == outs[0].out(name, dt).tobytes()
