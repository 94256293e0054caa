"""Runtime API under emulation (memory, errors, launch checks, streams, events, device properties,
symbols, function attributes), and the cost of emulation per CUDA thread."""
import re

from emu_helpers import run_program, programs  # noqa: F401 (fixture)


def test_runtime_api(programs, tmp_path):
    r = run_program(programs["runtime"], "all", tmp_path, expect_ok=False)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails)
    oks = [line for line in r.stdout.splitlines() if line.startswith("OK")]
    assert len(oks) >= 55 and "DONE 0 failures" in r.stdout and r.returncode == 0, r.stdout + r.stderr
    assert "INFO sm_count 2" in r.stdout  # multiProcessorCount = OpenMP threads (OMP_NUM_THREADS=2)


def test_emulation_cost(programs, tmp_path):
    """Prints the cost per CUDA thread (see with -s); bounds are loose, to catch a broken fast path
    (a switch per thread would cost >= 10 ns) rather than to benchmark a shared CI machine."""
    r = run_program(programs["bench"], "all", tmp_path, env={"OMP_NUM_THREADS": "1"})
    print(r.stdout)
    bench = {m.group(1): float(m.group(2)) for m in re.finditer(r"BENCH (\S+) ([\d.]+)", r.stdout)}
    assert bench["plain_ns_per_thread"] < 25
    assert bench["barrier_ns_per_thread"] < 1000
    assert bench["shuffle5_ns_per_thread"] < 2000
