"""What a built trainer reads, good and bad: token shards (uint16 and uint32), weights (one file, a
sharded Hugging Face folder, another spec's, junk), flags (the schedules against Python's formula, bad
values) and a bad spec through `llmgen build`. Bad input gets a clear message and a non-zero exit,
never a crash.

Tolerance of the Llama input checks: 1e-4 relative (tests/matrix.py's LLAMA_C table: the issue's
bound; measured far below it)."""

import json
import struct
import subprocess

import numpy as np
import pytest

import oracle
from conftest import read_log, rel_err, run_binary, run_llmgen
from llmgen.checkpoint import read_safetensors
from matrix import LLAMA_C, LLAMA_GQA4, params, rows_with

TOL = LLAMA_C["grads"].value
INPUT_ROWS = rows_with("inputs")


def _shard(path, tokens, magic=20240520, version=1, count=None):
    header = np.zeros(256, np.int32)
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, np.uint16).tobytes())
    return path


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "no file matches"),
        ("magic", "magic"),
        ("truncated", "bytes"),
        ("token", "vocab"),
    ],
)
@pytest.mark.parametrize("row", **params(INPUT_ROWS))
def test_bad_shards(row, case, needle, matrix_data, trainer, tmp_path):
    V = matrix_data(row)["V"]
    good = np.arange(500) % V
    path = tmp_path / "bad.bin"
    if case == "magic":
        _shard(path, good, magic=12345)
    elif case == "truncated":
        _shard(path, good, count=600)
    elif case == "token":
        bad = good.copy()
        bad[77] = V
        _shard(path, bad)
    r = run_binary(trainer(row), "-i", path, "-b", 2, "-t", 8, "-x", 1, check=False)
    assert r.returncode != 0 and "error:" in r.stderr and needle in r.stderr, r.stderr


def test_uint32_shards_and_big_vocab(tmp_path, build_cache):
    """vocab 70000 > 65535: the token shards are uint32 (magic 20240801, version 7)."""
    V = 70000
    oracle.make_llama_model_dir(
        tmp_path / "m",
        dim=32,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        vocab_size=V,
        intermediate_size=64,
        max_position_embeddings=16,
        seed=2,
    )
    pat = oracle.random_shards(tmp_path / "data", vocab_size=V, n_tokens=200, seed=4)
    assert oracle.read_shard(next((tmp_path / "data").glob("*.bin"))).max() > 65535
    binary = build_cache(tmp_path / "m" / "config.json")
    run_binary(binary, "-e", tmp_path / "m", "-i", pat, "-b", 2, "-t", 8, "--dump", tmp_path / "dump")
    got = read_safetensors(tmp_path / "dump")
    ref = oracle.llama_step0_dump(tmp_path / "m", pat, 2, 8)
    assert abs(got["loss"][0] - ref["loss"]) <= TOL * ref["loss"]
    assert rel_err(got["logits"], ref["logits"]) < TOL
    for name, want in ref["grads"].items():
        assert rel_err(got["grad." + name], want) < TOL, name


def test_reads_sharded_hf_checkpoint(tmp_path, build_cache):
    """-e on a folder transformers saved in shards (as it does for 3B / 8B models): the step-0 loss,
    logits and grads equal PyTorch's on the same folder; a missing shard is an error naming it."""
    cfg = LLAMA_GQA4.config
    mdir = oracle.make_llama_model_dir(tmp_path / "m", seed=9, max_shard_size="40KB", **cfg)
    shards = sorted(mdir.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (mdir / "model.safetensors").exists()
    pat = oracle.random_shards(tmp_path / "data", vocab_size=cfg["vocab_size"], n_tokens=1000, seed=3)
    binary = build_cache(mdir / "config.json")
    run_binary(binary, "-e", mdir, "-i", pat, "-b", 2, "-t", 16, "--dump", tmp_path / "dump")
    got = read_safetensors(tmp_path / "dump")
    ref = oracle.llama_step0_dump(mdir, pat, 2, 16)
    assert abs(got["loss"][0] - ref["loss"]) <= TOL * ref["loss"]
    assert rel_err(got["logits"], ref["logits"]) < TOL
    for name, want in ref["grads"].items():
        assert rel_err(got["grad." + name], want) < TOL, name
    shards[1].unlink()
    r = subprocess.run(
        [str(binary), "-e", str(mdir), "-i", pat, "-b", "2", "-t", "16", "-x", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert f"{len(shards) - 1} of the {len(shards)} weight shards" in r.stderr


@pytest.mark.parametrize("row", **params(INPUT_ROWS))
def test_weights_of_another_spec(row, matrix_data, trainer, tmp_path):
    m = matrix_data(row)
    other = oracle.make_gpt2_model_dir(
        tmp_path / "other", n_layer=1, n_head=2, n_embd=16, vocab_size=m["V"], n_positions=32, seed=0
    )
    r = run_binary(trainer(row), "-e", other, "-i", m["pattern"], "-b", 1, "-t", 8, "-x", 1, check=False)
    assert r.returncode != 0 and "error:" in r.stderr and "shape" in r.stderr or "no tensor" in r.stderr, r.stderr
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    r = run_binary(trainer(row), "-e", tmp_path / "junk.safetensors", "-i", m["pattern"], "-b", 1, "-t", 8, check=False)
    assert r.returncode != 0 and "error:" in r.stderr


def test_schedules_match_python(tmp_path):
    """The C lr_at and llmgen.optim.lr_at are the same formula (checked through the log)."""
    from llmgen.optim import lr_at

    d = tmp_path
    oracle.make_gpt2_model_dir(d / "m", 1, 1, 16, 50, 16, seed=0)
    pat = oracle.random_shards(d / "data", 50, 2000)
    (d / "b").mkdir()
    run_llmgen("build", d / "m" / "config.json", "-o", d / "b")
    for sched in ("cosine", "linear", "constant", "wsd"):
        run_binary(
            d / "b" / "train",
            "-i",
            pat,
            "-b",
            1,
            "-t",
            8,
            "-x",
            9,
            "-u",
            2,
            "-l",
            "0.5",
            "-q",
            "0.2",
            "-k",
            sched,
            "-v",
            0,
            "-o",
            d / sched,
        )
        got = [r["lr"] for r in read_log(d / sched)]
        want = [lr_at(i, 9, 0.5, warmup=2, final_frac=0.2, schedule=sched) for i in range(1, 10)]
        np.testing.assert_allclose(got, want, rtol=1e-9)
        assert want == [oracle.lr_at(i, 9, 0.5, warmup=2, final_frac=0.2, schedule=sched) for i in range(1, 10)]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["-t", "100000"], "max_seq_len"),
        (["-b", "0"], "-b"),
        (["-d", "7"], "multiple of B*T"),
        (["-k", "exponential"], "-k must be one of cosine"),
        (["-l", "abc"], "expects a number"),
        (["-Q", "1"], "unknown flag"),
    ],
)
@pytest.mark.parametrize("row", **params(INPUT_ROWS))
def test_bad_flags(row, flags, needle, matrix_data, trainer):
    r = run_binary(trainer(row), "-i", matrix_data(row)["pattern"], "-b", 2, "-t", 8, *flags, check=False)
    assert r.returncode != 0 and needle in r.stderr, r.stderr


def test_bad_spec_through_cli(tmp_path):
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_head": 3, "n_embd": 32, "vocab_size": 100, "n_positions": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run_llmgen("build", tmp_path / "config.json", "-o", tmp_path / "out", check=False)
    assert r.returncode == 1 and "n_embd" in r.stderr and "divisible by n_head" in r.stderr
    assert "Traceback" not in r.stderr
