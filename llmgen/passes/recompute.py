"""Activation recompute (llm.c's -r): trade a little backward work for activation memory.

level 0  keep every forward activation the backward reads (no change)
level 1  the GELU outputs (B,T,4C) are recomputed from the pre-activations in the backward
         (Llama: the SwiGLU outputs (B,T,F) from gate and up)
level 2  as 1, and the layernorm outputs (B,T,C) are recomputed from the residual stream
         (Llama: the RMSNorm outputs)

The backward's readers of such a Value read a copy that a new backward node recomputes
right before the first of them, so the forward's Value dies at its last forward reader and
the memory planner lets later buffers reuse its bytes. The recomputing node is the same
op as the forward one (gelu, layernorm), so the interpreter's results do not change.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph, Node, Value
from llmgen.ir.ops import OPS

LEVELS = (0, 1, 2)


def _recipe(n: Node, level: int):
    """(forward Value to drop, op, inputs, attrs, index of that Value among the op's outputs) or None."""
    if level >= 1 and n.op == "linear" and n.attrs.get("gelu"):
        return n.outputs[1], "gelu", [n.outputs[0]], {}, 0
    if level >= 1 and n.op == "gelu":
        return n.outputs[0], "gelu", [n.inputs[0]], {}, 0
    if level >= 2 and n.op == "layernorm":
        return n.outputs[0], "layernorm", list(n.inputs), dict(eps=n.attrs["eps"]), 0
    if level >= 2 and n.op == "residual_layernorm":
        return n.outputs[1], "layernorm", [n.outputs[0], n.inputs[2], n.inputs[3]], dict(eps=n.attrs["eps"]), 0
    # Llama: the SwiGLU output (B,T,F) at level 1, the RMSNorm outputs (B,T,C) at level 2
    if level >= 1 and n.op == "swiglu":
        return n.outputs[0], "swiglu", list(n.inputs), {}, 0
    if level >= 2 and n.op == "rmsnorm":
        return n.outputs[0], "rmsnorm", list(n.inputs), dict(eps=n.attrs["eps"]), 0
    if level >= 2 and n.op == "residual_rmsnorm":
        return n.outputs[1], "rmsnorm", [n.outputs[0], n.inputs[2]], dict(eps=n.attrs["eps"]), 0
    return None


def recompute_activations(g: Graph, level: int = 0) -> Graph:
    if level not in LEVELS:
        raise ValueError(f"recompute level must be one of {LEVELS}, got {level}")
    if level == 0:
        return g
    users = g.consumers()
    before: dict[int, list[Node]] = {}      # backward node id -> recompute nodes to run first
    subst: dict[int, Value] = {}            # forward value id -> its backward copy
    for n in g.nodes:
        if n.phase != "fwd":
            continue
        r = _recipe(n, level)
        if r is None:
            continue
        v, op, ins, attrs, idx = r
        readers = [u for u in users.get(v.id, []) if u.phase == "bwd"]
        if not readers:
            continue
        shapes = OPS[op].shape([x.shape for x in ins], attrs)
        names = OPS[op].out_names(f"{v.name}.re", len(shapes))
        outs = [Value(tuple(s), dt, nm) for (s, dt), nm in zip(shapes, names)]
        node = Node(op, ins, outs, attrs, "bwd")
        for o in outs:
            o.node = node
        first = min(readers, key=g.nodes.index)
        before.setdefault(first.id, []).append(node)
        subst[v.id] = outs[idx]
    out = g.copy()
    nodes = []
    for n in g.nodes:
        nodes.extend(before.get(n.id, []))
        if n.phase == "bwd" and any(x.id in subst for x in n.inputs):
            n = Node(n.op, [subst.get(x.id, x) for x in n.inputs], n.outputs, n.attrs, n.phase)
        nodes.append(n)
    out.nodes = nodes
    return out
