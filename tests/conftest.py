"""Shared by every test: running the CLI and the built trainers, and the arch x target matrix's
fixtures (tests/matrix.py): model folders, shards, builds and oracle runs made once per session, and
the worst measured error per quantity, printed at the end of the run."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_llmgen(*args, check=True, **kw):
    """Run the CLI as a user would (python -m llmgen), returning the CompletedProcess."""
    r = subprocess.run(
        [sys.executable, "-m", "llmgen", *map(str, args)], capture_output=True, text=True, cwd=REPO, **kw
    )
    if check and r.returncode != 0:
        raise AssertionError(f"llmgen {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def run_binary(binary, *args, check=True, timeout=600):
    r = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{binary} {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    """Trainers built once per session, keyed by (spec source, target options)."""
    root = tmp_path_factory.mktemp("builds")
    cache = {}

    def get(spec_source, *extra):
        key = (str(spec_source), extra)
        if key not in cache:
            out = root / f"b{len(cache)}"
            run_llmgen("build", spec_source, *extra, "-o", out)
            cache[key] = out / "train"
        return cache[key]

    return get


def run_in_pty(argv, on_output=None, cols=80, rows=24, timeout=600, cwd=REPO, env=None):
    """Run argv with a pseudo-terminal as its controlling terminal (stdin, stdout, stderr), as from
    an interactive shell: its process group is the terminal's foreground group, so writing b"\\x03"
    to the master makes the line discipline send SIGINT to it, exactly like Ctrl-C.

    on_output(text_so_far) -> bytes to type (b"" for nothing) is called after each read and every
    few milliseconds while the program is quiet (so it can also watch files).
    Returns (exit status as subprocess reports it, all output as text)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    pid, master = pty.fork()
    if pid == 0:  # the child: set the window size, then exec
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env or os.environ)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    status = None
    while True:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"{argv} in a pty: no end after {timeout} s:\n{out.decode(errors='replace')[-3000:]}")
        r, _, _ = select.select([master], [], [], 0.003)
        chunk = b""
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                chunk = b""
            out += chunk
        if on_output is not None:
            typed = on_output(out.decode(errors="replace"))
            if typed:
                os.write(master, typed)
        if chunk:
            continue
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            while True:  # what is left in the pty's buffer
                r, _, _ = select.select([master], [], [], 0.1)
                if not r:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            break
    os.close(master)
    rc = os.waitstatus_to_exitcode(status)
    return rc, out.decode(errors="replace")


# ------------------------------------------------------------------------------------------
# the arch x target matrix (tests/matrix.py)

MEASURED: dict[str, float] = {}  # "target family quantity" -> the worst error this session


def note(key, value):
    """Keep the worst measured error per quantity for the summary at the end of the run."""
    MEASURED[key] = max(MEASURED.get(key, 0.0), float(value))


def pytest_terminal_summary(terminalreporter):
    """The worst measured error per quantity over the matrix rows that ran (whatever their order)."""
    if MEASURED:
        terminalreporter.section("worst measured errors (tests/matrix.py rows)")
        for key, value in sorted(MEASURED.items()):
            terminalreporter.write_line(f"  {key:44s} {value:.3e}")


def read_log(run):
    """The training rows of a run folder's log.jsonl (val-only rows left out)."""
    return [r for r in (json.loads(line) for line in open(Path(run) / "log.jsonl")) if "train_loss" in r]


def losses_by_step(run):
    """step -> (train loss, grad norm) of a run's log.jsonl, the later line winning (a resumed run logs the steps
    after its checkpoint again)."""
    return {r["step"]: (r["train_loss"], r["grad_norm"]) for r in read_log(run)}


def rel_err(got, want):
    """max |got - want| relative to the largest |want| of the tensor"""
    return float(np.abs(np.asarray(got) - want).max() / (np.abs(want).max() + 1e-30))


def row_key(row, quantity):
    """a matrix row's name for a measured quantity in the end-of-run table"""
    return f"{row.target.name} {row.family} {quantity}"


def check_dump(row, got, ref):
    """logits, loss and every gradient of a --dump against the oracle's step 0, under the row's table"""
    tol = row.tol
    if tol["logits"].kind == "abs":
        err = float(np.abs(got["logits"] - ref["logits"]).max())
    else:
        err = rel_err(got["logits"], ref["logits"])
    note(row_key(row, f"logits {tol['logits'].kind}"), err)
    assert err <= tol["logits"].value, f"logits: {err:.2e}"
    err = abs(got["loss"][0] - ref["loss"]) / ref["loss"]
    note(row_key(row, "loss rel"), err)
    assert err <= tol["loss"].value, f"loss: {err:.2e}"
    assert set(k[5:] for k in got if k.startswith("grad.")) == set(ref["grads"])
    worst = 0.0
    for name, want in ref["grads"].items():
        e = rel_err(got["grad." + name], want)
        worst = max(worst, e)
        assert e <= tol["grads"].value, f"{name}: {e:.2e}"
    note(row_key(row, "grads rel"), worst)


def train(binary, m, run, *extra, steps=10, B=None, T=None):
    """`steps` constant-LR AdamW steps (lr 1e-3, no decay, no val) from m's weights; the log rows."""
    run_binary(
        binary,
        "-e",
        m["model"],
        "-i",
        m["pattern"],
        "-b",
        B or m["B"],
        "-t",
        T or m["T"],
        "-x",
        steps,
        "-l",
        "1e-3",
        "-k",
        "constant",
        "-c",
        0,
        "-v",
        0,
        *extra,
        "-o",
        run,
        timeout=900,
    )
    return read_log(run)


@pytest.fixture(scope="session")
def matrix_data(tmp_path_factory):
    """get(row) -> dict(model, cfg, pattern, B, T, V, hf): the row's model folder (one per arch) and
    shards (one set per arch and shard size), written once per session."""
    import oracle

    root = tmp_path_factory.mktemp("matrix")
    models, shards = {}, {}

    def get(row):
        arch = row.arch
        if arch.name not in models:
            d = root / arch.name / "model"
            make = oracle.make_gpt2_model_dir if arch.family == "gpt2" else oracle.make_llama_model_dir
            extra = {} if arch.family == "gpt2" else {"rope_theta": 500000.0}
            models[arch.name] = make(d, seed=arch.seed, qk_scale=arch.qk_scale, **extra, **arch.config)
        key = (arch.name, row.n_tokens)
        if key not in shards:
            shards[key] = oracle.random_shards(
                root / arch.name / f"data{row.n_tokens}",
                vocab_size=arch.vocab_size,
                n_tokens=row.n_tokens,
                n_shards=2,
                seed=arch.data_seed,
            )
        model = Path(models[arch.name])
        return dict(
            model=model,
            cfg=model / "config.json",
            pattern=shards[key],
            B=row.B,
            T=row.T,
            V=arch.vocab_size,
            hf=arch.config,
            dir=root / arch.name,
        )

    return get


@pytest.fixture(scope="session")
def trainer(matrix_data, build_cache):
    """get(row, *flags) -> the row's trainer binary (arch flags, target flags, then `flags`), built once."""

    def get(row, *flags):
        return build_cache(matrix_data(row)["cfg"], *row.arch.build_flags, *flags, *row.target.flags)

    return get


@pytest.fixture(scope="session")
def oracle_runs(matrix_data):
    """get(row, train=True) -> dict(dump=step-0 logits/loss/grads, train=10 constant-LR AdamW steps) of
    PyTorch on the row's model and shards, computed once per (arch, shards, B, T)."""
    import oracle

    cache = {}

    def get(row, train=True):
        m = matrix_data(row)
        c = cache.setdefault((row.arch.name, row.n_tokens, row.B, row.T), {})
        llama = row.family == "llama"
        if "dump" not in c:
            c["dump"] = (oracle.llama_step0_dump if llama else oracle.step0_dump)(
                m["model"], m["pattern"], row.B, row.T
            )
        if train and "train" not in c:
            c["train"] = (oracle.train_llama if llama else oracle.train_gpt2)(
                m["model"], m["pattern"], row.B, row.T, 10, 1e-3, schedule="constant"
            )
        return c

    return get
