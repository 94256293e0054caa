"""The numpy interpreter (the IR's definition) against the PyTorch oracle."""

import numpy as np
import pytest
import torch

import oracle
from llmgen.checkpoint import hf_to_params, read_safetensors
from llmgen.compiler import training_graph
from llmgen.ir import interp
from llmgen.spec import GPT2Spec

# Tolerances (fp32, both sides accumulate in float32 in different orders):
#   logits/loss: 2e-6 abs, a few ulps of values of size ~5 (measured ~2e-7);
#   grads: 1e-5 relative to each tensor's max (measured <1e-6);
#   AdamW losses: 1e-5 relative (params differ by ~1e-7 after each step).
TOL_LOGITS, TOL_GRAD_REL, TOL_LOSS_REL = 2e-6, 1e-5, 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("interp")
    oracle.make_gpt2_model_dir(d / "model", n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, seed=3)
    pat = oracle.random_shards(d / "data", vocab_size=100, n_tokens=4000, seed=1)
    return d / "model", pat


def test_forward_backward_match_torch(model):
    mdir, pat = model
    spec = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=64)
    B, T = 4, 16
    g = training_graph(spec, B, T)
    st = interp.State(g, hf_to_params(g, read_safetensors(mdir / "model.safetensors")))
    x, y = next(oracle.batches(pat, B, T, 1))
    out = interp.run(g, st, {"tokens": x.numpy(), "targets": y.numpy(), "dloss": 1.0})
    ref = oracle.step0_dump(mdir, pat, B, T)
    assert abs(float(out["loss"]) - ref["loss"]) < TOL_LOGITS
    np.testing.assert_allclose(out["logits"][..., :100], ref["logits"], atol=TOL_LOGITS, rtol=0)
    for p in g.params:
        mine = st.grads[p.name]
        mine = (
            (mine.T if p.meta["hf_transpose"] else mine)[: p.meta.get("hf_rows", mine.shape[0])]
            if not p.meta["hf_transpose"]
            else mine.T
        )
        want = ref["grads"][p.meta["hf"]]
        err = np.abs(mine - want).max() / (np.abs(want).max() + 1e-30)
        assert err < TOL_GRAD_REL, f"{p.name}: relative error {err:.2e}"


def test_adamw_steps_match_torch(model):
    mdir, pat = model
    spec = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=64)
    B, T, steps, lr, wd = 2, 16, 4, 3e-3, 0.1
    g = training_graph(spec, B, T)
    st = interp.State(g, hf_to_params(g, read_safetensors(mdir / "model.safetensors")))
    losses = []
    for s, (x, y) in enumerate(oracle.batches(pat, B, T, steps), start=1):
        st.zero_grads()
        feeds = {
            "tokens": x.numpy(),
            "targets": y.numpy(),
            "dloss": 1.0,
            "lr": oracle.lr_at(s, steps, lr, warmup=1, schedule="cosine"),
            "t": s,
            "weight_decay": wd,
        }
        out = interp.run(g, st, feeds, ("fwd", "bwd", "opt"))
        losses.append(float(out["loss"]))
    ref = oracle.train_gpt2(mdir, pat, B, T, steps, lr, warmup=1, schedule="cosine", weight_decay=wd)
    np.testing.assert_allclose(losses, ref["losses"], rtol=TOL_LOSS_REL)
