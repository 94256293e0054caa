"""The PyTorch peer for the benchmarks: GPT-2 as a PyTorch user would write it for speed, and the
same model llmgen trains.

What makes it a fair peer (issue 13, item 6):
- the vocabulary is padded like llmgen's (50257 -> 50304, a multiple of 128: the classifier GEMM's N
  is tensor-core friendly); the padded rows of the tied wte start at zero and never reach the loss:
  the classifier adds a bias of -inf to their logits, so softmax gives them probability 0, their
  logit gradients are 0, their rows stay 0 under AdamW, and the loss is the real vocabulary's (as
  llmgen's softmax_xent, which reads the first vocab_size columns). The -inf rides in the GEMM's
  bias epilogue (addmm), so no slice or copy of the logits is made;
- the loss is F.cross_entropy on the logits as they come out of the GEMM (bf16 under autocast: no
  `logits.float()` copy; autocast's own policy runs log-softmax in fp32, as in nanoGPT);
- fused QKV, F.scaled_dot_product_attention with the flash backend forced on CUDA for bf16/fp16
  (torch.nn.attention.sdpa_kernel; flash has no fp32 kernel, so fp32 keeps SDPA's own choice);
- AdamW(fused=True) on CUDA, betas (0.9, 0.95), eps 1e-8, decay on 2-D weights only;
- torch.compile in mode COMPILE_MODE = "max-autotune-no-cudagraphs": Inductor autotunes its GEMM and
  fused-kernel choices. Not "max-autotune": its CUDA graphs would cover only forward + backward (the
  fused AdamW and the clip run outside the compiled module), whose launches the CPU already hides at
  this size (~1 ms of launches under tens of ms of GPU work per step), while the graphs' static
  memory pools would raise the peak memory the comparison reports. bench/gpu_check.py --compile-mode
  runs either.
Weights come from the same Hugging Face safetensors file llmgen's trainer loads (-e), so both sides
start from identical parameters; tests/test_torch_peer.py checks the model against transformers'
GPT2LMHeadModel on the CPU (same weights, same loss and gradients in fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

COMPILE_MODE = "max-autotune-no-cudagraphs"


def padded(vocab_size: int, multiple: int = 128) -> int:
    return (vocab_size + multiple - 1) // multiple * multiple


def flash_wanted(q) -> bool:
    """Force SDPA's flash backend: on CUDA for bf16/fp16 (the only dtypes its kernels take)."""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def attend(q, k, v):
    """Causal SDPA; where flash_wanted, only the flash backend is allowed (an error, not a silent
    fallback, if it cannot run)."""
    if flash_wanted(q):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


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
        y = attend(q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, vocab_size, n_positions, padded_vocab_size=None):
        super().__init__()
        Vp = padded_vocab_size or padded(vocab_size)
        assert Vp >= vocab_size, (Vp, vocab_size)
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(Vp, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        with torch.no_grad():
            self.wte.weight[vocab_size:].zero_()
        # 0 on the real vocabulary, -inf on the padding: the classifier's bias (not a parameter)
        mask = torch.zeros(Vp)
        mask[vocab_size:] = float("-inf")
        self.register_buffer("vocab_mask", mask, persistent=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for blk in self.h:
            x = blk(x)
        logits = F.linear(self.ln_f(x), self.wte.weight, self.vocab_mask)  # (B, T, Vp), tied head
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    @classmethod
    def from_hf_dir(cls, model_dir, read_safetensors, padded_vocab_size=None):
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        m = cls(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], padded_vocab_size)
        sd = {k: torch.from_numpy(v) for k, v in read_safetensors(Path(model_dir) / "model.safetensors").items()}
        with torch.no_grad():
            wte = sd["transformer.wte.weight"]
            m.wte.weight[: wte.shape[0]].copy_(wte)
            m.wte.weight[wte.shape[0] :].zero_()
            m.wpe.weight.copy_(sd["transformer.wpe.weight"])
            m.ln_f.weight.copy_(sd["transformer.ln_f.weight"])
            m.ln_f.bias.copy_(sd["transformer.ln_f.bias"])
            for i, blk in enumerate(m.h):
                p = f"transformer.h.{i}."
                for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                    getattr(blk, ours).weight.copy_(sd[p + theirs + ".weight"])
                    getattr(blk, ours).bias.copy_(sd[p + theirs + ".bias"])
                for ours, theirs in (
                    ("c_attn", "attn.c_attn"),
                    ("c_proj", "attn.c_proj"),
                    ("c_fc", "mlp.c_fc"),
                    ("mlp_proj", "mlp.c_proj"),
                ):
                    getattr(blk, ours).weight.copy_(sd[p + theirs + ".weight"].t())  # Conv1D is (in, out)
                    getattr(blk, ours).bias.copy_(sd[p + theirs + ".bias"])
        return m


def compile_model(model, mode: str = COMPILE_MODE):
    return torch.compile(model, mode=mode)


def optimizer(model, lr, weight_decay, fused):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=fused,
    )


def flops_per_token(n_layer, n_embd, n_params_matmul, T):
    """6 * matmul params + 12 * L * C * T (forward + backward), llm.c's / PaLM's count."""
    return 6 * n_params_matmul + 12 * n_layer * n_embd * T


def matmul_params(n_layer, n_embd, padded_vocab):
    return n_layer * 12 * n_embd * n_embd + padded_vocab * n_embd
