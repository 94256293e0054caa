"""The PyTorch oracle: an independent fp32 CPU implementation of what a generated
GPT-2 trainer must compute (DESIGN.md, "Oracles", item 2).

Contract
--------
Everything here runs in fp32 on the CPU, deterministically, and follows llm.c:

- data      llm.c token shards (256 x int32 header: magic 20240520 version 1 ->
            uint16 tokens, magic 20240801 version 7 -> uint32 tokens; header[2] =
            token count). Shards come from a sorted glob, no shuffling. Each
            micro-batch reads B*T+1 tokens at the current position; if they do not
            fit, the loader moves to the next shard (wrapping to the first) at
            position 0. inputs = first B*T as (B,T), targets = the same shifted by
            one; then position += B*T.
- step s    (1-based) accum = total_batch // (B*T) micro-batches; each micro-batch
            loss (mean cross-entropy over its B*T tokens, real vocabulary only) is
            divided by accum before backward, so gradients sum. The logged loss is
            the mean of the micro-batch losses (before the update). Then
            clip_grad_norm_(params, max_grad_norm) (the logged grad_norm is the
            pre-clip total norm it returns), then torch.optim.AdamW with
            betas (0.9, 0.95), eps 1e-8, foreach=False and two parameter groups:
            weight decay for params with dim >= 2, none for biases / LayerNorm.
- lr        lr_at(): linear warmup, then cosine / linear / constant / wsd.
- model     transformers' GPT2LMHeadModel, dropout 0, eager attention, tied head.
            RefGPT2 below is a second, hand-written GPT-2 with the same parameter
            names; test_oracle.py checks the two agree, so the transformers path is
            not trusted blindly.

Public API: make_gpt2_model_dir, load_gpt2, write_shard, read_shard,
random_shards, batches, lr_at, param_groups, train_model, train_gpt2, step0_dump,
eval_loss, RefGPT2; for Llama 3: make_llama_model_dir, load_llama,
llama_step0_dump, train_llama (transformers' LlamaForCausalLM, attention_dropout 0,
eager attention; the same data, step, lr and AdamW rules as above; decay for every
2-D weight, none for the RMSNorm gains).
"""

from __future__ import annotations

import contextlib
import glob as _glob
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# deterministic fp32 CPU settings


@contextlib.contextmanager
def torch_settings(threads=2):
    """Set thread count + deterministic algorithms + fp32 default; restore after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_dtype = torch.get_default_dtype()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        torch.set_default_dtype(old_dtype)


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ----------------------------------------------------------------------------
# model directories (Hugging Face layout: config.json + model.safetensors)

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)


def make_gpt2_model_dir(path, n_layer, n_head, n_embd, vocab_size, n_positions, seed=0, perturb=True, qk_scale=1.0):
    """Write a random GPT2LMHeadModel (dropout 0) to `path` with save_pretrained
    (safetensors) and return `path`.

    qk_scale multiplies the query and key projections (weights and biases), so the attention
    scores grow by qk_scale**2: with the default init they are ~0.05 and softmax is nearly
    uniform, which would hide a flash-attention kernel that forgets its running-max rescale.

    The weights are transformers' own GPT-2 init under torch.manual_seed(seed). With
    perturb=True (default) the biases and LayerNorm params, which that init sets to
    exactly 0 and 1, get small seeded noise, so a trainer that mixes them up (a
    swapped ln_1/ln_2, a dropped bias) changes the step-0 logits instead of hiding.
    The global torch RNG is left as it was."""
    _quiet_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=vocab_size,
        n_positions=n_positions,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
        **NO_DROPOUT,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).float()
        if perturb:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.dim() != 1:
                        continue
                    if name.endswith(".weight"):  # LayerNorm gains
                        p.copy_(1.0 + 0.1 * torch.randn_like(p))
                    else:  # LayerNorm and Conv1D biases
                        p.copy_(0.02 * torch.randn_like(p))
        if qk_scale != 1.0:
            with torch.no_grad():
                for block in model.transformer.h:  # Conv1D: weight (C, 3C), columns q | k | v
                    block.attn.c_attn.weight[:, : 2 * n_embd] *= qk_scale
                    block.attn.c_attn.bias[: 2 * n_embd] *= qk_scale
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    return path


def load_gpt2(model_dir):
    """GPT2LMHeadModel from a model directory: fp32, dropout 0, eager attention, train mode."""
    _quiet_transformers()
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager", **NO_DROPOUT
    )
    model.train()
    return model


def _as_model(model_dir_or_model):
    if isinstance(model_dir_or_model, nn.Module):
        return model_dir_or_model
    return load_gpt2(model_dir_or_model)


def logits_of(model, inputs):
    """(B,T) int64 -> (B,T,V) fp32 logits, for either GPT2LMHeadModel or RefGPT2."""
    if isinstance(model, RefGPT2):
        return model(inputs)
    return model(input_ids=inputs, use_cache=False).logits


def loss_of(logits, targets):
    """Mean cross-entropy over all B*T positions (the logits carry the real vocab only)."""
    V = logits.size(-1)
    return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1))


# ----------------------------------------------------------------------------
# llm.c token shards

HEADER_INTS = 256
SHARD_FORMATS = {1: (20240520, np.uint16), 7: (20240801, np.uint32)}  # version -> (magic, token dtype)


def write_shard(path, tokens, version=1):
    """Write `tokens` as an llm.c shard: 256 x int32 header, then the tokens."""
    magic, dtype = SHARD_FORMATS[version]
    tokens = np.asarray(tokens, dtype=np.int64).ravel()
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
        raise ValueError(f"token out of range for shard version {version}")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(dtype).tobytes())
    return path


def read_shard(path):
    """Tokens of an llm.c shard as an int64 numpy array (header checked)."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_INTS * 4), dtype=np.int32)
        version = int(header[1])
        if version not in SHARD_FORMATS or header[0] != SHARD_FORMATS[version][0]:
            raise ValueError(f"{path}: bad shard header magic={header[0]} version={version}")
        n = int(header[2])
        tokens = np.frombuffer(f.read(), dtype=SHARD_FORMATS[version][1])
    if tokens.size != n:
        raise ValueError(f"{path}: header says {n} tokens, file holds {tokens.size}")
    return tokens.astype(np.int64)


def random_shards(dir, vocab_size, n_tokens, n_shards=1, seed=0):
    """Write n_shards shards of n_tokens uniform random tokens EACH into `dir`
    (shard_000.bin, ...; version 7 when vocab_size > 65536) and return their glob."""
    os.makedirs(dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    version = 1 if vocab_size <= 65536 else 7
    for k in range(n_shards):
        write_shard(os.path.join(dir, f"shard_{k:03d}.bin"), rng.integers(0, vocab_size, size=n_tokens), version)
    return os.path.join(dir, "shard_*.bin")


def _batch_stream(pattern, B, T):
    """Endless llm.c micro-batch stream: (inputs, targets) int64 tensors of shape (B,T)."""
    files = sorted(_glob.glob(str(pattern)))
    if not files:
        raise FileNotFoundError(f"no shards match {pattern}")
    shards = [read_shard(f) for f in files]
    need = B * T + 1
    for f, s in zip(files, shards):
        if s.size < need:  # llm.c asserts this at init as well
            raise ValueError(f"{f}: {s.size} tokens, a batch needs {need}")
    shard, pos = 0, 0
    while True:
        if pos + need > shards[shard].size:
            shard, pos = (shard + 1) % len(shards), 0
        buf = torch.from_numpy(shards[shard][pos : pos + need].copy())
        yield buf[:-1].view(B, T), buf[1:].view(B, T)
        pos += B * T


def batches(pattern, B, T, n):
    """The first n micro-batches the llm.c loader yields for shards matching `pattern`."""
    stream = _batch_stream(pattern, B, T)
    for _ in range(n):
        yield next(stream)


# ----------------------------------------------------------------------------
# learning-rate schedule and optimizer

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def lr_at(step, n_steps, lr, warmup=0, final_frac=0.0, schedule="cosine"):
    """Learning rate of optimizer step `step` (1-based) out of n_steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    i, N, W, L = step - 1, n_steps, warmup, lr
    lo = L * final_frac
    if i < W:
        return L * (i + 1) / W
    p = (i - W) / max(1, N - W)
    if schedule == "cosine":
        return lo + 0.5 * (1.0 + math.cos(math.pi * p)) * (L - lo)
    if schedule == "linear":
        return L - p * (L - lo)
    if schedule == "constant":
        return L
    D = max(1, int(0.2 * N))  # wsd: warmup, stable, then linear decay over the last 20%
    S0 = N - D
    return L if i < S0 else L - ((i - S0) / D) * (L - lo)


def param_groups(model, weight_decay):
    """AdamW groups: decay for dim >= 2 (wte, wpe, Conv1D weights), none for biases and
    LayerNorm params. model.parameters() deduplicates the tied lm_head/wte weight."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


# ----------------------------------------------------------------------------
# training


def train_model(
    model,
    pattern,
    B,
    T,
    steps,
    lr,
    total_batch=None,
    warmup=0,
    final_frac=0.0,
    schedule="cosine",
    weight_decay=0.0,
    max_grad_norm=1.0,
    threads=2,
):
    """Train `model` (GPT2LMHeadModel or RefGPT2) in place for `steps` optimizer steps.
    Returns dict(losses, lrs, grad_norms, model, next_batch_loss)."""
    total_batch = B * T if total_batch is None else total_batch
    if total_batch % (B * T):
        raise ValueError(f"total_batch {total_batch} is not a multiple of B*T = {B * T}")
    accum = total_batch // (B * T)
    with torch_settings(threads):
        model.train()
        opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)
        params = list(model.parameters())
        stream = _batch_stream(pattern, B, T)
        losses, lrs, grad_norms = [], [], []
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            micro = []
            for _ in range(accum):
                x, y = next(stream)
                loss = loss_of(logits_of(model, x), y)
                (loss / accum).backward()
                micro.append(loss.item())
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=False)
            step_lr = lr_at(step, steps, lr, warmup, final_frac, schedule)
            for group in opt.param_groups:
                group["lr"] = step_lr
            opt.step()
            losses.append(sum(micro) / accum)
            lrs.append(step_lr)
            grad_norms.append(norm.item())
        x, y = next(stream)
        with torch.no_grad():
            next_loss = loss_of(logits_of(model, x), y).item()
    return dict(losses=losses, lrs=lrs, grad_norms=grad_norms, model=model, next_batch_loss=next_loss)


def train_gpt2(
    model_dir,
    pattern,
    B,
    T,
    steps,
    lr,
    total_batch=None,
    warmup=0,
    final_frac=0.0,
    schedule="cosine",
    weight_decay=0.0,
    max_grad_norm=1.0,
    threads=2,
):
    """train_model() on the transformers GPT-2 loaded from model_dir."""
    with torch_settings(threads):
        model = load_gpt2(model_dir)
    return train_model(
        model, pattern, B, T, steps, lr, total_batch, warmup, final_frac, schedule, weight_decay, max_grad_norm, threads
    )


def step0_dump(model_dir, pattern, B, T, threads=2, model=None):
    """Logits, loss and grads of the first micro-batch, no optimizer step.
    grads: {HF parameter name: numpy fp32 in HF layout} (Conv1D weights as (in,out));
    "transformer.wte.weight" holds the tied gradient (embedding + lm_head)."""
    with torch_settings(threads):
        model = load_gpt2(model_dir) if model is None else model
        model.train()
        model.zero_grad(set_to_none=True)
        x, y = next(_batch_stream(pattern, B, T))
        logits = logits_of(model, x)
        loss = loss_of(logits, y)
        loss.backward()
        grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    return {"logits": logits.detach().numpy().astype(np.float32), "loss": loss.item(), "grads": grads}


def eval_loss(model_dir_or_model, inputs, targets, threads=2):
    """Mean cross-entropy of the model on one (B,T) batch, no grad."""
    with torch_settings(threads):
        model = _as_model(model_dir_or_model)
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.int64)
        y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        with torch.no_grad():
            return loss_of(logits_of(model, x), y).item()


# ----------------------------------------------------------------------------
# RefGPT2: GPT-2 written out by hand, no transformers. Module nesting mirrors the
# HF names, so named_parameters() yields "transformer.h.0.attn.c_attn.weight" etc.


class _Param(nn.Module):
    """Holds `weight` (and `bias` if given) as in HF: Conv1D weight is (in,out)."""

    def __init__(self, weight, bias=None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone().float())


def _layernorm(x, ln, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * ln.weight + ln.bias


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _conv1d(x, lin):
    return x @ lin.weight + lin.bias  # (..., in) @ (in, out)


class RefGPT2(nn.Module):
    """Standard GPT-2: learned position embedding, pre-LN blocks, tanh-GELU MLP,
    causal softmax attention scaled by 1/sqrt(head_dim), final LN, head tied to wte."""

    def __init__(self, state, n_layer, n_head, eps=1e-5):
        super().__init__()
        self.n_layer, self.n_head, self.eps = n_layer, n_head, eps

        def g(name):
            return state[name]

        blocks = nn.ModuleList()
        for i in range(n_layer):
            h = f"transformer.h.{i}."
            blk = nn.Module()
            blk.ln_1 = _Param(g(h + "ln_1.weight"), g(h + "ln_1.bias"))
            blk.attn = nn.Module()
            blk.attn.c_attn = _Param(g(h + "attn.c_attn.weight"), g(h + "attn.c_attn.bias"))
            blk.attn.c_proj = _Param(g(h + "attn.c_proj.weight"), g(h + "attn.c_proj.bias"))
            blk.ln_2 = _Param(g(h + "ln_2.weight"), g(h + "ln_2.bias"))
            blk.mlp = nn.Module()
            blk.mlp.c_fc = _Param(g(h + "mlp.c_fc.weight"), g(h + "mlp.c_fc.bias"))
            blk.mlp.c_proj = _Param(g(h + "mlp.c_proj.weight"), g(h + "mlp.c_proj.bias"))
            blocks.append(blk)
        self.transformer = nn.Module()
        self.transformer.wte = _Param(g("transformer.wte.weight"))  # (V,C), also the head
        self.transformer.wpe = _Param(g("transformer.wpe.weight"))  # (maxT,C)
        self.transformer.h = blocks
        self.transformer.ln_f = _Param(g("transformer.ln_f.weight"), g("transformer.ln_f.bias"))

    @classmethod
    def from_dir(cls, model_dir):
        from safetensors.torch import load_file

        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        state = load_file(str(Path(model_dir) / "model.safetensors"))
        return cls(state, cfg["n_layer"], cfg["n_head"], cfg.get("layer_norm_epsilon", 1e-5))

    def _attention(self, x, attn):
        B, T, C = x.shape
        H = self.n_head
        hs = C // H
        q, k, v = _conv1d(x, attn.c_attn).split(C, dim=-1)  # 3 x (B,T,C)
        q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in (q, k, v))  # (B,H,T,hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B,H,T,T)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)  # (B,T,C)
        return _conv1d(y, attn.c_proj)

    def forward(self, idx):
        """(B,T) int64 tokens -> (B,T,V) logits."""
        tr = self.transformer
        T = idx.size(1)
        x = tr.wte.weight[idx] + tr.wpe.weight[:T]  # (B,T,C)
        for blk in tr.h:
            x = x + self._attention(_layernorm(x, blk.ln_1, self.eps), blk.attn)
            hdn = _gelu_tanh(_conv1d(_layernorm(x, blk.ln_2, self.eps), blk.mlp.c_fc))
            x = x + _conv1d(hdn, blk.mlp.c_proj)
        x = _layernorm(x, tr.ln_f, self.eps)
        return x @ tr.wte.weight.t()  # (B,T,V)


# ----------------------------------------------------------------------------
# Llama 3: transformers' LlamaForCausalLM as the oracle (same training rules as GPT-2)


def make_llama_model_dir(
    path,
    dim,
    n_layers,
    n_heads,
    n_kv_heads,
    vocab_size,
    intermediate_size,
    max_position_embeddings,
    rope_theta=500000.0,
    rope_scaling=None,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    seed=0,
    perturb=True,
    max_shard_size=None,
    qk_scale=1.0,
):
    """Write a random LlamaForCausalLM (attention_dropout 0) to `path` with save_pretrained
    (safetensors) and return `path`. qk_scale multiplies q_proj and k_proj (scores grow by its square).
    rope_scaling: None or a dict such as
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}.

    Weights are transformers' own init under torch.manual_seed(seed); with perturb=True the
    RMSNorm gains (exactly 1 after init) get seeded noise, so a swapped or dropped norm
    changes the logits. The global torch RNG is left as it was."""
    _quiet_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=dim,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        vocab_size=vocab_size,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        rope_theta=float(rope_theta),
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
        rms_norm_eps=rms_norm_eps,
        attention_dropout=0.0,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float()
        if perturb:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() == 1:  # RMSNorm gains
                        p.copy_(1.0 + 0.1 * torch.randn_like(p))
        if qk_scale != 1.0:  # sharper attention, as make_gpt2_model_dir
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.q_proj.weight *= qk_scale
                    layer.self_attn.k_proj.weight *= qk_scale
    os.makedirs(path, exist_ok=True)
    # max_shard_size (e.g. "40KB"): transformers' own sharded layout, model-KKKKK-of-NNNNN.safetensors
    model.save_pretrained(
        path, safe_serialization=True, **({"max_shard_size": max_shard_size} if max_shard_size else {})
    )
    return path


def load_llama(model_dir):
    """LlamaForCausalLM from a model directory: fp32, attention_dropout 0, eager attention, train mode."""
    _quiet_transformers()
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager", attention_dropout=0.0
    )
    model.train()
    return model


def llama_step0_dump(model_dir, pattern, B, T, threads=2):
    """step0_dump() of the LlamaForCausalLM in model_dir: logits, loss and {HF name: grad}
    (a tied model yields model.embed_tokens.weight only, holding both contributions)."""
    with torch_settings(threads):
        model = load_llama(model_dir)
    return step0_dump(model_dir, pattern, B, T, threads, model=model)


def train_llama(
    model_dir,
    pattern,
    B,
    T,
    steps,
    lr,
    total_batch=None,
    warmup=0,
    final_frac=0.0,
    schedule="cosine",
    weight_decay=0.0,
    max_grad_norm=1.0,
    threads=2,
):
    """train_model() on the LlamaForCausalLM loaded from model_dir."""
    with torch_settings(threads):
        model = load_llama(model_dir)
    return train_model(
        model, pattern, B, T, steps, lr, total_batch, warmup, final_frac, schedule, weight_decay, max_grad_norm, threads
    )
