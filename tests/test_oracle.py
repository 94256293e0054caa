"""Checks of the oracle itself (tests/oracle.py): the llm.c data loader rule, the lr
schedules against hand-computed numbers, and the transformers GPT-2 path against the
hand-written RefGPT2 (logits, loss, grads, three AdamW steps) in fp32.

Measured max |diff| transformers vs RefGPT2 (2 threads, the tiny config below,
over model seeds 0..4): logits 1.5e-7, loss 4.8e-7 (1 ulp at ln(100) = 4.6),
grads 3.0e-8, per-step loss 2.4e-7, grad norm 6.0e-8, params after 3 AdamW steps
3.7e-6 (Adam divides by sqrt(v), which magnifies the 1e-8 grad differences of
parameters whose gradients are themselves tiny). The tolerances below leave about
5-10x room over those numbers.
"""

import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

import oracle

L, H, C, V, MAXT = 2, 2, 32, 100, 64  # tiny GPT-2
B, T = 4, 16

TOL_LOGITS = 1e-6
TOL_LOSS = 2e-6  # 4 ulp at loss ~4.6
TOL_GRAD = 5e-7
TOL_PARAM_AFTER_3 = 2e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return oracle.make_gpt2_model_dir(str(tmp_path_factory.mktemp("gpt2") / "m"), L, H, C, V, MAXT, seed=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return oracle.random_shards(str(tmp_path_factory.mktemp("data")), V, 600, n_shards=2, seed=1)


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ----------------------------------------------------------------------------
# data


def test_shard_roundtrip_both_versions(tmp_path):
    small = np.arange(0, 65536, 257)
    big = np.array([0, 65535, 65536, 100000, 2**31 - 1])
    oracle.write_shard(tmp_path / "a.bin", small, version=1)
    oracle.write_shard(tmp_path / "b.bin", big, version=7)
    head = np.fromfile(tmp_path / "b.bin", dtype=np.int32, count=256)
    assert list(head[:3]) == [20240801, 7, len(big)]
    assert (tmp_path / "a.bin").stat().st_size == 256 * 4 + 2 * len(small)
    assert (tmp_path / "b.bin").stat().st_size == 256 * 4 + 4 * len(big)
    np.testing.assert_array_equal(oracle.read_shard(tmp_path / "a.bin"), small)
    np.testing.assert_array_equal(oracle.read_shard(tmp_path / "b.bin"), big)
    with pytest.raises(ValueError):
        oracle.write_shard(tmp_path / "c.bin", [70000], version=1)


def test_batches_two_shards_wraparound(tmp_path):
    # B*T = 6, so a batch needs 7 tokens. Shard "a" (20 tokens) gives positions 0, 6,
    # 12 (12+7 = 19 <= 20), then 18+7 > 20 moves on; shard "b" (10 tokens) gives
    # position 0 only (6+7 > 10), then wraps to "a". Written b first: the order must
    # come from sorting the glob.
    oracle.write_shard(tmp_path / "d_b.bin", 1000 + np.arange(10))
    oracle.write_shard(tmp_path / "d_a.bin", np.arange(20))
    starts = [(0, 0), (0, 6), (0, 12), (1000, 0), (0, 0), (0, 6)]  # (shard base, position)
    got = list(oracle.batches(str(tmp_path / "d_*.bin"), 2, 3, len(starts)))
    assert len(got) == len(starts)
    for (x, y), (base, pos) in zip(got, starts):
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert x.shape == (2, 3) and y.shape == (2, 3)
        want = base + pos + np.arange(7)
        np.testing.assert_array_equal(x.numpy().ravel(), want[:6])
        np.testing.assert_array_equal(y.numpy().ravel(), want[1:])
    # the exact boundary: position 12 needs tokens 12..18, i.e. a 19-token shard
    for n_tok, want in [(18, [0, 6, 0, 6]), (19, [0, 6, 12, 0])]:
        oracle.write_shard(tmp_path / f"e{n_tok}.bin", np.arange(n_tok))
        got = [x[0, 0].item() for x, _ in oracle.batches(str(tmp_path / f"e{n_tok}.bin"), 2, 3, 4)]
        assert got == want, n_tok


def test_batches_uint32_and_too_small(tmp_path):
    oracle.write_shard(tmp_path / "s.bin", 70000 + np.arange(9), version=7)
    ((x, y),) = oracle.batches(str(tmp_path / "s.bin"), 2, 4, 1)
    np.testing.assert_array_equal(x.numpy().ravel(), 70000 + np.arange(8))
    np.testing.assert_array_equal(y.numpy().ravel(), 70001 + np.arange(8))
    with pytest.raises(ValueError):
        next(oracle.batches(str(tmp_path / "s.bin"), 3, 4, 1))


# ----------------------------------------------------------------------------
# lr schedule: N=10 steps, warmup 2, max 1.0, final 0.1 -> min 0.1


@pytest.mark.parametrize(
    "schedule, want",
    [
        # steps 1..10; i = s-1; after warmup p = (i-2)/8
        ("cosine", {1: 0.5, 2: 1.0, 3: 1.0, 7: 0.55, 10: 0.1 + 0.45 * (1 - 0.9238795325112867)}),
        ("linear", {1: 0.5, 2: 1.0, 3: 1.0, 5: 0.775, 7: 0.55, 10: 0.2125}),
        ("constant", {1: 0.5, 2: 1.0, 3: 1.0, 10: 1.0}),
        # D = int(0.2*10) = 2, S0 = 8: stable until i = 7, then 1 - (i-8)/2 * 0.9
        ("wsd", {1: 0.5, 2: 1.0, 8: 1.0, 9: 1.0, 10: 0.55}),
    ],
)
def test_lr_at_hand_values(schedule, want):
    for step, lr in want.items():
        assert oracle.lr_at(step, 10, 1.0, warmup=2, final_frac=0.1, schedule=schedule) == pytest.approx(lr, abs=1e-12)


def test_lr_at_edge_cases():
    assert oracle.lr_at(1, 5, 3e-4) == pytest.approx(3e-4)  # no warmup: full lr
    assert oracle.lr_at(5, 5, 1.0, schedule="linear") == pytest.approx(0.2)  # p = 4/5
    assert oracle.lr_at(3, 4, 1.0, schedule="wsd") == 1.0  # D = max(1, 0) = 1, S0 = 3
    assert oracle.lr_at(4, 4, 1.0, schedule="wsd") == 1.0  # (3-3)/1 -> still L
    assert oracle.lr_at(1, 1, 1.0, warmup=1) == 1.0
    with pytest.raises(ValueError):
        oracle.lr_at(1, 10, 1.0, schedule="step")


# ----------------------------------------------------------------------------
# model: transformers vs RefGPT2


def test_model_dir_layout(model_dir):
    with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("transformer.h.0.attn.c_attn.weight").shape == (C, 3 * C)  # Conv1D (in,out)
        assert f.get_tensor("transformer.h.0.mlp.c_proj.weight").shape == (4 * C, C)
        assert not torch.all(f.get_tensor("transformer.h.0.ln_1.weight") == 1)  # perturbed
        assert not torch.all(f.get_tensor("transformer.h.0.attn.c_attn.bias") == 0)
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    assert len(keys) == 4 + 12 * L
    model = oracle.load_gpt2(model_dir)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.training and model.config.resid_pdrop == model.config.attn_pdrop == model.config.embd_pdrop == 0
    groups = oracle.param_groups(model, 0.1)
    assert len(groups[0]["params"]) == 2 + 4 * L and len(groups[1]["params"]) == 2 + 8 * L
    assert sum(len(g["params"]) for g in groups) == len(keys)


def test_step0_transformers_equals_ref(model_dir, shards):
    hf = oracle.step0_dump(model_dir, shards, B, T)
    ref = oracle.step0_dump(model_dir, shards, B, T, model=oracle.RefGPT2.from_dir(model_dir))
    with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
        assert set(hf["grads"]) == set(f.keys())
        for name in f.keys():
            assert hf["grads"][name].shape == tuple(f.get_tensor(name).shape)
    assert hf["logits"].shape == (B, T, V) and hf["logits"].dtype == np.float32
    logits_diff, loss_diff = max_diff(hf["logits"], ref["logits"]), abs(hf["loss"] - ref["loss"])
    print(f"\nlogits max|diff| {logits_diff:.3e}  loss |diff| {loss_diff:.3e}")
    assert max_diff(hf["logits"], ref["logits"]) < TOL_LOGITS
    assert abs(hf["loss"] - ref["loss"]) < TOL_LOSS
    assert abs(hf["loss"] - math.log(V)) < 0.3  # near-uniform at init
    for name, g in hf["grads"].items():
        d = max_diff(g, ref["grads"][name])
        print(f"  {name:40s} {str(g.shape):12s} max|diff| {d:.3e}")
        assert d < TOL_GRAD, name
        assert np.abs(g).max() > 0, name
    # the batch used is the loader's first micro-batch, and eval_loss agrees
    x, y = next(oracle.batches(shards, B, T, 1))
    assert oracle.eval_loss(model_dir, x, y) == pytest.approx(hf["loss"], abs=TOL_LOSS)
    assert oracle.eval_loss(oracle.RefGPT2.from_dir(model_dir), x.numpy(), y.numpy()) == pytest.approx(
        hf["loss"], abs=TOL_LOSS
    )


def test_three_steps_transformers_equals_ref(model_dir, shards):
    # grad accumulation (2 micro-batches), warmup, weight decay and active clipping
    kw = dict(
        B=B, T=T, steps=3, lr=1e-3, total_batch=2 * B * T, warmup=2, final_frac=0.1, weight_decay=0.1, max_grad_norm=0.3
    )
    hf = oracle.train_gpt2(model_dir, shards, **kw)
    ref = oracle.train_model(oracle.RefGPT2.from_dir(model_dir), shards, **kw)
    assert hf["lrs"] == pytest.approx([5e-4, 1e-3, 1e-3], abs=1e-15)  # step 3: i = W, p = 0
    assert max_diff(hf["losses"], ref["losses"]) < TOL_LOSS
    assert max_diff(hf["grad_norms"], ref["grad_norms"]) < TOL_LOSS
    assert min(hf["grad_norms"]) > 0.3  # clipping was active
    refp = dict(ref["model"].named_parameters())
    worst = max(max_diff(p.detach(), refp[n].detach()) for n, p in hf["model"].named_parameters())
    print(
        f"\nafter 3 steps: loss {max_diff(hf['losses'], ref['losses']):.3e}  "
        f"grad norm {max_diff(hf['grad_norms'], ref['grad_norms']):.3e}  params {worst:.3e}"
    )
    assert worst < TOL_PARAM_AFTER_3
    assert hf["next_batch_loss"] == pytest.approx(ref["next_batch_loss"], abs=1e-5)  # measured < 1e-6
    # the weights did move, and the next batch is micro-batch 7 of the loader
    start = oracle.RefGPT2.from_dir(model_dir)
    assert max(max_diff(p.detach(), refp[n].detach()) for n, p in start.named_parameters()) > 1e-4
    x, y = list(oracle.batches(shards, B, T, 7))[-1]
    assert oracle.eval_loss(hf["model"], x, y) == pytest.approx(hf["next_batch_loss"], abs=TOL_LOSS)


def test_step1_logs_match_step0_dump(model_dir, shards):
    # with accum 1, step 1's loss is the step-0 loss and its grad norm the norm of the dump
    dump = oracle.step0_dump(model_dir, shards, B, T)
    run = oracle.train_gpt2(model_dir, shards, B, T, steps=1, lr=1e-3)
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in dump["grads"].values()))
    assert run["losses"][0] == dump["loss"]
    assert run["grad_norms"][0] == pytest.approx(norm, rel=1e-5)


def test_train_loss_decreases_on_repeated_tokens(model_dir, tmp_path):
    oracle.write_shard(tmp_path / "rep.bin", np.tile(np.arange(10), 200))
    run = oracle.train_gpt2(model_dir, str(tmp_path / "rep.bin"), B, T, steps=20, lr=1e-3)
    losses = run["losses"]
    assert len(losses) == len(run["lrs"]) == len(run["grad_norms"]) == 20
    assert all(b < a for a, b in zip(losses[:10], losses[1:11]))
    assert losses[-1] < losses[0] - 0.5
    assert run["next_batch_loss"] < losses[0] - 0.5


def test_deterministic(model_dir, shards):
    a = oracle.train_gpt2(model_dir, shards, B, T, steps=2, lr=1e-3)
    b = oracle.train_gpt2(model_dir, shards, B, T, steps=2, lr=1e-3)
    assert a["losses"] == b["losses"] and a["grad_norms"] == b["grad_norms"]
    assert a["next_batch_loss"] == b["next_batch_loss"]
