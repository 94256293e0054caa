"""The optimizer as graph nodes, and the learning-rate schedules.

AdamW exactly as torch.optim.AdamW defines it (decoupled weight decay, bias
correction), with llm.c's / nanoGPT's defaults, after a global grad-norm clip with
torch.nn.utils.clip_grad_norm_'s formula: scale = min(1, max_norm / (norm + 1e-6)).
Weight decay applies to 2-D weights only (wte, wpe, the linear weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmgen.ir.graph import Graph, Value

SCHEDULES = ("cosine", "linear", "constant", "wsd")


@dataclass(frozen=True)
class AdamWConfig:
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    max_norm: float = 1.0  # global grad-norm clip (torch's clip_grad_norm_)


def add_optimizer(g: Graph, cfg: AdamWConfig = AdamWConfig()) -> Graph:
    """Per-parameter AdamW nodes (phase opt); the fuse_adamw pass merges them into one."""
    g.phase = "opt"
    lr = g.input("lr", ())
    t = g.input("t", ())
    wd = g.input("weight_decay", ())
    grads = [g.grads[p.id] for p in g.params]
    norm = g.op("grad_norm", grads, name="grad_norm")
    g.outputs["grad_norm"] = norm
    for p, gr in zip(g.params, grads):
        g.layer = p.layer
        m = Value(p.shape, "f32", f"{p.name}.m", role="state", meta={"of": p, "moment": "M"}, layer=p.layer)
        v = Value(p.shape, "f32", f"{p.name}.v", role="state", meta={"of": p, "moment": "V"}, layer=p.layer)
        g.state += [m, v]
        p2, m2, v2 = g.op(
            "adamw",
            [p, gr, m, v, norm, lr, t, wd],
            name=f"adamw.{p.name}",
            decay=1.0 if p.meta.get("decay") else 0.0,
            beta1=cfg.beta1,
            beta2=cfg.beta2,
            eps=cfg.eps,
            max_norm=cfg.max_norm,
        )
        for new, old in ((p2, p), (m2, m), (v2, v)):
            new.meta["updates"] = old
    g.layer = None
    return g


def lr_at(
    step: int, n_steps: int, lr: float, warmup: int = 0, final_frac: float = 0.0, schedule: str = "cosine"
) -> float:
    """Learning rate of 1-based optimizer step `step` (the C/CUDA programs use the same formula)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (expected one of {', '.join(SCHEDULES)})")
    i = step - 1
    lo = lr * final_frac
    if i < warmup:
        return lr * (i + 1) / warmup
    p = (i - warmup) / max(1, n_steps - warmup)
    if schedule == "cosine":
        return lo + 0.5 * (1.0 + math.cos(math.pi * p)) * (lr - lo)
    if schedule == "linear":
        return lr - p * (lr - lo)
    if schedule == "constant":
        return lr
    cooldown = max(1, int(0.2 * n_steps))  # wsd: stable, then a linear cooldown over the last 20%
    start = n_steps - cooldown
    return lr if i < start else lr - ((i - start) / cooldown) * (lr - lo)
