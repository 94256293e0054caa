"""Runtime API under emulation (memory, errors, launch checks, streams, events, device properties,
symbols, function attributes), and the cost of emulation per CUDA thread."""

import re
import signal

import pytest

from emu_helpers import run_program, programs  # noqa: F401 (fixture)


def test_runtime_api(programs, tmp_path):
    r = run_program(programs["runtime"], "all", tmp_path, expect_ok=False)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails)
    oks = [line for line in r.stdout.splitlines() if line.startswith("OK")]
    assert len(oks) >= 55 and "DONE 0 failures" in r.stdout and r.returncode == 0, r.stdout + r.stderr
    assert "INFO sm_count 2" in r.stdout  # multiProcessorCount = OpenMP threads (OMP_NUM_THREADS=2)


@pytest.mark.parametrize("case", ["overrun", "smem_overrun"])
def test_access_past_the_end_faults(programs, tmp_path, case):
    """Device allocations and dynamic shared memory end at a guard page: a kernel writing one float
    past a cudaMalloc buffer, or reading past its dynamic shared memory, dies with SIGSEGV and a
    message, instead of corrupting the host heap (where a test can still pass by luck)."""
    r = run_program(programs["runtime"], case, tmp_path, expect_ok=False)
    assert "in bounds ok" in r.stdout and "no fault" not in r.stdout
    assert r.returncode == -signal.SIGSEGV
    assert "segmentation fault" in r.stderr and "guard page" in r.stderr


def test_emulation_cost(programs, tmp_path):
    """Prints the cost per CUDA thread (see with -s); bounds are loose, to catch a broken fast path
    (a switch per thread would cost >= 10 ns) rather than to benchmark a shared CI machine."""
    r = run_program(programs["bench"], "all", tmp_path, env={"OMP_NUM_THREADS": "1"})
    print(r.stdout)
    bench = {m.group(1): float(m.group(2)) for m in re.finditer(r"BENCH (\S+) ([\d.]+)", r.stdout)}
    assert bench["plain_ns_per_thread"] < 25
    assert bench["barrier_ns_per_thread"] < 1000
    assert bench["shuffle5_ns_per_thread"] < 2000
