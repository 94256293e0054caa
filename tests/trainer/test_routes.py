"""The same losses by other routes, on the matrix rows that name the route (tests/matrix.py, Row.routes):

same_losses         B=4 in one micro-batch vs -d (two micro-batches of B=2 reading the same tokens);
                    recompute levels 1 and 2 vs 0; two runs log the same bits (no float atomics);
                    a run resumed from its step-3 checkpoint logs the same bits as the whole run
                    (bf16 too: the bf16 parameters are a pure function of the fp32 master,
                    hash-seeded stochastic rounding)
unfused             the unfused graph (--no-fuse) trains as the fused one
fallback_epilogues  built with -DLLMGEN_NO_FUSED_EPILOGUES: the kernels a program runs when cuBLASLt
                    has no algorithm for a fused epilogue
c_twin              the emulated CUDA program and the C twin: losses, grad norms, (dump) step 0
llmc_flags          llm.c's -w 0 refused by name on a bf16 build; -w 1 and -z 1 train
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import note, read_log, run_binary, train
from llmgen.checkpoint import read_safetensors
from matrix import params, rows_with


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """get(binary, m, steps, B, T, *extra) -> log rows of train(), each distinct run once per module."""
    root = tmp_path_factory.mktemp("routes")
    cache = {}

    def get(binary, m, steps, B=None, T=None, *extra):
        key = (str(binary), str(m["model"]), steps, B or m["B"], T or m["T"], extra)
        if key not in cache:
            cache[key] = train(binary, m, root / f"r{len(cache)}", *extra, steps=steps, B=B, T=T)
        return cache[key]

    return get


def pairs(log):
    return [(r["train_loss"], r["grad_norm"]) for r in log]


def max_rel(got, want):
    return float(np.max(np.abs(np.array(got) - want) / np.abs(np.array(want))))


SAME = rows_with("same_losses")


@pytest.mark.parametrize("row", **params(SAME))
def test_grad_accumulation_gives_the_same_losses(row, matrix_data, trainer, runs):
    p, m = row.routes["same_losses"], matrix_data(row)
    want = [r["train_loss"] for r in runs(trainer(row), m, p["steps"], p["B"], p["T"])]
    half = p["B"] // 2
    got = [r["train_loss"] for r in runs(trainer(row), m, p["steps"], half, p["T"], "-d", p["B"] * p["T"])]
    err = max_rel(got, want)
    note(f"{row.target.name} {row.family} -d vs plain rel", err)
    assert err <= row.tol["accum"].value, f"-d: {err:.2e}"


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("row", **params(SAME))
def test_recompute_gives_the_same_losses(row, level, matrix_data, trainer, runs):
    p, m = row.routes["same_losses"], matrix_data(row)
    want = runs(trainer(row), m, p["steps"], p["B"], p["T"])
    got = runs(trainer(row, "--recompute", str(level)), m, p["steps"], p["B"], p["T"])
    err = max_rel([r["train_loss"] for r in got], [r["train_loss"] for r in want])
    note(f"{row.target.name} {row.family} recompute {level} vs 0 rel", err)
    if row.tol["recompute"].kind == "exact":
        assert pairs(got) == pairs(want), f"recompute {level}"
    else:
        assert err <= row.tol["recompute"].value, f"recompute {level}: {err:.2e}"


@pytest.mark.parametrize("row", **params(SAME))
def test_deterministic_and_resume_is_bit_exact(row, matrix_data, trainer, runs, tmp_path):
    p, m = row.routes["same_losses"], matrix_data(row)
    binary = trainer(row)
    want = pairs(runs(binary, m, p["steps"], p["B"], p["T"]))
    b = tmp_path / "b"
    assert pairs(train(binary, m, b, "-n", 3, steps=p["steps"], B=p["B"], T=p["T"])) == want
    (b / "latest").write_text("ckpt_00000003\n")
    run_binary(
        binary,
        "-e",
        m["model"],
        "-i",
        m["pattern"],
        "-b",
        p["B"],
        "-t",
        p["T"],
        "-x",
        p["steps"],
        "-l",
        "1e-3",
        "-k",
        "constant",
        "-c",
        0,
        "-v",
        0,
        "-n",
        3,
        "-y",
        1,
        "-o",
        b,
        timeout=900,
    )
    resumed = {r["step"]: (r["train_loss"], r["grad_norm"]) for r in read_log(b)}
    assert resumed == dict(enumerate(want, start=1))


@pytest.mark.parametrize("row", **params(rows_with("unfused")))
def test_unfused_trains_the_same(row, matrix_data, trainer, runs):
    p, m = row.routes["unfused"], matrix_data(row)
    want = [r["train_loss"] for r in runs(trainer(row), m, p["steps"], None, p.get("T"))]
    got = [r["train_loss"] for r in runs(trainer(row, "--no-fuse"), m, p["steps"], None, p.get("T"))]
    np.testing.assert_allclose(got, want, rtol=row.tol["unfused"].value)


@pytest.mark.parametrize("row", **params(rows_with("fallback_epilogues")))
def test_fallback_epilogues_train_the_same(row, matrix_data, trainer, runs, tmp_path):
    from llmgen.runtime.build import build_cuda

    p, m = row.routes["fallback_epilogues"], matrix_data(row)
    base = trainer(row)
    want = [r["train_loss"] for r in runs(base, m, p["steps"])]
    plain = build_cuda(
        base.parent / "train.cu", tmp_path / "train_plain", emulate=True, extra_flags=["-DLLMGEN_NO_FUSED_EPILOGUES"]
    )
    got = [r["train_loss"] for r in train(Path(plain), m, tmp_path / "plain", steps=p["steps"])]
    np.testing.assert_allclose(got, want, rtol=row.tol["unfused"].value)


@pytest.mark.parametrize("row", **params(rows_with("c_twin")))
def test_emulated_cuda_and_c_twin_agree(row, matrix_data, trainer, build_cache, runs, tmp_path):
    p, m = row.routes["c_twin"], matrix_data(row)
    cuda = trainer(row)
    c = build_cache(m["cfg"], *row.arch.build_flags)
    a = runs(cuda, m, p["steps"], None, p.get("T"))
    b = runs(c, m, p["steps"], None, p.get("T"))
    np.testing.assert_allclose(
        [r["train_loss"] for r in a], [r["train_loss"] for r in b], rtol=row.tol["twin_losses"].value
    )
    np.testing.assert_allclose(
        [r["grad_norm"] for r in a], [r["grad_norm"] for r in b], rtol=row.tol["twin_norms"].value
    )
    if p.get("dump"):
        for binary, d in ((cuda, "cuda"), (c, "c")):
            run_binary(
                binary,
                "-e",
                m["model"],
                "-i",
                m["pattern"],
                "-b",
                m["B"],
                "-t",
                m["T"],
                "--dump",
                tmp_path / d,
                timeout=900,
            )
        x, y = read_safetensors(tmp_path / "cuda"), read_safetensors(tmp_path / "c")
        for k in y:
            assert np.abs(x[k] - y[k]).max() <= row.tol["twin_dump"].value * (np.abs(y[k]).max() + 1e-30), k


@pytest.mark.parametrize("row", **params(rows_with("llmc_flags")))
def test_llmc_flags_on_the_bf16_build(row, matrix_data, trainer):
    """llm.c's -w 0 (no fp32 master weights) is refused by name on a bf16 build, which always keeps them;
    -w 1 and -z 1 (ZeRO stage, one process) train."""
    m = matrix_data(row)
    binary = trainer(row)
    common = ["-e", m["model"], "-i", m["pattern"], "-b", m["B"], "-t", m["T"], "-x", 1, "-v", 0]
    r = subprocess.run([str(binary), *map(str, common), "-w", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "bf16 build always keeps fp32 master weights" in r.stderr, r.stderr
    r = run_binary(binary, *common, "-w", 1, "-z", 1)
    assert "step 1/1" in r.stdout
