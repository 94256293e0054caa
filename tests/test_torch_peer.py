"""bench/torch_gpt2.py is the same model as transformers' GPT2LMHeadModel (and so as llmgen's):
same weights -> the same loss, gradients and AdamW steps in fp32 on the CPU, with the vocabulary
padded to a multiple of 128 whose rows stay zero and never reach the loss. No GPU checks this
file, so the CPU does; the torch.compile path (fullgraph, the flash-backend context and the -inf
mask) is traced here too."""

import sys

import pytest
import torch

import oracle
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import torch_gpt2  # noqa: E402

from llmgen.checkpoint import read_safetensors  # noqa: E402

L, H, C, V, P = 2, 2, 32, 100, 64  # vocab 100 -> padded 128: 28 rows of padding
B, T = 2, 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return oracle.make_gpt2_model_dir(tmp_path_factory.mktemp("peer") / "model", L, H, C, V, P, seed=3, qk_scale=4.0)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def both(model_dir):
    with oracle.torch_settings():
        hf = oracle.load_gpt2(model_dir)
        ours = torch_gpt2.GPT2.from_hf_dir(model_dir, read_safetensors)
    return hf, ours


def test_padding_and_same_loss_and_grads(model_dir):
    hf, ours = both(model_dir)
    assert ours.wte.weight.shape == (128, C) and torch.all(ours.wte.weight[V:] == 0)
    x, y = batch(0)
    with oracle.torch_settings():
        ref = oracle.loss_of(oracle.logits_of(hf, x), y)
        got = ours(x, y)
        ref.backward()
        got.backward()
    assert abs(got.item() - ref.item()) <= 1e-5 * abs(ref.item()), (got.item(), ref.item())
    gw, rw = ours.wte.weight.grad, hf.transformer.wte.weight.grad
    assert torch.all(gw[V:] == 0)  # padded rows: no gradient at all
    assert (gw[:V] - rw).abs().max() <= 1e-5 * rw.abs().max()
    for i in range(L):  # nn.Linear (out, in) vs Conv1D (in, out)
        for ours_l, theirs in (
            (ours.h[i].c_attn, hf.transformer.h[i].attn.c_attn),
            (ours.h[i].mlp_proj, hf.transformer.h[i].mlp.c_proj),
        ):
            assert (ours_l.weight.grad - theirs.weight.grad.t()).abs().max() <= 1e-5 * theirs.weight.grad.abs().max()
            assert (ours_l.bias.grad - theirs.bias.grad).abs().max() <= 1e-5 * theirs.bias.grad.abs().max()


def test_adamw_steps_match_and_padding_stays_zero(model_dir):
    hf, ours = both(model_dir)
    losses = {"hf": [], "ours": []}
    with oracle.torch_settings():
        opts = {
            "hf": torch.optim.AdamW(oracle.param_groups(hf, 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8),
            "ours": torch_gpt2.optimizer(ours, 1e-2, 0.1, fused=False),
        }
        for step in range(4):
            x, y = batch(step + 1)
            for name, m in (("hf", hf), ("ours", ours)):
                opts[name].zero_grad(set_to_none=True)
                loss = oracle.loss_of(oracle.logits_of(m, x), y) if name == "hf" else m(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opts[name].step()
                losses[name].append(loss.item())
    for a, b in zip(losses["ours"], losses["hf"]):
        assert abs(a - b) <= 2e-5 * abs(b), losses
    assert losses["hf"][-1] != losses["hf"][0]  # the steps did move the model
    assert torch.all(ours.wte.weight[V:] == 0)  # weight decay and moments keep them 0
    assert (ours.wte.weight[:V] - hf.transformer.wte.weight).abs().max() < 1e-4


def test_compiled_graph_with_forced_flash_backend(model_dir, monkeypatch):
    """fullgraph=True: the -inf mask, the sdpa_kernel context (forced here on the CPU, whose SDPA has a
    flash kernel too) and the loss trace as one graph; the compiled loss equals the eager one."""
    monkeypatch.setattr(torch_gpt2, "flash_wanted", lambda q: True)
    _, ours = both(model_dir)
    x, y = batch(5)
    with oracle.torch_settings():
        eager = ours(x, y)
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")(x, y)
        compiled.backward()
    assert abs(compiled.item() - eager.item()) <= 1e-5 * abs(eager.item())
    assert torch.all(ours.wte.weight.grad[V:] == 0)
    assert torch_gpt2.COMPILE_MODE in ("max-autotune", "max-autotune-no-cudagraphs")
