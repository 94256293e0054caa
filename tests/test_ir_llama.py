"""Llama 3 in the IR: the numpy interpreter against transformers' LlamaForCausalLM (tests/oracle.py: fp32,
attention_dropout 0, eager attention) on the C rows' models of tests/matrix.py, RoPE scaling as a
negative control, and every pass (and activation recompute) keeping the interpreter's outputs.

Tolerance: 1e-4 relative for loss, logits (to max|logit|) and every gradient (to each tensor's
max|value|): the issue's bound, tests/matrix.py's LLAMA_C table; measured far below it."""

import numpy as np
import pytest

import oracle
from conftest import rel_err
from llmgen.checkpoint import hf_to_params, read_safetensors
from llmgen.compiler import training_graph
from llmgen.ir import interp
from llmgen.passes import PIPELINE, optimize, plan_memory, recompute_activations
from llmgen.spec import LlamaSpec, load_spec
from matrix import C, LLAMA_C, LLAMA_GQA4, rows
from matrix import params as row_params

TOL = LLAMA_C["grads"].value
B, T = 4, 64  # the issue's -b 4 -t 64
C_ROWS = rows(family="llama", target=C)

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
@pytest.mark.parametrize("row", **row_params(C_ROWS))
def test_interpreter_matches_torch(row, fuse, matrix_data, oracle_runs):
    s = matrix_data(row)
    assert (row.B, row.T) == (B, T)
    spec = load_spec(str(s["cfg"]))
    g, st, out = _interp_step0(spec, s["model"], s["pattern"], fuse)
    ref = oracle_runs(row, train=False)["dump"]
    assert abs(float(out["loss"]) - ref["loss"]) <= TOL * ref["loss"]
    if not fuse:  # fused, the logits buffer holds dlogits
        assert rel_err(out["logits"][..., : s["V"]], ref["logits"]) < TOL
    assert {p.meta["hf"] for p in g.params} == set(ref["grads"])
    for p in g.params:
        err = rel_err(st.grads[p.name][: p.meta.get("hf_rows", p.shape[0])], ref["grads"][p.meta["hf"]])
        assert err < TOL, f"{p.name}: relative error {err:.2e}"


def test_rope_scaling_is_not_a_no_op(tmp_path):
    """Negative control: the same weights without Llama 3.1's scaling miss the oracle by far more than TOL."""
    cfg = LLAMA_GQA4.config
    mdir = oracle.make_llama_model_dir(tmp_path / "m", rope_theta=500000.0, seed=5, **cfg)
    pat = oracle.random_shards(tmp_path / "data", vocab_size=cfg["vocab_size"], n_tokens=1000, seed=3)
    spec = load_spec(str(mdir / "config.json"))
    ref = oracle.llama_step0_dump(mdir, pat, B, T)
    _, _, out = _interp_step0(spec, mdir, pat, False)
    assert rel_err(out["logits"][..., : cfg["vocab_size"]], ref["logits"]) < TOL
    _, _, out = _interp_step0(spec.replace(use_scaled_rope=False), mdir, pat, False)
    assert rel_err(out["logits"][..., : cfg["vocab_size"]], ref["logits"]) > 10 * TOL  # measured 4.7e-3


LLAMA_PASS_SPECS = [
    LlamaSpec(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=100,
        multiple_of=16,
        max_seq_len=16,
        use_scaled_rope=True,
        rope_original_max_seq_len=16,
    ),
    LlamaSpec(
        dim=24, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=50, multiple_of=8, max_seq_len=16, tie_embeddings=True
    ),
]


@pytest.mark.parametrize("spec", LLAMA_PASS_SPECS)
def test_each_pass_keeps_interpreter_outputs(spec):
    Bp, Tp = 2, 8
    g = training_graph(spec, Bp, Tp)
    rng = np.random.default_rng(0)
    params = {
        p.name: (rng.normal(0, 0.2, p.shape) + (1.0 if p.meta["init"] == "ones" else 0.0)).astype(np.float32)
        for p in g.params
    }
    feeds = {
        "tokens": rng.integers(0, spec.vocab_size, (Bp, Tp)),
        "targets": rng.integers(0, spec.vocab_size, (Bp, Tp)),
        "dloss": 0.5,
        "lr": 1e-2,
        "t": 3,
        "weight_decay": 0.1,
    }

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
    for level in (1, 2):  # activation recompute (llm.c's -r) recomputes the same ops
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
    assert ops.count("residual_rmsnorm") == 2 * spec.n_layers  # every norm after a residual add
    assert sum(n.op == "rmsnorm_bwd" and bool(n.attrs.get("accumulate")) for n in g.nodes) == 2 * spec.n_layers
    assert {"softmax_xent", "adamw_all"} <= set(ops) and "xent" not in ops
    plan = plan_memory(g)
    aliased = {n.op for n in g.nodes for v in n.outputs if v.id in plan.alias}
    assert {"rope", "rope_bwd", "swiglu_bwd", "softmax_xent"} <= aliased  # in place: no extra buffers
    assert plan.act_elems < plan_memory(g0).act_elems
    recomputed = [n.op for n in optimize(g0, recompute=2).nodes if n.phase == "bwd"]
    assert recomputed.count("swiglu") == spec.n_layers and recomputed.count("rmsnorm") == 2 * spec.n_layers + 1
    assert plan_memory(optimize(g0, recompute=2)).act_elems < plan.act_elems
