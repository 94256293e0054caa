"""Block-level emulation: shared memory + __syncthreads, 2-D/3-D indices, dynamic shared memory,
__syncthreads_count/and/or, early exit before a barrier, 1024-thread blocks, and the deadlock and
stack-overflow reports. Each case also runs with the ucontext fallback switch and without OpenMP, at
-O0, and with -fcf-protection=full (which selects the ucontext switch)."""

import numpy as np
import pytest

from emu_helpers import max_report, run_program, programs  # noqa: F401 (fixture)

VARIANTS = ["block_ops", "block_ops_ucontext", "block_ops_O0", "block_ops_cet"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_layernorm_forward(programs, tmp_path, variant):
    rng = np.random.default_rng(0)
    N, C, block = 37, 768, 128
    x = rng.standard_normal((N, C)).astype(np.float32) * 2 + 0.5
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    r = run_program(
        programs[variant], "layernorm", tmp_path, {"shape": np.array([N, C, block], np.int32), "x": x, "w": w, "b": b}
    )
    x64 = x.astype(np.float64)
    mean = x64.mean(1)
    rstd = 1 / np.sqrt(((x64 - mean[:, None]) ** 2).mean(1) + 1e-5)
    ref = (x64 - mean[:, None]) * rstd[:, None] * w + b
    assert max_report("out", r.out("out", np.float32, (N, C)), ref) < 2e-5
    assert max_report("mean", r.out("mean", np.float32), mean) < 1e-6
    assert max_report("rstd", r.out("rstd", np.float32), rstd) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_transpose_2d_blocks(programs, tmp_path, variant):
    H, W = 70, 45
    x = np.arange(H * W, dtype=np.float32).reshape(H, W)
    r = run_program(programs[variant], "transpose", tmp_path, {"shape": np.array([H, W], np.int32), "x": x})
    np.testing.assert_array_equal(r.out("out", np.float32, (W, H)), x.T)


@pytest.mark.parametrize("variant", VARIANTS)
def test_3d_indices_survive_barriers(programs, tmp_path, variant):
    r = run_program(programs[variant], "dims", tmp_path)
    got = r.out("out", np.uint32, (12 * 64, 2))
    expected = []
    for bz in range(2):
        for by in range(2):
            for bx in range(3):
                for tz in range(2):
                    for ty in range(4):
                        for tx in range(8):
                            expected.append(tx | ty << 4 | tz << 8 | bx << 12 | by << 16 | bz << 20)
    np.testing.assert_array_equal(got[:, 0], np.array(expected, np.uint32))
    assert (got[:, 1] == 64).all()  # every thread saw all 64 arrivals after the barrier


@pytest.mark.parametrize("variant", VARIANTS)
def test_dynamic_shared_memory(programs, tmp_path, variant):
    x = np.arange(5 * 96, dtype=np.float32) * 0.5
    r = run_program(programs[variant], "dynsmem", tmp_path, {"x": x})
    out = r.out("out", np.float32, (5, 96))
    np.testing.assert_array_equal(out, x.reshape(5, 96)[:, ::-1])
    base = (np.arange(5) * 96)[:, None]
    t = np.arange(96)[None, :]
    np.testing.assert_array_equal(r.out("out2", np.int32, (5, 96)), base + 2 * ((t + 1) % 96))
    # 64 KiB of dynamic shared memory: refused (cudaErrorInvalidValue = 1) until the attribute is set
    np.testing.assert_array_equal(r.out("codes", np.int32), [1, 0, 0])
    np.testing.assert_array_equal(r.out("sums", np.float32), [float(sum(i % 10 for i in range(16384)))] * 3)
    np.testing.assert_array_equal(r.out("isums", np.int32), [sum(i % 10 for i in range(1000))] * 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_syncthreads_count_and_or(programs, tmp_path, variant):
    r = run_program(programs[variant], "sync_count", tmp_path)
    np.testing.assert_array_equal(r.out("out", np.int32), [sum(t % 3 == 0 for t in range(256)), 1, 0, 1, 0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_early_exit_before_barrier(programs, tmp_path, variant):
    x = np.arange(1000, dtype=np.float32)
    r = run_program(programs[variant], "early_exit", tmp_path, {"x": x})
    ref = [x[i : i + 256].sum() for i in range(0, 1000, 256)]
    np.testing.assert_array_equal(r.out("out", np.float32), ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_1024_threads_with_local_arrays(programs, tmp_path, variant):
    r = run_program(programs[variant], "big_block", tmp_path)
    t = np.arange(1024)
    sums = np.array([sum((tt + j) % 7 for j in range(512)) for tt in t], np.float32)
    np.testing.assert_array_equal(r.out("out", np.float32, (2, 1024)), np.stack([sums[::-1]] * 2))


@pytest.mark.parametrize("variant", VARIANTS)
def test_divergent_barrier_reports_deadlock(programs, tmp_path, variant):
    r = run_program(programs[variant], "deadlock", tmp_path, expect_ok=False, timeout=60)
    assert r.returncode != 0
    assert "deadlock in block (0,0,0)" in r.stderr
    assert "returned" not in r.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_stack_overflow_is_named(programs, tmp_path, variant):
    r = run_program(programs[variant], "overflow", tmp_path, expect_ok=False, timeout=60)
    assert r.returncode != 0
    assert "overflowed its fiber stack" in r.stderr
