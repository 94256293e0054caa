"""The in-process runner: the C target loaded as a library, its buffers read by graph name."""

import numpy as np

import oracle
from llmgen.runtime.process import InProcessTrainer
from llmgen.spec import GPT2Spec


def test_in_process_step_and_buffers_match_torch(tmp_path):
    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 2, 2, 32, 100, 64, seed=2)
    pat = oracle.random_shards(tmp_path / "d", 100, 3000)
    spec = GPT2Spec(n_layer=2, n_head=2, n_embd=32, vocab_size=100, max_seq_len=64)
    tr = InProcessTrainer(spec, 4, 16, tmp_path / "build", init_from=mdir)
    x, y = next(oracle.batches(pat, 4, 16, 1))
    ref = oracle.step0_dump(mdir, pat, 4, 16)
    loss = tr.forward(x.numpy(), None)
    np.testing.assert_allclose(tr.read("logits")[..., :100], ref["logits"], atol=3e-6)
    tr.lib.llmgen_zero_grads()
    tr.lib.llmgen_set_dloss(1.0)
    loss = tr.forward(x.numpy(), y.numpy())
    tr.backward()
    assert abs(loss - ref["loss"]) < 2e-6 * ref["loss"]
    want = ref["grads"]["transformer.h.1.attn.c_attn.weight"].T  # HF Conv1D is (in, out)
    got = tr.read("grad.h1.attn.c_attn.w")
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    assert tr.read("h0.qkv").shape == (4, 16, 96)  # an activation by name
    w0 = tr.read("h0.mlp.c_fc.w")
    _, norm = tr.step(x.numpy(), y.numpy(), lr=1e-3, step=1)
    assert norm > 0 and not np.array_equal(tr.read("h0.mlp.c_fc.w"), w0)
    try:
        tr.read("no.such.buffer")
    except KeyError as e:
        assert "no buffer named" in str(e)
    else:
        raise AssertionError("reading an unknown name must fail")
