"""The recompute pass (llm.c's -r) and the bf16 memory plan: the interpreter's results do not change,
the activation arena shrinks, and no two live buffers overlap once fp32 values take two bf16 slots."""

import numpy as np
import pytest

from conftest import run_llmgen
from llmgen.compiler import training_graph
from llmgen.ir import interp
from llmgen.passes import optimize, plan_memory, recompute_activations
from llmgen.passes.precision import storage_dtypes
from llmgen.spec import GPT2Spec

SPEC = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32)


def _run(g, params, feeds):
    st = interp.State(g, params)
    out = interp.run(g, st, feeds, ("fwd", "bwd", "opt"))
    return st, out


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("level", [1, 2])
def test_recompute_keeps_interpreter_outputs(fuse, level):
    B, T = 2, 8
    g = optimize(training_graph(SPEC, B, T), fuse=fuse)
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(0, 0.2, p.shape).astype(np.float32) for p in g.params}
    feeds = {
        "tokens": rng.integers(0, SPEC.vocab_size, (B, T)),
        "targets": rng.integers(0, SPEC.vocab_size, (B, T)),
        "dloss": 1.0,
        "lr": 1e-2,
        "t": 1,
        "weight_decay": 0.1,
    }
    ref_st, ref_out = _run(g, params, feeds)
    g2 = recompute_activations(g, level)
    added = [
        n for n in g2.nodes if n.phase == "bwd" and any(o.name.endswith("_re") or "_re_" in o.name for o in n.outputs)
    ]
    assert {n.op for n in added} == ({"gelu"} if level == 1 else {"gelu", "layernorm"})
    assert len([n for n in added if n.op == "gelu"]) == SPEC.n_layer
    st, out = _run(g2, params, feeds)
    assert float(out["loss"]) == float(ref_out["loss"])
    for k in ref_st.grads:
        np.testing.assert_array_equal(st.grads[k], ref_st.grads[k], err_msg=k)
        np.testing.assert_array_equal(st.params[k], ref_st.params[k], err_msg=k)


def test_recompute_shrinks_the_activation_plan():
    sizes = [plan_memory(optimize(training_graph(SPEC, 1, 1), recompute=r)).act_elems for r in (0, 1, 2)]
    assert sizes[0] > sizes[1] > sizes[2], sizes
    with pytest.raises(ValueError, match="recompute level"):
        recompute_activations(training_graph(SPEC, 1, 1), 3)


@pytest.mark.parametrize("recompute", [0, 2])
def test_bf16_plan_sizes_fp32_values_twice_and_never_overlaps(recompute):
    g = optimize(training_graph(SPEC, 1, 1), recompute=recompute)
    p32, p16 = plan_memory(g), plan_memory(g, dtype="bf16")
    stored = storage_dtypes(g, "bf16")
    f32 = {v.id for v in p16.act_values if stored[v.id] == "f32"}
    names = {v.name.rsplit("_", 1)[-1] for v in p16.act_values if v.id in f32}
    assert names == {"mean", "rstd", "lse", "losses"}, names
    # in 2-byte elements the plan is a little larger than the fp32 plan's 4-byte elements count
    assert p32.act_elems <= p16.act_elems < 2 * p32.act_elems
    size = {v.id: v.numel * (2 if v.id in f32 else 1) for v in p16.act_values}
    pos = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs + n.outputs:
            if v.id in p16.act_offset:
                root = p16.alias.get(v.id, v.id)
                lo, hi = pos.get(root, (i, i))
                pos[root] = (min(lo, i), max(hi, i))
    vals = [v for v in p16.act_values]
    for a in vals:
        for b in vals:
            if a.id >= b.id:
                continue
            (s1, e1), (s2, e2) = pos[a.id], pos[b.id]
            if e1 < s2 or e2 < s1:
                continue
            o1, o2 = p16.act_offset[a.id], p16.act_offset[b.id]
            assert o1 + size[a.id] <= o2 or o2 + size[b.id] <= o1, (a.name, b.name)


def test_cli_recompute_flag_and_cuda_errors(tmp_path):
    cfg = tmp_path / "spec.py"
    cfg.write_text(
        "from llmgen.spec import GPT2Spec\nspec = GPT2Spec(n_layer=1, n_head=2, n_embd=32, "
        "vocab_size=64, max_seq_len=16)\n"
    )
    r = run_llmgen("build", cfg, "--recompute", "3", "-o", tmp_path / "x", check=False)
    assert r.returncode != 0 and "--recompute" in r.stderr
    r = run_llmgen("build", cfg, "--emulate", "-o", tmp_path / "x", check=False)
    assert r.returncode == 1 and "--emulate applies to --target cuda" in r.stderr


def test_c_twin_recompute_trains_the_same(tmp_path, build_cache):
    """The pass is target-independent: the CPU twin honours --recompute too, bit for bit."""
    import json

    import oracle
    from conftest import run_binary

    oracle.make_gpt2_model_dir(tmp_path / "m", 2, 2, 32, 100, 64, seed=3)
    pat = oracle.random_shards(tmp_path / "data", 100, 2000)
    losses = {}
    for level in (0, 2):
        binary = build_cache(tmp_path / "m" / "config.json", "--recompute", str(level))
        run_binary(
            binary, "-e", tmp_path / "m", "-i", pat, "-b", 4, "-t", 32, "-x", 4, "-v", 0, "-o", tmp_path / f"r{level}"
        )
        losses[level] = [json.loads(x)["train_loss"] for x in open(tmp_path / f"r{level}" / "log.jsonl")]
    assert losses[0] == losses[2]
