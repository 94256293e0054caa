"""The op table: one row per op says everything the compiler knows about it.

A row (`defop`) holds the op's
  shape rule      (input shapes, attrs) -> [(shape, dtype), ...]
  numpy reference (numpy inputs, attrs) -> [numpy outputs]: the living definition of the op; the
                  interpreter runs it, every pass must leave its results unchanged, and the C/CUDA
                  kernels are tested against the same numbers
  derivative rule (graph, node, output grads) -> one grad per input (micrograd style: next to the forward)
  kernel family   templates/c/<family>.c.j2 and templates/cuda/<family>.cu.j2 each define a macro
                  named after the op (tests/test_op_table.py fails when one is missing); the macro
                  instantiates the family's code in templates/c/<family>.h or templates/cuda/<family>.cuh
  dims            the kernel's sizes: ints are compile-time constants, strings C expressions of the
                  runtime batch shape ("BT"); they name the kernel instance
  consts          other constants the kernel embeds (eps, the attention scale, RoPE's table, ...)
  flags           variants beyond the generic ones (acc<i>: output i accumulates into a gradient;
                  bias, gelu, dgelu, residual from the attrs)
  args            the launch arguments, when they are not the outputs then the inputs
  outs / f32      output labels, and which of them stay fp32 when a program trains in bf16
  token_axes      outputs whose (batch, token) axes are not the first two (attention's lse)
  inplace         (out, in) pairs whose bytes may be shared
  recompute       how llm.c's -r recomputes one of its outputs in the backward
  describe        what `llmgen inspect` says of a fused node
  flops           (per token, per token and unit of T): the FLOP count MFU and inspect report

Conventions: linear weights are stored (out, in) like llm.c; `linear` computes x @ w.T.
Leading dimensions of activations are flattened to rows (B*T) by the kernels.
A vjp rule gets the graph (to emit backward nodes), the forward node, and the output
gradients (None where an output has no gradient); it returns one gradient per input.
The `ctx` that dims, consts and args receive is the lowering's view of the program
(llmgen/codegen/lower.py: param_elems, param_rows(values), ref(value), arena(kind)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from llmgen.ir.graph import Node, Value, grad_name

F32 = np.float32
GELU_C = np.float32(np.sqrt(2.0 / np.pi))


@dataclass(frozen=True)
class Recompute:
    """How the recompute pass (llm.c's -r) recomputes one output of a forward node in the backward."""

    level: int  # the lowest recompute level that drops the output
    recipe: Callable  # node -> (output index, op, inputs, attrs) or None; the op's first output replaces it


@dataclass(frozen=True)
class OpDef:
    name: str
    family: str  # kernel template family (same name on every target)
    shape: Callable  # (input shapes, attrs) -> [(shape, dtype), ...]
    ref: Callable  # (numpy inputs, attrs) -> [numpy outputs]
    dims: Callable  # (node, ctx) -> {name: int | C expression}
    vjp: Callable | None = None  # (graph, node, douts) -> [dinput or None]
    consts: Callable | None = None  # (node, ctx) -> {name: constant}
    flags: Callable | None = None  # node -> {name: bool}
    args: Callable | None = None  # (node, ctx) -> [C expression]
    outs: tuple[str, ...] = ("out",)  # output labels; the first output is "<name>", others "<name>_<label>"
    f32: tuple[str, ...] = ()  # labels of outputs stored as fp32 under bf16 training
    token_axes: dict = field(default_factory=dict)  # label -> (batch axis, token axis) when not (0, 1)
    inplace: tuple = ()  # (out index, in index): may share the input's bytes
    recompute: Recompute | None = None
    describe: Callable | None = None  # node -> what inspect says of the (fused) node, or ""
    flops: Callable | None = None  # node -> (FLOPs per token, FLOPs per token per unit of T)

    def label(self, i: int) -> str:
        return self.outs[i] if i < len(self.outs) else str(i)

    def out_names(self, name: str | tuple[str, ...], n: int) -> list[str]:
        """`name` for the first output and `name_<label>` for the others, or the n names of a tuple."""
        if isinstance(name, tuple):
            if len(name) != n:
                raise ValueError(f"{self.name} has {n} outputs, got {len(name)} names {name}")
            return list(name)
        return [name] + [f"{name}_{self.label(i)}" for i in range(1, n)]

    def new_outputs(self, node: Node, name: str | tuple[str, ...]) -> list[Value]:
        """The output Values of `node` (this op applied to its inputs), named after `name`."""
        types = self.shape([v.shape for v in node.inputs], node.attrs)
        return [
            Value(tuple(s), dt, nm, node=node, index=i, token_axes=self.token_axes.get(self.label(i), (0, 1)))
            for i, ((s, dt), nm) in enumerate(zip(types, self.out_names(name, len(types))))
        ]

    def f32_outputs(self, n: int) -> set[int]:
        return {i for i in range(n) if self.label(i) in self.f32}


OPS: dict[str, OpDef] = {}


def defop(name: str, family: str, **fields) -> None:
    OPS[name] = OpDef(name, family, **fields)


def describe(node: Node) -> str:
    """What `llmgen inspect` says of a node: the fusion it stands for, or ""."""
    d = OPS[node.op].describe
    return d(node) if d else ""


def f32(shape):
    return (tuple(shape), "f32")


def rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def per_token(n: int) -> str:
    """Elements of a (B,T,...) buffer of n elements per token, as a C expression."""
    return "BT" if n == 1 else f"BT * {n}"


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


def sigmoid(x):
    e = np.exp(-np.abs(x)).astype(F32)
    return np.where(x >= 0, F32(1) / (F32(1) + e), e / (F32(1) + e)).astype(F32)


# --------------------------------------------------------------------------------------------
# embedding: the token rows, plus the position rows when a position table is given (GPT-2;
# Llama has none: RoPE puts positions into q and k)


def _embed_bwd_ref(dx, tokens, vocab, positions):
    C = dx.shape[-1]
    dwte = np.zeros((vocab, C), F32)
    np.add.at(dwte, tokens.reshape(-1), rows(dx))
    if positions is None:
        return [dwte]
    dwpe = np.zeros((positions, C), F32)
    dwpe[: dx.shape[1]] = dx.sum(0)
    return [dwte, dwpe]


def _embed_vjp(g, n, d):
    pos = n.inputs[2:]
    attrs = dict(vocab=n.inputs[1].shape[0]) | (dict(positions=pos[0].shape[0]) if pos else {})
    grads = g.op("embed_bwd", [d[0], n.inputs[0]], name=tuple(grad_name(p) for p in n.inputs[1:]), **attrs)
    return [None, *(grads if pos else [grads])]


# inputs: tokens (B,T), wte (V,C) [, wpe (P,C)]
defop(
    "embed",
    "embed",
    shape=lambda s, a: [f32(s[0] + (s[1][1],))],
    ref=lambda x, a: [(x[1][x[0]] + x[2][: x[0].shape[1]][None] if len(x) == 3 else x[1][x[0]]).astype(F32)],
    vjp=_embed_vjp,
    dims=lambda n, ctx: {"BT": "BT", "T": "T", "C": n.outputs[0].shape[-1]},
    flags=lambda n: {"pos": len(n.inputs) == 3},
)

# dwte (and dwpe with attr positions): scatter-adds of the dx rows
defop(
    "embed_bwd",
    "embed",
    shape=lambda s, a: [f32((a[k], s[0][-1])) for k in ("vocab", "positions") if k in a],
    ref=lambda x, a: _embed_bwd_ref(x[0], x[1], a["vocab"], a.get("positions")),
    dims=lambda n, ctx: (
        {"BT": "BT", "T": "T", "C": n.outputs[0].shape[-1], "V": n.outputs[0].shape[0]}
        | ({"P": n.outputs[1].shape[0]} if len(n.outputs) == 2 else {})
    ),
    flags=lambda n: {"pos": len(n.outputs) == 2},
    outs=("wte", "wpe"),
)


# --------------------------------------------------------------------------------------------
# LayerNorm (GPT-2)


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


def _layernorm_vjp(g, n, d):
    x, w, _ = n.inputs
    _, mean, rstd = n.outputs
    dx, dw, db = g.op("layernorm_bwd", [d[0], x, w, mean, rstd], name=tuple(map(grad_name, n.inputs)))
    return [dx, dw, db]


def _ln_bwd_acc(x, a):
    dx, dw, db = layernorm_bwd_ref(*x[:5])
    if len(x) == 6:
        dx = (dx + x[5]).astype(F32)
    return [dx, dw, db] + ([rows(dx).sum(0).astype(F32)] if a.get("dbias") else [])


def _ln_bwd_args(n, ctx):
    """dx, dw, db, dbias (NULL where the node has none: one kernel either way), then the inputs."""
    outs = [ctx.ref(v) for v in n.outputs]
    return outs[:3] + [outs[3] if len(outs) > 3 else "NULL"] + [ctx.ref(v) for v in n.inputs]


def _rows_dims(n, ctx):
    return {"N": "BT", "C": n.outputs[0].shape[-1]}


def _eps(n, ctx):
    return {"eps": float(n.attrs["eps"])}


def _norm_bwd_describe(n):
    parts = [" + residual grad" if n.attrs.get("accumulate") else "", " + bias grad" if n.attrs.get("dbias") else ""]
    return n.op.replace("_bwd", "") + " backward" + "".join(parts) if any(parts) else ""


defop(
    "layernorm",
    "layernorm",
    shape=lambda s, a: [f32(s[0]), f32(s[0][:-1]), f32(s[0][:-1])],
    ref=lambda x, a: layernorm_ref(x[0], x[1], x[2], a["eps"]),
    vjp=_layernorm_vjp,
    dims=_rows_dims,
    consts=_eps,
    outs=("y", "mean", "rstd"),
    f32=("mean", "rstd"),
    recompute=Recompute(2, lambda n: (0, "layernorm", list(n.inputs), dict(eps=n.attrs["eps"]))),
)

# fused: residual add + layernorm (the sum is the next residual stream, the rest as layernorm)
defop(
    "residual_layernorm",
    "layernorm",
    shape=lambda s, a: [f32(s[0]), f32(s[0]), f32(s[0][:-1]), f32(s[0][:-1])],
    ref=lambda x, a: [(x[0] + x[1]).astype(F32)] + layernorm_ref((x[0] + x[1]).astype(F32), x[2], x[3], a["eps"]),
    dims=_rows_dims,
    consts=_eps,
    outs=("sum", "y", "mean", "rstd"),
    f32=("mean", "rstd"),
    recompute=Recompute(2, lambda n: (1, "layernorm", [n.outputs[0], *n.inputs[2:4]], dict(eps=n.attrs["eps"]))),
    describe=lambda n: "residual add + layernorm",
)

# layernorm backward; with accumulate=True a 6th input (the residual stream's grad) is added to dx; with
# dbias=True (passes/fusion.py fuse_norm_bwd_dbias) a 4th output, sum_rows dx: the bias gradient of the
# projection whose output entered the residual stream. That gradient always accumulates (acc3 stays off: the
# kernel is the same with or without it, NULL where the node has none)
defop(
    "layernorm_bwd",
    "layernorm",
    shape=lambda s, a: [f32(s[1]), f32(s[2]), f32(s[2])] + ([f32(s[2])] if a.get("dbias") else []),
    ref=_ln_bwd_acc,
    dims=_rows_dims,
    flags=lambda n: {"acc3": False},
    args=_ln_bwd_args,
    outs=("x", "w", "b", "dbias"),
    describe=_norm_bwd_describe,
)


# --------------------------------------------------------------------------------------------
# matmuls and their epilogues


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
    dx = g.op("linear_dx", [d[0], w], name=grad_name(x))
    dw = g.op("linear_dw", [d[0], x], name=grad_name(w))
    return [dx, dw]


def _linear_dims(n, ctx):
    w = n.inputs[1]
    return {"M": "BT", "K": w.shape[1], "N": w.shape[0]}


def _matmul_flops(n):
    return (2 * (n.outputs[0].numel if n.op == "linear_dw" else n.inputs[1].numel), 0)


# y = x @ w.T; with bias=True a third input is added, with gelu=True a second output gelu(y)
defop(
    "linear",
    "linear",
    shape=_linear_shape,
    ref=_linear_ref,
    vjp=_linear_vjp,
    dims=_linear_dims,
    outs=("pre", "y"),
    flops=_matmul_flops,
    recompute=Recompute(1, lambda n: (1, "gelu", [n.outputs[0]], {}) if n.attrs.get("gelu") else None),
    describe=lambda n: ("matmul + bias" + (" + GELU" if n.attrs.get("gelu") else "")) if n.attrs.get("bias") else "",
)

# dx = dy @ w; with dgelu=True a third input `pre` multiplies the result by gelu'(pre)
defop(
    "linear_dx",
    "linear",
    shape=lambda s, a: [f32(s[0][:-1] + (s[1][1],))],
    ref=lambda x, a: [
        (
            (rows(x[0]) @ x[1]).reshape(x[0].shape[:-1] + (x[1].shape[1],))
            * (gelu_grad(x[2]) if a.get("dgelu") else F32(1))
        ).astype(F32)
    ],
    dims=_linear_dims,
    flops=_matmul_flops,
    describe=lambda n: "matmul + dGELU" if n.attrs.get("dgelu") else "",
)

# dw = dy^T x summed over rows; with bias=True also db = column sums of dy
defop(
    "linear_dw",
    "linear",
    shape=lambda s, a: [f32((s[0][-1], s[1][-1]))] + ([f32((s[0][-1],))] if a.get("bias") else []),
    ref=lambda x, a: (
        [(rows(x[0]).T @ rows(x[1])).astype(F32)] + ([rows(x[0]).sum(0).astype(F32)] if a.get("bias") else [])
    ),
    dims=lambda n, ctx: {"M": "BT", "K": n.outputs[0].shape[1], "N": n.outputs[0].shape[0]},
    outs=("w", "b"),
    flops=_matmul_flops,
    describe=lambda n: "matmul + bias grad" if n.attrs.get("bias") else "",
)


# --------------------------------------------------------------------------------------------
# elementwise ops and small reductions


def _elems_dims(n, ctx):
    return {"N": per_token(n.outputs[0].numel)}


def _bias_dims(n, ctx):
    return {"R": "BT", "C": n.inputs[0].shape[-1]}


defop(
    "bias_add",
    "elementwise",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [(x[0] + x[1]).astype(F32)],
    vjp=lambda g, n, d: [d[0], g.op("bias_grad", [d[0]], name=grad_name(n.inputs[1]))],
    dims=_bias_dims,
)

defop(
    "bias_grad",
    "elementwise",
    shape=lambda s, a: [f32(s[0][-1:])],
    ref=lambda x, a: [rows(x[0]).sum(0).astype(F32)],
    dims=_bias_dims,
)

defop(
    "gelu",
    "elementwise",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [gelu(x[0])],
    vjp=lambda g, n, d: [g.op("gelu_bwd", [d[0], n.inputs[0]], name=grad_name(n.inputs[0]))],
    dims=_elems_dims,
    recompute=Recompute(1, lambda n: (0, "gelu", [n.inputs[0]], {})),
)

defop(
    "gelu_bwd",
    "elementwise",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [(x[0] * gelu_grad(x[1])).astype(F32)],
    dims=_elems_dims,
)

defop(
    "add",
    "elementwise",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [(x[0] + x[1]).astype(F32)],
    vjp=lambda g, n, d: [d[0], d[0]],
    dims=_elems_dims,
)

defop(
    "mean",
    "elementwise",
    shape=lambda s, a: [f32(())],
    ref=lambda x, a: [np.asarray(x[0].mean(dtype=F32), F32)],
    vjp=lambda g, n, d: [g.op("mean_bwd", [d[0]], name=grad_name(n.inputs[0]), shape=n.inputs[0].shape)],
    dims=lambda n, ctx: {"N": per_token(n.inputs[0].numel)},
)

# the gradient of a mean over per-token values (the losses): kept fp32 under bf16, as they are
defop(
    "mean_bwd",
    "elementwise",
    shape=lambda s, a: [f32(a["shape"])],
    ref=lambda x, a: [np.full(a["shape"], F32(x[0]) / F32(np.prod(a["shape"])), F32)],
    dims=_elems_dims,
    f32=("out",),
)


# --------------------------------------------------------------------------------------------
# attention: causal, NH query heads over KV key/value heads (grouped-query attention; multi-head
# attention is the case KV == NH). Query head h reads K/V head h // (NH/KV), HF's repeat_kv
# order, by indexing: the K/V of a group are never repeated in memory.
# Inputs: q (B,T,NH*HD), k, v (B,T,KV*HD); or one packed qkv (B,T,(NH+2KV)*HD) = q | k | v
# (GPT-2's c_attn output), which the kernels address through row strides.
# Outputs: y (B,T,NH*HD) and the softmax log-sum-exp lse (B,NH,T) the backward recomputes from.


def _heads(q, k, v, n_head, n_kv_head):
    """q -> (B, KV, R, T, hd), k/v -> (B, KV, 1, T, hd): query head h uses K/V head h // R,
    shared by broadcasting instead of copying."""
    B, T, C = q.shape
    hd = C // n_head
    R = n_head // n_kv_head
    qh = q.reshape(B, T, n_kv_head, R, hd).transpose(0, 2, 3, 1, 4)
    kh = k.reshape(B, T, n_kv_head, 1, hd).transpose(0, 2, 3, 1, 4)
    vh = v.reshape(B, T, n_kv_head, 1, hd).transpose(0, 2, 3, 1, 4)
    return qh, kh, vh


def attention_ref(q, k, v, n_head, n_kv_head):
    qh, kh, vh = _heads(q.astype(F32), k.astype(F32), v.astype(F32), n_head, n_kv_head)
    B, KV, R, T, hd = qh.shape
    s = (qh @ kh.swapaxes(-1, -2)) * F32(1.0 / np.sqrt(hd))
    s = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, s)
    mx = s.max(-1, keepdims=True)
    lse = mx + np.log(np.exp(s - mx).sum(-1, keepdims=True))
    y = np.exp(s - lse) @ vh  # (B,KV,R,T,hd)
    y = y.transpose(0, 3, 1, 2, 4).reshape(B, T, n_head * hd)
    return [y.astype(F32), lse[..., 0].reshape(B, n_head, T).astype(F32)]


def attention_bwd_ref(dy, q, k, v, y, lse, n_head, n_kv_head):
    qh, kh, vh = _heads(q.astype(F32), k.astype(F32), v.astype(F32), n_head, n_kv_head)
    B, KV, R, T, hd = qh.shape
    scale = F32(1.0 / np.sqrt(hd))
    mask = np.triu(np.ones((T, T), bool), 1)
    s = (qh @ kh.swapaxes(-1, -2)) * scale
    p = np.where(mask, 0, np.exp(np.where(mask, 0, s) - lse.reshape(B, KV, R, T)[..., None]))
    dyh, yh = (t.reshape(B, T, KV, R, hd).transpose(0, 2, 3, 1, 4) for t in (dy, y))
    dv = (p.swapaxes(-1, -2) @ dyh).sum(2)  # summed over the group's heads
    dp = dyh @ vh.swapaxes(-1, -2)
    ds = p * (dp - (dyh * yh).sum(-1, keepdims=True))
    dq = (ds @ kh) * scale
    dk = (ds.swapaxes(-1, -2) @ qh).sum(2) * scale
    dq = dq.transpose(0, 3, 1, 2, 4).reshape(B, T, n_head * hd)
    kv = lambda t: t.transpose(0, 2, 1, 3).reshape(B, T, n_kv_head * hd)  # noqa: E731
    return [dq.astype(F32), kv(dk).astype(F32), kv(dv).astype(F32)]


def _head_dim(qkv_shapes, a) -> int:
    """The head size, from q's width or the packed qkv's."""
    if len(qkv_shapes) == 1:
        return qkv_shapes[0][-1] // (a["n_head"] + 2 * a["n_kv_head"])
    return qkv_shapes[0][-1] // a["n_head"]


def _unpack(x, a):
    """q, k, v: the three inputs, or the three column ranges of a packed qkv."""
    if len(x) == 3:
        return x
    C = a["n_head"] * _head_dim([x[0].shape], a)
    KVC = a["n_kv_head"] * _head_dim([x[0].shape], a)
    return x[0][..., :C], x[0][..., C : C + KVC], x[0][..., C + KVC :]


def _attention_shape(s, a):
    C = a["n_head"] * _head_dim(s, a)
    return [f32(s[0][:-1] + (C,)), f32((s[0][0], a["n_head"], s[0][1]))]


def _attention_bwd_ref(x, a):
    dy, qkv, (y, lse) = x[0], x[1:-2], x[-2:]
    dq, dk, dv = attention_bwd_ref(dy, *_unpack(qkv, a), y, lse, a["n_head"], a["n_kv_head"])
    return [dq, dk, dv] if len(qkv) == 3 else [np.concatenate([dq, dk, dv], -1)]


def _attention_vjp(g, n, d):
    y, lse = n.outputs
    packed = len(n.inputs) == 1
    grads = g.op("attention_bwd", [d[0], *n.inputs, y, lse], name=tuple(map(grad_name, n.inputs)), **n.attrs)
    return [grads] if packed else list(grads)


def _qkv_values(n: Node) -> list[Value]:
    """The q, k, v inputs of an attention node (one packed qkv, or three)."""
    return n.inputs if n.op == "attention" else n.inputs[1:-2]


def _attention_dims(n, ctx):
    NH, KV = n.attrs["n_head"], n.attrs["n_kv_head"]
    return {"NH": NH, "KV": KV, "HD": _head_dim([v.shape for v in _qkv_values(n)], n.attrs)}


def _attention_consts(n, ctx):
    """The scale 1/sqrt(HD) and the row strides (elements between tokens) of q (QS), of k and v
    (KS), and of y and dy (YS): a packed qkv has one row of q | k | v per token."""
    d = _attention_dims(n, ctx)
    C, KVC = d["NH"] * d["HD"], d["KV"] * d["HD"]
    packed = len(_qkv_values(n)) == 1
    return {
        "scale": 1.0 / math.sqrt(d["HD"]),
        "QS": C + 2 * KVC if packed else C,
        "KS": C + 2 * KVC if packed else KVC,
        "YS": C,
    }


def _qkv_args(values, n, ctx) -> list[str]:
    """q, k, v pointers: three buffers, or offsets C and C + KV*HD into one packed buffer."""
    if len(values) == 3:
        return [ctx.ref(v) for v in values]
    d = _attention_dims(n, ctx)
    base, C, KVC = ctx.ref(values[0]), d["NH"] * d["HD"], d["KV"] * d["HD"]
    return [base, f"{base} + {C}", f"{base} + {C + KVC}"]


def _attention_args(n, ctx):
    y, lse = n.outputs
    return [ctx.ref(y), ctx.ref(lse), *_qkv_args(n.inputs, n, ctx)]


def _attention_bwd_args(n, ctx):
    dy, y, lse = n.inputs[0], n.inputs[-2], n.inputs[-1]
    return [*_qkv_args(n.outputs, n, ctx), ctx.ref(dy), *_qkv_args(_qkv_values(n), n, ctx), ctx.ref(y), ctx.ref(lse)]


def _attention_flops(factor):
    # q.k and p.v over the full sequence (2 FLOPs per multiply-add): the forward 2 products, the backward 4
    return lambda n: (0, factor * n.attrs["n_head"] * _attention_dims(n, None)["HD"])


defop(
    "attention",
    "attention",
    shape=_attention_shape,
    ref=lambda x, a: attention_ref(*_unpack(x, a), a["n_head"], a["n_kv_head"]),
    vjp=_attention_vjp,
    dims=_attention_dims,
    consts=_attention_consts,
    args=_attention_args,
    outs=("y", "lse"),
    f32=("lse",),
    token_axes={"lse": (0, 2)},
    flops=_attention_flops(4),
)

# inputs: dy, q, k, v (or qkv), y, lse; outputs dq, dk, dv (or the packed dqkv)
defop(
    "attention_bwd",
    "attention",
    shape=lambda s, a: [f32(x) for x in s[1:-2]],
    ref=_attention_bwd_ref,
    dims=_attention_dims,
    consts=_attention_consts,
    args=_attention_bwd_args,
    outs=("q", "k", "v"),
    flops=_attention_flops(8),
)


# --------------------------------------------------------------------------------------------
# the loss


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


def _xent_vjp(g, n, d):
    logits, targets = n.inputs
    dl = g.op("xent_bwd", [d[0], logits, targets], name=grad_name(logits), vocab=n.attrs["vocab"])
    return [dl, None]


def _xent_dims(n, ctx):
    logits = n.inputs[1] if n.op == "xent_bwd" else n.inputs[0]
    return {"V": n.attrs["vocab"], "Vp": logits.shape[-1]}


defop(
    "xent",
    "xent",
    shape=lambda s, a: [f32(s[1])],
    ref=lambda x, a: [xent_ref(x[0], x[1], a["vocab"])],
    vjp=_xent_vjp,
    dims=_xent_dims,
    outs=("losses",),
    f32=("losses",),
)

defop(
    "xent_bwd",
    "xent",
    shape=lambda s, a: [f32(s[1])],
    ref=lambda x, a: [xent_bwd_ref(x[0], x[1], x[2], a["vocab"])],
    dims=_xent_dims,
)

# fused: cross-entropy forward + dlogits of mean(losses) * dloss; dlogits overwrite the logits
defop(
    "softmax_xent",
    "xent",
    shape=lambda s, a: [f32(s[1]), f32(s[0])],
    ref=lambda x, a: [
        xent_ref(x[0], x[1], a["vocab"]),
        xent_bwd_ref(np.full(x[1].shape, F32(x[2]) / F32(x[1].size), F32), x[0], x[1], a["vocab"]),
    ],
    dims=_xent_dims,
    outs=("losses", "dlogits"),
    f32=("losses",),
    inplace=((1, 0),),
    describe=lambda n: "softmax + cross-entropy + dlogits (in place over the logits)",
)


# --------------------------------------------------------------------------------------------
# Llama 3: RMSNorm, rotary embeddings, SwiGLU. Numerics follow Hugging Face's LlamaForCausalLM
# (rotate-half RoPE layout, fp32).


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
    dx, dw = g.op("rmsnorm_bwd", [d[0], x, w, rstd], name=(grad_name(x), grad_name(w)))
    return [dx, dw]


def _rmsnorm_bwd_acc(x):
    dx, dw = rmsnorm_bwd_ref(*x[:4])
    if len(x) == 5:
        dx = (dx + x[4]).astype(F32)
    return [dx, dw]


defop(
    "rmsnorm",
    "rmsnorm",
    shape=lambda s, a: [f32(s[0]), f32(s[0][:-1])],
    ref=lambda x, a: rmsnorm_ref(x[0], x[1], a["eps"]),
    vjp=_rmsnorm_vjp,
    dims=_rows_dims,
    consts=_eps,
    outs=("y", "rstd"),
    f32=("rstd",),
    recompute=Recompute(2, lambda n: (0, "rmsnorm", list(n.inputs), dict(eps=n.attrs["eps"]))),
)

# fused: residual add + RMSNorm (the sum is the next residual stream)
defop(
    "residual_rmsnorm",
    "rmsnorm",
    shape=lambda s, a: [f32(s[0]), f32(s[0]), f32(s[0][:-1])],
    ref=lambda x, a: [(x[0] + x[1]).astype(F32)] + rmsnorm_ref((x[0] + x[1]).astype(F32), x[2], a["eps"]),
    dims=_rows_dims,
    consts=_eps,
    outs=("sum", "y", "rstd"),
    f32=("rstd",),
    recompute=Recompute(2, lambda n: (1, "rmsnorm", [n.outputs[0], n.inputs[2]], dict(eps=n.attrs["eps"]))),
    describe=lambda n: "residual add + RMSNorm",
)

# RMSNorm backward; with accumulate=True a 5th input (the residual stream's grad) is added to dx
defop(
    "rmsnorm_bwd",
    "rmsnorm",
    shape=lambda s, a: [f32(s[1]), f32(s[2])],
    ref=lambda x, a: _rmsnorm_bwd_acc(x),
    dims=_rows_dims,
    outs=("x", "w"),
    describe=_norm_bwd_describe,
)


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
    x1, x2 = h[..., : hd // 2], h[..., hd // 2 :]
    y = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)
    return y.reshape(B, T, C).astype(F32)


def _rope_dims(n, ctx):
    nh = n.attrs["n_head"]
    return {"NH": nh, "HD": n.inputs[0].shape[-1] // nh}


def _rope_consts(n, ctx):
    return {"table": tuple(n.attrs["inv_freq"])}  # the head_dim/2 inverse frequencies


defop(
    "rope",
    "rope",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [rope_ref(x[0], a["n_head"], a["inv_freq"])],
    vjp=lambda g, n, d: [g.op("rope_bwd", [d[0]], name=grad_name(n.inputs[0]), **n.attrs)],
    dims=_rope_dims,
    consts=_rope_consts,
    inplace=((0, 0),),
)

defop(
    "rope_bwd",
    "rope",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [rope_ref(x[0], a["n_head"], a["inv_freq"], inverse=True)],
    dims=_rope_dims,
    consts=_rope_consts,
    inplace=((0, 0),),
)


def swiglu_bwd_ref(dh, gate, up):
    """h = silu(g) * u, silu(g) = g * sigmoid(g), silu'(g) = sig * (1 + g * (1 - sig))."""
    sig = sigmoid(gate)
    dgate = dh * up * (sig * (F32(1) + gate * (F32(1) - sig)))
    dup = dh * (gate * sig)
    return [dgate.astype(F32), dup.astype(F32)]


def _swiglu_vjp(g, n, d):
    dgate, dup = g.op("swiglu_bwd", [d[0], *n.inputs], name=tuple(map(grad_name, n.inputs)))
    return [dgate, dup]


def _swiglu_dims(n, ctx):
    return {"F": n.outputs[0].shape[-1]}


# the SwiGLU gate: h = silu(gate) * up (Llama's MLP is down(silu(gate(x)) * up(x)))
defop(
    "swiglu",
    "swiglu",
    shape=lambda s, a: [f32(s[0])],
    ref=lambda x, a: [(x[0] * sigmoid(x[0]) * x[1]).astype(F32)],
    vjp=_swiglu_vjp,
    dims=_swiglu_dims,
    recompute=Recompute(1, lambda n: (0, "swiglu", list(n.inputs), {})),
)

# dgate and dup may take the bytes of gate and up: nothing reads those after the backward
defop(
    "swiglu_bwd",
    "swiglu",
    shape=lambda s, a: [f32(s[1]), f32(s[2])],
    ref=lambda x, a: swiglu_bwd_ref(*x),
    dims=_swiglu_dims,
    outs=("gate", "up"),
    inplace=((0, 1), (1, 2)),
)


# --------------------------------------------------------------------------------------------
# optimizer ops (phase "opt"); outputs update their first inputs in place


def adamw_ref(p, g, m, v, norm, lr, t, wd, beta1, beta2, eps, max_norm):
    """torch.optim.AdamW (single-tensor path) after clip_grad_norm_'s rescale."""
    clip = np.float32(min(1.0, max_norm / (float(norm) + 1e-6)))
    g = (g * clip).astype(F32)
    lr = float(lr)
    t = float(t)
    p = (p * F32(1 - lr * wd)).astype(F32)
    m = (m + F32(1 - beta1) * (g - m)).astype(F32)
    v = (v * F32(beta2) + F32(1 - beta2) * g * g).astype(F32)
    bc1 = 1 - beta1**t
    bc2_sqrt = np.sqrt(1 - beta2**t)
    denom = (np.sqrt(v) / F32(bc2_sqrt) + F32(eps)).astype(F32)
    p = (p - F32(lr / bc1) * (m / denom)).astype(F32)
    return [p, m, v]


ADAMW_HYPER = ("beta1", "beta2", "eps", "max_norm")


def _adamw_consts(n, ctx):
    return {k: n.attrs[k] for k in ADAMW_HYPER}


def _adamw_all_ref(x, a):
    n = len(a["decay"])
    ps, gs, ms, vs = x[:n], x[n : 2 * n], x[2 * n : 3 * n], x[3 * n : 4 * n]
    norm, lr, t, wd = x[4 * n :]
    out_p, out_m, out_v = [], [], []
    for p, g, m, v, decay in zip(ps, gs, ms, vs, a["decay"]):
        p2, m2, v2 = adamw_ref(p, g, m, v, norm, lr, t, float(wd) * decay, *(a[k] for k in ADAMW_HYPER))
        out_p.append(p2), out_m.append(m2), out_v.append(v2)
    return out_p + out_m + out_v


# sqrt of the sum of every gradient squared: one pass over the whole grads arena
defop(
    "grad_norm",
    "adamw",
    shape=lambda s, a: [f32(())],
    ref=lambda x, a: [np.asarray(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in x)), F32)],
    dims=lambda n, ctx: {"N": ctx.param_elems},
    args=lambda n, ctx: [ctx.ref(n.outputs[0]), ctx.arena("grads")],
)

# inputs: p, g, m, v, norm, lr, t, weight_decay (runtime); attr decay says whether it applies
defop(
    "adamw",
    "adamw",
    shape=lambda s, a: [f32(s[0]), f32(s[0]), f32(s[0])],
    ref=lambda x, a: adamw_ref(*x[:7], float(x[7]) * a["decay"], *(a[k] for k in ADAMW_HYPER)),
    dims=lambda n, ctx: {"N": n.inputs[0].numel},
    consts=_adamw_consts,
    flags=lambda n: {"decay": bool(n.attrs["decay"])},
    outs=("p", "m", "v"),
    inplace=((0, 0), (1, 2), (2, 3)),
)

# fused: every parameter's AdamW in one node (inputs: params, grads, m, v, norm, lr, t, wd); the
# kernel walks the four arenas, one segment per parameter
defop(
    "adamw_all",
    "adamw",
    shape=lambda s, a: [f32(x) for x in s[: len(a["decay"])]] * 3,
    ref=_adamw_all_ref,
    dims=lambda n, ctx: {},
    consts=lambda n, ctx: _adamw_consts(n, ctx) | {"segments": ctx.param_rows(n.inputs[: len(n.attrs["decay"])])},
    args=lambda n, ctx: [ctx.arena(a) for a in ("params", "grads", "m", "v")] + [ctx.ref(v) for v in n.inputs[-4:]],
    describe=lambda n: "grad-norm clip + AdamW over every parameter",
)
