"""CUDA Graphs by stream capture under emulation (kernels/graph.cu): a capture records launches, async copies
and sets instead of running them; cudaGraphLaunch replays them in order with the arguments of capture time;
synchronous calls during a capture fail with cudaErrorStreamCaptureUnsupported and invalidate it; another stream
forked into the capture by an event is recorded too, and must be joined back before the capture ends."""

from emu_helpers import programs, run_program  # noqa: F401 (fixture)


def test_graph_capture_and_replay(programs, tmp_path):
    r = run_program(programs["graph"], "all", tmp_path, expect_ok=False)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails) + r.stderr
    oks = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("OK")}
    assert {"replay_in_order", "replay_again", "sync_copy_refused", "end_invalidated", "malloc_refused"} <= oks
    assert {"fork_join_replay", "unjoined_fork_refused"} <= oks
    assert len(oks) == 21 and "DONE 0 failures" in r.stdout and r.returncode == 0, r.stdout + r.stderr
    # each refusal says what was refused
    assert "cudaMemcpy during a stream capture: cudaErrorStreamCaptureUnsupported" in r.stderr
