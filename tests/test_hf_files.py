"""The Hugging Face round trip offline (transformers is the oracle), and the Python safetensors
reader on damaged and F64 files (the safetensors package is the oracle)."""

import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import oracle
from conftest import REPO, run_binary, run_llmgen
from llmgen.checkpoint import SafetensorsError, read_safetensors
from llmgen.tokenizer import HF_TOKENIZER_FILES, get_gpt2_encoding, llama3_hf_tokenizer_files, write_hf_tokenizer_files
from test_data import toy_bpe_tokens, write_tiktoken_bpe

HF_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}

# run in a fresh interpreter with the hub switched off (the variables are read at import time)
HF_CHECK = r"""
import json, sys
from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline
from llmgen.tokenizer import get_gpt2_encoding
ckpt = sys.argv[1]
tok = AutoTokenizer.from_pretrained(ckpt)
model = GPT2LMHeadModel.from_pretrained(ckpt)
gen = pipeline("text-generation", model=ckpt, tokenizer=ckpt)
out = gen("ROMEO: hello", max_new_tokens=6, do_sample=False)[0]["generated_text"]
print(json.dumps({"ids": tok.encode("ROMEO: hello"), "tiktoken": get_gpt2_encoding().encode_ordinary("ROMEO: hello"),
                  "eos": tok.eos_token_id, "decoded": tok.decode(tok.encode("ROMEO: hello")),
                  "params": sum(p.numel() for p in model.parameters()), "generated": out}))
"""


def hf_check(ckpt):
    import os

    env = {**os.environ, **HF_OFFLINE, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", HF_CHECK, str(ckpt)], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GPT-2-vocabulary spec built with `llmgen build` and trained 2 steps into a run folder."""
    d = tmp_path_factory.mktemp("hf")
    spec = d / "spec.py"
    spec.write_text(
        "from llmgen.spec import GPT2Spec\nspec = GPT2Spec(n_layer=1, n_head=2, n_embd=32, max_seq_len=64)\n"
    )
    run_llmgen("build", spec, "-o", d / "b")
    oracle.write_shard(d / "d.bin", np.arange(3000) % 50257)
    run_binary(d / "b" / "train", "-i", d / "d.bin", "-b", 1, "-t", 16, "-x", 2, "-v", 0, "-o", d / "run")
    return dict(dir=d, build=d / "b", ckpt=d / "run" / (d / "run" / "latest").read_text().strip())


def test_build_writes_the_hf_tokenizer_files_beside_the_token_table(trained):
    b = trained["build"]
    assert (b / "tokenizer.bin").is_file()
    cfg = json.loads((b / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "GPT2Tokenizer" and cfg["model_max_length"] == 64
    assert cfg["bos_token"] == cfg["eos_token"] == cfg["unk_token"] == "<|endoftext|>"
    vocab = json.loads((b / "vocab.json").read_text())
    enc = get_gpt2_encoding()
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256
    # GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for chr(256 + n)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    char_of = {b: chr(b) for b in printable}
    char_of.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in char_of)})
    byte_of = {c: b for b, c in char_of.items()}
    assert all(
        bytes(byte_of[c] for c in tok) == enc.decode_single_token_bytes(i) for tok, i in vocab.items() if i < 50256
    )
    assert (b / "merges.txt").read_text().startswith("#version")


def test_checkpoint_folder_with_the_files_works_offline_in_transformers(trained, tmp_path):
    """The writer's files in a checkpoint folder: AutoTokenizer encodes as tiktoken, GPT2LMHeadModel
    loads, pipeline("text-generation") generates new tokens."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained["ckpt"], ckpt)
    for name in HF_TOKENIZER_FILES:
        if (trained["build"] / name).is_file():
            shutil.copy(trained["build"] / name, ckpt / name)
    res = hf_check(ckpt)
    assert res["ids"] == res["tiktoken"] == [33676, 4720, 25, 23748]
    assert res["eos"] == 50256 and res["decoded"] == "ROMEO: hello"
    assert res["generated"].startswith("ROMEO: hello") and len(res["generated"]) > len("ROMEO: hello")


def test_trained_checkpoint_holds_the_tokenizer_and_generation_config(trained):
    """The trainer copies the HF tokenizer files beside its token table into each checkpoint and writes
    generation_config.json (the binary side of issue 10): the checkpoint alone works in transformers."""
    ckpt = trained["ckpt"]
    missing = [
        n
        for n in ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json")
        if not (ckpt / n).is_file()
    ]
    assert not missing, f"{ckpt} lacks {missing}"
    res = hf_check(ckpt)
    assert res["ids"] == res["tiktoken"] and len(res["generated"]) > len("ROMEO: hello")


def test_llama3_tiktoken_file_gets_a_tokenizer_json(tmp_path):
    """A tiktoken BPE file (Llama 3's format) -> tokenizer.json that AutoTokenizer loads offline and
    that encodes as tiktoken does with the same file."""
    from llmgen.tokenizer import load_tiktoken_bpe_encoding

    model = tmp_path / "tokenizer.model"
    write_tiktoken_bpe(model, toy_bpe_tokens(extra=40))
    files = llama3_hf_tokenizer_files(model, model_max_length=256)
    assert set(files) == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    out = tmp_path / "tok"
    out.mkdir()
    write_hf_tokenizer_files(out, files)
    enc = load_tiktoken_bpe_encoding(model)
    code = (
        "import json, sys\nfrom transformers import AutoTokenizer\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(json.dumps([t.encode(s, add_special_tokens=False) for s in sys.argv[2:]] + [t.bos_token_id]))"
    )
    texts = ["hello world", "hello hello world  world\n\nhe"]
    import os

    r = subprocess.run(
        [sys.executable, "-c", code, str(out), *texts],
        capture_output=True,
        text=True,
        env={**os.environ, **HF_OFFLINE},
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    *ids, bos = json.loads(r.stdout.strip().splitlines()[-1])
    assert ids == [enc.encode_ordinary(s) for s in texts]
    assert bos == enc.encode_single_token("<|begin_of_text|>")


# --------------------------------------------------------------------------------------------
# the Python safetensors reader


def _safetensors_file(path, header: dict, data: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.mark.parametrize(
    "case, needle",
    [
        ("truncated", "truncated: tensor w ends at byte"),
        ("dtype", "tensor w has dtype C64"),
        ("header", "runs past the end of the file"),
        ("short", "shorter than the 8-byte header length"),
        ("json", "the header is not valid JSON"),
        ("size", "tensor w: 8 bytes for shape [3] F32 (needs 12)"),
    ],
)
def test_damaged_safetensors_files_are_named(tmp_path, case, needle):
    p = tmp_path / "model.safetensors"
    good = {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}
    if case == "truncated":
        _safetensors_file(p, good, b"\0" * 8)
    elif case == "dtype":
        _safetensors_file(p, {"w": {"dtype": "C64", "shape": [3], "data_offsets": [0, 24]}}, b"\0" * 24)
    elif case == "header":
        p.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    elif case == "short":
        p.write_bytes(b"\1\2")
    elif case == "json":
        p.write_bytes(struct.pack("<Q", 4) + b"{x}!")
    elif case == "size":
        _safetensors_file(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(SafetensorsError) as e:
        read_safetensors(p)
    assert str(p) in str(e.value) and needle in str(e.value), str(e.value)


def test_sample_and_convert_on_a_truncated_checkpoint_say_why(tmp_path):
    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 1, 2, 32, 50257, 32, seed=1)
    st = mdir / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    for args in (
        ("sample", mdir, "--backend", "compiled", "--cache-dir", tmp_path / "c"),
        ("convert", mdir, "-o", tmp_path / "x.bin"),
    ):
        r = run_llmgen(*args, check=False)
        assert r.returncode == 1 and "truncated" in r.stderr and str(st) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_f64_checkpoint_reads_and_samples(tmp_path):
    from safetensors.numpy import load_file

    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 1, 2, 32, 50257, 32, seed=2)
    from transformers import GPT2LMHeadModel

    m64 = GPT2LMHeadModel.from_pretrained(mdir).double()
    m64.save_pretrained(tmp_path / "m64")
    ours = read_safetensors(tmp_path / "m64" / "model.safetensors")
    ref = load_file(str(tmp_path / "m64" / "model.safetensors"))
    assert {v.dtype for v in ref.values()} == {np.dtype("float64")}
    for k, v in ref.items():
        np.testing.assert_array_equal(ours[k], v.astype(np.float32))
    outs = {}
    for backend in ("compiled", "transformers"):
        r = run_llmgen(
            "sample",
            tmp_path / "m64",
            "--prompt",
            "Hello",
            "-n",
            6,
            "--temperature",
            0,
            "--backend",
            backend,
            "--cache-dir",
            tmp_path / "c",
        )
        outs[backend] = r.stdout
        assert r.stdout.startswith("Hello") and len(r.stdout.strip()) > len("Hello")
    assert outs["compiled"] == outs["transformers"]  # greedy: both backends continue alike
    torch.set_num_threads(2)
