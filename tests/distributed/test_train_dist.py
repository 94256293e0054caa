"""The data-parallel C trainer (`llmgen build --distributed`, templates/common/COMM.md) end to end, on a tiny GPT-2:
N ranks (mpirun -np 2 and -np 3, the second with padded ZeRO shards) equal one process with the same global batch
and the PyTorch oracle; -z 1 equals -z 0 bit for bit; one rank equals the plain trainer bit for bit; checkpoints
resume bit-exactly with the same N and correctly with another N (or the plain trainer); a SIGKILLed rank ends the
job with an error naming it and leaves the last checkpoint whole; torchrun-style variables without MPI and
`llmgen train --nproc 2` give the bits of mpirun; flags that differ between ranks, and a -d that is not a
multiple of N*B*T, are refused. Without OpenMPI the N-rank runs start torchrun style instead (the same bits) and
only the mpirun fault test skips."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

import oracle
from conftest import losses_by_step, run_binary, run_llmgen
from dist_helpers import (
    MPI_MISSING,
    REPO,
    Result,
    clean_env,
    free_port,
    have_mpi,
    launcher_env,
    mpirun,
    ranks,
    wait_for,
)
from test_two_hosts import two_hosts

needs_mpi = pytest.mark.skipif(not have_mpi(), reason=MPI_MISSING)  # without it, N ranks start torchrun style
_ = ranks, two_hosts  # fixtures, imported for the tests below

T = 16
STEPS = 10
LR = ["-l", "1e-3", "-u", "2", "-c", "0.1", "-k", "cosine"]
REL = 1e-4  # the bound for N ranks against one process and against torch (fp32: other summation orders)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # ranks share the 2 cores of the CI machine


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_dist")
    oracle.make_gpt2_model_dir(d / "model", n_layer=2, n_head=4, n_embd=64, vocab_size=500, n_positions=32, seed=3)
    pattern = oracle.random_shards(d / "data", 500, 20000, seed=1)
    val = oracle.random_shards(d / "val", 500, 4000, seed=2)
    config = d / "model" / "config.json"
    run_llmgen("build", config, "-o", d / "single")
    run_llmgen("build", config, "--distributed", "-o", d / "dist")  # mpicc -DLLMGEN_MPI where MPI is installed
    nompi = d / "dist" / "train"
    if have_mpi():  # the same source with gcc, no MPI: torchrun-style variables and the file rendezvous only
        nompi = d / "nompi" / "train"
        nompi.parent.mkdir()
        cmd = ["gcc", "-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-std=gnu11", d / "dist" / "train.c"]
        subprocess.run([*map(str, cmd), "-lm", "-o", str(nompi)], check=True, capture_output=True)
    data = ["-i", pattern, "-e", d / "model", "-t", T, "-v", 0]
    return dict(dir=d, model=d / "model", pattern=pattern, val=val, data=[str(a) for a in data], nompi=nompi)


def val_of(run):
    return {r["step"]: r["val_loss"] for r in map(json.loads, open(run / "log.jsonl")) if "val_loss" in r}


def close(a, b, rel=REL):
    return abs(a - b) <= rel * max(abs(a), abs(b))


def run_ranks(setup, n, flags, out, check=True):
    """N ranks of the distributed trainer: under mpirun where MPI is installed, else torchrun style (the same bits)"""
    argv = [*setup["data"], *map(str, flags), "-o", str(out)]
    if have_mpi():
        r = mpirun(n, [setup["dir"] / "dist" / "train", *argv], ONE_THREAD, 300)
    else:
        port = free_port()
        envs = [clean_env({**launcher_env("torchrun", q, n, port), **ONE_THREAD}) for q in range(n)]
        pipe = subprocess.PIPE
        procs = [
            subprocess.Popen([str(setup["nompi"]), *argv], env=e, stdout=pipe, stderr=pipe, text=True) for e in envs
        ]
        outs = [p.communicate(timeout=300) for p in procs]
        rc = next((p.returncode for p in procs if p.returncode), 0)
        r = Result(rc, outs[0][0], "".join(err for _, err in outs), 0.0)
    if check:
        assert r.returncode == 0, r.text
    return r


def signal_once_training(argv, run, sig):
    """Start argv (a launcher and its ranks), send it sig once the run folder's log has a step, and wait for it:
    (exit status, stdout, stderr)"""
    pipe = subprocess.PIPE
    p = subprocess.Popen(list(map(str, argv)), cwd=REPO, env=clean_env(ONE_THREAD), stdout=pipe, stderr=pipe, text=True)
    try:
        wait_for(lambda: (run / "log.jsonl").is_file() and (run / "log.jsonl").stat().st_size > 0, 120, "steps")
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, err


@pytest.mark.parametrize("n, accum", [(2, 2), (3, 1)])
def test_n_ranks_equal_one_process_and_torch(setup, tmp_path, n, accum):
    """-b 2 on N ranks (with -d: 2 micro-steps) against -b 2N on one process and torch at B=2N: 10 AdamW losses and
    grad norms within 1e-4, the val losses too; -z 0 gives the bits of -z 1 (the default), state.bin included."""
    B, D = 2, 2 * n * T * accum
    flags = ["-b", B, "-d", D, "-x", STEPS, *LR, "-j", setup["val"], "-v", 5, "-m", 2]
    r = run_ranks(setup, n, flags, tmp_path / "z1")
    assert f"data parallel: {n} processes (" in r.stdout and "-z 1 (AdamW moments sharded)" in r.stdout
    assert r.stdout.count("step 1/") == 1, "only rank 0 prints the step lines"
    run_ranks(setup, n, [*flags, "-z", 0], tmp_path / "z0")
    z1, z0 = losses_by_step(tmp_path / "z1"), losses_by_step(tmp_path / "z0")
    assert z1 == z0, "-z 1 and -z 0 differ"
    last = f"ckpt_{STEPS:08d}/state.bin"
    assert (tmp_path / "z1" / last).read_bytes() == (tmp_path / "z0" / last).read_bytes()

    single = tmp_path / "single"
    one_flags = ["-b", B * n, "-d", D, "-x", STEPS, *LR, "-j", setup["val"], "-v", 5, "-m", 2]
    run_binary(setup["dir"] / "single" / "train", *setup["data"], *one_flags, "-o", single)
    one = losses_by_step(single)
    assert sorted(one) == sorted(z1) == list(range(1, STEPS + 1))
    for s in one:
        assert close(z1[s][0], one[s][0]) and close(z1[s][1], one[s][1]), (s, z1[s], one[s])
    v1, vs = val_of(tmp_path / "z1"), val_of(single)
    assert sorted(v1) == sorted(vs) == [0, 5, 10] and all(close(v1[s], vs[s]) for s in vs), (v1, vs)
    # the same tokens through one process's gradient accumulation: -b B -d D (N*accum micro-steps of B rows)
    run_binary(
        setup["dir"] / "single" / "train", *setup["data"], "-b", B, "-d", D, "-x", STEPS, *LR, "-o", tmp_path / "accum"
    )
    acc = losses_by_step(tmp_path / "accum")
    assert all(close(z1[s][0], acc[s][0]) and close(z1[s][1], acc[s][1]) for s in acc), (z1, acc)

    ref = oracle.train_gpt2(
        setup["model"], setup["pattern"], B * n, T, STEPS, 1e-3, total_batch=D, warmup=2, weight_decay=0.1
    )
    for s in range(1, STEPS + 1):
        assert close(z1[s][0], ref["losses"][s - 1]), (s, z1[s][0], ref["losses"][s - 1])
        assert close(z1[s][1], ref["grad_norms"][s - 1]), (s, z1[s][1], ref["grad_norms"][s - 1])


def test_one_rank_is_the_plain_trainer_bit_for_bit(setup, tmp_path):
    flags = [*setup["data"], "-b", 4, "-x", 5, *LR]
    run_binary(setup["dir"] / "single" / "train", *flags, "-o", tmp_path / "single")
    run_binary(setup["dir"] / "dist" / "train", *flags, "-o", tmp_path / "dist")
    assert losses_by_step(tmp_path / "dist") == losses_by_step(tmp_path / "single")
    last = "ckpt_00000005/state.bin"
    assert (tmp_path / "dist" / last).read_bytes() == (tmp_path / "single" / last).read_bytes()


def resume_from(run, step, into):
    shutil.copytree(run, into)
    (into / "latest").write_text(f"ckpt_{step:08d}\n")
    for late in into.glob("ckpt_*"):
        if int(late.name[5:]) > step:
            shutil.rmtree(late)


def test_resume_same_n_bit_exact_other_n_close(setup, tmp_path):
    """6 steps on 2 ranks (-b 3, checkpoints every 3); from step 3 again with 2 ranks (the same bits), with 3 ranks
    at -b 2 and with the plain trainer at -b 6 (the same global batch: within 1e-4)"""
    flags = ["-d", 6 * T, "-x", 6, "-n", 3, *LR]
    run_ranks(setup, 2, ["-b", 3, *flags], tmp_path / "full")
    full = losses_by_step(tmp_path / "full")

    resume_from(tmp_path / "full", 3, tmp_path / "same")
    r = run_ranks(setup, 2, ["-b", 3, *flags, "-y", 1], tmp_path / "same")
    assert "resumed from" in r.stdout and "at step 3" in r.stdout
    assert losses_by_step(tmp_path / "same") == full
    last = "ckpt_00000006/state.bin"
    assert (tmp_path / "same" / last).read_bytes() == (tmp_path / "full" / last).read_bytes()

    resume_from(tmp_path / "full", 3, tmp_path / "three")
    run_ranks(setup, 3, ["-b", 2, *flags, "-y", 1], tmp_path / "three")
    resume_from(tmp_path / "full", 3, tmp_path / "one")
    run_binary(setup["dir"] / "single" / "train", *setup["data"], "-b", 6, *flags, "-y", 1, "-o", tmp_path / "one")
    for other in (losses_by_step(tmp_path / "three"), losses_by_step(tmp_path / "one")):
        for s in (4, 5, 6):
            assert close(other[s][0], full[s][0]) and close(other[s][1], full[s][1]), (s, other[s], full[s])


def torchrun(setup, ranks, n, argv_of, logs="logs"):
    port, rk = free_port(), ranks(logs)
    for r in range(n):
        env = {**launcher_env("torchrun", r, n, port), **ONE_THREAD}
        rk.start([setup["nompi"], *argv_of(r)], env)
    return rk


def test_torchrun_without_mpi_gives_the_bits_of_mpirun(setup, tmp_path, ranks):
    flags = [*setup["data"], "-b", 2, "-x", 4, *LR]
    rk = torchrun(setup, ranks, 3, lambda r: [*flags, "-o", tmp_path / f"tcp{r}"])
    results = rk.wait(120)
    assert all(x.returncode == 0 for x in results), rk.logs()
    assert "(tcp via" in results[0].stdout and not (tmp_path / "tcp1").exists(), "rank 0 alone writes the run"
    run_ranks(setup, 3, ["-b", 2, "-x", 4, *LR], tmp_path / "mpi")
    assert losses_by_step(tmp_path / "tcp0") == losses_by_step(tmp_path / "mpi")


def test_two_hosts_over_tcp(setup, tmp_path, ranks, two_hosts):
    """rank 0 and rank 1 in two network namespaces joined by a veth pair (tests/distributed/test_two_hosts.py), the
    gcc build (no MPI) over TCP to rank 0's address: the bits of mpirun on one host"""
    a = two_hosts[0]
    rk = ranks()
    flags = [*setup["data"], "-b", 2, "-x", 4, *LR]
    for r, h in enumerate(two_hosts):
        env = {"RANK": r, "WORLD_SIZE": 2, "MASTER_ADDR": a.addr, "MASTER_PORT": 29500, **ONE_THREAD}
        rk.start([setup["nompi"], *flags, "-o", tmp_path / "run"], env, prefix=h.exec_prefix())
    results = rk.wait(120)
    assert all(x.returncode == 0 for x in results), rk.logs()
    assert f"tcp via {a.addr}:29500" in results[0].stdout
    run_ranks(setup, 2, ["-b", 2, "-x", 4, *LR], tmp_path / "mpi")
    assert losses_by_step(tmp_path / "run") == losses_by_step(tmp_path / "mpi")


def test_llmgen_train_nproc(setup, tmp_path):
    base = ["-i", setup["pattern"], "-e", setup["model"], "-t", T, "-v", 0, "-b", 2, *LR]
    flags = [*base, "-x", 4]
    r = run_llmgen(
        "train",
        setup["model"] / "config.json",
        "--target",
        "c",
        "--nproc",
        2,
        *flags,
        "--cache-dir",
        tmp_path / "cache",
        "-o",
        tmp_path / "run",
        env=clean_env(ONE_THREAD),
        check=False,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    run_ranks(setup, 2, ["-b", 2, "-x", 4, *LR], tmp_path / "mpi")
    assert losses_by_step(tmp_path / "run") == losses_by_step(tmp_path / "mpi")
    bad = run_llmgen(
        "train",
        setup["model"] / "config.json",
        "--target",
        "c",
        "--nproc",
        2,
        *flags,
        "-d",
        3 * 2 * T,
        "--cache-dir",
        tmp_path / "cache",
        "-o",
        tmp_path / "bad",
        check=False,
    )
    assert bad.returncode == 1 and "N*B*T = 2*2*16 = 64" in bad.stderr, bad.stderr

    # SIGTERM to the wrapper: every rank finishes the same step, rank 0 checkpoints it, exit 143; -y 1 goes on
    run = tmp_path / "stopped"
    argv = [sys.executable, "-m", "llmgen", "train", setup["model"] / "config.json", "--nproc", 2]
    argv += [*base, "-x", 100000, "--cache-dir", tmp_path / "cache", "-o", run]
    rc, _, err = signal_once_training(argv, run, signal.SIGTERM)
    assert rc == 143, err
    step = int((run / "latest").read_text().strip()[5:])
    assert max(losses_by_step(run)) == step
    argv[argv.index("-x") + 1] = step + 2
    assert (
        subprocess.run(
            list(map(str, [*argv, "-y", 1])), cwd=REPO, env=clean_env(ONE_THREAD), capture_output=True
        ).returncode
        == 0
    )
    assert max(losses_by_step(run)) == step + 2


@needs_mpi
def test_sigusr1_to_mpirun_stops_every_rank_with_a_checkpoint(setup, tmp_path):
    """mpirun's own Ctrl-C kills the ranks a second after its SIGTERM (Open MPI's odls_base_sigkill_timeout), too soon
    for a checkpoint; SIGUSR1 it forwards to every rank: they finish the same step, rank 0 checkpoints it, each exits
    128 + SIGUSR1, and -y 1 goes on from there"""
    run = tmp_path / "run"
    argv = [setup["dir"] / "dist" / "train", *setup["data"], "-b", 2, *LR, "-x", 100000, "-o", run]
    rc, out, err = signal_once_training(["mpirun", "--allow-run-as-root", "-np", 2, *argv], run, signal.SIGUSR1)
    assert rc == 128 + signal.SIGUSR1, out[-2000:] + err[-2000:]
    step = int((run / "latest").read_text().strip()[5:])
    assert f"stopped by SIGUSR1 after step {step} (checkpoint ckpt_{step:08d})" in out
    assert max(losses_by_step(run)) == step
    run_ranks(setup, 2, ["-b", 2, *LR, "-x", step + 2, "-y", 1], run)
    assert max(losses_by_step(run)) == step + 2


def test_sigkill_of_a_rank_ends_the_job_naming_it(setup, tmp_path, ranks):
    """rank 1 of 2 killed mid-run: rank 0 stops within moments, naming rank 1; the latest checkpoint is whole"""
    run = tmp_path / "run"
    rk = torchrun(setup, ranks, 2, lambda r: [*setup["data"], "-b", 2, "-x", 100000, "-n", 20, *LR, "-o", run])
    wait_for(lambda: (run / "latest").exists(), 120, "a first checkpoint")
    time.sleep(0.5)
    t0 = time.monotonic()
    rk.procs[1].send_signal(signal.SIGKILL)
    results = rk.wait(60)
    assert time.monotonic() - t0 < 30
    assert results[1].returncode == -signal.SIGKILL
    assert results[0].returncode == 1 and "lost the connection to rank 1" in results[0].stderr, rk.logs()
    ck = run / (run / "latest").read_text().strip()
    assert sorted(p.name for p in ck.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "state.bin",
    ]
    # whole: the plain trainer resumes from it
    flags = [*setup["data"], "-b", 4, "-d", 4 * T, "-x", int(ck.name[5:]) + 1, *LR, "-y", 1, "-o", run]
    assert "resumed from" in run_binary(setup["dir"] / "single" / "train", *flags).stdout


@needs_mpi
def test_sigkill_under_mpirun(setup, tmp_path):
    """the same under mpirun: the job ends non-zero (mpirun names the rank that died)"""
    run = tmp_path / "run"
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", setup["dir"] / "dist" / "train"]
    argv += [*setup["data"], "-b", 2, "-x", 100000, "-n", 20, *LR, "-o", run]
    p = subprocess.Popen(
        list(map(str, argv)), env=clean_env(ONE_THREAD), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: (run / "latest").exists(), 120, "a first checkpoint")
        children = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
        assert len(children) == 2, children
        ranks_by_pid = {int(c): open(f"/proc/{c}/environ", "rb").read() for c in children}
        victim = next(pid for pid, env in ranks_by_pid.items() if b"OMPI_COMM_WORLD_RANK=1\0" in env)
        subprocess.run(["kill", "-9", str(victim)], check=True)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0 and "exited on signal 9" in out, out


def test_flags_and_batch_checked_across_ranks(setup, tmp_path, ranks):
    rk = torchrun(setup, ranks, 2, lambda r: [*setup["data"], "-b", 2 + r, "-x", 2])
    results = rk.wait(60)
    assert all(x.returncode == 1 for x in results), rk.logs()
    assert "'-b 2'" in results[0].stderr and "'-b 3'" in results[0].stderr, rk.logs()
    r = run_ranks(setup, 2, ["-b", 2, "-d", 3 * T, "-x", 2], tmp_path / "bad", check=False)
    assert r.returncode != 0 and "D = 48 tokens" in r.text and "N*B*T = 2*2*16 = 64" in r.text, r.text
