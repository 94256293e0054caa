"""Reverse-mode autodiff over the IR: walk the forward nodes backwards, apply each op's vjp.

Gradients reaching one Value from several consumers are summed with `add` nodes; the
final gradient of each parameter is marked (role=grad, grad_of=param) so the memory
planner puts it in the grads arena, where kernels accumulate (+=) across micro-batches.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph, Value
from llmgen.ir.ops import OPS


def backward(g: Graph, loss: Value) -> Graph:
    """Append the backward nodes of `loss` (a scalar) to g; g.grads maps param id -> grad."""
    g.phase = "bwd"
    dloss = g.input("dloss", ())                 # 1/grad_accum_steps at runtime
    grads: dict[int, Value] = {loss.id: dloss}
    for node in reversed([n for n in g.nodes if n.phase == "fwd"]):
        douts = [grads.get(v.id) for v in node.outputs]
        if all(d is None for d in douts):
            continue
        vjp = OPS[node.op].vjp
        if vjp is None:
            raise NotImplementedError(f"op {node.op} has no derivative rule")
        for inp, d in zip(node.inputs, vjp(g, node, douts)):
            if d is None or inp.role == "input":
                continue
            if inp.id in grads:
                d = g.op("add", [grads[inp.id], d], name=f"d{inp.name}.sum")
            grads[inp.id] = d
    for p in g.params:
        if p.id not in grads:
            raise ValueError(f"parameter {p.name} does not reach the loss")
        gv = grads[p.id]
        gv.role, gv.grad_of = "grad", p
        g.grads[p.id] = gv
    return g
