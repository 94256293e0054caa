"""Checkpoints, resume and stopping: a stopped-and-resumed run logs the same bits as one that never stopped."""

import os
import re
import signal
import subprocess
import time

import pytest

import oracle
from conftest import losses_by_step, run_binary, run_llmgen

STEPS = 8


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    # big enough that writing a checkpoint takes a while (so SIGKILL can land inside one)
    oracle.make_gpt2_model_dir(d / "model", n_layer=4, n_head=4, n_embd=256, vocab_size=2000, n_positions=64, seed=5)
    pat = oracle.random_shards(d / "data", 2000, 20000, seed=4)
    run_llmgen("build", d / "model" / "config.json", "-o", d / "build")
    flags = ["-i", pat, "-b", 2, "-t", 32, "-x", STEPS, "-l", "1e-3", "-u", 2, "-k", "cosine", "-c", "0.1", "-v", 0]
    ref = d / "ref"
    run_binary(d / "build" / "train", *flags, "-o", ref)
    return dict(dir=d, binary=d / "build" / "train", flags=[str(f) for f in flags], ref=losses_by_step(ref))


def ckpt_is_whole(run, name):
    """the checkpoint `name` in `run` holds every file, none half-written: transformers loads the model and
    state.bin has the size of a state of this spec (header + params, m, v)"""
    ck = run / name
    assert sorted(p.name for p in ck.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "state.bin",
    ]
    hf = oracle.load_gpt2(ck)
    n = sum(p.numel() for p in hf.parameters())
    assert n > 0
    return ck


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_the_step_then_resume_is_bit_exact(trainer, tmp_path, sig, code):
    run = tmp_path / "run"
    p = subprocess.Popen([str(trainer["binary"]), *trainer["flags"], "-o", str(run)], stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step 3/"):
            p.send_signal(sig)
            break
    out = p.stdout.read()
    assert p.wait() == code
    m = re.search(r"stopped by (SIG\w+) after step (\d+) \(checkpoint (ckpt_\d+)\)", out)
    assert m and m.group(1) == signal.Signals(sig).name, out
    stopped_at = int(m.group(2))
    assert 3 <= stopped_at < STEPS and m.group(3) == f"ckpt_{stopped_at:08d}"
    assert (run / "latest").read_text().strip() == m.group(3)
    assert max(losses_by_step(run)) == stopped_at
    ckpt_is_whole(run, m.group(3))
    run_binary(trainer["binary"], *trainer["flags"], "-o", run, "-y", 1)
    assert losses_by_step(run) == trainer["ref"]  # bit for bit: JSON holds every float32 digit


def test_sigint_while_writing_a_checkpoint_lets_it_land(trainer, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(
        [str(trainer["binary"]), *trainer["flags"], "-n", "1", "-o", str(run)], stdout=subprocess.PIPE, text=True
    )
    mid_write = None
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        # a checkpoint folder's file being written (not latest.tmp, the pointer's own atomic write, whose folder
        # is the run's), after the first checkpoint landed
        tmps = list(run.glob("ckpt_*/*.tmp")) if run.exists() else []
        if tmps and (run / "latest").exists():
            p.send_signal(signal.SIGINT)
            mid_write = tmps[0].parent.name
            break
        time.sleep(0.0005)
    out = p.stdout.read()
    rc = p.wait()
    if mid_write is None:
        pytest.skip("the run finished before a checkpoint write could be interrupted (machine too fast)")
    assert rc == 130, out
    # the interrupted write finished, and it is the stopped step's checkpoint: no second one after it
    m = re.search(r"stopped by SIGINT after step (\d+) \(checkpoint (ckpt_\d+)\)", out)
    assert m and m.group(2) == mid_write, (mid_write, out)
    assert (run / "latest").read_text().strip() == mid_write
    assert not list(run.rglob("*.tmp"))
    ckpt_is_whole(run, mid_write)
    run_binary(trainer["binary"], *trainer["flags"], "-o", run, "-y", 1)
    assert losses_by_step(run) == trainer["ref"]


def test_reader_going_away_does_not_stop_the_run(trainer, tmp_path):
    """stdout a pipe its reader closes after the first step line (SIGPIPE, EPIPE), or stdout and stderr
    closed from the start: the run finishes, its last checkpoint whole, its log untouched by step lines."""
    run = tmp_path / "run"
    p = subprocess.Popen(
        [str(trainer["binary"]), *trainer["flags"], "-o", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    for line in p.stdout:
        if line.startswith(b"step 1/"):
            break
    p.stdout.close()
    p.stderr.close()
    assert p.wait(timeout=300) == 0
    assert (run / "latest").read_text().strip() == f"ckpt_{STEPS:08d}"
    ckpt_is_whole(run, f"ckpt_{STEPS:08d}")
    assert losses_by_step(run) == trainer["ref"]

    closed = tmp_path / "closed"
    r = subprocess.run(
        [str(trainer["binary"]), *trainer["flags"], "-o", str(closed)],
        preexec_fn=lambda: (os.close(1), os.close(2)),
        timeout=300,
    )
    assert r.returncode == 0
    assert losses_by_step(closed) == trainer["ref"]  # every line of log.jsonl is JSON: no step line got in
    ckpt_is_whole(closed, f"ckpt_{STEPS:08d}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_before_training_writes_nothing(trainer, tmp_path, sig, code):
    """The token table is read before training starts: a FIFO holds the trainer there until the signal."""
    fifo = tmp_path / "tokenizer.bin"
    os.mkfifo(fifo)
    run = tmp_path / "run"
    p = subprocess.Popen(
        [str(trainer["binary"]), *trainer["flags"], "-s", "1", "--tokenizer", str(fifo), "-o", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    writer = None
    while writer is None and time.time() < deadline:  # open succeeds once the trainer has it open to read
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)
    assert writer is not None and p.poll() is None
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    os.close(writer)
    assert p.returncode == code, (out, err)
    assert "nothing written" in err
    assert not run.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tokenizer.bin"]


def test_sigkill_while_writing_a_checkpoint(trainer, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(
        [str(trainer["binary"]), *trainer["flags"], "-n", "1", "-o", str(run)], stdout=subprocess.DEVNULL
    )
    killed_mid_write = False
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        tmps = [f for f in run.rglob("*.tmp")] if run.exists() else []
        # wait for a write after the first checkpoint exists, so there is a previous one to keep
        if tmps and (run / "latest").exists():
            p.send_signal(signal.SIGKILL)
            killed_mid_write = True
            break
        time.sleep(0.0005)
    p.wait()
    if not killed_mid_write:
        pytest.skip("the run finished before a checkpoint write could be interrupted (machine too fast)")
    latest = run / (run / "latest").read_text().strip()
    assert (latest / "model.safetensors").is_file() and (latest / "state.bin").is_file()
    run_binary(trainer["binary"], *trainer["flags"], "-o", run, "-y", 1)
    assert losses_by_step(run) == trainer["ref"]


def test_resume_refuses_other_spec_and_truncated_state(trainer, tmp_path):
    run = tmp_path / "run"
    run_binary(trainer["binary"], *trainer["flags"], "-x", 2, "-o", run)
    # the checkpoint of another spec
    oracle.make_gpt2_model_dir(tmp_path / "m2", 1, 2, 32, 2000, 64, seed=0)
    run_llmgen("build", tmp_path / "m2" / "config.json", "-o", tmp_path / "b2")
    r = run_binary(tmp_path / "b2" / "train", *trainer["flags"][:-2], "-o", run, "-y", 1, check=False)
    assert r.returncode != 0 and "another spec" in r.stderr, r.stderr
    # a truncated state file
    state = run / (run / "latest").read_text().strip() / "state.bin"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    r = run_binary(trainer["binary"], *trainer["flags"], "-o", run, "-y", 1, check=False)
    assert r.returncode != 0 and "truncated" in r.stderr, r.stderr
    # no checkpoint at all
    r = run_binary(trainer["binary"], *trainer["flags"], "-o", tmp_path / "empty", "-y", 1, check=False)
    assert r.returncode != 0 and "no checkpoint" in r.stderr


def test_nan_loss_stops_with_the_step(trainer, tmp_path):
    # a later flag overrides an earlier one: an absurd constant learning rate blows the loss up
    r = run_binary(trainer["binary"], *trainer["flags"], "-u", 0, "-l", "1e38", "-k", "constant", check=False)
    assert r.returncode != 0 and "at step" in r.stderr and ("NaN" in r.stderr or "Inf" in r.stderr), r.stderr
