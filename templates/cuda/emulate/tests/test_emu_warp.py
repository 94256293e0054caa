"""Warp-level emulation: shuffle softmax, every shuffle flavour at widths 32..2 (checked against
CUDA's documented semantics), votes after lanes exited, __syncwarp and __reduce_*_sync, 8-byte and
bf16 shuffles, and a partial last warp. Also run with the ucontext fallback switch."""

import numpy as np
import pytest

from emu_helpers import max_report, run_program, programs  # noqa: F401 (fixture)

VARIANTS = ["warp_ops", "warp_ops_ucontext"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_warp_shuffle_softmax(programs, tmp_path, variant):
    rng = np.random.default_rng(1)
    N, C = 37, 333
    x = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    r = run_program(programs[variant], "softmax", tmp_path, {"shape": np.array([N, C], np.int32), "x": x})
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    ref = e / e.sum(1, keepdims=True)
    assert max_report("softmax", r.out("out", np.float32, (N, C)), ref) < 1e-6


def shfl_reference(width, src, delta, lanemask, threads):
    """CUDA Programming Guide semantics: a lane reads inside its group of `width` lanes; up/down
    out of the group and xor into a later group give the caller's own value; xor into an earlier
    group reads that lane."""
    out = np.zeros((threads, 4), np.int32)
    for t in range(threads):
        base, lane = t - t % 32, t % 32
        group = lane - lane % width

        def val(l, base=base):
            return 1000 + base + l

        out[t, 0] = val(group + src % width)
        out[t, 1] = val(lane - delta) if lane % width >= delta else val(lane)
        out[t, 2] = val(lane + delta) if lane % width + delta < width else val(lane)
        j = lane ^ lanemask
        out[t, 3] = val(j) if j < group + width else val(lane)
    return out


@pytest.mark.parametrize(
    "width,src,delta,lanemask",
    [
        (32, 5, 3, 7),
        (32, 40, 31, 31),
        (16, 13, 3, 9),
        (16, 37, 15, 16),
        (8, 3, 1, 5),
        (8, 9, 8, 12),
        (4, -1, 2, 3),
        (2, 1, 1, 1),
    ],
)
def test_shuffle_widths(programs, tmp_path, width, src, delta, lanemask):
    threads = 64
    r = run_program(
        programs["warp_ops"], "shfl", tmp_path, {"params": np.array([width, src, delta, lanemask, threads], np.int32)}
    )
    np.testing.assert_array_equal(
        r.out("out", np.int32, (threads, 4)), shfl_reference(width, src, delta, lanemask, threads)
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("exit_mod", [5, 2, 1])
def test_votes_after_early_exit(programs, tmp_path, variant, exit_mod):
    threads = 64
    r = run_program(programs[variant], "vote", tmp_path, {"params": np.array([exit_mod, threads], np.int32)})
    got = r.out("out", np.uint32, (2 * threads, 5))
    live = [l for l in range(32) if l % exit_mod != 0]
    bits = lambda ls: sum(1 << l for l in ls)  # noqa: E731
    for t in range(2 * threads):
        lane = t % 32
        if lane % exit_mod == 0:
            assert (got[t] == 0xDEADBEEF).all()
            continue
        assert got[t, 0] == bits([l for l in live if l % 3 == 0])
        assert got[t, 1] == (7 in live)
        assert got[t, 2] == 1
        assert got[t, 3] == all(l < 20 for l in live)
        assert got[t, 4] == bits(live)


@pytest.mark.parametrize("variant", VARIANTS)
def test_syncwarp_and_reduce(programs, tmp_path, variant):
    r = run_program(programs[variant], "syncwarp", tmp_path)
    got = r.out("out", np.int32, (64, 4))
    t = np.arange(64)
    lane = t % 32
    np.testing.assert_array_equal(got[:, 0], ((t & ~31) + (lane + 1) % 32) ** 2)
    assert (got[:, 1] == 496).all()
    assert (got[:, 2] == 19).all()
    np.testing.assert_array_equal(got[:, 3], np.where(lane < 16, 15 * 3 - 100, 31 * 3 - 100))


@pytest.mark.parametrize("variant", VARIANTS)
def test_8_byte_and_bf16_shuffles(programs, tmp_path, variant):
    r = run_program(programs[variant], "wide", tmp_path)
    np.testing.assert_allclose(r.out("d", np.float64), [sum(1 / (l + 1) for l in range(32))] * 32, rtol=1e-15)
    lane = np.arange(32)
    np.testing.assert_array_equal(r.out("l", np.int64), (1 << 40) + np.where(lane < 31, lane + 1, lane))
    b = r.out("b", np.float32, (32, 3))
    np.testing.assert_array_equal(b[:, 0], (31 - lane) * 0.5)
    np.testing.assert_array_equal(b[:, 1], lane ^ 1)
    np.testing.assert_array_equal(b[:, 2], -(lane ^ 1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_partial_last_warp(programs, tmp_path, variant):
    r = run_program(programs[variant], "partial", tmp_path)
    got = r.out("out", np.int32, (48, 2))
    assert (got[:32, 0] == sum(range(32))).all()
    assert (got[32:, 0] == sum(range(32, 48))).all()
    assert (got[:32, 1].view(np.uint32) == 0xAAAAAAAA).all()
    assert (got[32:, 1] == 0xAAAA).all()


def test_divergent_warp_ops_are_reported(programs, tmp_path):
    r = run_program(programs["warp_ops"], "divergent", tmp_path, expect_ok=False, timeout=60)
    assert r.returncode != 0
    assert "divergent warp code" in r.stderr
    assert "returned" not in r.stdout
