"""templates/common/comm.h across processes: every collective against numpy's rank-order sums, bit for bit, under
mpirun, torchrun-style and Slurm-style variables and the shared-file rendezvous; and the faults: a killed rank,
a stuck rank, a rank that never comes, mismatched flags, a build without MPI under mpirun.

The programs are tests/distributed/comm_driver.c built with gcc (no MPI: tcp/file/single), with mpicc
-DLLMGEN_MPI (all backends), and as C++ (the CUDA trainer includes the same header)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from dist_helpers import (
    MPI_MISSING,
    assert_order_matters,
    check_outputs,
    clean_env,
    free_port,
    have_mpi,  # noqa: F401
    launcher_env,
    make_inputs,
    mpirun,
    programs,
    ranks,
    read_info,
    reference,
    same_bits,
    wait_for,
)

needs_mpi = pytest.mark.skipif(not have_mpi(), reason=MPI_MISSING)

# 1001 elements: not a multiple of 2 or 3 (uneven all-reduce chunks, padded ZeRO shards)
N_ELEMS = 1001


@pytest.mark.parametrize("variant", ["c", "cxx", "mpi", "cxx_mpi"])
def test_header_builds_warning_free(programs, variant):
    """comm.h compiles with -Wall -Wextra -Werror as C11 and as C++17, with and without MPI."""
    assert programs.get(variant).is_file()


def test_single_process_needs_no_launcher(programs, tmp_path):
    """No launcher variables: world size 1, no network; sum = the input, avg = the input."""
    ins = make_inputs(tmp_path, 1, N_ELEMS)
    drv = programs.get("c")
    p = subprocess.run(
        [str(drv), "collectives", str(tmp_path), str(N_ELEMS)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    check_outputs(tmp_path, ins, 1, N_ELEMS)
    assert same_bits(np.fromfile(tmp_path / "out_r0_ar_bf16_sum.bin", np.uint16), ins["bf16"][0])
    info = read_info(tmp_path, 0)
    assert (info["world_size"], info["local_rank"], info["how"]) == ("1", "0", "single process")


@needs_mpi
@pytest.mark.parametrize("world", [2, 3])
def test_collectives_mpirun(programs, tmp_path, world):
    ins = make_inputs(tmp_path, world, N_ELEMS, seed=world)
    if world >= 3:
        assert_order_matters(ins)
    res = mpirun(
        world, [programs.get("mpi"), "collectives", tmp_path, N_ELEMS], env={"LLMGEN_COMM_SEGMENT_BYTES": 1000}
    )  # several rounds per reduction
    assert res.returncode == 0, res.text
    n = check_outputs(tmp_path, ins, world, N_ELEMS)
    print(f"mpirun -np {world}: {n} outputs bit-identical to numpy's rank-order results")
    for r in range(world):
        info = read_info(tmp_path, r)
        assert info["how"] == "mpi"
        assert (info["rank"], info["world_size"]) == (str(r), str(world))
        # one host: MPI_COMM_TYPE_SHARED puts every rank on it
        assert (info["local_rank"], info["local_world_size"]) == (str(r), str(world))


@pytest.mark.parametrize(
    "launcher,world,variant",
    [
        ("torchrun", 2, "c"),
        ("torchrun", 3, "c"),
        ("torchrun", 3, "cxx"),
        # an MPI build started without an MPI launcher (srun without PMI) takes the TCP path from SLURM_*
        ("slurm", 3, "mpi"),
        ("slurm", 2, "c"),
    ],
)
def test_collectives_tcp(programs, tmp_path, ranks, launcher, world, variant):
    data = tmp_path / "data"
    ins = make_inputs(data, world, N_ELEMS, seed=10 + world)
    drv = programs.get(variant)
    port = free_port()
    rk = ranks()
    for r in range(world):
        rk.start(
            [drv, "collectives", data, N_ELEMS],
            {**launcher_env(launcher, r, world, port=port), "LLMGEN_COMM_SEGMENT_BYTES": 256},
        )
    for r, res in enumerate(rk.wait(120)):
        assert res.returncode == 0, f"rank {r}:\n{rk.logs()}"
    check_outputs(data, ins, world, N_ELEMS)
    for r in range(world):
        info = read_info(data, r)
        assert info["how"] == f"tcp via 127.0.0.1:{port}"
        assert (info["rank"], info["world_size"], info["local_rank"], info["local_world_size"]) == (
            str(r),
            str(world),
            str(r),
            str(world),
        )


def test_results_do_not_depend_on_transport_or_segment(programs, tmp_path, ranks):
    """The same inputs through MPI (1000-byte segments) and TCP (4 MiB segments): identical bytes."""
    if not have_mpi():
        pytest.skip(MPI_MISSING)
    world = 3
    a, b = tmp_path / "mpi", tmp_path / "tcp"
    make_inputs(a, world, N_ELEMS, seed=7)
    make_inputs(b, world, N_ELEMS, seed=7)
    res = mpirun(world, [programs.get("mpi"), "collectives", a, N_ELEMS], env={"LLMGEN_COMM_SEGMENT_BYTES": 1000})
    assert res.returncode == 0, res.text
    port = free_port()
    rk = ranks()
    for r in range(world):
        rk.start([programs.get("c"), "collectives", b, N_ELEMS], launcher_env("torchrun", r, world, port=port))
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    outs = sorted(p.name for p in a.glob("out_*.bin"))
    assert len(outs) == world * 3 * (6 * 2 + 1)
    for name in outs:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_file_rendezvous_ignores_stale_files(programs, tmp_path, ranks):
    """Rank 0 publishes its address in <dir>/llmgen-rendezvous-<run id>. A file of an earlier run (another id)
    pointing at a live listener is never read (the listener sees no connection); a same-id file left with a
    dead address is replaced by rank 0 and the others get through; rank 0 removes its file once everyone came."""
    world = 3
    rv = tmp_path / "rendezvous"
    rv.mkdir()
    decoy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(8)
    decoy.setblocking(False)
    (rv / "llmgen-rendezvous-run-0").write_text(f"127.0.0.1 {decoy.getsockname()[1]}\n")
    (rv / "llmgen-rendezvous-run-1").write_text(f"127.0.0.1 {free_port()}\n")  # nobody listens there
    data = tmp_path / "data"
    ins = make_inputs(data, world, N_ELEMS, seed=3)
    rk = ranks()
    env = {"LLMGEN_RENDEZVOUS_TIMEOUT": 60}
    for r in (2, 1):  # the others first: they find only the stale same-id file until rank 0 writes its own
        rk.start(
            [programs.get("c"), "collectives", data, N_ELEMS],
            {**launcher_env("file", r, world, rendezvous=rv, run_id="run-1"), **env},
        )
    time.sleep(0.5)
    rk.start(
        [programs.get("c"), "collectives", data, N_ELEMS],
        {**launcher_env("file", 0, world, rendezvous=rv, run_id="run-1"), **env},
    )
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    check_outputs(data, ins, world, N_ELEMS)
    with pytest.raises(BlockingIOError):
        decoy.accept()  # nobody connected to the earlier run's address
    decoy.close()
    assert sorted(p.name for p in rv.iterdir()) == ["llmgen-rendezvous-run-0"]
    assert read_info(data, 1)["how"].startswith("tcp, rendezvous file ")


def test_file_rendezvous_without_nonce_is_an_error(programs, tmp_path, ranks):
    rk = ranks()
    rk.start([programs.get("c"), "init", tmp_path], {"RANK": 1, "WORLD_SIZE": 2, "LLMGEN_RENDEZVOUS_DIR": tmp_path})
    (res,) = rk.wait(30)
    assert res.returncode != 0
    assert "needs a nonce for this run" in res.stderr and "LLMGEN_RUN_ID" in res.stderr


# ---- faults ------------------------------------------------------------------------------------------
def _pid(d, r):
    return int((d / f"pid_r{r}").read_text())


@pytest.mark.parametrize("world", [2, 3])
def test_killed_rank_tcp(programs, tmp_path, ranks, world):
    """SIGKILL one rank while all of them all-reduce in a loop: every other rank exits non-zero, soon, naming it."""
    victim = 1
    rk = ranks()
    port = free_port()
    for r in range(world):
        rk.start([programs.get("c"), "loop", tmp_path, 1_000_000], launcher_env("torchrun", r, world, port=port))
    wait_for(lambda: all("ready" in rk.stdout(r) for r in range(world)), 60, "every rank's first all-reduce")
    os.kill(_pid(tmp_path, victim), signal.SIGKILL)
    t0 = time.monotonic()
    results = rk.wait(60)
    elapsed = time.monotonic() - t0
    print(f"world {world}: the job ended {elapsed:.2f} s after the SIGKILL")
    assert elapsed < 60
    assert results[victim].returncode == -signal.SIGKILL
    for r in range(world):
        if r == victim:
            continue
        assert results[r].returncode == 1, rk.logs()
        # the victim is named even when this rank noticed another one leave first: with three ranks, rank 2
        # may see rank 0 (which already quit over rank 1) go too, and says "rank 0, 1"
        m = re.search(rf"error: rank {r}: allreduce: lost the connection to rank ([0-9, ]+)", results[r].stderr)
        assert m, rk.logs()
        assert str(victim) in [x.strip() for x in m.group(1).split(",")], rk.logs()


def test_fault_names_every_lost_rank(programs, tmp_path, ranks):
    """Rank 1 exits; ranks 0 and 2 then broadcast from rank 2. Rank 2 fails sending to rank 1; rank 0, which never
    needed rank 1 here, sees rank 2 go, and still names rank 1 too: the rank that left first is not hidden."""
    world = 3
    port = free_port()
    rk = ranks()
    for r in range(world):
        rk.start([programs.get("c"), "orphan", tmp_path], launcher_env("torchrun", r, world, port=port))
    res = rk.wait(60)
    assert [x.returncode for x in res] == [1, 3, 1], rk.logs()
    assert "error: rank 2: broadcast: lost the connection to rank 1 " in res[2].stderr, rk.logs()
    assert "error: rank 0: broadcast: lost the connection to rank 1, 2 " in res[0].stderr, rk.logs()


@needs_mpi
def test_killed_rank_mpi(programs, tmp_path):
    """The same under mpirun: mpirun ends the job and names the rank."""
    world, victim = 3, 1
    log = open(tmp_path / "mpirun.log", "w")
    p = subprocess.Popen(
        [
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            str(world),
            str(programs.get("mpi")),
            "loop",
            str(tmp_path),
            "1000000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        wait_for(lambda: (tmp_path / "mpirun.log").read_text().count("ready") == world, 60, "the first all-reduce")
        os.kill(_pid(tmp_path, victim), signal.SIGKILL)
        t0 = time.monotonic()
        rc = p.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
    text = (tmp_path / "mpirun.log").read_text()
    print(f"mpirun ended {elapsed:.2f} s after the SIGKILL with status {rc}")
    assert rc != 0 and elapsed < 60
    assert f"process rank {victim} with PID" in text and "signal 9" in text, text


def test_stuck_rank_times_out_tcp(programs, tmp_path, ranks):
    """A rank that stops (SIGSTOP) mid-loop: the others give up after the collective timeout, naming it."""
    world, victim = 3, 2
    rk = ranks()
    port = free_port()
    for r in range(world):
        rk.start(
            [programs.get("c"), "loop", tmp_path, 1_000_000],
            {**launcher_env("torchrun", r, world, port=port), "LLMGEN_COMM_TIMEOUT": 3},
        )
    wait_for(lambda: all("ready" in rk.stdout(r) for r in range(world)), 60, "every rank's first all-reduce")
    os.kill(_pid(tmp_path, victim), signal.SIGSTOP)
    t0 = time.monotonic()
    for r in range(world):
        if r != victim:
            rk.procs[r].wait(timeout=60)
    elapsed = time.monotonic() - t0
    rk.kill()
    assert 3 <= elapsed < 60
    # a rank waiting on the stopped one names it; a rank waiting on one that already gave up names that one
    stuck = [r for r in range(world) if r != victim and "did not complete within 3 s" in rk.stderr(r)]
    assert stuck, rk.logs()
    assert any(f"still waiting for rank(s) {victim}" in rk.stderr(r) for r in stuck), rk.logs()
    assert all(rk.procs[r].returncode == 1 for r in range(world) if r != victim)


@needs_mpi
def test_stuck_rank_times_out_mpi(programs, tmp_path):
    world, victim = 2, 1
    log = open(tmp_path / "mpirun.log", "w")
    env = clean_env({"LLMGEN_COMM_TIMEOUT": 3})
    p = subprocess.Popen(
        [
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-x",
            "LLMGEN_COMM_TIMEOUT",
            "-np",
            str(world),
            str(programs.get("mpi")),
            "loop",
            str(tmp_path),
            "1000000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (tmp_path / "mpirun.log").read_text().count("ready") == world, 60, "the first all-reduce")
        os.kill(_pid(tmp_path, victim), signal.SIGSTOP)
        t0 = time.monotonic()
        rc = p.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
        try:
            os.kill(_pid(tmp_path, victim), signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = (tmp_path / "mpirun.log").read_text()
    assert rc != 0 and 3 <= elapsed < 60, text
    assert f"error: rank 0: allreduce did not complete within 3 s: still waiting for rank(s) {victim}" in text, text


def test_rendezvous_timeouts_are_clear(programs, tmp_path, ranks):
    """Nobody at the other end: each side says who it waited for, where, and for how long."""
    port = free_port()
    drv = programs.get("c")
    rk = ranks()
    rk.start([drv, "init", tmp_path], {**launcher_env("torchrun", 1, 2, port=port), "LLMGEN_RENDEZVOUS_TIMEOUT": 2})
    rk.start(
        [drv, "init", tmp_path], {**launcher_env("torchrun", 0, 3, port=free_port()), "LLMGEN_RENDEZVOUS_TIMEOUT": 2}
    )
    rk.start(
        [drv, "init", tmp_path],
        {**launcher_env("file", 1, 2, rendezvous=tmp_path, run_id="nobody"), "LLMGEN_RENDEZVOUS_TIMEOUT": 2},
    )
    res = rk.wait(60)
    for r in res:
        assert r.returncode == 1 and r.seconds < 30
    assert (
        f"error: rank 1: no connection from rank 0 at 127.0.0.1:{port} within 2 s (last error: Connection "
        "refused)" in res[0].stderr
    )
    assert "error: rank 0: only 1 of 3 ranks connected within 2 s" in res[1].stderr
    assert "missing rank(s) 1, 2" in res[1].stderr
    assert (
        f"error: rank 1: the rendezvous file {tmp_path}/llmgen-rendezvous-nobody did not appear within 2 s"
        in res[2].stderr
    )


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RANK": 1}, "RANK and WORLD_SIZE must be set together"),
        ({"RANK": 2, "WORLD_SIZE": 2}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"RANK": "x", "WORLD_SIZE": 2}, "RANK='x' is not a non-negative integer"),
        ({"RANK": 1, "WORLD_SIZE": 2}, "MASTER_ADDR/MASTER_PORT are not set"),
        (
            {"RANK": 1, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"},
            "MASTER_PORT=99999 is not a port",
        ),
    ],
)
def test_launcher_variable_errors(programs, tmp_path, ranks, env, message):
    rk = ranks()
    rk.start([programs.get("c"), "init", tmp_path], env)
    (res,) = rk.wait(30)
    assert res.returncode == 1 and message in res.stderr, res.stderr


def test_agree_catches_mismatched_flags_tcp(programs, tmp_path, ranks):
    world = 3
    port = free_port()
    rk = ranks()
    for r in range(world):
        rk.start(
            [programs.get("c"), "agree", tmp_path, "-b 8" if r == 2 else "-b 4"],
            launcher_env("torchrun", r, world, port=port),
        )
    res = rk.wait(60)
    assert all(r.returncode == 1 for r in res), rk.logs()
    assert "error: rank 0: ranks disagree on flags: rank(s) 0, 1 have '-b 4'; rank(s) 2 have '-b 8'" in res[0].stderr
    assert not list(tmp_path.glob("agreed_*"))
    # and the same flags pass
    rk2 = ranks("agree-ok")
    port = free_port()
    for r in range(world):
        rk2.start([programs.get("c"), "agree", tmp_path, "-b 4"], launcher_env("torchrun", r, world, port=port))
    assert all(r.returncode == 0 for r in rk2.wait(60)), rk2.logs()
    assert len(list(tmp_path.glob("agreed_*"))) == world


@needs_mpi
def test_agree_catches_mismatched_flags_mpi(programs, tmp_path):
    drv = programs.get("mpi")
    res = mpirun(None, ["-np", 2, drv, "agree", tmp_path, "-b 4", ":", "-np", 1, drv, "agree", tmp_path, "-b 8"])
    assert res.returncode != 0
    assert "error: rank 0: ranks disagree on flags: rank(s) 0, 1 have '-b 4'; rank(s) 2 have '-b 8'" in res.text
    assert not list(tmp_path.glob("agreed_*"))


@needs_mpi
def test_build_without_mpi_refuses_mpirun(programs, tmp_path):
    res = mpirun(2, [programs.get("c"), "init", tmp_path])
    assert res.returncode != 0
    assert "built without MPI but was started by an MPI launcher with 2 processes" in res.text, res.text
    assert "rank 0 of 1" not in res.text  # it did not run as two single-process jobs


@pytest.mark.parametrize("variant", ["c", "mpi"])
def test_sbatch_script_itself_is_one_process(programs, tmp_path, ranks, variant):
    """A program started directly in a batch script (SLURM_PROCID=0, SLURM_NTASKS=4, no srun step) trains alone
    instead of waiting for three ranks that will never come."""
    if variant == "mpi" and not have_mpi():
        pytest.skip(MPI_MISSING)
    rk = ranks()
    rk.start(
        [programs.get(variant), "init", tmp_path],
        {"SLURM_JOB_ID": 99, "SLURM_PROCID": 0, "SLURM_NTASKS": 4, "SLURM_LOCALID": 0, "SLURM_NNODES": 1},
    )
    (res,) = rk.wait(30)
    assert res.returncode == 0 and "rank 0 of 1: single process" in res.stdout, res.stderr


@needs_mpi
def test_mpi_singleton_under_srun_is_an_error(programs, tmp_path, ranks):
    """srun with a PMI that this MPI cannot use starts every process as an MPI singleton (llm.c #426): MPI's
    size 1 against srun's SLURM_STEP_NUM_TASKS=2 is an error, not two independent jobs."""
    rk = ranks()
    rk.start(
        [programs.get("mpi"), "init", tmp_path],
        {"PMI_RANK": 0, "SLURM_PROCID": 0, "SLURM_NTASKS": 2, "SLURM_STEP_NUM_TASKS": 2},
    )
    (res,) = rk.wait(60)
    assert res.returncode != 0
    assert "error: rank 0: MPI reports 1 process(es) but SLURM_STEP_NUM_TASKS=2" in res.stderr, res.stderr


@needs_mpi
def test_mpirun_inside_a_larger_allocation_is_fine(programs, tmp_path):
    """mpirun -np 2 inside a Slurm allocation of 4 tasks: mpirun's count is the one that matters."""
    res = mpirun(
        2,
        [programs.get("mpi"), "init", tmp_path],
        extra=["-x", "SLURM_NTASKS=4", "-x", "SLURM_STEP_NUM_TASKS=4", "-x", "SLURM_PROCID=0"],
    )
    assert res.returncode == 0, res.text
    assert "rank 0 of 2: mpi" in res.stdout and "rank 1 of 2: mpi" in res.stdout


def test_reference_itself(tmp_path):
    """The numpy reference rounds bf16 ties to even and sums in rank order (checked on hand-made values)."""
    ins = make_inputs(tmp_path, 2, 16)
    out = reference(ins["bf16"], "bf16", "sum")[:4]
    # 1 + 2^-8 -> 1.0 (tie, even); 1.0078125 + 2^-8 -> 1.015625 (tie, even); -1 - 2^-8 -> -1.0 (tie);
    # 3 + 3*2^-7 -> 3.03125 (tie, even)
    assert list(out) == [0x3F80, 0x3F82, 0xBF80, 0x4042]
    x = [np.array([1e8], np.float32), np.array([-1e8], np.float32), np.array([1.0], np.float32)]
    assert reference(x, "f32", "sum")[0] == 1.0 and reference(x[::-1], "f32", "sum")[0] == 0.0
