"""The classifier in row chunks (passes/memory.py's ClassifierChunks, templates/cuda/xent.cu.j2's
classifier_chunks): the memory plan's choice of rows, what `llmgen inspect` shows, and the emulated CUDA trainers
built with a small forced chunk (LLMGEN_CLASSIFIER_ROWS=96 at B*T = 256: chunks of 96, 96 and a ragged 64 rows)
against PyTorch under the matrix's tolerance tables: step 0's --dump (logits read chunk by chunk, the loss, every
gradient) and ten AdamW steps (training micro-steps replayed as a CUDA Graph)."""

import os

import numpy as np
import pytest

from conftest import check_dump, note, run_binary, run_llmgen, train
from llmgen.checkpoint import read_safetensors
from llmgen.compiler import compile_graph
from llmgen.passes.memory import classifier_rows, plan_memory
from llmgen.spec import load_spec
from matrix import ROWS, params

FORCED_ROWS = 96  # does not divide B*T = 256: the last chunk is ragged
CHUNKED = [r for r in ROWS if r.target.cuda and r.arch.name in ("gpt2-tiny", "llama-gqa4-untied-scaled")]


def test_plan_chooses_rows_and_drops_the_logits_from_the_arena(monkeypatch):
    monkeypatch.delenv("LLMGEN_CLASSIFIER_ROWS", raising=False)
    spec = load_spec("gpt2", "bf16")
    g, whole = compile_graph(spec, B=1, T=1, dtype="bf16")
    chunked = plan_memory(g, "bf16", chunk_classifier=True)
    c = chunked.classifier
    assert whole.classifier is None and c is not None
    assert c.rows % 128 == 0 and c.rows * c.vp * 2 <= 256 << 20 and c.vp == 50304
    # the logits left the arena: their Vp elements per token, less what the packing gives back elsewhere
    assert whole.act_elems - chunked.act_elems > 0.9 * c.vp
    assert c.chunks(64 * 1024) == -(-64 * 1024 // c.rows)
    monkeypatch.setenv("LLMGEN_CLASSIFIER_ROWS", "96")
    assert classifier_rows(50304, 2) == 96
    monkeypatch.setenv("LLMGEN_CLASSIFIER_ROWS", "0")
    with pytest.raises(ValueError):
        classifier_rows(50304, 2)


def test_inspect_shows_the_chunks():
    out = run_llmgen("inspect", "gpt2", "-b", "64", "-t", "1024", "--dtype", "bf16").stdout
    assert "classifier chunks (CUDA target): 2560 rows x 50304 per chunk, 26 chunk(s)" in out
    assert "245.6 MiB  instead of 6.1 GiB whole" in out


def test_only_the_cuda_target_chunks():
    env = dict(os.environ, LLMGEN_CLASSIFIER_ROWS=str(FORCED_ROWS))
    cu = run_llmgen("emit", "gpt2-tiny", "--target", "cuda", env=env).stdout
    assert f"enum {{ CLASSIFIER_ROWS = {FORCED_ROWS} }};" in cu and "A.logits" not in cu
    c = run_llmgen("emit", "gpt2-tiny", "--target", "c", env=env).stdout
    assert "CLASSIFIER_ROWS" not in c


@pytest.fixture(scope="module")
def chunked_trainer(matrix_data, tmp_path_factory):
    """the row's trainer built with LLMGEN_CLASSIFIER_ROWS=96 (and the given build flags), once per row"""
    built = {}

    def get(row, *flags):
        if (row.id, flags) not in built:
            out = tmp_path_factory.mktemp("chunked")
            env = dict(os.environ, LLMGEN_CLASSIFIER_ROWS=str(FORCED_ROWS))
            cfg = matrix_data(row)["cfg"]
            run_llmgen("build", cfg, *row.arch.build_flags, *row.target.flags, *flags, "-o", out, env=env)
            assert f"CLASSIFIER_ROWS = {FORCED_ROWS}" in (out / "train.cu").read_text()
            built[row.id, flags] = out / "train"
        return built[row.id, flags]

    return get


@pytest.mark.parametrize("row", **params(CHUNKED))
def test_chunked_step0_matches_pytorch(row, matrix_data, chunked_trainer, oracle_runs, tmp_path):
    m, ref = matrix_data(row), oracle_runs(row, train=False)
    assert row.B * row.T % FORCED_ROWS != 0
    args = ["-e", m["model"], "-i", m["pattern"], "-b", row.B, "-t", row.T, "--dump", tmp_path / "dump"]
    run_binary(chunked_trainer(row), *args, timeout=900)
    check_dump(row, read_safetensors(tmp_path / "dump"), ref["dump"])


@pytest.mark.parametrize("row", **params([r for r in CHUNKED if r.trained]))
def test_chunked_training_matches_pytorch(row, matrix_data, chunked_trainer, oracle_runs, tmp_path):
    m, ref = matrix_data(row), oracle_runs(row)["train"]
    log = train(chunked_trainer(row), m, tmp_path / "run")
    got = np.array([r["train_loss"] for r in log])
    err = float(np.max(np.abs(got - ref["losses"]) / np.abs(ref["losses"])))
    note(f"{row.target.name} {row.family} chunked 10 AdamW losses rel", err)
    assert err <= row.tol["losses"].value, f"losses: {err:.2e}"
    norms = np.array([r["grad_norm"] for r in log])
    err = float(np.max(np.abs(norms - ref["grad_norms"]) / np.abs(ref["grad_norms"])))
    note(f"{row.target.name} {row.family} chunked grad norms rel", err)
    assert err <= row.tol["norms"].value, f"grad norms: {err:.2e}"


RECOMPUTED = [r for r in CHUNKED if r.target.name == "cuda-bf16" and r.arch.name == "gpt2-tiny"]


@pytest.mark.parametrize("row", **params(RECOMPUTED))
def test_chunks_with_recompute_2_match_pytorch(row, matrix_data, chunked_trainer, oracle_runs, tmp_path):
    """--recompute 2 recomputes the classifier's input (the final layernorm's output) in the backward: the chunk
    loop's backward (step 0's --dump) reads that copy, a training micro-step the forward's x"""
    binary = chunked_trainer(row, "--recompute", "2")
    cu = (binary.parent / "train.cu").read_text()
    assert "A.lnf_re, P.wte, targets" in cu  # the backward's chunk loop reads the recomputed x
    m, ref = matrix_data(row), oracle_runs(row)
    args = ["-e", m["model"], "-i", m["pattern"], "-b", row.B, "-t", row.T, "--dump", tmp_path / "dump"]
    run_binary(binary, *args, timeout=900)
    check_dump(row, read_safetensors(tmp_path / "dump"), ref["dump"])
    log = train(binary, m, tmp_path / "run")
    err = float(
        np.max(np.abs(np.array([r["train_loss"] for r in log]) - ref["train"]["losses"]) / ref["train"]["losses"])
    )
    note(f"{row.target.name} {row.family} chunked -r 2 10 AdamW losses rel", err)
    assert err <= row.tol["losses"].value, f"losses: {err:.2e}"
