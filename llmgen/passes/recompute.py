"""Activation recompute (llm.c's -r): trade a little backward work for activation memory.

level 0  keep every forward activation the backward reads (no change)
level 1  the GELU outputs (B,T,4C) are recomputed from the pre-activations in the backward
         (Llama: the SwiGLU outputs (B,T,F) from gate and up)
level 2  as 1, and the layernorm outputs (B,T,C) are recomputed from the residual stream
         (Llama: the RMSNorm outputs)

The backward's readers of such a Value read a copy that a new backward node recomputes
right before the first of them, so the forward's Value dies at its last forward reader and
the memory planner lets later buffers reuse its bytes. The recomputing node is the same
op as the forward one (gelu, layernorm), so the interpreter's results do not change. Which
output of which op is recomputed, at which level and how, is the op's `recompute` rule in the
op table (llmgen/ir/ops.py); this pass runs last in the PIPELINE.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph, Node, Value
from llmgen.ir.ops import OPS

LEVELS = (0, 1, 2)


def recompute_activations(g: Graph, level: int = 0) -> Graph:
    """The recompute pass: each forward node whose op row has a recompute rule at or below `level`
    gets its output recomputed right before its first backward reader (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"recompute level must be one of {LEVELS}, got {level}")
    if level == 0:
        return g
    users = g.consumers()
    before: dict[int, list[Node]] = {}  # backward node id -> recompute nodes to run first
    subst: dict[int, Value] = {}  # forward value id -> its backward copy
    for n in g.nodes:
        rule = OPS[n.op].recompute
        if n.phase != "fwd" or rule is None or level < rule.level:
            continue
        recipe = rule.recipe(n)
        if recipe is None:
            continue
        index, op, ins, attrs = recipe
        v = n.outputs[index]
        readers = [u for u in users.get(v.id, []) if u.phase == "bwd"]
        if not readers:
            continue
        node = Node(op, ins, [], attrs, "bwd", n.layer)
        node.outputs = OPS[op].new_outputs(node, f"{v.name}_re")  # "h3.fch_gelu_re"
        for o in node.outputs:
            o.layer = v.layer
        node.outputs[0].meta["recomputes"] = v.id  # the same numbers as v (passes/memory.py's find_classifier)
        first = min(readers, key=g.nodes.index)
        before.setdefault(first.id, []).append(node)
        subst[v.id] = node.outputs[0]
    out = g.copy()
    nodes = []
    for n in g.nodes:
        nodes.extend(before.get(n.id, []))
        if n.phase == "bwd" and any(x.id in subst for x in n.inputs):
            n = Node(n.op, [subst.get(x.id, x) for x in n.inputs], n.outputs, n.attrs, n.phase, n.layer)
        nodes.append(n)
    out.nodes = nodes
    return out
