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

from llmgen.ir.graph import Graph
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
