"""Atomics across many blocks running on 2 OS threads: integer histograms (shared and global),
float/double/bf16 sums chosen so every order is exact, min/max/CAS/sub/or/exchange, and the
last-block reduction (__threadfence + atomicInc)."""

import numpy as np

from emu_helpers import bf16_to_f32, f32_to_bf16, run_program, programs  # noqa: F401 (fixture)


def test_histograms(programs, tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, size=300_000, dtype=np.int32)
    r = run_program(programs["atomics"], "histogram", tmp_path, {"data": data})
    np.testing.assert_array_equal(r.out("hist", np.uint32), np.bincount(data, minlength=256))
    np.testing.assert_array_equal(r.out("counts", np.int32), np.bincount(data % 16, minlength=16))
    assert r.out("total", np.uint64)[0] == data.astype(np.uint64).sum()


def test_float_double_bf16_sums(programs, tmp_path):
    rng = np.random.default_rng(3)
    n = 100_000
    x = (rng.integers(-64, 64, size=n) * 0.125).astype(np.float32)  # every partial sum is exact
    r = run_program(programs["atomics"], "float_sums", tmp_path, {"data": np.zeros(1, np.int32), "x": x})
    assert r.out("fs", np.float32)[0] == x.astype(np.float64).sum()
    assert r.out("ds", np.float64)[0] == x.astype(np.float64).sum() * 0.25

    # 25,000 bf16 additions of 1 and -2 per slot: exact up to 256, then bf16 rounding sticks.
    # Every element-wise step is float add + round-to-nearest, so the result is order independent.
    def bf16_repeated_add(step: float, times: int) -> np.float32:
        acc = np.float32(0)
        for _ in range(times):
            nxt = bf16_to_f32(f32_to_bf16(np.array([acc + np.float32(step)], np.float32)))[0]
            if nxt == acc:  # stuck: adding `step` now rounds back to acc
                break
            acc = nxt
        return acc

    acc_lo, acc_hi = bf16_repeated_add(1.0, n // 4), bf16_repeated_add(-2.0, n // 4)
    assert (acc_lo, acc_hi) == (256.0, -512.0)
    np.testing.assert_array_equal(r.out("bs", np.float32), [acc_lo, acc_hi] * 4)


def test_min_max_cas(programs, tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(-1_000_000, 1_000_000, size=50_000, dtype=np.int32)
    r = run_program(programs["atomics"], "minmax", tmp_path, {"data": data})
    out = r.out("out", np.int32)
    assert out[0] == data.max() and out[1] == data.min()
    assert out[2] == len(data)  # no lost update in the CAS loop
    assert out[3] == -2 * len(data)
    assert out[4] == 7
    uout = r.out("uout", np.uint32)
    assert uout[0] == (data.astype(np.uint32) * np.uint32(3)).max()
    assert uout[1] == np.bitwise_or.reduce(np.uint32(1) << (data % 32).astype(np.uint32))


def test_last_block_pattern(programs, tmp_path):
    x = np.arange(10_000, dtype=np.float32) % 13
    r = run_program(programs["atomics"], "last_block", tmp_path, {"data": np.zeros(1, np.int32), "x": x})
    blocks = (len(x) + 127) // 128
    assert r.out("result", np.float32)[0] == x.sum()
    np.testing.assert_array_equal(
        r.out("partial", np.float32), [x[i * 128 : (i + 1) * 128].sum() for i in range(blocks)]
    )
    assert r.out("ticket", np.uint32)[0] == blocks  # atomicInc wraps only once old >= limit
