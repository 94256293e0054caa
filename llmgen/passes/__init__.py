"""The pass pipeline: Graph -> Graph rewrites in one ordered list, then the memory plan.

Every pass keeps the numpy interpreter's results unchanged (tests/test_passes.py runs the
interpreter before and after each one). Each PIPELINE row is (name, pass, when): `when` maps
the build's options to the pass's keyword arguments, or to None where the pass is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmgen.ir.graph import Graph
from llmgen.passes.fusion import (
    accumulate_param_grads,
    fuse_adamw,
    fuse_layernorm_bwd_residual,
    fuse_norm_bwd_dbias,
    fuse_matmul_epilogue,
    fuse_residual_layernorm,
    fuse_softmax_xent,
)
from llmgen.passes.memory import MemoryPlan, plan_memory
from llmgen.passes.recompute import recompute_activations


@dataclass(frozen=True)
class PassOptions:
    fuse: bool = True  # run the fusion passes
    recompute: int = 0  # llm.c's -r level (passes/recompute.py)


def FUSION(o: PassOptions) -> dict | None:
    """A fusion: skipped when fusion is off (--no-fuse)."""
    return {} if o.fuse else None


def ALWAYS(o: PassOptions) -> dict:
    return {}


PIPELINE = [
    ("fuse_softmax_xent", fuse_softmax_xent, FUSION),  # losses + dlogits in one pass, in place
    ("fuse_matmul_epilogue", fuse_matmul_epilogue, FUSION),  # bias / GELU / dGELU / bias-grad epilogues
    ("fuse_residual_layernorm", fuse_residual_layernorm, FUSION),  # residual add inside the layernorm / RMSNorm
    ("fuse_layernorm_bwd_residual", fuse_layernorm_bwd_residual, FUSION),  # dx += residual grad (layernorm, RMSNorm)
    ("fuse_norm_bwd_dbias", fuse_norm_bwd_dbias, FUSION),  # the preceding projection's bias grad from the norm bwd
    # tied wte: both contributions += one grad buffer. Not optional: the activation arena is
    # planned per token, so a parameter-sized temporary must never land in it.
    ("accumulate_param_grads", accumulate_param_grads, ALWAYS),
    ("fuse_adamw", fuse_adamw, FUSION),  # one AdamW over all parameters
    # last: recompute (llm.c's -r) rewires backward readers of GELU / layernorm outputs; level 0 keeps the graph
    ("recompute_activations", recompute_activations, lambda o: {"level": o.recompute}),
]


def optimize(g: Graph, fuse: bool = True, recompute: int = 0) -> Graph:
    opts = PassOptions(fuse=fuse, recompute=recompute)
    for _, fn, when in PIPELINE:
        kwargs = when(opts)
        if kwargs is not None:
            g = fn(g, **kwargs)
    return g


__all__ = ["PIPELINE", "PassOptions", "optimize", "plan_memory", "MemoryPlan", "recompute_activations"]
