"""The pass pipeline: fusions in one ordered list, then the memory plan.

Every pass is Graph -> Graph and keeps the numpy interpreter's results unchanged
(tests/test_passes.py runs the interpreter before and after each one).
"""

from __future__ import annotations

from llmgen.ir.graph import Graph
from llmgen.passes.fusion import (accumulate_param_grads, fuse_adamw, fuse_layernorm_bwd_residual,
                                  fuse_matmul_epilogue, fuse_residual_layernorm, fuse_softmax_xent)
from llmgen.passes.memory import MemoryPlan, plan_memory
from llmgen.passes.recompute import recompute_activations

PIPELINE = [
    # (name, pass, is a fusion: skipped when fusion is off)
    ("fuse_softmax_xent", fuse_softmax_xent, True),            # losses + dlogits in one pass, in place
    ("fuse_matmul_epilogue", fuse_matmul_epilogue, True),      # bias / GELU / dGELU / bias-grad epilogues
    ("fuse_residual_layernorm", fuse_residual_layernorm, True),  # residual add inside the layernorm / RMSNorm
    ("fuse_layernorm_bwd_residual", fuse_layernorm_bwd_residual, True),  # dx += residual grad (layernorm, RMSNorm)
    # tied wte: both contributions += one grad buffer. Not optional: the activation arena is
    # planned per token, so a parameter-sized temporary must never land in it.
    ("accumulate_param_grads", accumulate_param_grads, False),
    ("fuse_adamw", fuse_adamw, True),                          # one AdamW over all parameters
]


def optimize(g: Graph, fuse: bool = True, recompute: int = 0) -> Graph:
    for _, fn, is_fusion in PIPELINE:
        if fuse or not is_fusion:
            g = fn(g)
    # last: recompute (llm.c's -r) rewires backward readers of GELU / layernorm outputs
    return recompute_activations(g, recompute)


__all__ = ["PIPELINE", "optimize", "plan_memory", "MemoryPlan", "recompute_activations"]
