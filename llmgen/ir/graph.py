"""The graph IR: one Node type, Values flowing between nodes, a Graph that owns both.

A Node applies an op (a name in ops.OPS) to input Values and produces output Values.
Values are immutable SSA names; the memory planner later decides which share bytes.
Every Value has a readable dotted name ("h3.qkv") that survives into the emitted C/CUDA source
as a field name and a comment.

Layers: a model built of repeated blocks names the graph's layer prefix (GPT-2 "h", Llama "l") and
names each block's values "<prefix><layer>.<field>" ("h3.qkv", "h3.ln1_mean"). Each Value and Node
carries its layer (None outside the blocks): Values from their names, Nodes from the layer the
graph was building (`Graph.layer`; autodiff and the passes carry it over). The lowering turns
repeated blocks into loops over per-layer tables of pointers (`LA[l].qkv`) from these tags.

Phases order the program: "fwd" and "bwd" run once per micro-batch, "opt" once per
optimizer step. Roles say which arena a Value lives in:
  param (weights), grad (their gradients, accumulated across micro-batches),
  state (optimizer moments), input (tokens/targets/runtime scalars), act (everything else).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

_ids = itertools.count()


@dataclass(eq=False)
class Value:
    shape: tuple[int, ...]
    dtype: str  # "f32" | "i32" (per tensor, so bf16/fp8 can follow)
    name: str
    role: str = "act"  # param | grad | state | input | act
    node: Node | None = None  # producer (None for graph inputs, params, state)
    index: int = 0  # which output of the producer
    grad_of: Value | None = None  # for role=grad: the parameter; writes accumulate (+=)
    meta: dict = field(default_factory=dict)  # param facts: hf name, layout, weight decay
    token_axes: tuple[int, int] = (0, 1)  # the axes that scale with the batch B and the sequence T
    layer: int | None = None  # the block it belongs to (from its name), None outside
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
    phase: str  # fwd | bwd | opt
    layer: int | None = None  # the block whose computation it is (None outside the blocks)
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
    inputs: dict[str, Value] = field(default_factory=dict)  # tokens, targets, dloss, lr, ...
    params: list[Value] = field(default_factory=list)
    grads: dict[int, Value] = field(default_factory=dict)  # param id -> final grad value
    state: list[Value] = field(default_factory=list)  # optimizer moments
    outputs: dict[str, Value] = field(default_factory=dict)  # loss, losses, logits, ...
    phase: str = "fwd"  # phase for nodes being added
    layer: int | None = None  # layer of the nodes being added
    layer_prefix: str = ""  # "h": block values are named h<layer>.<field>

    # -- building --------------------------------------------------------------------------
    def input(self, name: str, shape, dtype: str = "f32") -> Value:
        v = Value(tuple(shape), dtype, name, role="input")
        self.inputs[name] = v
        return v

    def param(self, name: str, shape, **meta) -> Value:
        v = Value(tuple(shape), "f32", name, role="param", meta=meta, layer=self.layer_of(name))
        self.params.append(v)
        return v

    def op(self, op: str, inputs: list[Value], name: str | tuple[str, ...], **attrs):
        """Append a node; returns its single output Value, or a tuple when it has several. `name` names
        the outputs: the first output is `name`, the others `name_<label>` (layernorm "ln1": "ln1",
        "ln1_mean", "ln1_rstd"), or a tuple gives every output its name."""
        from llmgen.ir.ops import OPS

        node = Node(op, list(inputs), [], dict(attrs), self.phase, self.layer)
        node.outputs = OPS[op].new_outputs(node, name)
        for v in node.outputs:
            v.layer = self.layer_of(v.name)
        self.nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    # -- layers ----------------------------------------------------------------------------
    def layer_of(self, name: str) -> int | None:
        """The layer a value's name places it in ("h3.qkv" -> 3 with prefix "h"), or None."""
        if not self.layer_prefix:
            return None
        m = re.match(rf"{re.escape(self.layer_prefix)}(\d+)\.", name)
        return int(m.group(1)) if m else None

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

    def copy(self) -> Graph:
        """Shallow-copy the node list (passes rebuild lists, never mutate shared nodes in place)."""
        g = Graph(self.spec, self.B, self.T)
        g.nodes = list(self.nodes)
        g.inputs = dict(self.inputs)
        g.params = list(self.params)
        g.grads = dict(self.grads)
        g.state = list(self.state)
        g.outputs = dict(self.outputs)
        g.layer_prefix = self.layer_prefix
        return g

    def dump(self) -> str:
        return "\n".join(f"[{n.phase}] {n!r}" for n in self.nodes)


def field_of(v: Value) -> str:
    """A value's name inside its layer ("h3.qkv" -> "qkv"); the whole name outside the layers."""
    return v.name.split(".", 1)[1] if v.layer is not None else v.name


def grad_name(v: Value) -> str:
    """The name of the gradient of v: d<field> in v's layer ("h3.qkv" -> "h3.dqkv", "logits" -> "dlogits")."""
    if v.layer is None:
        return f"d{v.name}"
    head, field = v.name.split(".", 1)
    return f"{head}.d{field}"
