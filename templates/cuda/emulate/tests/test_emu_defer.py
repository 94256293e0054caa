"""LLMGEN_EMU_DEFER_STREAMS (emu_launch.h, DeferMode) under emulation (kernels/defer.cu): `side` keeps a created
stream's work until a wait on an event recorded after it, a synchronisation or a synchronous copy forces it; `main`
keeps stream 0's work the same way; a replayed CUDA Graph issues each operation to its stream under the same rules;
unset, every operation runs when issued."""

import pytest

from emu_helpers import programs, run_program  # noqa: F401 (fixture)


@pytest.mark.parametrize("mode", ["none", "side", "main"])
def test_deferred_streams_run_as_their_events_allow(programs, tmp_path, mode):
    env = {"LLMGEN_EMU_DEFER_STREAMS": "0" if mode == "none" else mode}
    r = run_program(programs["defer"], mode, tmp_path, expect_ok=False, env=env)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert not fails, "\n".join(fails) + r.stderr
    oks = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("OK")}
    assert len(oks) == 10 and "DONE 0 failures" in r.stdout and r.returncode == 0, r.stdout + r.stderr
