"""The graph IR: one Node type, Values flowing between nodes, a Graph that owns both.

A Node applies an op (a name in ops.OPS) to input Values and produces output Values.
Values are immutable SSA names; the memory planner later decides which share bytes.
Every Value has a readable dotted name ("h3.attn.qkv") that survives into the emitted
C/CUDA source as a field name and a comment.

Phases order the program: "fwd" and "bwd" run once per micro-batch, "opt" once per
optimizer step. Roles say which arena a Value lives in:
  param (weights), grad (their gradients, accumulated across micro-batches),
  state (optimizer moments), input (tokens/targets/runtime scalars), act (everything else).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

_ids = itertools.count()


@dataclass(eq=False)
class Value:
    shape: tuple[int, ...]
    dtype: str                       # "f32" | "i32" (per tensor, so bf16/fp8 can follow)
    name: str
    role: str = "act"                # param | grad | state | input | act
    node: "Node | None" = None       # producer (None for graph inputs, params, state)
    index: int = 0                   # which output of the producer
    grad_of: "Value | None" = None   # for role=grad: the parameter; writes accumulate (+=)
    meta: dict = field(default_factory=dict)  # param facts: hf name, layout, weight decay
    token_axes: tuple[int, int] = (0, 1)      # the axes that scale with the batch B and the sequence T
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __repr__(self) -> str:
        return f"%{self.name}{list(self.shape)}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict
    phase: str                       # fwd | bwd | opt
    id: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        ins = ", ".join(v.name for v in self.inputs)
        outs = ", ".join(v.name for v in self.outputs)
        return f"{outs} = {self.op}({ins}) {self.attrs or ''}"


@dataclass(eq=False)
class Graph:
    spec: object
    B: int
    T: int
    nodes: list[Node] = field(default_factory=list)
    inputs: dict[str, Value] = field(default_factory=dict)    # tokens, targets, dloss, lr, ...
    params: list[Value] = field(default_factory=list)
    grads: dict[int, Value] = field(default_factory=dict)     # param id -> final grad value
    state: list[Value] = field(default_factory=list)          # optimizer moments
    outputs: dict[str, Value] = field(default_factory=dict)   # loss, losses, logits, ...
    phase: str = "fwd"                                         # phase for nodes being added

    # -- building --------------------------------------------------------------------------
    def input(self, name: str, shape, dtype: str = "f32") -> Value:
        v = Value(tuple(shape), dtype, name, role="input")
        self.inputs[name] = v
        return v

    def param(self, name: str, shape, **meta) -> Value:
        v = Value(tuple(shape), "f32", name, role="param", meta=meta)
        self.params.append(v)
        return v

    def op(self, op: str, inputs: list[Value], name: str, **attrs):
        """Append a node; returns its single output Value, or a tuple when it has several."""
        from llmgen.ir.ops import OPS
        node = Node(op, list(inputs), [], dict(attrs), self.phase)
        node.outputs = OPS[op].new_outputs(node, name)
        self.nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    # -- queries ---------------------------------------------------------------------------
    def consumers(self) -> dict[int, list[Node]]:
        users: dict[int, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                users.setdefault(v.id, []).append(n)
        return users

    def live_outputs(self) -> set[int]:
        """Values that must exist after the program: graph outputs and parameter grads."""
        keep = {v.id for v in self.outputs.values()}
        keep |= {g.id for g in self.grads.values()}
        return keep

    def values(self) -> list[Value]:
        seen: dict[int, Value] = {}
        for v in itertools.chain(self.inputs.values(), self.params, self.state):
            seen[v.id] = v
        for n in self.nodes:
            for v in itertools.chain(n.inputs, n.outputs):
                seen.setdefault(v.id, v)
        return list(seen.values())

    def copy(self) -> "Graph":
        """Shallow-copy the node list (passes rebuild lists, never mutate shared nodes in place)."""
        g = Graph(self.spec, self.B, self.T)
        g.nodes = list(self.nodes)
        g.inputs = dict(self.inputs)
        g.params = list(self.params)
        g.grads = dict(self.grads)
        g.state = list(self.state)
        g.outputs = dict(self.outputs)
        return g

    def dump(self) -> str:
        return "\n".join(f"[{n.phase}] {n!r}" for n in self.nodes)
