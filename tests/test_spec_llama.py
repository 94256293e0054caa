"""The Llama 3 spec: field checks (each bad value names its field and rule), Meta's presets and their
parameter counts, Hugging Face LlamaConfig in both transformers spellings, the round trip through
hf_config() with transformers' own RoPE frequencies, and the spec errors and `inspect` through the CLI.
(The IR is tested in tests/test_ir_llama.py, the trainers in tests/trainer/.)"""

import copy
import json

import numpy as np
import pytest

from conftest import run_llmgen
from llmgen.spec import PRESETS, LlamaSpec, SpecError, load_spec, spec_from_hf_config

# ------------------------------------------------------------------------------------------
# spec


@pytest.mark.parametrize(
    "kwargs, field, rule",
    [
        (dict(dim=100, n_heads=3), "dim", "divisible by n_heads"),
        (dict(n_heads=8, n_kv_heads=3), "n_kv_heads", "must divide n_heads=8"),
        (dict(n_heads=8, n_kv_heads=16), "n_kv_heads", "must divide n_heads=8"),
        (dict(dim=40, n_heads=8), "dim", "must be even"),
        (dict(n_layers=0), "n_layers", "positive"),
        (dict(vocab_size=-1), "vocab_size", "positive"),
        (dict(dim=64.0), "dim", "integer"),
        (dict(multiple_of=0), "multiple_of", "positive"),
        (dict(ffn_dim_multiplier=-1.0), "ffn_dim_multiplier", "positive"),
        (dict(norm_eps=0.0), "norm_eps", "(0, 1)"),
        (dict(rope_theta=0.5), "rope_theta", "> 1"),
        (dict(rope_low_freq_factor=4.0, rope_high_freq_factor=4.0), "rope_high_freq_factor", "greater than"),
        (dict(rope_scaling_factor=0.5), "rope_scaling_factor", ">= 1"),
        (dict(use_scaled_rope=1), "use_scaled_rope", "true or false"),
        (dict(vocab_size=300, padded_vocab_size=256), "padded_vocab_size", ">= vocab_size"),
        (dict(dtype="fp16"), "dtype", "one of"),
        (dict(arch="gpt2"), "arch", "llama3"),
    ],
)
def test_bad_values_name_field_and_rule(kwargs, field, rule):
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100)
    with pytest.raises(SpecError) as e:
        LlamaSpec(**{**base, **kwargs})
    assert field in str(e.value) and rule in str(e.value), str(e.value)


def test_presets_shapes_and_parameter_counts():
    from llmgen.models import build_forward

    # Meta's FFN sizes and Hugging Face's parameter counts of the released models
    expect = {
        "llama3.2-1b": (8192, 1_235_814_400),
        "llama3.2-3b": (8192, 3_212_749_824),
        "llama3.1-8b": (14336, 8_030_261_248),
        "llama3-8b": (14336, 8_030_261_248),
    }
    for name, (ffn, count) in expect.items():
        s = PRESETS[name]
        assert s.arch == "llama3" and s.hidden_dim == ffn and s.padded_vocab_size == 128256, name
        g = build_forward(s, 1, 1)
        assert sum(p.numel for p in g.params) == count, name
    assert PRESETS["llama3.1-8b"].n_kv_heads == 8 and not PRESETS["llama3.1-8b"].tie_embeddings
    assert PRESETS["llama3.2-1b"].tie_embeddings and PRESETS["llama3.2-1b"].rope_scaling_factor == 32.0
    tiny = PRESETS["llama3-tiny"]
    assert tiny.vocab_size == 50257 and tiny.padded_vocab_size == 50304 and tiny.n_heads // tiny.n_kv_heads == 4
    assert LlamaSpec(n_kv_heads=None).n_kv_heads == 32  # Meta's default: one K/V head per query head


def test_load_hf_llama_configs(tmp_path):
    # transformers 4.x spelling: rope_theta + rope_scaling (with "type" or "rope_type")
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 128256,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "rope_scaling": {
            "type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = load_spec(str(tmp_path))
    assert isinstance(s, LlamaSpec)
    assert (s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.hidden_dim, s.vocab_size) == (64, 2, 4, 1, 96, 128256)
    assert s.use_scaled_rope and s.rope_scaling_factor == 32.0 and s.rope_theta == 500000.0 and s.tie_embeddings
    # transformers 5.x spelling: everything in rope_parameters
    cfg5 = dict(cfg)
    del cfg5["rope_theta"], cfg5["rope_scaling"]
    cfg5["rope_parameters"] = dict(cfg["rope_scaling"], rope_type="llama3", rope_theta=500000.0)
    assert spec_from_hf_config(cfg5) == s
    cfg5["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    assert not spec_from_hf_config(cfg5).use_scaled_rope and spec_from_hf_config(cfg5).rope_theta == 10000.0
    for bad, needle in (
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "yarn"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(head_dim=32), "head_dim"),
        (dict(num_key_value_heads=3), "n_kv_heads"),
    ):
        with pytest.raises(SpecError, match=needle):
            spec_from_hf_config({**cfg, **bad})
    assert load_spec("llama3.2-1b", dtype="bf16").dtype == "bf16"


@pytest.mark.parametrize("preset", ["llama3.2-1b", "llama3.1-8b", "llama3-8b", "llama3-tiny"])
def test_hf_config_round_trip_and_rope_frequencies(preset):
    """hf_config() is a LlamaConfig transformers accepts, it maps back to the same model, and the
    RoPE frequencies equal transformers' own (llama3 scaling included)."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    s = PRESETS[preset]
    hf = s.hf_config()
    kwargs = copy.deepcopy({k: v for k, v in hf.items() if k not in ("architectures", "model_type", "torch_dtype")})
    config = LlamaConfig(**kwargs)  # (transformers edits the rope dict it is given)
    back = spec_from_hf_config(json.loads(config.to_json_string()))
    assert back.hf_config() == hf
    if s.use_scaled_rope:
        want, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    else:
        want = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.int64).float() / s.head_dim))
    np.testing.assert_allclose(s.rope_inv_freq(), want.numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# the command line


def test_inspect_llama_preset():
    out = run_llmgen("inspect", "llama3.2-1b").stdout
    assert "llama3" in out and "1,235,814,400" in out
    for word in (
        "attention",
        "rope",
        "swiglu",
        "fused: residual add + RMSNorm",
        "fused: rmsnorm backward + residual grad",
        "memory plan:",
        "peak",
        "fusion:",
    ):
        assert word in out, word


def test_bad_llama_spec_through_cli(tmp_path):
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 3,
        "intermediate_size": 128,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run_llmgen("build", tmp_path / "config.json", "-o", tmp_path / "out", check=False)
    assert r.returncode == 1 and "n_kv_heads" in r.stderr and "must divide n_heads" in r.stderr
    assert "Traceback" not in r.stderr
