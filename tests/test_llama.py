"""Llama 3: the spec, the IR (numpy interpreter, passes) and the C target against transformers'
LlamaForCausalLM (tests/oracle.py: fp32, attention_dropout 0, eager attention).

Tolerance table (fp32 on both sides, different summation orders). The issue's bound is 1e-4
relative for everything; the measured errors are far below it:
  logits           1e-4 x max|logit|      measured < 5e-7 abs on logits of size ~1-5
  loss             1e-4 rel               measured ~1e-7
  grads            1e-4 rel to each tensor's max|value|   measured < 1.5e-6
  10 AdamW losses  1e-4 rel               measured ~2e-7 (grad norms ~3e-7)
  checkpoint eval  1e-4 rel               measured ~2e-7: the final checkpoint in LlamaForCausalLM
"""

import copy
import json
import subprocess

import numpy as np
import pytest

import oracle
from conftest import run_binary, run_llmgen
from llmgen.checkpoint import hf_to_params, read_safetensors
from llmgen.compiler import training_graph
from llmgen.ir import interp
from llmgen.passes import PIPELINE, optimize, plan_memory, recompute_activations
from llmgen.spec import PRESETS, LlamaSpec, SpecError, load_spec, spec_from_hf_config

TOL = 1e-4
B, T = 4, 64                       # the issue's -b 4 -t 64
LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
# original context 64: at T = 64 every branch of the 3.1 scaling (kept / blended / divided) is hit hard
SHORT_SCALING = dict(LLAMA31_SCALING, original_max_position_embeddings=64)

CONFIGS = {
    # GQA 4:1, own lm_head, scaled RoPE, rope_theta 500000
    "gqa4-untied-scaled": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=300, intermediate_size=96,
                               max_position_embeddings=128, rope_scaling=SHORT_SCALING, tie_word_embeddings=False),
    # plain multi-head (1:1), tied head, no scaling, odd vocabulary (padded rows), head_dim 24
    "mha-tied": dict(dim=48, n_layers=2, n_heads=2, n_kv_heads=2, vocab_size=257, intermediate_size=80,
                     max_position_embeddings=64, rope_scaling=None, tie_word_embeddings=True),
    # GQA 2:1, tied, Llama 3.1's own scaling constants (head_dim 8 reaches the blended and divided bands);
    # its trainer is built with --recompute 2 (SwiGLU and RMSNorm outputs recomputed in the backward)
    "gqa2-tied-llama31": dict(dim=64, n_layers=1, n_heads=8, n_kv_heads=4, vocab_size=200, intermediate_size=160,
                              max_position_embeddings=64, rope_scaling=LLAMA31_SCALING, tie_word_embeddings=True),
}
BUILD_FLAGS = {"gqa2-tied-llama31": ("--recompute", "2")}


def rel_err(got, want):
    return float(np.abs(np.asarray(got) - want).max() / (np.abs(want).max() + 1e-30))


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request, tmp_path_factory, build_cache):
    cfg = CONFIGS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    mdir = oracle.make_llama_model_dir(d / "model", rope_theta=500000.0, seed=5, **cfg)
    pat = oracle.random_shards(d / "data", vocab_size=cfg["vocab_size"], n_tokens=4000, n_shards=2, seed=3)
    return dict(name=request.param, dir=d, model=mdir, pattern=pat, cfg=cfg, V=cfg["vocab_size"],
                binary=lambda: build_cache(d / "model" / "config.json", *BUILD_FLAGS.get(request.param, ())))


# ------------------------------------------------------------------------------------------
# spec

@pytest.mark.parametrize("kwargs, field, rule", [
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
])
def test_bad_values_name_field_and_rule(kwargs, field, rule):
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100)
    with pytest.raises(SpecError) as e:
        LlamaSpec(**{**base, **kwargs})
    assert field in str(e.value) and rule in str(e.value), str(e.value)


def test_presets_shapes_and_parameter_counts():
    from llmgen.models import build_forward
    # Meta's FFN sizes and Hugging Face's parameter counts of the released models
    expect = {"llama3.2-1b": (8192, 1_235_814_400), "llama3.2-3b": (8192, 3_212_749_824),
              "llama3.1-8b": (14336, 8_030_261_248), "llama3-8b": (14336, 8_030_261_248)}
    for name, (ffn, count) in expect.items():
        s = PRESETS[name]
        assert s.arch == "llama3" and s.hidden_dim == ffn and s.padded_vocab_size == 128256, name
        g = build_forward(s, 1, 1)
        assert sum(p.numel for p in g.params) == count, name
    assert PRESETS["llama3.1-8b"].n_kv_heads == 8 and not PRESETS["llama3.1-8b"].tie_embeddings
    assert PRESETS["llama3.2-1b"].tie_embeddings and PRESETS["llama3.2-1b"].rope_scaling_factor == 32.0
    tiny = PRESETS["llama3-tiny"]
    assert tiny.vocab_size == 50257 and tiny.padded_vocab_size == 50304 and tiny.n_heads // tiny.n_kv_heads == 4
    assert LlamaSpec(n_kv_heads=None).n_kv_heads == 32          # Meta's default: one K/V head per query head


def test_load_hf_llama_configs(tmp_path):
    # transformers 4.x spelling: rope_theta + rope_scaling (with "type" or "rope_type")
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 128256, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": True,
           "rope_scaling": {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}
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
    for bad, needle in ((dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "yarn"),
                        (dict(attention_bias=True), "attention_bias"),
                        (dict(hidden_act="gelu"), "hidden_act"),
                        (dict(head_dim=32), "head_dim"),
                        (dict(num_key_value_heads=3), "n_kv_heads")):
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
    config = LlamaConfig(**kwargs)          # (transformers edits the rope dict it is given)
    back = spec_from_hf_config(json.loads(config.to_json_string()))
    assert back.hf_config() == hf
    if s.use_scaled_rope:
        want, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    else:
        want = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.int64).float() / s.head_dim))
    np.testing.assert_allclose(s.rope_inv_freq(), want.numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------
# the IR: interpreter against PyTorch, passes against the interpreter

def _interp_step0(spec, mdir, pat, fuse):
    g = training_graph(spec, B, T)
    if fuse:
        g = optimize(g)
    st = interp.State(g, hf_to_params(g, read_safetensors(mdir / "model.safetensors")))
    x, y = next(oracle.batches(pat, B, T, 1))
    out = interp.run(g, st, {"tokens": x.numpy(), "targets": y.numpy(), "dloss": 1.0})
    return g, st, out


@pytest.mark.parametrize("fuse", [False, True])
def test_interpreter_matches_torch(setup, fuse):
    s = setup
    spec = load_spec(str(s["model"] / "config.json"))
    g, st, out = _interp_step0(spec, s["model"], s["pattern"], fuse)
    ref = oracle.llama_step0_dump(s["model"], s["pattern"], B, T)
    assert abs(float(out["loss"]) - ref["loss"]) <= TOL * ref["loss"]
    if not fuse:                  # fused, the logits buffer holds dlogits
        assert rel_err(out["logits"][..., : s["V"]], ref["logits"]) < TOL
    assert {p.meta["hf"] for p in g.params} == set(ref["grads"])
    for p in g.params:
        err = rel_err(st.grads[p.name][: p.meta.get("hf_rows", p.shape[0])], ref["grads"][p.meta["hf"]])
        assert err < TOL, f"{p.name}: relative error {err:.2e}"


def test_rope_scaling_is_not_a_no_op(tmp_path):
    """Negative control: the same weights without Llama 3.1's scaling miss the oracle by far more than TOL."""
    cfg = CONFIGS["gqa4-untied-scaled"]
    mdir = oracle.make_llama_model_dir(tmp_path / "m", rope_theta=500000.0, seed=5, **cfg)
    pat = oracle.random_shards(tmp_path / "data", vocab_size=cfg["vocab_size"], n_tokens=1000, seed=3)
    spec = load_spec(str(mdir / "config.json"))
    ref = oracle.llama_step0_dump(mdir, pat, B, T)
    _, _, out = _interp_step0(spec, mdir, pat, False)
    assert rel_err(out["logits"][..., : cfg["vocab_size"]], ref["logits"]) < TOL
    _, _, out = _interp_step0(spec.replace(use_scaled_rope=False), mdir, pat, False)
    assert rel_err(out["logits"][..., : cfg["vocab_size"]], ref["logits"]) > 10 * TOL      # measured 4.7e-3


LLAMA_PASS_SPECS = [
    LlamaSpec(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, multiple_of=16, max_seq_len=16,
              use_scaled_rope=True, rope_original_max_seq_len=16),
    LlamaSpec(dim=24, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=50, multiple_of=8, max_seq_len=16,
              tie_embeddings=True),
]


@pytest.mark.parametrize("spec", LLAMA_PASS_SPECS)
def test_each_pass_keeps_interpreter_outputs(spec):
    Bp, Tp = 2, 8
    g = training_graph(spec, Bp, Tp)
    rng = np.random.default_rng(0)
    params = {p.name: (rng.normal(0, 0.2, p.shape) + (1.0 if p.meta["init"] == "ones" else 0.0)).astype(np.float32)
              for p in g.params}
    feeds = {"tokens": rng.integers(0, spec.vocab_size, (Bp, Tp)), "targets": rng.integers(0, spec.vocab_size, (Bp, Tp)),
             "dloss": 0.5, "lr": 1e-2, "t": 3, "weight_decay": 0.1}

    def run(graph):
        st = interp.State(graph, params)
        return st, interp.run(graph, st, feeds, ("fwd", "bwd", "opt"))

    ref_st, ref_out = run(g)
    for name, fn, _ in PIPELINE:
        before = len(g.nodes)
        g = fn(g)
        st, out = run(g)
        assert float(out["loss"]) == float(ref_out["loss"]), name
        for k in ref_st.grads:
            np.testing.assert_allclose(st.grads[k], ref_st.grads[k], rtol=1e-6, atol=1e-7, err_msg=f"{name}: grad {k}")
            np.testing.assert_allclose(st.params[k], ref_st.params[k], rtol=1e-6, atol=1e-7, err_msg=f"{name}: {k}")
        for k in ref_st.state:
            np.testing.assert_allclose(st.state[k], ref_st.state[k], rtol=1e-6, atol=1e-9, err_msg=f"{name}: {k}")
        assert len(g.nodes) <= before, f"{name} added nodes"
    for level in (1, 2):          # activation recompute (llm.c's -r) recomputes the same ops
        st, out = run(recompute_activations(g, level))
        assert float(out["loss"]) == float(ref_out["loss"])
        for k in ref_st.grads:
            np.testing.assert_allclose(st.grads[k], ref_st.grads[k], rtol=1e-6, atol=1e-7, err_msg=f"-r {level}: {k}")
            np.testing.assert_allclose(st.params[k], ref_st.params[k], rtol=1e-6, atol=1e-7, err_msg=f"-r {level}: {k}")


def test_llama_fusions_and_in_place_buffers():
    spec = LLAMA_PASS_SPECS[0]
    g0 = training_graph(spec, 1, 1)
    g = optimize(g0)
    ops = [n.op for n in g.nodes]
    assert ops.count("residual_rmsnorm") == 2 * spec.n_layers          # every norm after a residual add
    assert sum(n.op == "rmsnorm_bwd" and bool(n.attrs.get("accumulate")) for n in g.nodes) == 2 * spec.n_layers
    assert {"softmax_xent", "adamw_all"} <= set(ops) and "xent" not in ops
    plan = plan_memory(g)
    aliased = {n.op for n in g.nodes for v in n.outputs if v.id in plan.alias}
    assert {"rope", "rope_bwd", "swiglu_bwd", "softmax_xent"} <= aliased     # in place: no extra buffers
    assert plan.act_elems < plan_memory(g0).act_elems
    recomputed = [n.op for n in optimize(g0, recompute=2).nodes if n.phase == "bwd"]
    assert recomputed.count("swiglu") == spec.n_layers and recomputed.count("rmsnorm") == 2 * spec.n_layers + 1
    assert plan_memory(optimize(g0, recompute=2)).act_elems < plan.act_elems


# ------------------------------------------------------------------------------------------
# the C target (CPU twin), driven as a user would: llmgen build, then the binary

def read_log(path):
    return [r for r in (json.loads(line) for line in open(path)) if "train_loss" in r]


def test_c_step0_logits_loss_grads(setup):
    s = setup
    dump = s["dir"] / "dump.safetensors"
    run_binary(s["binary"](), "-e", s["model"], "-i", s["pattern"], "-b", B, "-t", T, "--dump", dump)
    got = read_safetensors(dump)
    ref = oracle.llama_step0_dump(s["model"], s["pattern"], B, T)
    print(f"{s['name']}: logits max rel err {rel_err(got['logits'], ref['logits']):.2e}, "
          f"loss {got['loss'][0]:.7f} vs {ref['loss']:.7f}")
    assert rel_err(got["logits"], ref["logits"]) < TOL
    assert abs(got["loss"][0] - ref["loss"]) <= TOL * ref["loss"]
    assert set(k[5:] for k in got if k.startswith("grad.")) == set(ref["grads"])
    for name, want in ref["grads"].items():
        err = rel_err(got["grad." + name], want)
        print(f"  {name:50s} max rel err {err:.2e}")
        assert err < TOL, name


def test_c_ten_adamw_steps_and_checkpoint(setup):
    s = setup
    run = s["dir"] / "run"
    run_binary(s["binary"](), "-e", s["model"], "-i", s["pattern"], "-b", B, "-t", T, "-x", 10,
               "-l", "1e-3", "-k", "constant", "-c", 0, "-o", run)
    log = read_log(run / "log.jsonl")
    ref = oracle.train_llama(s["model"], s["pattern"], B, T, 10, 1e-3, schedule="constant")
    assert [r["step"] for r in log] == list(range(1, 11))
    losses = [r["train_loss"] for r in log]
    print(f"{s['name']}: 10 AdamW losses max rel err {rel_err(losses, np.array(ref['losses'])):.2e}")
    np.testing.assert_allclose(losses, ref["losses"], rtol=TOL)
    np.testing.assert_allclose([r["grad_norm"] for r in log], ref["grad_norms"], rtol=TOL)
    # the final checkpoint loads in LlamaForCausalLM and scores the batch step 11 would read like PyTorch
    from transformers import LlamaForCausalLM
    ckpt = run / (run / "latest").read_text().strip()
    model = LlamaForCausalLM.from_pretrained(ckpt, attn_implementation="eager")
    want_rope = "llama3" if s["cfg"]["rope_scaling"] else "default"
    assert model.config.rope_parameters["rope_type"] == want_rope
    assert model.config.tie_word_embeddings == s["cfg"]["tie_word_embeddings"]
    x, y = list(oracle.batches(s["pattern"], B, T, 11))[-1]
    got = oracle.eval_loss(model, x, y)
    assert abs(got - ref["next_batch_loss"]) <= TOL * ref["next_batch_loss"]


def test_c_uint32_shards_and_big_vocab(tmp_path, build_cache):
    """vocab 70000 > 65535: the token shards are uint32 (magic 20240801, version 7)."""
    V = 70000
    oracle.make_llama_model_dir(tmp_path / "m", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=V,
                                intermediate_size=64, max_position_embeddings=16, seed=2)
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


def test_c_reads_sharded_hf_checkpoint(tmp_path, build_cache):
    """-e on a folder transformers saved in shards (as it does for 3B / 8B models): the step-0 loss,
    logits and grads equal PyTorch's on the same folder; a missing shard is an error naming it."""
    cfg = CONFIGS["gqa4-untied-scaled"]
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
    r = subprocess.run([str(binary), "-e", str(mdir), "-i", pat, "-b", "2", "-t", "16", "-x", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"{len(shards) - 1} of the {len(shards)} weight shards" in r.stderr


# ------------------------------------------------------------------------------------------
# the command line

def test_inspect_llama_preset():
    out = run_llmgen("inspect", "llama3.2-1b").stdout
    assert "llama3" in out and "1,235,814,400" in out
    for word in ("attention", "rope", "swiglu", "fused: residual add + RMSNorm",
                 "fused: rmsnorm backward + residual grad", "memory plan:", "peak", "fusion:"):
        assert word in out, word


def test_bad_llama_spec_through_cli(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
           "num_key_value_heads": 3, "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run_llmgen("build", tmp_path / "config.json", "-o", tmp_path / "out", check=False)
    assert r.returncode == 1 and "n_kv_heads" in r.stderr and "must divide n_heads" in r.stderr
    assert "Traceback" not in r.stderr
