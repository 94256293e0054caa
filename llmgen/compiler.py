"""The front half of the pipeline in one call: spec -> forward -> backward -> AdamW -> passes -> plan."""

from __future__ import annotations

from llmgen.autodiff import backward
from llmgen.ir.graph import Graph
from llmgen.models.gpt2 import build_forward
from llmgen.optim import AdamWConfig, add_optimizer
from llmgen.passes import MemoryPlan, optimize, plan_memory


def training_graph(spec, B: int, T: int, adamw: AdamWConfig = AdamWConfig()) -> Graph:
    """The unoptimised training step: forward, backward, per-parameter AdamW."""
    g = build_forward(spec, B, T)
    g = backward(g, g.outputs["loss"])
    return add_optimizer(g, adamw)


def compile_graph(spec, B: int, T: int, fuse: bool = True) -> tuple[Graph, MemoryPlan]:
    g = optimize(training_graph(spec, B, T), fuse=fuse)
    return g, plan_memory(g)
