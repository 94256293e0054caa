"""Reverse-mode autodiff over the IR: walk the forward nodes backwards, apply each op's vjp.

Gradients reaching one Value from several consumers are summed with `add` nodes; the
final gradient of each parameter is marked (role=grad, grad_of=param) so the memory
planner puts it in the grads arena, where kernels accumulate (+=) across micro-batches.

Names: the gradient of x is d<x> in x's layer ("h3.qkv" -> "h3.dqkv"; llmgen.ir.graph.grad_name).
Where several consumers contribute, the sum is d<x> and each contribution made for x alone is
named after its consumer (Llama's "l3.dattn_norm_q", "_k", "_v"; a running sum of the first ones
"l3.dattn_norm_vk"). Backward nodes carry the layer of the forward node they differentiate.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph, Value, field_of, grad_name
from llmgen.ir.ops import OPS


def backward(g: Graph, loss: Value) -> Graph:
    """Append the backward nodes of `loss` (a scalar) to g; g.grads maps param id -> grad."""
    g.phase = "bwd"
    dloss = g.input("dloss", ())  # 1/grad_accum_steps at runtime
    grads: dict[int, Value] = {loss.id: dloss}
    parts: dict[int, list[str]] = {}  # value id -> the consumers whose contributions it got so far
    for node in reversed([n for n in g.nodes if n.phase == "fwd"]):
        douts = [grads.get(v.id) for v in node.outputs]
        if all(d is None for d in douts):
            continue
        vjp = OPS[node.op].vjp
        if vjp is None:
            raise NotImplementedError(f"op {node.op} has no derivative rule")
        g.layer = node.layer
        consumer = field_of(node.outputs[0]) if node.outputs else node.op
        for inp, d in zip(node.inputs, vjp(g, node, douts)):
            if d is None or inp.role == "input":
                continue
            seen = parts.setdefault(inp.id, [])
            if inp.id in grads:
                full, prev = grad_name(inp), grads[inp.id]
                if prev.name == full:  # made for inp alone (or the running sum): named by consumers
                    prev.name = f"{full}_{''.join(seen)}"
                if d.name == full:
                    d.name = f"{full}_{consumer}"
                d = g.op("add", [prev, d], name=full)
            seen.append(consumer)
            grads[inp.id] = d
    g.layer = None
    for p in g.params:
        if p.id not in grads:
            raise ValueError(f"parameter {p.name} does not reach the loss")
        gv = grads[p.id]
        gv.role, gv.grad_of = "grad", p
        g.grads[p.id] = gv
    return g
