"""The op table: for each op, its shape rule, numpy reference, derivative rule and kernel family.

Each derivative rule sits next to its forward (micrograd style). The numpy references are
the living definition of every op: the interpreter runs them, every pass must leave their
results unchanged, and the C/CUDA kernels are tested against the same numbers.

Conventions: linear weights are stored (out, in) like llm.c; `linear` computes x @ w.T.
Leading dimensions of activations are flattened to rows (B*T) by the kernels.
A vjp rule gets the graph (to emit backward nodes), the forward node, and the output
gradients (None where an output has no gradient); it returns one gradient per input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

F32 = np.float32
GELU_C = np.float32(np.sqrt(2.0 / np.pi))


@dataclass(frozen=True)
class OpDef:
    name: str
    family: str                         # which kernel template renders it
    shape: Callable                     # (input shapes, attrs) -> [(shape, dtype), ...]
    ref: Callable                       # (numpy inputs, attrs) -> [numpy outputs]
    vjp: Callable | None = None         # (graph, node, douts) -> [dinput or None]
    outs: Callable | None = None        # attrs-free output suffixes given count
    inplace: tuple = ()                 # (out index, in index): may share the input's bytes

    def out_names(self, name: str, n: int) -> list[str]:
        if n == 1:
            return [name]
        sfx = self.outs(n) if self.outs else [str(i) for i in range(n)]
        return [f"{name}.{s}" for s in sfx]


OPS: dict[str, OpDef] = {}


def defop(name, family, shape, ref, vjp=None, outs=None, inplace=()):
    OPS[name] = OpDef(name, family, shape, ref, vjp, outs, inplace)


def f32(shape):
    return (tuple(shape), "f32")


def rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


# --------------------------------------------------------------------------------------------
# elementwise math shared by refs

def gelu(x):
    x = x.astype(F32)
    return F32(0.5) * x * (F32(1) + np.tanh(GELU_C * (x + F32(0.044715) * x * x * x)))


def gelu_grad(x):
    x = x.astype(F32)
    u = GELU_C * (x + F32(0.044715) * x * x * x)
    t = np.tanh(u)
    sech2 = F32(1) - t * t
    return F32(0.5) * (F32(1) + t) + F32(0.5) * x * sech2 * GELU_C * (F32(1) + F32(3 * 0.044715) * x * x)


def layernorm_ref(x, w, b, eps):
    mean = x.mean(-1, dtype=F32)
    xc = x - mean[..., None]
    var = (xc * xc).mean(-1, dtype=F32)
    rstd = (F32(1) / np.sqrt(var + F32(eps))).astype(F32)
    return [(xc * rstd[..., None] * w + b).astype(F32), mean.astype(F32), rstd]


def layernorm_bwd_ref(dy, x, w, mean, rstd):
    xhat = (x - mean[..., None]) * rstd[..., None]
    dxhat = dy * w
    m1 = dxhat.mean(-1, keepdims=True)
    m2 = (dxhat * xhat).mean(-1, keepdims=True)
    dx = (dxhat - m1 - xhat * m2) * rstd[..., None]
    dw = (rows(dy) * rows(xhat)).sum(0)
    db = rows(dy).sum(0)
    return [dx.astype(F32), dw.astype(F32), db.astype(F32)]


def split_heads(qkv, n_head):
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_head
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, n_head, hd).transpose(0, 2, 1, 3) for i in range(3))
    return q, k, v


def attention_ref(qkv, n_head):
    q, k, v = split_heads(qkv.astype(F32), n_head)
    B, NH, T, hd = q.shape
    s = (q @ k.transpose(0, 1, 3, 2)) * F32(1.0 / np.sqrt(hd))
    mask = np.triu(np.ones((T, T), bool), 1)
    s = np.where(mask, -np.inf, s)
    mx = s.max(-1, keepdims=True)
    e = np.exp(s - mx)
    lse = (mx + np.log(e.sum(-1, keepdims=True)))[..., 0]
    p = np.exp(s - lse[..., None])
    y = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, NH * hd)
    return [y.astype(F32), lse.astype(F32)]


def attention_bwd_ref(dy, qkv, y, lse, n_head):
    q, k, v = split_heads(qkv.astype(F32), n_head)
    B, NH, T, hd = q.shape
    scale = F32(1.0 / np.sqrt(hd))
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    mask = np.triu(np.ones((T, T), bool), 1)
    p = np.where(mask, 0, np.exp(np.where(mask, 0, s) - lse[..., None]))
    dyh = dy.reshape(B, T, NH, hd).transpose(0, 2, 1, 3)
    yh = y.reshape(B, T, NH, hd).transpose(0, 2, 1, 3)
    dv = p.transpose(0, 1, 3, 2) @ dyh
    dp = dyh @ v.transpose(0, 1, 3, 2)
    D = (dyh * yh).sum(-1, keepdims=True)
    ds = p * (dp - D)
    dq = (ds @ k) * scale
    dk = (ds.transpose(0, 1, 3, 2) @ q) * scale
    merge = lambda t: t.transpose(0, 2, 1, 3).reshape(B, T, NH * hd)
    return [np.concatenate([merge(dq), merge(dk), merge(dv)], -1).astype(F32)]


def xent_ref(logits, targets, vocab):
    z = logits[..., :vocab].astype(F32)
    mx = z.max(-1, keepdims=True)
    lse = (mx + np.log(np.exp(z - mx).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(z, targets[..., None].astype(np.int64), -1)[..., 0]
    return (lse - picked).astype(F32)


def xent_bwd_ref(dlosses, logits, targets, vocab):
    z = logits[..., :vocab].astype(F32)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, targets[..., None].astype(np.int64), 1, -1)
    d = np.zeros_like(logits, dtype=F32)
    d[..., :vocab] = (p - onehot) * dlosses[..., None]
    return d.astype(F32)


def adamw_ref(p, g, m, v, norm, lr, t, wd, beta1, beta2, eps, max_norm):
    """torch.optim.AdamW (single-tensor path) after clip_grad_norm_'s rescale."""
    clip = np.float32(min(1.0, max_norm / (float(norm) + 1e-6)))
    g = (g * clip).astype(F32)
    lr = float(lr)
    t = float(t)
    p = (p * F32(1 - lr * wd)).astype(F32)
    m = (m + F32(1 - beta1) * (g - m)).astype(F32)
    v = (v * F32(beta2) + F32(1 - beta2) * g * g).astype(F32)
    bc1 = 1 - beta1 ** t
    bc2_sqrt = np.sqrt(1 - beta2 ** t)
    denom = (np.sqrt(v) / F32(bc2_sqrt) + F32(eps)).astype(F32)
    p = (p - F32(lr / bc1) * (m / denom)).astype(F32)
    return [p, m, v]


# --------------------------------------------------------------------------------------------
# forward ops and their derivative rules

def _embed_vjp(g, n, d):
    dwte, dwpe = g.op("embed_bwd", [d[0], n.inputs[0]], name=f"d{n.outputs[0].name}",
                      vocab=n.inputs[1].shape[0], positions=n.inputs[2].shape[0])
    return [None, dwte, dwpe]


defop("embed", "embed",
      shape=lambda s, a: [f32(s[0] + (s[1][1],))],
      ref=lambda x, a: [(x[1][x[0]] + x[2][: x[0].shape[1]][None]).astype(F32)],
      vjp=_embed_vjp)

defop("embed_bwd", "embed",
      shape=lambda s, a: [f32((a["vocab"], s[0][-1])), f32((a["positions"], s[0][-1]))],
      ref=lambda x, a: _embed_bwd_ref(x[0], x[1], a["vocab"], a["positions"]),
      outs=lambda n: ["wte", "wpe"])


def _embed_bwd_ref(dx, tokens, vocab, positions):
    C = dx.shape[-1]
    dwte = np.zeros((vocab, C), F32)
    np.add.at(dwte, tokens.reshape(-1), rows(dx))
    dwpe = np.zeros((positions, C), F32)
    dwpe[: dx.shape[1]] = dx.sum(0)
    return [dwte, dwpe]


def _layernorm_vjp(g, n, d):
    x, w, _ = n.inputs
    _, mean, rstd = n.outputs
    dx, dw, db = g.op("layernorm_bwd", [d[0], x, w, mean, rstd], name=f"d{n.outputs[0].name.rsplit('.', 1)[0]}")
    return [dx, dw, db]


defop("layernorm", "layernorm",
      shape=lambda s, a: [f32(s[0]), f32(s[0][:-1]), f32(s[0][:-1])],
      ref=lambda x, a: layernorm_ref(x[0], x[1], x[2], a["eps"]),
      vjp=_layernorm_vjp, outs=lambda n: ["y", "mean", "rstd"])

# fused: residual add + layernorm (the sum is the next residual stream, the rest as layernorm)
defop("residual_layernorm", "layernorm",
      shape=lambda s, a: [f32(s[0]), f32(s[0]), f32(s[0][:-1]), f32(s[0][:-1])],
      ref=lambda x, a: [(x[0] + x[1]).astype(F32)] + layernorm_ref((x[0] + x[1]).astype(F32), x[2], x[3], a["eps"]),
      outs=lambda n: ["sum", "y", "mean", "rstd"])

# layernorm backward; with accumulate=True a 6th input (the residual stream's grad) is added to dx
defop("layernorm_bwd", "layernorm",
      shape=lambda s, a: [f32(s[1]), f32(s[2]), f32(s[2])],
      ref=lambda x, a: _ln_bwd_acc(x),
      outs=lambda n: ["x", "w", "b"])


def _ln_bwd_acc(x):
    dx, dw, db = layernorm_bwd_ref(*x[:5])
    if len(x) == 6:
        dx = (dx + x[5]).astype(F32)
    return [dx, dw, db]


def _linear_shape(s, a):
    out = f32(s[0][:-1] + (s[1][0],))
    return [out, out] if a.get("gelu") else [out]


def _linear_ref(x, a):
    y = (rows(x[0]) @ x[1].T).reshape(x[0].shape[:-1] + (x[1].shape[0],)).astype(F32)
    if a.get("bias"):
        y = (y + x[2]).astype(F32)
    return [y, gelu(y)] if a.get("gelu") else [y]


def _linear_vjp(g, n, d):
    x, w = n.inputs[:2]
    dx = g.op("linear_dx", [d[0], w], name=f"d{x.name}@{n.outputs[0].name}")
    dw = g.op("linear_dw", [d[0], x], name=f"d{w.name}")
    return [dx, dw]


defop("linear", "linear", shape=_linear_shape, ref=_linear_ref, vjp=_linear_vjp,
      outs=lambda n: ["pre", "y"])

# dx = dy @ w; with dgelu=True a third input `pre` multiplies the result by gelu'(pre)
defop("linear_dx", "linear",
      shape=lambda s, a: [f32(s[0][:-1] + (s[1][1],))],
      ref=lambda x, a: [((rows(x[0]) @ x[1]).reshape(x[0].shape[:-1] + (x[1].shape[1],))
                         * (gelu_grad(x[2]) if a.get("dgelu") else F32(1))).astype(F32)])

# dw = dy^T x summed over rows; with bias=True also db = column sums of dy
defop("linear_dw", "linear",
      shape=lambda s, a: [f32((s[0][-1], s[1][-1]))] + ([f32((s[0][-1],))] if a.get("bias") else []),
      ref=lambda x, a: [(rows(x[0]).T @ rows(x[1])).astype(F32)]
      + ([rows(x[0]).sum(0).astype(F32)] if a.get("bias") else []),
      outs=lambda n: ["w", "b"])

defop("bias_add", "elementwise",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [(x[0] + x[1]).astype(F32)],
      vjp=lambda g, n, d: [d[0], g.op("bias_grad", [d[0]], name=f"d{n.inputs[1].name}")])

defop("bias_grad", "elementwise",
      shape=lambda s, a: [f32(s[0][-1:])],
      ref=lambda x, a: [rows(x[0]).sum(0).astype(F32)])

defop("gelu", "elementwise",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [gelu(x[0])],
      vjp=lambda g, n, d: [g.op("gelu_bwd", [d[0], n.inputs[0]], name=f"d{n.inputs[0].name}")])

defop("gelu_bwd", "elementwise",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [(x[0] * gelu_grad(x[1])).astype(F32)])

defop("add", "elementwise",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [(x[0] + x[1]).astype(F32)],
      vjp=lambda g, n, d: [d[0], d[0]])


def _attention_vjp(g, n, d):
    qkv = n.inputs[0]
    y, lse = n.outputs
    dqkv = g.op("attention_bwd", [d[0], qkv, y, lse], name=f"d{qkv.name}", n_head=n.attrs["n_head"])
    return [dqkv]


defop("attention", "attention",
      shape=lambda s, a: [f32(s[0][:-1] + (s[0][-1] // 3,)),
                          f32((s[0][0], a["n_head"], s[0][1]))],
      ref=lambda x, a: attention_ref(x[0], a["n_head"]),
      vjp=_attention_vjp, outs=lambda n: ["y", "lse"])

defop("attention_bwd", "attention",
      shape=lambda s, a: [f32(s[1])],
      ref=lambda x, a: attention_bwd_ref(x[0], x[1], x[2], x[3], a["n_head"]))


def _xent_vjp(g, n, d):
    logits, targets = n.inputs
    dl = g.op("xent_bwd", [d[0], logits, targets], name=f"d{logits.name}", vocab=n.attrs["vocab"])
    return [dl, None]


defop("xent", "xent",
      shape=lambda s, a: [f32(s[1])],
      ref=lambda x, a: [xent_ref(x[0], x[1], a["vocab"])],
      vjp=_xent_vjp)

defop("xent_bwd", "xent",
      shape=lambda s, a: [f32(s[1])],
      ref=lambda x, a: [xent_bwd_ref(x[0], x[1], x[2], a["vocab"])])

# fused: cross-entropy forward + dlogits of mean(losses) * dloss; dlogits overwrite the logits
defop("softmax_xent", "xent",
      shape=lambda s, a: [f32(s[1]), f32(s[0])],
      ref=lambda x, a: [xent_ref(x[0], x[1], a["vocab"]),
                        xent_bwd_ref(np.full(x[1].shape, F32(x[2]) / F32(x[1].size), F32), x[0], x[1], a["vocab"])],
      outs=lambda n: ["losses", "dlogits"], inplace=((1, 0),))

defop("mean", "elementwise",
      shape=lambda s, a: [f32(())],
      ref=lambda x, a: [np.asarray(x[0].mean(dtype=F32), F32)],
      vjp=lambda g, n, d: [g.op("mean_bwd", [d[0]], name=f"d{n.inputs[0].name}", shape=n.inputs[0].shape)])

defop("mean_bwd", "elementwise",
      shape=lambda s, a: [f32(a["shape"])],
      ref=lambda x, a: [np.full(a["shape"], F32(x[0]) / F32(np.prod(a["shape"])), F32)])


# --------------------------------------------------------------------------------------------
# Llama 3: token embedding, RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.
# Numerics follow Hugging Face's LlamaForCausalLM (rotate-half RoPE layout, fp32).

def _token_embed_vjp(g, n, d):
    dwte = g.op("token_embed_bwd", [d[0], n.inputs[0]], name=f"d{n.outputs[0].name}", vocab=n.inputs[1].shape[0])
    return [None, dwte]


# x[b,t] = wte[tokens[b,t]]: no position table (RoPE puts positions into q and k)
defop("token_embed", "embed",
      shape=lambda s, a: [f32(s[0] + (s[1][1],))],
      ref=lambda x, a: [x[1][x[0]].astype(F32)],
      vjp=_token_embed_vjp)

defop("token_embed_bwd", "embed",
      shape=lambda s, a: [f32((a["vocab"], s[0][-1]))],
      ref=lambda x, a: [_embed_bwd_ref(x[0], x[1], a["vocab"], x[0].shape[1])[0]])


def rmsnorm_ref(x, w, eps):
    ms = (x * x).mean(-1, dtype=F32)
    rstd = (F32(1) / np.sqrt(ms + F32(eps))).astype(F32)
    return [(w * (x * rstd[..., None])).astype(F32), rstd]


def rmsnorm_bwd_ref(dy, x, w, rstd):
    """y = w * x * r, r = (mean(x^2) + eps)^-1/2  =>  dx = r * (dy*w - xhat * mean(dy*w*xhat)), xhat = x*r."""
    xhat = x * rstd[..., None]
    dxhat = dy * w
    m = (dxhat * xhat).mean(-1, keepdims=True, dtype=F32)
    dx = (dxhat - xhat * m) * rstd[..., None]
    dw = (rows(dy) * rows(xhat)).sum(0)
    return [dx.astype(F32), dw.astype(F32)]


def _rmsnorm_vjp(g, n, d):
    x, w = n.inputs
    rstd = n.outputs[1]
    dx, dw = g.op("rmsnorm_bwd", [d[0], x, w, rstd], name=f"d{n.outputs[0].name.rsplit('.', 1)[0]}")
    return [dx, dw]


defop("rmsnorm", "rmsnorm",
      shape=lambda s, a: [f32(s[0]), f32(s[0][:-1])],
      ref=lambda x, a: rmsnorm_ref(x[0], x[1], a["eps"]),
      vjp=_rmsnorm_vjp, outs=lambda n: ["y", "rstd"])

# fused: residual add + RMSNorm (the sum is the next residual stream)
defop("residual_rmsnorm", "rmsnorm",
      shape=lambda s, a: [f32(s[0]), f32(s[0]), f32(s[0][:-1])],
      ref=lambda x, a: [(x[0] + x[1]).astype(F32)] + rmsnorm_ref((x[0] + x[1]).astype(F32), x[2], a["eps"]),
      outs=lambda n: ["sum", "y", "rstd"])


def _rmsnorm_bwd_acc(x):
    dx, dw = rmsnorm_bwd_ref(*x[:4])
    if len(x) == 5:
        dx = (dx + x[4]).astype(F32)
    return [dx, dw]


# RMSNorm backward; with accumulate=True a 5th input (the residual stream's grad) is added to dx
defop("rmsnorm_bwd", "rmsnorm",
      shape=lambda s, a: [f32(s[1]), f32(s[2])],
      ref=lambda x, a: _rmsnorm_bwd_acc(x),
      outs=lambda n: ["x", "w"])


def rope_cos_sin(T, inv_freq):
    """(T, head_dim/2) cos and sin of position * inv_freq, each product rounded to float32 first
    (HF multiplies float32 positions by float32 inv_freq, then takes cos/sin in float32)."""
    ang = np.arange(T, dtype=F32)[:, None] * np.asarray(inv_freq, F32)[None, :]
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def rope_ref(x, n_head, inv_freq, inverse=False):
    """Rotate-half RoPE (HF's layout): channel i pairs with i + hd/2 inside each head.
    y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin. The inverse rotation (sin -> -sin) is the vjp."""
    B, T, C = x.shape
    hd = C // n_head
    h = x.reshape(B, T, n_head, hd)
    c, s = rope_cos_sin(T, inv_freq)
    c, s = c[None, :, None, :], s[None, :, None, :]
    if inverse:
        s = -s
    x1, x2 = h[..., : hd // 2], h[..., hd // 2:]
    y = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    return y.reshape(B, T, C).astype(F32)


defop("rope", "rope",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [rope_ref(x[0], a["n_head"], a["inv_freq"])],
      vjp=lambda g, n, d: [g.op("rope_bwd", [d[0]], name=f"d{n.inputs[0].name}", **n.attrs)],
      inplace=((0, 0),))

defop("rope_bwd", "rope",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [rope_ref(x[0], a["n_head"], a["inv_freq"], inverse=True)],
      inplace=((0, 0),))


def _gqa_heads(q, k, v, n_head, n_kv_head):
    """q -> (B, KV, R, T, hd), k/v -> (B, KV, 1, T, hd): query head h uses K/V head h // R
    (HF's repeat_kv order), shared by broadcasting instead of copying."""
    B, T, C = q.shape
    hd = C // n_head
    R = n_head // n_kv_head
    qh = q.reshape(B, T, n_kv_head, R, hd).transpose(0, 2, 3, 1, 4)
    kh = k.reshape(B, T, n_kv_head, 1, hd).transpose(0, 2, 3, 1, 4)
    vh = v.reshape(B, T, n_kv_head, 1, hd).transpose(0, 2, 3, 1, 4)
    return qh, kh, vh


def gqa_attention_ref(q, k, v, n_head, n_kv_head):
    qh, kh, vh = _gqa_heads(q.astype(F32), k.astype(F32), v.astype(F32), n_head, n_kv_head)
    B, KV, R, T, hd = qh.shape
    s = (qh @ kh.swapaxes(-1, -2)) * F32(1.0 / np.sqrt(hd))
    s = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, s)
    mx = s.max(-1, keepdims=True)
    lse = mx + np.log(np.exp(s - mx).sum(-1, keepdims=True))
    y = np.exp(s - lse) @ vh                                          # (B,KV,R,T,hd)
    y = y.transpose(0, 3, 1, 2, 4).reshape(B, T, n_head * hd)
    return [y.astype(F32), lse[..., 0].reshape(B, n_head, T).astype(F32)]


def gqa_attention_bwd_ref(dy, q, k, v, y, lse, n_head, n_kv_head):
    qh, kh, vh = _gqa_heads(q.astype(F32), k.astype(F32), v.astype(F32), n_head, n_kv_head)
    B, KV, R, T, hd = qh.shape
    scale = F32(1.0 / np.sqrt(hd))
    mask = np.triu(np.ones((T, T), bool), 1)
    s = (qh @ kh.swapaxes(-1, -2)) * scale
    p = np.where(mask, 0, np.exp(np.where(mask, 0, s) - lse.reshape(B, KV, R, T)[..., None]))
    dyh, yh = (t.reshape(B, T, KV, R, hd).transpose(0, 2, 3, 1, 4) for t in (dy, y))
    dv = (p.swapaxes(-1, -2) @ dyh).sum(2)                            # summed over the group's heads
    dp = dyh @ vh.swapaxes(-1, -2)
    ds = p * (dp - (dyh * yh).sum(-1, keepdims=True))
    dq = (ds @ kh) * scale
    dk = (ds.swapaxes(-1, -2) @ qh).sum(2) * scale
    dq = dq.transpose(0, 3, 1, 2, 4).reshape(B, T, n_head * hd)
    kv = lambda t: t.transpose(0, 2, 1, 3).reshape(B, T, n_kv_head * hd)
    return [dq.astype(F32), kv(dk).astype(F32), kv(dv).astype(F32)]


def _gqa_attention_vjp(g, n, d):
    y, lse = n.outputs
    dq, dk, dv = g.op("gqa_attention_bwd", [d[0], *n.inputs, y, lse], name=f"d{n.outputs[0].name.rsplit('.', 1)[0]}",
                      **n.attrs)
    return [dq, dk, dv]


# causal attention of n_head query heads over n_kv_head shared K/V heads (grouped-query attention);
# inputs q (B,T,NH*hd), k, v (B,T,KV*hd); outputs y (B,T,NH*hd) and the softmax log-sum-exp (B,NH,T)
defop("gqa_attention", "gqa_attention",
      shape=lambda s, a: [f32(s[0]), f32((s[0][0], a["n_head"], s[0][1]))],
      ref=lambda x, a: gqa_attention_ref(x[0], x[1], x[2], a["n_head"], a["n_kv_head"]),
      vjp=_gqa_attention_vjp, outs=lambda n: ["y", "lse"])

defop("gqa_attention_bwd", "gqa_attention",
      shape=lambda s, a: [f32(s[1]), f32(s[2]), f32(s[3])],
      ref=lambda x, a: gqa_attention_bwd_ref(*x, a["n_head"], a["n_kv_head"]),
      outs=lambda n: ["q", "k", "v"])


def sigmoid(x):
    e = np.exp(-np.abs(x)).astype(F32)
    return np.where(x >= 0, F32(1) / (F32(1) + e), e / (F32(1) + e)).astype(F32)


def swiglu_bwd_ref(dh, gate, up):
    """h = silu(g) * u, silu(g) = g * sigmoid(g), silu'(g) = sig * (1 + g * (1 - sig))."""
    sig = sigmoid(gate)
    dgate = dh * up * (sig * (F32(1) + gate * (F32(1) - sig)))
    dup = dh * (gate * sig)
    return [dgate.astype(F32), dup.astype(F32)]


def _swiglu_vjp(g, n, d):
    dgate, dup = g.op("swiglu_bwd", [d[0], *n.inputs], name=f"d{n.outputs[0].name}")
    return [dgate, dup]


# the SwiGLU gate: h = silu(gate) * up (Llama's MLP is down(silu(gate(x)) * up(x)))
defop("swiglu", "swiglu",
      shape=lambda s, a: [f32(s[0])],
      ref=lambda x, a: [(x[0] * sigmoid(x[0]) * x[1]).astype(F32)],
      vjp=_swiglu_vjp)

# dgate and dup may take the bytes of gate and up: nothing reads those after the backward
defop("swiglu_bwd", "swiglu",
      shape=lambda s, a: [f32(s[1]), f32(s[2])],
      ref=lambda x, a: swiglu_bwd_ref(*x),
      outs=lambda n: ["gate", "up"], inplace=((0, 1), (1, 2)))


# --------------------------------------------------------------------------------------------
# optimizer ops (phase "opt"); outputs update their first inputs in place

defop("grad_norm", "adamw",
      shape=lambda s, a: [f32(())],
      ref=lambda x, a: [np.asarray(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in x)), F32)])

ADAMW_HYPER = ("beta1", "beta2", "eps", "max_norm")

# inputs: p, g, m, v, norm, lr, t, weight_decay (runtime); attr decay says whether it applies
defop("adamw", "adamw",
      shape=lambda s, a: [f32(s[0]), f32(s[0]), f32(s[0])],
      ref=lambda x, a: adamw_ref(*x[:7], float(x[7]) * a["decay"], *(a[k] for k in ADAMW_HYPER)),
      outs=lambda n: ["p", "m", "v"], inplace=((0, 0), (1, 2), (2, 3)))


def _adamw_all_ref(x, a):
    n = len(a["decay"])
    ps, gs, ms, vs = x[:n], x[n:2 * n], x[2 * n:3 * n], x[3 * n:4 * n]
    norm, lr, t, wd = x[4 * n:]
    out_p, out_m, out_v = [], [], []
    for p, g, m, v, decay in zip(ps, gs, ms, vs, a["decay"]):
        p2, m2, v2 = adamw_ref(p, g, m, v, norm, lr, t, float(wd) * decay, *(a[k] for k in ADAMW_HYPER))
        out_p.append(p2), out_m.append(m2), out_v.append(v2)
    return out_p + out_m + out_v


# fused: every parameter's AdamW in one node (inputs: params, grads, m, v, norm, lr, t, wd)
defop("adamw_all", "adamw",
      shape=lambda s, a: [f32(x) for x in s[:len(a["decay"])]] * 3,
      ref=_adamw_all_ref)
