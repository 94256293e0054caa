"""The front half of the pipeline in one call: spec -> forward -> backward -> AdamW -> passes -> plan."""

from __future__ import annotations

from llmgen.autodiff import backward
from llmgen.ir.graph import Graph
from llmgen.models import build_forward  # dispatches on spec.arch (gpt2, llama3)
from llmgen.optim import AdamWConfig, add_optimizer
from llmgen.passes import MemoryPlan, optimize, plan_memory


def training_graph(spec, B: int, T: int, adamw: AdamWConfig = AdamWConfig()) -> Graph:
    """The unoptimised training step: forward, backward, per-parameter AdamW."""
    g = build_forward(spec, B, T)
    g = backward(g, g.outputs["loss"])
    return add_optimizer(g, adamw)


def compile_graph(
    spec, B: int, T: int, fuse: bool = True, recompute: int = 0, dtype: str = "fp32"
) -> tuple[Graph, MemoryPlan]:
    """dtype: the activations' storage precision the plan is made for (fp32, or the CUDA
    target's bf16); recompute: llm.c's -r level (passes/recompute.py)."""
    g = optimize(training_graph(spec, B, T), fuse=fuse, recompute=recompute)
    return g, plan_memory(g, dtype=dtype)
