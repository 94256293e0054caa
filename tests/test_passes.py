"""Every pass keeps the interpreter's results; fusion shrinks the kernel list and the activations."""

import numpy as np
import pytest

from conftest import run_llmgen
from llmgen.compiler import training_graph
from llmgen.ir import interp
from llmgen.passes import PIPELINE, plan_memory
from llmgen.spec import GPT2Spec


def _run(g, params, feeds):
    st = interp.State(g, params)
    out = interp.run(g, st, feeds, ("fwd", "bwd", "opt"))
    return st, out


@pytest.mark.parametrize(
    "spec",
    [
        GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32),
        GPT2Spec(n_layer=1, n_head=3, n_embd=24, vocab_size=50, max_seq_len=16),
    ],
)
def test_each_pass_keeps_interpreter_outputs(spec):
    B, T = 2, 8
    g = training_graph(spec, B, T)
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(0, 0.2, p.shape).astype(np.float32) for p in g.params}
    feeds = {
        "tokens": rng.integers(0, spec.vocab_size, (B, T)),
        "targets": rng.integers(0, spec.vocab_size, (B, T)),
        "dloss": 0.5,
        "lr": 1e-2,
        "t": 3,
        "weight_decay": 0.1,
    }
    ref_st, ref_out = _run(g, params, feeds)
    for name, fn, _ in PIPELINE:
        before = len(g.nodes)
        g = fn(g)
        st, out = _run(g, params, feeds)
        assert float(out["loss"]) == float(ref_out["loss"]), name
        for k in ref_st.grads:  # gradients before the update, parameters and moments after it
            np.testing.assert_allclose(st.grads[k], ref_st.grads[k], rtol=1e-6, atol=1e-7, err_msg=f"{name}: grad {k}")
            np.testing.assert_allclose(st.params[k], ref_st.params[k], rtol=1e-6, atol=1e-7, err_msg=f"{name}: {k}")
        for k in ref_st.state:
            np.testing.assert_allclose(st.state[k], ref_st.state[k], rtol=1e-6, atol=1e-9, err_msg=f"{name}: {k}")
        assert len(g.nodes) <= before, f"{name} added nodes"


def test_fusion_saves_kernels_and_activation_memory():
    spec = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32)
    g0 = training_graph(spec, 1, 1)
    g = g0
    for _, fn, _ in PIPELINE:
        g = fn(g)
    assert {n.op for n in g.nodes} >= {"softmax_xent", "residual_layernorm", "adamw_all"}
    assert len(g.nodes) < len(g0.nodes) // 2
    assert plan_memory(g).act_elems < plan_memory(g0).act_elems


def test_projection_bias_grads_come_from_the_norm_backward():
    """GPT-2's attn.c_proj.b and mlp.c_proj.b gradients are the column sums of the residual-stream gradient the
    next layernorm backward writes (ln_2; the next block's ln_1, or ln_f): that node produces them, and those
    dW GEMMs keep dW only; the first block's ln_1 (the embedding before it: no bias) and c_fc / c_attn keep theirs."""
    spec = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32)
    g = training_graph(spec, 1, 1)
    for _, fn, _ in PIPELINE:
        g = fn(g)
    prod = {v.id: n for n in g.nodes for v in n.outputs}
    grads = {p.name: v for p, v in ((v.grad_of, v) for v in g.grads.values())}
    expect = {
        "h0.attn.c_proj.b": "h0.ln_2.w",
        "h0.mlp.c_proj.b": "h1.ln_1.w",
        "h1.attn.c_proj.b": "h1.ln_2.w",
        "h1.mlp.c_proj.b": "ln_f.w",
    }
    for bias, norm_w in expect.items():
        n = prod[grads[bias].id]
        assert n.op == "layernorm_bwd" and n.attrs.get("dbias") and n.outputs[3] is grads[bias], bias
        assert n.inputs[2].name == norm_w, bias
        dw = prod[grads[bias.replace(".b", ".w")].id]
        assert dw.op == "linear_dw" and not dw.attrs.get("bias") and len(dw.outputs) == 1, bias
        assert dw.inputs[0] is n.outputs[0], bias  # the same gradient: dy of the projection = dx of the norm
    for bias in ("h0.attn.c_attn.b", "h0.mlp.c_fc.b"):
        assert prod[grads[bias].id].op == "linear_dw", bias
    first_ln1 = next(n for n in g.nodes if n.op == "layernorm_bwd" and n.inputs[2].name == "h0.ln_1.w")
    assert not first_ln1.attrs.get("dbias") and len(first_ln1.outputs) == 3


def test_memory_plan_never_overlaps_live_buffers():
    spec = GPT2Spec(n_layer=3, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32)
    g = training_graph(spec, 1, 1)
    for _, fn, _ in PIPELINE:
        g = fn(g)
    plan = plan_memory(g)
    pos = {}
    for i, n in enumerate(g.nodes):
        for v in n.outputs:
            if v.id in plan.act_offset:
                pos.setdefault(v.id, [i, i])
        for v in n.inputs:
            if v.id in pos:
                pos[v.id][1] = i
    vals = {v.id: v for v in plan.act_values}
    roots = [vid for vid in pos if vid in vals]
    for a in roots:
        for b in roots:
            if a >= b:
                continue
            (s1, e1), (s2, e2) = pos[a], pos[b]
            if e1 < s2 or e2 < s1:
                continue
            o1, o2 = plan.act_offset[a], plan.act_offset[b]
            assert o1 + vals[a].numel <= o2 or o2 + vals[b].numel <= o1, (vals[a].name, vals[b].name)
    assert plan.act_elems < plan.unplanned_elems


def test_inspect_reports_fusion_savings():
    r = run_llmgen("inspect", "gpt2")
    out = r.stdout
    for word in (
        "kernels per micro-batch step",
        "memory plan:",
        "params",
        "grads",
        "optimizer_state",
        "activations",
        "peak",
        "FLOPs per token",
        "fused: residual add + layernorm",
        "fused: softmax + cross-entropy + dlogits",
    ):
        assert word in out, word
    line = next(line for line in out.splitlines() if line.startswith("fusion:"))
    assert "fewer" in line and "less" in line
    import re

    k_fused, k_unfused = map(int, re.search(r"(\d+) kernels instead of (\d+)", line).groups())
    assert k_fused < k_unfused
    assert "124,4" in out  # 124M parameters (124,439,808 + the padded vocab rows)


def test_inspect_refuses_bad_sizes():
    for flags in (["-b", "0"], ["-t", "-3"], ["-t", "5000"]):
        r = run_llmgen("inspect", "gpt2", *flags, check=False)
        assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_inspect_bf16_counts_bf16_activations_and_master_weights():
    """--dtype bf16 (the CUDA target's mixed precision): activations are stored in 2 bytes (a few
    fp32 statistics aside), parameters as bf16 + an fp32 master copy, grads and moments fp32."""
    import re

    def arenas(*flags):
        out = run_llmgen("inspect", "gpt2-tiny", "-b", "4", "-t", "64", *flags).stdout
        units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
        return {k: float(v) * units[u] for k, v, u in re.findall(r"^  (\w+)\s+([\d.]+) (B|KiB|MiB|GiB)$", out, re.M)}

    fp32, bf16 = arenas(), arenas("--dtype", "bf16")
    assert 0.5 <= bf16["activations"] / fp32["activations"] < 0.6
    assert bf16["params"] / fp32["params"] == pytest.approx(1.5, rel=5e-3)  # printed to 3-4 digits
    assert bf16["grads"] == fp32["grads"] and bf16["optimizer_state"] == fp32["optimizer_state"]
