"""`llmgen train` as a product: checks before anything compiles, the run folder, the progress bar at
80 columns, Ctrl-C from a terminal (pseudo-terminal) mid-step and mid-checkpoint with a bit-exact
resume, a trainer killed by a signal, and `llmgen inspect` without the tokenizer or the data code."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import oracle
from conftest import REPO, losses_by_step, run_binary, run_in_pty, run_llmgen
from llmgen.checkpoint import read_safetensors

STEPS = 14
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model big enough that a step and a checkpoint take a moment (4 layers, 256 wide), llm.c-named
    shards (TinyStories_train.bin / TinyStories_val.bin), one build cache, and an uninterrupted run."""
    d = tmp_path_factory.mktemp("product")
    oracle.make_gpt2_model_dir(d / "model", n_layer=4, n_head=4, n_embd=256, vocab_size=2000, n_positions=64, seed=5)
    data = d / "data"
    data.mkdir()
    rng = np.random.default_rng(4)
    oracle.write_shard(data / "TinyStories_train.bin", rng.integers(0, 2000, 30000))
    oracle.write_shard(data / "TinyStories_val.bin", rng.integers(0, 2000, 4000))
    cfg = d / "model" / "config.json"
    flags = [
        "--data",
        data,
        "--cache-dir",
        d / "cache",
        "-b",
        2,
        "-t",
        32,
        "-x",
        STEPS,
        "-l",
        "1e-3",
        "-u",
        2,
        "-c",
        "0.1",
        "-v",
        4,
        "-m",
        2,
    ]
    r = run_llmgen("train", cfg, *flags, "-o", d / "ref")
    assert "building trainer for spec" in r.stderr and "(first run" in r.stderr
    return dict(dir=d, cfg=cfg, flags=[str(f) for f in flags], ref=losses_by_step(d / "ref"), data=data)


def llmgen_argv(*args):
    return [sys.executable, "-m", "llmgen", *map(str, args)]


# --------------------------------------------------------------------------------------------
# checks before the trainer compiles (an empty cache stays empty)


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["-b", "0"], ["-b (", "must be >= 1, got 0"]),
        (["-t", "65"], ["-t (", "must be in [1, 64] (the spec's max_seq_len), got 65"]),
        (["-d", "100"], ["-d (total batch, 100 tokens) must be a positive multiple of B*T = 4*64 = 256"]),
        (["-k", "cosin"], ["-k (", "must be one of cosine, linear, constant, wsd; got 'cosin'"]),
        (["-l", "abc"], ["-l (", "expects a number, got 'abc'"]),
        (["-q", "2"], ["-q (", "must be in [0, 1], got 2.0"]),
        (["-i", "/nonexistent/*.bin"], ["-i /nonexistent/*.bin: no file matches"]),
    ],
)
def test_flags_are_checked_before_compiling(setup, tmp_path, flags, needles):
    """The bounds and choices of llmgen/flags.py's table (the messages carry the flag's help text)."""
    data = [] if flags[0] == "-i" else ["--data", setup["data"]]
    r = run_llmgen(
        "train", setup["cfg"], *data, "--cache-dir", tmp_path / "cache", *flags, "-o", tmp_path / "r", check=False
    )
    assert r.returncode == 1 and all(n in r.stderr for n in needles) and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()


def test_data_and_spec_are_checked_before_compiling(setup, tmp_path):
    cache = tmp_path / "cache"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x_train_000000.bin").write_bytes(b"\0" * 100)
    r = run_llmgen("train", setup["cfg"], "--data", bad, "--cache-dir", cache, check=False)
    assert r.returncode == 1 and "x_train_000000.bin" in r.stderr and "too short" in r.stderr
    r = run_llmgen("train", setup["cfg"], "--data", tmp_path / "none", "--cache-dir", cache, check=False)
    assert r.returncode == 1 and "not a folder" in r.stderr
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a_train.bin", "b_train.bin"):
        oracle.write_shard(two / name, np.arange(100))
    r = run_llmgen("train", setup["cfg"], "--data", two, "--cache-dir", cache, check=False)
    assert r.returncode == 1 and "a_train*.bin, b_train*.bin" in r.stderr and "-i" in r.stderr
    spec = tmp_path / "spec.py"
    spec.write_text("from llmgen.spec import GPT2Spec\nspec = GPT2Spec(block_size=256)\n")
    r = run_llmgen("train", spec, "--data", setup["data"], "--cache-dir", cache, check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {spec}:2: GPT2Spec has no field 'block_size'")
    assert "Traceback" not in r.stderr
    spec.write_text("from llmgen.spec import GPT2Spec\nspec = GPT2Spec(n_layer=2\n")
    r = run_llmgen("train", spec, "--data", setup["data"], "--cache-dir", cache, check=False)
    assert r.returncode == 1 and f"error: {spec}:2: syntax error" in r.stderr and "Traceback" not in r.stderr
    assert not cache.exists()


def test_llmc_shard_names_and_default_run_folder(setup, tmp_path):
    """--data took TinyStories_train.bin / TinyStories_val.bin (llm.c's names) in the fixture; the
    default run folder is runs/<spec name>-<digest>, one per spec."""
    log = [json.loads(x) for x in open(setup["dir"] / "ref" / "log.jsonl")]
    assert log[0] == {"step": 0, "val_loss": log[0]["val_loss"]}  # val shards were found too
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.py").write_text(
        "from llmgen.spec import GPT2Spec\n"
        "spec = GPT2Spec(n_layer=1, n_head=2, n_embd=32, vocab_size=2000, max_seq_len=32)\n"
    )
    r = subprocess.run(
        llmgen_argv(
            "train",
            "tiny.py",
            "--data",
            setup["data"],
            "--cache-dir",
            tmp_path / "cache",
            "-b",
            1,
            "-t",
            16,
            "-x",
            2,
            "-v",
            0,
        ),
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    from llmgen.spec import load_spec

    digest = load_spec(str(work / "tiny.py")).digest()
    assert (work / "runs" / f"tiny-{digest}" / "latest").is_file()


def test_a_used_run_folder_is_refused_and_left_alone(setup, tmp_path):
    ref = setup["dir"] / "ref"
    before = {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    r = run_llmgen("train", setup["cfg"], *setup["flags"], "-o", ref, check=False)
    assert r.returncode == 1 and "already holds a run" in r.stderr and "-y 1" in r.stderr and "fresh -o" in r.stderr
    assert {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()} == before


def test_the_binary_itself_refuses_a_used_run_folder(setup):
    """The trainer's own check (issue 10's binary side): run directly into a folder that holds a run,
    without -y 1, it refuses naming -y 1, and changes nothing there."""
    ref = setup["dir"] / "ref"
    binary = next((setup["dir"] / "cache" / "builds").glob("*/train"))
    before = {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    r = run_binary(
        binary, "-i", setup["data"] / "TinyStories_train.bin", "-b", 2, "-t", 32, "-x", 2, "-o", ref, check=False
    )
    assert r.returncode != 0 and "-y 1" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()} == before


# --------------------------------------------------------------------------------------------
# the progress bar in a terminal 80 columns wide


def test_progress_bar_at_80_columns(setup, tmp_path):
    run = tmp_path / "run"
    rc, out = run_in_pty(llmgen_argv("train", setup["cfg"], *setup["flags"], "-o", run), cols=80)
    assert rc == 0, out
    screen_lines = [ANSI.sub("", seg) for line in out.split("\n") for seg in line.split("\r")]
    bars = [s for s in screen_lines if s.startswith("step ") and "ETA" in s]
    # every drawing of the bar fits the width (a longer one would wrap, and \r could not redraw it)
    assert len(bars) >= 3 and max(len(s.rstrip()) for s in bars) <= 80, max(bars, key=len)
    assert bars and f"step {STEPS}/{STEPS}" in bars[-1]
    # the last val loss stays in the bar, and each val loss also went into the scroll-back on its own line
    log_vals = [json.loads(x)["val_loss"] for x in open(run / "log.jsonl") if "val_loss" in x]
    assert f"val {log_vals[-1]:.6f}" in bars[-1]
    scrolled = [line.rstrip("\r").split("\r")[-1] for line in ANSI.sub("", out).split("\n")]  # what stays
    assert [float(x.split()[-1]) for x in scrolled if re.match(r"step \d+/\d+ \| val loss ", x)] == pytest.approx(
        log_vals[1:], abs=1e-6
    )


# --------------------------------------------------------------------------------------------
# Ctrl-C from a terminal, then -y 1: the same losses, bit for bit


def _interrupt_when(cond):
    sent = []

    def on_output(text):
        if not sent and cond(text):
            sent.append(time.monotonic())
            return b"\x03"
        return b""

    return on_output, sent


@pytest.mark.parametrize("when", ["mid-step", "mid-checkpoint"])
def test_ctrl_c_in_a_terminal_then_resume_is_bit_exact(setup, tmp_path, when):
    run = tmp_path / "run"
    extra = ["-n", "1"] if when == "mid-checkpoint" else []
    if when == "mid-step":
        cond = lambda text: re.search(r"step [3-9]/", text) is not None  # noqa: E731 -- step 4 is running
    else:

        def cond(text):  # a checkpoint is being written after an earlier one landed
            return (run / "latest").exists() and any(p.name.endswith(".tmp") for p in run.rglob("*"))

    on_output, sent = _interrupt_when(cond)
    rc, out = run_in_pty(llmgen_argv("train", setup["cfg"], *setup["flags"], *extra, "-o", run), on_output)
    assert sent, f"never interrupted:\n{out[-2000:]}"
    assert rc == 130, out[-3000:]
    assert "stopped by SIGINT at step" in out and "-y 1" in out
    latest = run / (run / "latest").read_text().strip()
    step = int(latest.name.split("_")[1])
    assert 1 <= step < STEPS, "the run should have stopped early"
    tensors = read_safetensors(latest / "model.safetensors")  # whole: parses, every tensor there
    assert "transformer.wte.weight" in tensors and (latest / "state.bin").stat().st_size > 0
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    run_llmgen("train", setup["cfg"], *setup["flags"], *extra, "-o", run, "-y", 1)
    assert losses_by_step(run) == setup["ref"]


def test_examples_runner_waits_for_the_interrupted_run(setup, tmp_path):
    """The examples run llmgen commands through llmgen.cli.run_llmgen: Ctrl-C in the terminal stops the
    training at a checkpoint, the example waits for it and exits 130."""
    script = tmp_path / "example.py"
    flags = ", ".join(repr(f) for f in setup["flags"])
    script.write_text(
        "from llmgen.cli import run_llmgen\n"
        f"run_llmgen('train', {str(setup['cfg'])!r}, {flags}, '-o', {str(tmp_path / 'run')!r})\n"
        "print('not reached')\n"
    )
    on_output, sent = _interrupt_when(lambda text: re.search(r"step [3-9]/", text) is not None)
    rc, out = run_in_pty([sys.executable, str(script)], on_output, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert sent and rc == 130, out[-2000:]
    assert "stopped by SIGINT at step" in out and "not reached" not in out
    latest = tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip()
    assert read_safetensors(latest / "model.safetensors")


# --------------------------------------------------------------------------------------------
# signals outside a terminal: the wrapper alone, and a trainer killed by SIGKILL


def _trainer_pid(wrapper_pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise AssertionError("the trainer never started")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the trainer")
def test_sigkilled_trainer_is_reported_by_name_and_step(setup, tmp_path):
    p = subprocess.Popen(
        llmgen_argv("train", setup["cfg"], *setup["flags"], "-o", tmp_path / "run"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stderr:
        if line.startswith("step 2/"):
            break
    os.kill(_trainer_pid(p.pid), signal.SIGKILL)
    err = p.stderr.read()
    assert p.wait() == 128 + 9
    m = re.search(
        r"error: the trainer was killed by SIGKILL at step (\d+) \(the kernel's OOM killer sends SIGKILL\)", err
    )
    assert m and int(m.group(1)) >= 2, err


def test_sigint_to_the_wrapper_alone_is_passed_on(setup, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(
        llmgen_argv("train", setup["cfg"], *setup["flags"], "-o", run),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stderr:
        if line.startswith("step 2/"):
            break
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait() == 130, err
    step = int((run / "latest").read_text().strip().split("_")[1])
    assert 2 <= step < STEPS and f"stopped by SIGINT at step {step}" in err


# --------------------------------------------------------------------------------------------


def test_wandb_hook_gets_the_step_lines(setup, tmp_path):
    """--wandb PROJECT: each parsed step line goes to wandb.log (a stand-in module records the calls);
    the values are the log's, to the 6 decimals the step line prints."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "wandb.py").write_text(
        "import json, os\n"
        "class _Run:\n"
        "    def log(self, data, step):\n"
        "        with open(os.environ['WANDB_RECORD'], 'a') as f: f.write(json.dumps([step, data]) + '\\n')\n"
        "def init(project, name, config):\n"
        "    with open(os.environ['WANDB_RECORD'], 'a') as f: f.write(json.dumps(['init', project]) + '\\n')\n"
        "    return _Run()\n"
    )
    record = tmp_path / "record.jsonl"
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{fake}:{REPO}", "WANDB_RECORD": str(record)}
    r = subprocess.run(
        llmgen_argv("train", setup["cfg"], *setup["flags"], "--wandb", "proj", "-o", run),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    calls = [json.loads(x) for x in record.read_text().splitlines()]
    assert calls[0] == ["init", "proj"]
    logged = {step: data for step, data in calls[1:]}
    losses = losses_by_step(run)
    assert sorted(logged) == sorted(losses)
    for step, data in logged.items():
        assert data["train_loss"] == pytest.approx(losses[step][0], abs=1e-6)
    vals = {json.loads(x)["step"]: json.loads(x)["val_loss"] for x in open(run / "log.jsonl") if "val_loss" in x}
    assert {s: d["val_loss"] for s, d in logged.items() if "val_loss" in d} == pytest.approx(
        {s: v for s, v in vals.items() if s > 0}, abs=1e-6
    )


def test_inspect_needs_neither_tiktoken_nor_the_data_code():
    """tiktoken made unimportable (None in sys.modules): inspect still works, and never loaded the data code."""
    code = (
        "import sys; sys.modules['tiktoken'] = None\n"
        "from llmgen.cli import main\n"
        "rc = main(['inspect', 'gpt2-tiny', '-b', '2', '-t', '64'])\n"
        "assert not [m for m in sys.modules if m.startswith(('llmgen.data', 'llmgen.tokenizer', 'tqdm'))], "
        "sorted(m for m in sys.modules if m.startswith('llmgen'))\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "memory plan:" in r.stdout and "kernels per micro-batch step" in r.stdout
