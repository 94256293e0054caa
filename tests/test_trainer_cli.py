"""`llmgen train`, `llmgen sample` and the binary's own samples, as a user runs them."""

import json

import numpy as np
import pytest
import torch

import oracle
from conftest import run_binary, run_llmgen
from llmgen.sample import generate, load_model, resolve_checkpoint


def test_train_command_builds_runs_and_reports(tmp_path):
    oracle.make_gpt2_model_dir(tmp_path / "m", 1, 2, 32, 300, 64, seed=0)
    data = tmp_path / "data"
    data.mkdir()
    oracle.write_shard(data / "toy_train_000000.bin", np.arange(4000) % 300)
    oracle.write_shard(data / "toy_val_000000.bin", np.arange(1000) % 300)
    r = run_llmgen(
        "train",
        tmp_path / "m" / "config.json",
        "--target",
        "auto",
        "--data",
        data,
        "--cache-dir",
        tmp_path / "cache",
        "-b",
        2,
        "-t",
        16,
        "-x",
        6,
        "-l",
        "3e-3",
        "-v",
        3,
        "-m",
        2,
        "-o",
        tmp_path / "run",
    )
    assert "target c (the CPU twin)" in r.stderr or "target cuda" in r.stderr
    assert "step 6/6" in r.stderr and "tok/s" in r.stderr and "ETA" in r.stderr
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in log if "train_loss" in r] == list(range(1, 7))
    assert log[0]["step"] == 0 and "val_loss" in log[0] and "val_loss" in log[-1]
    # the cached build is reused: a second run does not rebuild (same binary, same mtime)
    builds = list((tmp_path / "cache" / "builds").iterdir())
    assert len(builds) == 1
    mtime = (builds[0] / "train").stat().st_mtime
    run_llmgen(
        "train",
        tmp_path / "m" / "config.json",
        "--target",
        "c",
        "--data",
        data,
        "--cache-dir",
        tmp_path / "cache",
        "-b",
        2,
        "-t",
        16,
        "-x",
        1,
        "-v",
        0,
        "-o",
        tmp_path / "run2",
    )
    assert (builds[0] / "train").stat().st_mtime == mtime
    r = run_llmgen("train", "gpt2-tiny", "--cache-dir", tmp_path / "cache", "-o", tmp_path / "r3", check=False)
    assert r.returncode == 1 and "no training data" in r.stderr


@pytest.mark.parametrize("backend", ["compiled", "transformers"])
def test_sampling_is_the_models_greedy_continuation(tmp_path, backend):
    """top-k 1 sampling, on both backends of `llmgen sample` (the compiled trainer library, and
    transformers with its KV cache) = greedy decoding with transformers without a cache, the whole
    sequence each step; 40 tokens from a context of 32, so the window slides too."""
    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 2, 2, 32, 100, 32, seed=3)
    ckpt = resolve_checkpoint(mdir)
    prompt = [5, 17, 42]
    model = load_model(ckpt, backend, cache_dir=tmp_path / "cache", max_tokens=64)
    ours = list(generate(model, prompt, 40, temperature=1.0, top_k=1))
    ref = oracle.load_gpt2(mdir)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(40):
            ids.append(int(ref(torch.tensor([ids[-32:]])).logits[0, -1].argmax()))
    assert ours == ids[3:]


def test_binary_prints_samples_with_the_token_table(tmp_path):
    """A GPT-2-vocabulary build writes tokenizer.bin beside the binary; -s prints decoded text."""
    spec_py = tmp_path / "spec.py"
    spec_py.write_text(
        "from llmgen.spec import GPT2Spec\nspec = GPT2Spec(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)\n"
    )
    run_llmgen("build", spec_py, "-o", tmp_path / "b")
    assert (tmp_path / "b" / "tokenizer.bin").is_file()
    oracle.write_shard(tmp_path / "d.bin", np.arange(3000) % 50257)
    r = run_binary(
        tmp_path / "b" / "train", "-i", tmp_path / "d.bin", "-b", 1, "-t", 16, "-x", 2, "-s", 2, "-g", 8, "-v", 0
    )
    line = next(line for line in r.stdout.splitlines() if line.startswith("sample: "))
    assert len(line) > len("sample: ")


def test_sample_command_on_a_run_folder(tmp_path):
    spec_py = tmp_path / "spec.py"
    spec_py.write_text(
        "from llmgen.spec import GPT2Spec\nspec = GPT2Spec(n_layer=1, n_head=2, n_embd=32, max_seq_len=32)\n"
    )
    run_llmgen("build", spec_py, "-o", tmp_path / "b")
    oracle.write_shard(tmp_path / "d.bin", np.arange(3000) % 50257)
    run_binary(
        tmp_path / "b" / "train", "-i", tmp_path / "d.bin", "-b", 1, "-t", 16, "-x", 1, "-v", 0, "-o", tmp_path / "run"
    )
    r = run_llmgen("sample", tmp_path / "run", "--prompt", "Hello", "-n", 5)
    assert r.stdout.startswith("Hello")
    args = (
        "sample",
        tmp_path / "run",
        "--prompt",
        "Hello",
        "-n",
        5,
        "--num-samples",
        3,
        "--seed",
        7,
        "--backend",
        "compiled",
        "--cache-dir",
        tmp_path / "c",
    )
    r, again = run_llmgen(*args), run_llmgen(*args)
    parts = r.stdout.split("\n---\n")
    assert len(parts) == 3 and all(p.startswith("Hello") for p in parts) and r.stdout == again.stdout
    r = run_llmgen("sample", tmp_path / "nothing", check=False)
    assert r.returncode == 1 and "checkpoint" in r.stderr


def test_train_precision_bf16_on_gpu_fp32_on_cpu():
    """`llmgen train` on a GPU trains bf16 mixed precision unless --dtype fp32 is given (as llm.c
    does); the CPU twin computes in fp32 whatever was asked."""
    from llmgen.spec import PRESETS
    from llmgen.cli.train import train_precision

    gpt2 = PRESETS["gpt2-tiny"]
    assert train_precision(gpt2, "cuda", None)[0].dtype == "bf16"
    assert train_precision(gpt2, "cuda", "fp32")[0].dtype == "fp32"
    assert train_precision(gpt2.replace(dtype="bf16"), "cuda", "bf16")[0].dtype == "bf16"
    spec, line = train_precision(gpt2.replace(dtype="bf16"), "c", "bf16")
    assert spec.dtype == "fp32" and "CPU twin" in line


@pytest.mark.parametrize("backend", ["compiled", "transformers"])
def test_batched_sampling_rows_are_the_models_logits(tmp_path, backend):
    """--num-samples runs the rows in one batch: each row's last logits equal transformers' (no cache)
    on that row alone, as the rows grow by a token (the KV cache path) and when they restart."""
    from llmgen.sample import generate_batch

    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 2, 2, 32, 100, 32, seed=4)
    model = load_model(resolve_checkpoint(mdir), backend, cache_dir=tmp_path / "cache", max_tokens=32, batch=3)
    ref = oracle.load_gpt2(mdir)
    rows = np.array([[5, 17, 42, 7], [1, 2, 3, 4], [99, 0, 50, 50]])
    for extra in ([], [[8], [9], [10]]):
        if extra:
            rows = np.concatenate([rows, np.array(extra)], 1)
        ours = model.last_logits(rows)
        with torch.no_grad():
            want = np.stack([ref(torch.tensor(r[None])).logits[0, -1].numpy() for r in rows])
        np.testing.assert_allclose(ours, want, atol=2e-5, rtol=1e-4)
    greedy = np.array(list(generate_batch(model, [5, 17, 42], 10, top_k=1, num_samples=3)))
    single = list(generate(model, [5, 17, 42], 10, top_k=1))
    assert (greedy == np.array(single)[:, None]).all()
