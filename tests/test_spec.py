"""Spec validation, presets and the three ways to name a spec."""

import json

import pytest

from llmgen.spec import PRESETS, GPT2Spec, SpecError, load_spec


@pytest.mark.parametrize(
    "kwargs, field, rule",
    [
        (dict(n_embd=100, n_head=3), "n_embd", "divisible by n_head"),
        (dict(n_layer=0), "n_layer", "positive"),
        (dict(n_head=-2), "n_head", "positive"),
        (dict(vocab_size=0), "vocab_size", "positive"),
        (dict(dtype="fp64"), "dtype", "one of"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps", "(0, 1)"),
        (dict(vocab_size=300, padded_vocab_size=256), "padded_vocab_size", ">= vocab_size"),
        (dict(n_layer=2.5), "n_layer", "integer"),
    ],
)
def test_bad_values_name_field_and_rule(kwargs, field, rule):
    with pytest.raises(SpecError) as e:
        GPT2Spec(**kwargs)
    assert field in str(e.value) and rule in str(e.value)


def test_padding_and_presets():
    assert GPT2Spec().padded_vocab_size == 50304  # llm.c pads 50257 to a multiple of 128
    assert GPT2Spec(vocab_size=100).padded_vocab_size == 128
    sizes = {
        "gpt2": (12, 12, 768),
        "gpt2-medium": (24, 16, 1024),
        "gpt2-large": (36, 20, 1280),
        "gpt2-xl": (48, 25, 1600),
        "d12": (12, 12, 768),
        "d48": (48, 25, 1600),
    }
    for name, (l, h, c) in sizes.items():
        s = PRESETS[name]
        assert (s.n_layer, s.n_head, s.n_embd) == (l, h, c)


def test_parameter_counts_match_gpt2_papers():
    from llmgen.models.gpt2 import build_forward

    # Hugging Face's counts with the real (unpadded) vocabulary: 124M, 355M, 774M, 1558M
    expect = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name, n in expect.items():
        spec = PRESETS[name]
        g = build_forward(spec, 1, 1)
        pad = (spec.padded_vocab_size - spec.vocab_size) * spec.n_embd
        assert sum(p.numel for p in g.params) - pad == n


def test_hf_config_json_and_py_file(tmp_path):
    cfg = {
        "model_type": "gpt2",
        "n_layer": 3,
        "n_head": 4,
        "n_embd": 64,
        "vocab_size": 500,
        "n_positions": 128,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = load_spec(str(tmp_path / "config.json"))
    assert (s.n_layer, s.n_head, s.n_embd, s.vocab_size, s.max_seq_len) == (3, 4, 64, 500, 128)
    assert load_spec(str(tmp_path)) == s  # a model folder works too
    (tmp_path / "my.py").write_text(
        "from llmgen.spec import GPT2Spec\nspec = GPT2Spec(n_layer=1, n_head=2, n_embd=32)\n"
    )
    assert load_spec(str(tmp_path / "my.py")).n_layer == 1
    cfg["model_type"] = "bert"
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError, match="model_type"):
        load_spec(str(tmp_path / "bad.json"))
    with pytest.raises(SpecError, match="unknown spec"):
        load_spec("gpt5")
