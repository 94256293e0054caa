"""The PyTorch peer for the benchmarks: GPT-2 as a PyTorch user would write it for speed.

Fused QKV, F.scaled_dot_product_attention (flash attention on a GPU), tanh GELU, tied head,
AdamW(fused=True on CUDA) with betas (0.9, 0.95), grad-norm clip 1.0, bf16 autocast when asked.
Weights come from the same Hugging Face safetensors file llmgen's trainer loads (-e), so both
sides start from identical parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, vocab_size, n_positions):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    @classmethod
    def from_hf_dir(cls, model_dir, read_safetensors):
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        m = cls(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"])
        sd = {k: torch.from_numpy(v) for k, v in read_safetensors(Path(model_dir) / "model.safetensors").items()}
        with torch.no_grad():
            m.wte.weight.copy_(sd["transformer.wte.weight"])
            m.wpe.weight.copy_(sd["transformer.wpe.weight"])
            m.ln_f.weight.copy_(sd["transformer.ln_f.weight"])
            m.ln_f.bias.copy_(sd["transformer.ln_f.bias"])
            for i, blk in enumerate(m.h):
                p = f"transformer.h.{i}."
                for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                    getattr(blk, ours).weight.copy_(sd[p + theirs + ".weight"])
                    getattr(blk, ours).bias.copy_(sd[p + theirs + ".bias"])
                for ours, theirs in (("c_attn", "attn.c_attn"), ("c_proj", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                                     ("mlp_proj", "mlp.c_proj")):
                    getattr(blk, ours).weight.copy_(sd[p + theirs + ".weight"].t())   # Conv1D is (in, out)
                    getattr(blk, ours).bias.copy_(sd[p + theirs + ".bias"])
        return m


def optimizer(model, lr, weight_decay, fused):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def flops_per_token(n_layer, n_embd, n_params_matmul, T):
    """6 * matmul params + 12 * L * C * T (forward + backward), llm.c's / PaLM's count."""
    return 6 * n_params_matmul + 12 * n_layer * n_embd * T


def matmul_params(n_layer, n_embd, padded_vocab):
    return n_layer * 12 * n_embd * n_embd + padded_vocab * n_embd

