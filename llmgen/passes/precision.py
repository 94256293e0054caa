"""Storage precision of activations: which Values stay fp32 when a program trains in bf16.

With spec.dtype == "bf16" the CUDA target keeps parameters and activations in bf16 (fp32
master weights, moments and parameter gradients live in their own arenas). A few
activations must stay fp32 because bf16's 8-bit mantissa would spoil them and they are
small (one number per row): layernorm means and reciprocal standard deviations, the
attention log-sum-exp, and the per-token losses (and their gradient in the unfused graph).
This table is the one place that says so: the memory planner sizes these Values at two
bf16 elements each, and the lowering gives them `float` pointers.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph

# op -> indices of its outputs stored as fp32 under bf16 training
F32_OUTPUTS: dict[str, tuple[int, ...]] = {
    "layernorm": (1, 2),              # mean, rstd
    "residual_layernorm": (2, 3),     # mean, rstd
    "attention": (1,),                # lse
    "softmax_xent": (0,),             # losses (dlogits overwrite the bf16 logits)
    "xent": (0,),                     # losses
    "mean_bwd": (0,),                 # dlosses
    "rmsnorm": (1,),                  # rstd (Llama)
    "residual_rmsnorm": (2,),         # rstd
    "gqa_attention": (1,),            # lse
}


def storage_dtypes(g: Graph, dtype: str = "fp32") -> dict[int, str]:
    """Value id -> "f32" | "bf16" for every activation a node writes."""
    out: dict[int, str] = {}
    for n in g.nodes:
        keep = F32_OUTPUTS.get(n.op, ())
        for j, v in enumerate(n.outputs):
            if v.role == "act":
                out[v.id] = "bf16" if dtype == "bf16" and j not in keep else "f32"
    return out
