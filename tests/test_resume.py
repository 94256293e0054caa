"""Checkpoints, resume and stopping: a stopped-and-resumed run logs the same bits as one that never stopped."""

import json
import os
import signal
import subprocess
import time

import pytest

import oracle
from conftest import run_binary, run_llmgen

STEPS = 8


def final_losses(run):
    """step -> train loss, the later line winning (a resumed run re-logs the steps after its checkpoint)."""
    out = {}
    for line in open(run / "log.jsonl"):
        r = json.loads(line)
        if "train_loss" in r:
            out[r["step"]] = (r["train_loss"], r["grad_norm"])
    return out


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
    return dict(dir=d, binary=d / "build" / "train", flags=[str(f) for f in flags], ref=final_losses(ref))


def test_sigterm_then_resume_is_bit_exact(trainer, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([str(trainer["binary"]), *trainer["flags"], "-o", str(run)], stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step 3/"):
            p.send_signal(signal.SIGTERM)
            break
    out = p.stdout.read()
    assert p.wait() == 0
    assert "stopped by signal" in out
    stopped_at = int((run / "latest").read_text().strip().split("_")[1])
    assert 3 <= stopped_at < STEPS
    run_binary(trainer["binary"], *trainer["flags"], "-o", run, "-y", 1)
    assert final_losses(run) == trainer["ref"]          # bit for bit: JSON holds every float32 digit


def test_sigkill_while_writing_a_checkpoint(trainer, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([str(trainer["binary"]), *trainer["flags"], "-n", "1", "-o", str(run)],
                         stdout=subprocess.DEVNULL)
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
    assert final_losses(run) == trainer["ref"]


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
