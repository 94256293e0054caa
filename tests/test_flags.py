"""The trainer binary's flags: one table (llmgen/flags.py) behind the parser, the usage and the README;
llm.c's letters keep llm.c's meaning (karpathy/llm.c train_gpt2.cu) or are refused with a reason;
llm.c's GPT-2 model file loads with -e; a used run folder is never overwritten without -y 1."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import oracle
from conftest import REPO, run_binary, run_llmgen
from llmgen import flags as flagtable
from llmgen.checkpoint import bf16_to_f32, f32_to_bf16, read_safetensors, write_safetensors
from llmgen.llmc import write_llmc
from llmgen.spec import GPT2Spec

L, H, C, V, P = 2, 2, 32, 50257, 64  # GPT-2's vocabulary: generation_config gets <|endoftext|>
B, T = 2, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, build_cache):
    d = tmp_path_factory.mktemp("flags")
    model = oracle.make_gpt2_model_dir(d / "model", n_layer=L, n_head=H, n_embd=C, vocab_size=V, n_positions=P, seed=7)
    pattern = oracle.random_shards(d / "data", V, 4000, seed=2)
    binary = build_cache(model / "config.json")
    return dict(dir=d, model=model, pattern=pattern, binary=binary)


def fails(binary, *args):
    """stderr of a run that must fail with a one-line error (no traceback, no crash, no usage dump)."""
    r = run_binary(binary, *args, check=False, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and '<dir>' for folders) under `folder`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------------
# one table


def test_readme_table_is_the_flag_table():
    text = (REPO / "README.md").read_text()
    assert flagtable.readme_block() in text, (
        "README.md's flags table differs from llmgen/flags.py: run `python -m llmgen.flags README.md`"
    )


def test_usage_lists_every_flag_with_llmc_differences(setup):
    r = run_binary(setup["binary"], "-h")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert "max_seq_len 64" in lines[1] and "recompute 0" in lines[1] and "fp32" in lines[1]
    assert lines[2:] == flagtable.usage_lines()
    # llm.c's defaults where ours differ (train_gpt2.cu: final_learning_rate_frac = 1.0f, sample_every = 20)
    text = " ".join(line.strip() for line in r.stdout.splitlines())
    assert re.search(r"-q <float> .*\[0\.0\]; llm\.c: default 1\.0", text)
    assert re.search(r"-s <int> .*\[0\]; llm\.c: default 20", text)
    for f in flagtable.TRAINER_FLAGS:
        assert f"  {f.name} {f.metavar}" in r.stdout
    assert run_binary(setup["binary"], "--help").stdout == r.stdout
    assert run_binary(setup["binary"], "-b", "3", "-h").stdout == r.stdout


def test_generated_ranges_and_choices(setup):
    """Every lo / hi / choices of the table is enforced by the generated parser, with the flag named."""
    base = ["-i", setup["pattern"], "-b", B, "-t", T]
    checked = 0
    for f in flagtable.TRAINER_FLAGS:
        bad = []
        if f.lo and f.lo.lstrip("-").isdigit():
            bad.append(str(int(f.lo) - 1) if f.kind != "float" else "-0.5")
        if f.hi and f.hi.isdigit():
            bad.append(str(int(f.hi) + 1) if f.kind != "float" else str(float(f.hi) + 0.5))
        if f.hi == "MAX_SEQ_LEN":
            bad.append(str(P + 1))
        if f.choices:
            bad.append("nonsense")
        for value in bad:
            err = fails(setup["binary"], *base, f.name, value)
            assert err.startswith(f"error: {f.name}") and ("must be" in err or "not implemented" in err), err
            checked += 1
    assert checked >= 20
    assert "max_seq_len = 64" in fails(setup["binary"], *base, "-t", 100000)
    assert "expects an integer" in fails(setup["binary"], *base, "-b", "two")
    assert "expects a number" in fails(setup["binary"], *base, "-l", "abc")
    assert "expects a non-negative integer" in fails(setup["binary"], *base, "-S", "-3")
    assert "needs a value" in fails(setup["binary"], *base, "-x")
    assert "unknown flag -ge" in fails(setup["binary"], *base, "-ge", "2")  # llm.c's gelu fusion: not ours
    assert "unexpected argument 'stray'" in fails(setup["binary"], *base, "stray")


def test_long_options_both_spellings(setup, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ["-e", setup["model"], "-i", setup["pattern"], "-b", B, "-t", T]
    run_binary(setup["binary"], *common, "--dump", a)
    run_binary(setup["binary"], *common, f"--dump={b}")
    assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------------------------------------
# llm.c's letters


def test_h_with_a_value_is_refused(setup):
    err = fails(setup["binary"], "-h", "1")
    assert "HellaSwag" in err


def test_z_is_the_zero_stage(setup, tmp_path):
    """-z 0 and -z 1 train the same with one process and write no file named after the value."""
    common = ["-e", setup["model"], "-i", setup["pattern"], "-b", B, "-t", T, "-x", 3, "-v", 0]
    runs = [run_binary(setup["binary"], *common, "-z", z).stdout for z in (0, 1)]
    losses = [re.findall(r"\| loss (\S+)", out) for out in runs]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    assert not Path("1").exists()
    assert "ZeRO stage 2" in fails(setup["binary"], *common, "-z", 2)
    assert "ZeRO stage 3" in fails(setup["binary"], *common, "-z", 3)


def test_w_is_master_weights(setup):
    common = ["-e", setup["model"], "-i", setup["pattern"], "-b", B, "-t", T, "-x", 1, "-v", 0]
    run_binary(setup["binary"], *common, "-w", 1)
    err = fails(setup["binary"], *common, "-w", 0)
    assert "master weights" in err and "fp32" in err


def test_r_must_match_the_build(setup, build_cache):
    common = ["-e", setup["model"], "-i", setup["pattern"], "-b", B, "-t", T, "-x", 1, "-v", 0]
    run_binary(setup["binary"], *common, "-r", 0)
    err = fails(setup["binary"], *common, "-r", 1)
    assert "recompute 0" in err and "llmgen build SPEC --recompute 1" in err
    rebuilt = build_cache(setup["model"] / "config.json", "--recompute", "1")
    run_binary(rebuilt, *common, "-r", 1)
    assert "llmgen build SPEC --recompute 0" in fails(rebuilt, *common, "-r", 0)


# ------------------------------------------------------------------------------------------------
# -e: llm.c's model file


def _dump(binary, weights, pattern, out):
    run_binary(binary, "-e", weights, "-i", pattern, "-b", B, "-t", T, "--dump", out)
    return read_safetensors(out)


def _assert_same_dump(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_e_reads_llmc_fp32_file_bit_identically(setup, tmp_path):
    spec = GPT2Spec(n_layer=L, n_head=H, n_embd=C, vocab_size=V, max_seq_len=P)
    hf = read_safetensors(setup["model"] / "model.safetensors")
    write_llmc(tmp_path / "model.bin", spec, hf, "fp32")
    ref = _dump(setup["binary"], setup["model"], setup["pattern"], tmp_path / "ref")
    _assert_same_dump(_dump(setup["binary"], tmp_path / "model.bin", setup["pattern"], tmp_path / "d1"), ref)
    # any name: the magic number tells
    shutil.copy(tmp_path / "model.bin", tmp_path / "weights.llmc")
    _assert_same_dump(_dump(setup["binary"], tmp_path / "weights.llmc", setup["pattern"], tmp_path / "d2"), ref)


def test_e_reads_llmc_bf16_file_as_its_rounded_weights(setup, tmp_path):
    spec = GPT2Spec(n_layer=L, n_head=H, n_embd=C, vocab_size=V, max_seq_len=P)
    hf = read_safetensors(setup["model"] / "model.safetensors")
    write_llmc(tmp_path / "model_bf16.bin", spec, hf, "bf16")
    rounded = tmp_path / "rounded"
    rounded.mkdir()
    # the bf16 file's values, rounded to nearest even as llm.c's export does, widened back exactly
    write_safetensors(
        rounded / "model.safetensors", {k: bf16_to_f32(f32_to_bf16(v)).reshape(v.shape) for k, v in hf.items()}
    )
    shutil.copy(setup["model"] / "config.json", rounded / "config.json")
    ref = _dump(setup["binary"], rounded, setup["pattern"], tmp_path / "ref")
    _assert_same_dump(_dump(setup["binary"], tmp_path / "model_bf16.bin", setup["pattern"], tmp_path / "d"), ref)
    assert any(not np.array_equal(hf[k], bf16_to_f32(f32_to_bf16(hf[k])).reshape(hf[k].shape)) for k in hf)


def test_e_llmc_file_errors(setup, tmp_path, build_cache):
    hf = read_safetensors(setup["model"] / "model.safetensors")
    common = ["-i", setup["pattern"], "-b", B, "-t", T, "-x", 1]
    other = GPT2Spec(n_layer=L, n_head=H, n_embd=C, vocab_size=V, max_seq_len=P // 2)
    write_llmc(tmp_path / "short_ctx.bin", other, {k: v[: P // 2] if "wpe" in k else v for k, v in hf.items()})
    err = fails(setup["binary"], "-e", tmp_path / "short_ctx.bin", *common)
    assert "max_seq_len is 32 in the file but 64" in err
    spec = GPT2Spec(n_layer=L, n_head=H, n_embd=C, vocab_size=V, max_seq_len=P)
    write_llmc(tmp_path / "m.bin", spec, hf)
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-100])
    assert "truncated" in fails(setup["binary"], "-e", tmp_path / "cut.bin", *common)
    header = np.frombuffer(data[:1024], np.int32).copy()
    header[1] = 4
    (tmp_path / "v4.bin").write_bytes(header.tobytes() + data[1024:])
    assert "version 4" in fails(setup["binary"], "-e", tmp_path / "v4.bin", *common)
    header[1], header[4] = 3, L + 1
    (tmp_path / "l3.bin").write_bytes(header.tobytes() + data[1024:])
    assert "n_layer is 3 in the file but 2" in fails(setup["binary"], "-e", tmp_path / "l3.bin", *common)
    assert "cannot open" in fails(setup["binary"], "-e", tmp_path / "missing.bin", *common)
    # a Llama trainer cannot take llm.c's GPT-2 file
    llama = build_cache("llama3-micro")
    pat = oracle.random_shards(tmp_path / "ld", 512, 2000, seed=1)
    err = fails(llama, "-e", tmp_path / "m.bin", "-i", pat, "-b", B, "-t", T, "-x", 1)
    assert "GPT-2" in err and "llama3" in err


# ------------------------------------------------------------------------------------------------
# run folders


def test_used_run_folder_is_refused_and_left_unchanged(setup, tmp_path):
    run = tmp_path / "run"
    common = ["-e", setup["model"], "-i", setup["pattern"], "-b", B, "-t", T, "-x", 2, "-v", 0]
    run_binary(setup["binary"], *common, "-o", run)
    before = tree_digest(run)
    assert "latest" in before and "log.jsonl" in before
    err = fails(setup["binary"], *common, "-x", 4, "-o", run)
    assert "-y 1" in err and "fresh -o" in err and str(run) in err
    assert tree_digest(run) == before
    # a folder with only a checkpoint folder, or only a non-empty log, is a used one too
    only_ckpt = tmp_path / "only_ckpt"
    shutil.copytree(run / "ckpt_00000002", only_ckpt / "ckpt_00000002")
    assert "ckpt_00000002" in fails(setup["binary"], *common, "-o", only_ckpt)
    only_log = tmp_path / "only_log"
    only_log.mkdir()
    shutil.copy(run / "log.jsonl", only_log / "log.jsonl")
    assert "log.jsonl" in fails(setup["binary"], *common, "-o", only_log)
    # an empty folder, an empty log or unrelated files are fine
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "notes.txt").write_text("mine\n")
    (fresh / "log.jsonl").write_text("")
    run_binary(setup["binary"], *common, "-o", fresh)
    assert (fresh / "notes.txt").read_text() == "mine\n" and (fresh / "latest").is_file()
    # -y 1 resumes into the used folder
    run_binary(setup["binary"], *common, "-x", 4, "-o", run, "-y", 1)
    assert (run / "latest").read_text().strip() == "ckpt_00000004"


def test_checkpoint_holds_generation_config_and_tokenizer_files(setup, tmp_path):
    """generation_config.json (GPT-2's <|endoftext|> 50256, read by transformers) and byte copies of the
    Hugging Face tokenizer files found beside the token table."""
    transformers = pytest.importorskip("transformers")
    tok = tmp_path / "tok"
    tok.mkdir()
    files = {"vocab.json": b'{"a": 0}', "merges.txt": b"#version: 0.2\na b\n", "tokenizer_config.json": b"{}"}
    for name, data in files.items():
        (tok / name).write_bytes(data)
    shutil.copy(setup["binary"].parent / "tokenizer.bin", tok / "tokenizer.bin")
    common = ["-e", setup["model"], "-i", setup["pattern"], "-b", B, "-t", T, "-v", 0]
    run_binary(setup["binary"], *common, "-x", 2, "-n", 1, "--tokenizer", tok / "tokenizer.bin", "-o", tmp_path / "run")
    for step in (1, 2):
        ck = tmp_path / "run" / f"ckpt_{step:08d}"
        for name, data in files.items():
            assert (ck / name).read_bytes() == data
        assert not (ck / "tokenizer.json").exists() and not list(ck.glob("*.tmp"))
        gen = transformers.GenerationConfig.from_pretrained(ck)
        assert gen.bos_token_id == 50256 and gen.eos_token_id == 50256
    # without --tokenizer: the files beside the binary, whichever exist; the checkpoint lands either way
    run_binary(setup["binary"], *common, "-x", 1, "-o", tmp_path / "run2")
    ck = tmp_path / "run2" / "ckpt_00000001"
    assert json.loads((ck / "generation_config.json").read_text()) == {"bos_token_id": 50256, "eos_token_id": 50256}
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        beside = setup["binary"].parent / name
        assert (ck / name).exists() == beside.exists()
        if beside.exists():
            assert (ck / name).read_bytes() == beside.read_bytes()
