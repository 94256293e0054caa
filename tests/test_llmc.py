"""`llmgen convert`: llm.c's GPT-2 model file (header of 256 int32: magic 20240326, version 3 fp32 /
5 bf16, maxT, V, L, NH, C, Vp; then wte (Vp,C), wpe, and per-layer stacks with linear weights as
(out, in)) to a Hugging Face folder and back. The oracle is the format itself, written here from a
transformers GPT2LMHeadModel independently of llmgen.llmc, and transformers loading the result."""

import json

import numpy as np
import pytest

import oracle
from conftest import run_binary, run_llmgen
from llmgen.checkpoint import read_safetensors

torch = pytest.importorskip("torch")
L, H, C, V, P = 2, 2, 64, 1000, 128
VP = 1024


def llmc_bytes(sd: dict, version: int) -> bytes:
    """The llm.c file of a GPT-2 state dict, straight from the format description above."""

    def t(name):
        return sd[name].detach().float().numpy()

    def stack(suffix, transpose=False):
        return np.stack(
            [t(f"transformer.h.{i}.{suffix}").T if transpose else t(f"transformer.h.{i}.{suffix}") for i in range(L)]
        )

    wte = np.zeros((VP, C), np.float32)
    wte[:V] = t("transformer.wte.weight")
    tensors = [
        wte,
        t("transformer.wpe.weight"),
        stack("ln_1.weight"),
        stack("ln_1.bias"),
        stack("attn.c_attn.weight", True),
        stack("attn.c_attn.bias"),
        stack("attn.c_proj.weight", True),
        stack("attn.c_proj.bias"),
        stack("ln_2.weight"),
        stack("ln_2.bias"),
        stack("mlp.c_fc.weight", True),
        stack("mlp.c_fc.bias"),
        stack("mlp.c_proj.weight", True),
        stack("mlp.c_proj.bias"),
        t("transformer.ln_f.weight"),
        t("transformer.ln_f.bias"),
    ]
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, version, P, V, L, H, C, VP]
    flat = torch.from_numpy(np.concatenate([np.ascontiguousarray(x).ravel() for x in tensors]))
    body = flat.numpy() if version == 3 else flat.to(torch.bfloat16).view(torch.int16).numpy()
    return header.tobytes() + body.tobytes()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import GPT2LMHeadModel

    d = oracle.make_gpt2_model_dir(
        tmp_path_factory.mktemp("m") / "hf", n_layer=L, n_head=H, n_embd=C, vocab_size=V, n_positions=P, seed=3
    )
    return d, GPT2LMHeadModel.from_pretrained(d).state_dict()


@pytest.mark.parametrize("version", [3, 5])
def test_import_matches_transformers(model, tmp_path, version):
    from transformers import GPT2LMHeadModel

    d, sd = model
    (tmp_path / "m.bin").write_bytes(llmc_bytes(sd, version))
    run_llmgen("convert", tmp_path / "m.bin", "-o", tmp_path / "hf")
    got = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").state_dict()
    for name, want in sd.items():
        w = want.float() if version == 3 else want.to(torch.bfloat16).float()  # bf16: the file's own rounding
        assert torch.equal(got[name], w), name
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]) == (L, H, C, V, P)


@pytest.mark.parametrize("dtype, version", [("fp32", 3), ("bf16", 5)])
def test_export_is_the_llmc_file(model, tmp_path, dtype, version):
    d, sd = model
    run_llmgen("convert", d, "-o", tmp_path / "m.bin", "--dtype", dtype)
    assert (tmp_path / "m.bin").read_bytes() == llmc_bytes(sd, version)


def test_trainer_checkpoint_exports_and_trains_from_import(model, tmp_path, build_cache):
    """A trained checkpoint of ours -> llm.c file -> back: the same tensors; -e on the import runs."""
    d, _ = model
    pat = oracle.random_shards(tmp_path / "data", vocab_size=V, n_tokens=2000, seed=1)
    binary = build_cache(d / "config.json")
    run_binary(binary, "-e", d, "-i", pat, "-b", 2, "-t", 16, "-x", 2, "-o", tmp_path / "run")
    ckpt = tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip()
    run_llmgen("convert", ckpt, "-o", tmp_path / "c.bin")
    run_llmgen("convert", tmp_path / "c.bin", "-o", tmp_path / "back")
    a, b = read_safetensors(ckpt / "model.safetensors"), read_safetensors(tmp_path / "back" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    run_binary(binary, "-e", tmp_path / "back", "-i", pat, "-b", 2, "-t", 16, "-x", 1)


def test_bad_files_are_refused(model, tmp_path):
    d, sd = model
    good = llmc_bytes(sd, 3)
    cases = {
        "magic": b"\x00" * 4 + good[4:],
        "version": good[:4] + np.int32(4).tobytes() + good[8:],
        "truncated": good[:-8],
        "tiny": good[:100],
    }
    words = {"magic": "magic 0", "version": "version 4", "truncated": "truncated", "tiny": "too short"}
    for name, data in cases.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        r = run_llmgen("convert", tmp_path / f"{name}.bin", "-o", tmp_path / name, check=False)
        assert r.returncode == 1 and words[name] in r.stderr, (name, r.stderr)
        assert not (tmp_path / name / "model.safetensors").exists()
    r = run_llmgen("convert", d, "-o", tmp_path / "x.safetensors", check=False)
    assert r.returncode == 1 and "llm.c model file" in r.stderr
    (tmp_path / "ok.bin").write_bytes(good)
    run_llmgen("convert", tmp_path / "ok.bin", "-o", tmp_path / "out")
    r = run_llmgen("convert", tmp_path / "ok.bin", "-o", tmp_path / "out", check=False)  # never overwrites
    assert r.returncode == 1 and "refusing to overwrite" in r.stderr
