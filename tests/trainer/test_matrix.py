"""Every row of the arch x target matrix (tests/matrix.py) against the PyTorch oracle (tests/oracle.py),
driven as a user drives it: `llmgen build`, then the binary.

  step 0       --dump: logits, loss and every parameter gradient                     (every row)
  10 steps     constant-LR AdamW: losses and grad norms, then the final checkpoint loads in
               transformers and scores the batch step 11 would read as PyTorch does   (trained rows)
  schedule     cosine with warmup, weight decay and -d = 2 micro-batches per step     (rows with "schedule")
  val loss     -j: the step-0 val loss over 3 batches                                  (rows with "val")

The tolerances are the row's table, each bound with its reason; the worst measured errors are
printed at the end of the run.
"""

import json

import numpy as np
import pytest

import oracle
from conftest import check_dump, note, read_log, rel_err, row_key, run_binary, train
from llmgen.checkpoint import read_safetensors
from matrix import ROWS, params, rows_with


def check_checkpoint(row, m, run, ref):
    """The final checkpoint loads in transformers (the config it carries included) and scores the batch
    step 11 would read as the PyTorch run does."""
    ckpt = run / (run / "latest").read_text().strip()
    assert ckpt.name == "ckpt_00000010"
    if row.family == "gpt2":
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel.from_pretrained(ckpt)
    else:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(ckpt, attn_implementation="eager")
        assert model.config.rope_parameters["rope_type"] == ("llama3" if m["hf"]["rope_scaling"] else "default")
        assert model.config.tie_word_embeddings == m["hf"]["tie_word_embeddings"]
        assert model.config.num_key_value_heads == m["hf"]["n_kv_heads"]
    x, y = list(oracle.batches(m["pattern"], m["B"], m["T"], 11))[-1]
    err = abs(oracle.eval_loss(model, x, y) - ref["next_batch_loss"]) / ref["next_batch_loss"]
    note(row_key(row, "checkpoint eval rel"), err)
    assert err <= row.tol["ckpt"].value, f"checkpoint eval: {err:.2e}"


@pytest.mark.parametrize("row", **params(ROWS))
def test_step0_logits_loss_grads(row, matrix_data, trainer, oracle_runs, tmp_path):
    m, ref = matrix_data(row), oracle_runs(row, train=False)
    run_binary(
        trainer(row),
        "-e",
        m["model"],
        "-i",
        m["pattern"],
        "-b",
        row.B,
        "-t",
        row.T,
        "--dump",
        tmp_path / "dump",
        timeout=900,
    )
    check_dump(row, read_safetensors(tmp_path / "dump"), ref["dump"])


@pytest.mark.parametrize("row", **params([r for r in ROWS if r.trained]))
def test_ten_adamw_steps_and_checkpoint(row, matrix_data, trainer, oracle_runs, tmp_path):
    m, ref = matrix_data(row), oracle_runs(row)["train"]
    log = train(trainer(row), m, tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 11))
    got = np.array([r["train_loss"] for r in log])
    err = np.max(np.abs(got - ref["losses"]) / np.abs(ref["losses"]))
    note(row_key(row, "10 AdamW losses rel"), err)
    assert err <= row.tol["losses"].value, f"losses: {err:.2e}"
    norms = np.array([r["grad_norm"] for r in log])
    err = np.max(np.abs(norms - ref["grad_norms"]) / np.abs(ref["grad_norms"]))
    note(row_key(row, "grad norms rel"), err)
    assert err <= row.tol["norms"].value, f"grad norms: {err:.2e}"
    if row.target.cuda:  # MFU is null on the CPU (no peak), but logged; the peak memory is measured
        assert all("mfu" in r and r["peak_mem_bytes"] > 0 for r in log)
    check_checkpoint(row, m, tmp_path / "run", ref)  # bf16: the fp32 master weights


@pytest.mark.parametrize("row", **params(rows_with("schedule")))
def test_schedule_decay_and_grad_accumulation(row, matrix_data, trainer, tmp_path):
    """cosine with warmup, weight decay, and -d = 2 micro-batches per step (gradient accumulation)."""
    m = matrix_data(row)
    bt = row.B * row.T
    run_binary(
        trainer(row),
        "-e",
        m["model"],
        "-i",
        m["pattern"],
        "-b",
        row.B,
        "-t",
        row.T,
        "-x",
        6,
        "-d",
        2 * bt,
        "-l",
        "2e-3",
        "-u",
        2,
        "-q",
        "0.1",
        "-k",
        "cosine",
        "-c",
        "0.1",
        "-v",
        0,
        "-o",
        tmp_path / "run",
    )
    log = read_log(tmp_path / "run")
    train_ref = oracle.train_llama if row.family == "llama" else oracle.train_gpt2
    ref = train_ref(
        m["model"],
        m["pattern"],
        row.B,
        row.T,
        6,
        2e-3,
        total_batch=2 * bt,
        warmup=2,
        final_frac=0.1,
        schedule="cosine",
        weight_decay=0.1,
    )
    np.testing.assert_allclose([r["lr"] for r in log], ref["lrs"], rtol=row.tol["lrs"].value)
    np.testing.assert_allclose([r["train_loss"] for r in log], ref["losses"], rtol=row.tol["sched_losses"].value)


@pytest.mark.parametrize("row", **params(rows_with("val")))
def test_val_loss_matches_torch(row, matrix_data, trainer, tmp_path):
    m = matrix_data(row)
    run = tmp_path / "run"
    run_binary(
        trainer(row),
        "-e",
        m["model"],
        "-i",
        m["pattern"],
        "-j",
        m["pattern"],
        "-b",
        row.B,
        "-t",
        row.T,
        "-x",
        2,
        "-v",
        1,
        "-m",
        3,
        "-l",
        "1e-3",
        "-o",
        run,
    )
    log = [json.loads(line) for line in open(run / "log.jsonl")]
    assert log[0]["step"] == 0 and "val_loss" in log[0]
    model = oracle.load_gpt2(m["model"]) if row.family == "gpt2" else oracle.load_llama(m["model"])
    want = np.mean([oracle.eval_loss(model, x, y) for x, y in oracle.batches(m["pattern"], row.B, row.T, 3)])
    assert abs(log[0]["val_loss"] - want) <= row.tol["val"].value * want
