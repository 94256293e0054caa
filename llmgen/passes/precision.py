"""Storage precision of activations: which Values stay fp32 when a program trains in bf16.

With spec.dtype == "bf16" the CUDA target keeps parameters and activations in bf16 (fp32
master weights, moments and parameter gradients live in their own arenas). A few
activations must stay fp32 because bf16's 8-bit mantissa would spoil them and they are
small (one number per row): layernorm means and reciprocal standard deviations, the
attention log-sum-exp, and the per-token losses (and their gradient in the unfused graph).
Each op's row in the op table says which of its outputs those are (`f32`): the memory
planner sizes these Values at two bf16 elements each, and the lowering gives them `float`
pointers.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmgen.ir.graph import Graph, Value
from llmgen.ir.ops import OPS


def storage_dtypes(g: Graph, dtype: str = "fp32") -> dict[int, str]:
    """Value id -> "f32" | "bf16" for every activation a node writes."""
    out: dict[int, str] = {}
    for n in g.nodes:
        keep = OPS[n.op].f32_outputs(len(n.outputs))
        for j, v in enumerate(n.outputs):
            if v.role == "act":
                out[v.id] = "bf16" if dtype == "bf16" and j not in keep else "f32"
    return out


# --------------------------------------------------------------------------------------------
# FP8 (--dtype fp8): which GEMMs run in FP8
#
# An FP8 build is the bf16 build with the block linears' three GEMMs (forward y = x W^T, dX = dY W,
# dW = dY^T x) through cuBLASLt's FP8 GEMM: E4M3 x and W, E5M2 dY, per-tensor scales, fp32 accumulation,
# bf16 (dW: fp32) output. Embeddings, the classifier, attention and norms stay bf16. sm_89 / sm_90's FP8
# GEMM takes only the TN layout with k and every leading dimension a multiple of 16 (16 bytes of FP8), so
# a linear qualifies when its in and out features are multiples of FP8_ALIGN; the third dimension, the
# B*T rows, is the program's runtime batch and the FP8 program checks it at start-up.
#
# The size threshold: an FP8 GEMM saves half the tensor-core time of its bf16 twin (2 M N K flops at twice the rate)
# but pays for its casts, memory-bound passes over x (M x K), dY (M x N) and W (N x K) that the bf16 GEMM does not
# make; the smaller the weight, the larger that toll against the saving. torchao's float8 training benchmarks
# (tensorwise scaling, H100) measured FP8 at 0.8x bf16's speed for the GEMM 1024 x 2048 x 1024 (M x K x N), so a
# linear whose weight has at most 1024 * 2048 elements (FP8_MIN_WEIGHTS) stays bf16: GPT-2 124M's qkv (2304 x 768)
# and attention projection (768 x 768), Llama-3.2-1B's k and v (512 x 2048). It is a static rule of the weight's
# shape only (the B*T rows are the runtime's), taken from a published measurement, not one of ours: a GPU benchmark
# (bench/gpu_check.py's FP8 rows) can move it. LLMGEN_FP8_MIN_WEIGHTS=<n> overrides it (0: every aligned linear in
# FP8, what the tiny test models need to exercise the FP8 path).

FP8_ALIGN = 16
FP8_MIN_WEIGHTS = 1024 * 2048
FP8_MIN_ENV = "LLMGEN_FP8_MIN_WEIGHTS"


def fp8_min_weights() -> int:
    """The threshold in force: $LLMGEN_FP8_MIN_WEIGHTS when set, else FP8_MIN_WEIGHTS."""
    import os

    v = os.environ.get(FP8_MIN_ENV, "").strip()
    if not v:
        return FP8_MIN_WEIGHTS
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{FP8_MIN_ENV}={v!r}: expected a whole number of weight elements") from None
    if n < 0:
        raise ValueError(f"{FP8_MIN_ENV}={v!r}: expected a number >= 0")
    return n


@dataclass(frozen=True)
class Fp8Choice:
    """The decision for one linear (its weight): FP8 or bf16, and why."""

    weight: Value  # the (out, in) weight parameter
    layer: int | None
    K: int  # in features
    N: int  # out features
    fp8: bool
    why: str


def fp8_choices(g: Graph, min_weights: int | None = None) -> list[Fp8Choice]:
    """Every forward linear of the graph with its FP8 decision, in schedule order; a linear whose weight has at most
    min_weights elements stays bf16 (None: fp8_min_weights())."""
    min_weights = fp8_min_weights() if min_weights is None else min_weights
    out = []
    for n in g.nodes:
        if n.op != "linear" or n.phase != "fwd":
            continue
        w = n.inputs[1]
        N, K = w.shape
        if w.role != "param" or n.layer is None or w.layer is None:
            out.append(Fp8Choice(w, n.layer, K, N, False, "outside the blocks (embedding / classifier): bf16"))
        elif K % FP8_ALIGN or N % FP8_ALIGN:
            out.append(Fp8Choice(w, n.layer, K, N, False, f"{N}x{K}: not a multiple of {FP8_ALIGN}, bf16"))
        elif N * K <= min_weights:
            why = f"{N}x{K}: at most {min_weights} weights, bf16 (torchao: FP8 0.8x at 1024x2048x1024)"
            out.append(Fp8Choice(w, n.layer, K, N, False, why))
        else:
            out.append(Fp8Choice(w, n.layer, K, N, True, "block linear: FP8 forward, dX and dW"))
    return out


def fp8_weight_of(n) -> Value | None:
    """The weight parameter of a linear-family node (linear, linear_dx: its second input; linear_dw: the
    parameter its output is the gradient of), else None."""
    if n.op in ("linear", "linear_dx"):
        return n.inputs[1] if n.inputs[1].role == "param" else None
    if n.op == "linear_dw":
        return n.outputs[0].grad_of
    return None


def fp8_nodes(g: Graph, choices: list[Fp8Choice]) -> set[int]:
    """Node ids of the GEMMs that run in FP8: every linear, linear_dx and linear_dw of an FP8 weight."""
    weights = {c.weight.id for c in choices if c.fp8}
    return {n.id for n in g.nodes if (w := fp8_weight_of(n)) is not None and w.id in weights}


# --------------------------------------------------------------------------------------------
# FP8 amax: which kernel gives each cast its amax (issue 14: "computed in the kernels that produce each tensor")
#
# The current recipe scales a tensor by its own amax, so the amax must be known before the cast. Where the kernel
# that writes an FP8 linear's input x (or, in the backward, its output gradient dY) is one of FP8_AMAX_PRODUCERS and
# runs right before the GEMM that casts it (nothing between them uses the amax scratch), it also writes the tensor's
# amax partials (kernels/fp8.cuh's block partials, here norms.cuh's NormAmax) and the cast takes those: no extra
# read of the tensor. A producer of two cast tensors (the SwiGLU backward: dup, cast right after, and dgate, cast
# after the up projection's GEMMs) keeps the second one's partials apart (FP8_AMAX_SECOND). Every other cast runs
# fp8.cuh's amax pass first ("amax pass"). The weights are cast once per optimizer step, after the update, each with
# an amax pass (AdamW writes every parameter in one launch: no per-weight partials there). The delayed recipe takes
# each amax from the cast itself (the scale comes from the history): nothing to fuse.
#
# cuBLASLt's CUBLASLT_MATMUL_DESC_AMAX_D_POINTER (the GEMM that writes the next linear's input) is not used for a
# bf16 D: the FP8 GEMM documentation states the D amax with FP8 outputs (scale_D), and an amax taken before the
# rounding to bf16 is not the amax of the bf16 tensor the cast reads (other codes than the amax pass's).

# op -> (what inspect calls it, the index of the FP8 linear's input (x) or output gradient (dY) among its outputs)
FP8_AMAX_PRODUCERS = {
    "layernorm": ("layernorm forward", 0),
    "residual_layernorm": ("layernorm forward", 1),
    "rmsnorm": ("RMSNorm forward", 0),
    "residual_rmsnorm": ("RMSNorm forward", 1),
    "swiglu": ("SwiGLU forward", 0),  # Llama's down projection's x
    "swiglu_bwd": ("SwiGLU backward", 1),  # dup: Llama's up projection's dY (dgate: FP8_AMAX_SECOND)
    "layernorm_bwd": ("layernorm backward", 0),  # the residual stream's gradient: attention / MLP projections' dY
    "rmsnorm_bwd": ("RMSNorm backward", 0),
}
# op -> (its name, the index of its second output whose partials it keeps apart, fp8_partials + fp8_partials_cap,
# which no other kernel writes: the cast of that output need not follow right after, only before the op runs again)
FP8_AMAX_SECOND = {"swiglu_bwd": ("SwiGLU backward", 0)}  # dgate: Llama's gate dY, cast after up's dX and dW GEMMs
FP8_AMAX_PASS = "amax pass"


@dataclass(frozen=True)
class Fp8Cast:
    """One current-recipe cast of an FP8 linear's tensor and where its amax comes from."""

    weight: Value  # the linear's weight
    layer: int | None
    tensor: str  # "x" (E4M3, forward) | "dY" (E5M2, backward) | "W" (E4M3, after each update)
    source: str  # FP8_AMAX_PRODUCERS' name of the producer, or FP8_AMAX_PASS
    producer: int | None = None  # the producing node's id where fused


def fp8_casts(g: Graph, choices: list[Fp8Choice]) -> list[Fp8Cast]:
    """Every amax-taking cast of the FP8 linears `choices` marks, in schedule order (forward x casts, backward dY
    casts, then the weights), with its amax source. A linear reading the x its predecessor cast (Llama's k, v; up)
    takes no cast of its own; a linear's dY is cast once for its dX and dW GEMMs."""
    weights = {c.weight.id for c in choices if c.fp8}
    out: list[Fp8Cast] = []
    cast_x: set[int] = set()  # forward inputs already cast
    cast_dy: set[int] = set()  # weights whose dY is cast

    def cast(i: int, tensor: str, v: Value, w: Value) -> Fp8Cast:
        """node i casts v: fused with the node before it where that one produced v, or with the last node of
        FP8_AMAX_SECOND before it where v is its second output"""
        layer, prev = g.nodes[i].layer, g.nodes[i - 1] if i else None
        if (
            prev is not None
            and prev.op in FP8_AMAX_PRODUCERS
            and prev.outputs[FP8_AMAX_PRODUCERS[prev.op][1]].id == v.id
        ):
            return Fp8Cast(w, layer, tensor, FP8_AMAX_PRODUCERS[prev.op][0], prev.id)
        two = next((m for m in reversed(g.nodes[:i]) if m.op in FP8_AMAX_SECOND), None)
        if two is not None and two.outputs[FP8_AMAX_SECOND[two.op][1]].id == v.id:
            return Fp8Cast(w, layer, tensor, FP8_AMAX_SECOND[two.op][0], two.id)
        return Fp8Cast(w, layer, tensor, FP8_AMAX_PASS)

    for i, n in enumerate(g.nodes):
        w = fp8_weight_of(n)
        if w is None or w.id not in weights:
            continue
        if n.op == "linear" and n.phase == "fwd" and n.inputs[0].id not in cast_x:
            cast_x.add(n.inputs[0].id)
            out.append(cast(i, "x", n.inputs[0], w))
        elif n.op in ("linear_dx", "linear_dw") and w.id not in cast_dy:  # dY: both GEMMs' first input
            cast_dy.add(w.id)
            out.append(cast(i, "dY", n.inputs[0], w))
    out += [Fp8Cast(c.weight, c.layer, "W", FP8_AMAX_PASS) for c in choices if c.fp8]
    return out
