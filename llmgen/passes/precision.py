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
# B*T rows, is the program's runtime batch and the FP8 program checks it at start-up. min_dim leaves the
# smallest linears in bf16 (torchao measured FP8 slower below about 1024x2048x1024 on H100); 0 keeps every
# qualifying linear in FP8 (what the tiny test models need), until a GPU benchmark sets the threshold.

FP8_ALIGN = 16
FP8_MIN_DIM = 0


@dataclass(frozen=True)
class Fp8Choice:
    """The decision for one linear (its weight): FP8 or bf16, and why."""

    weight: Value  # the (out, in) weight parameter
    layer: int | None
    K: int  # in features
    N: int  # out features
    fp8: bool
    why: str


def fp8_choices(g: Graph, min_dim: int = FP8_MIN_DIM) -> list[Fp8Choice]:
    """Every forward linear of the graph with its FP8 decision, in schedule order."""
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
        elif min(K, N) < min_dim:
            out.append(Fp8Choice(w, n.layer, K, N, False, f"{N}x{K}: smaller than {min_dim}, bf16 is faster"))
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
