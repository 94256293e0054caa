"""The numpy interpreter: runs a graph with each op's numpy reference.

It is the definition every pass and every target is checked against. Two rules model
what the emitted programs do with memory:
  * a Value with role=grad is the parameter's gradient buffer: writing it accumulates (+=),
    reading it reads the accumulated sum, so several producers may share one gradient;
  * a Value with meta["updates"] (optimizer outputs) replaces the param/state it updates.
"""

from __future__ import annotations

import numpy as np

from llmgen.ir.graph import Graph
from llmgen.ir.ops import OPS


class State:
    """Parameters, optimizer moments and accumulated gradients, keyed by Value name."""

    def __init__(self, g: Graph, params: dict[str, np.ndarray]):
        self.params = {p.name: np.asarray(params[p.name], np.float32).copy() for p in g.params}
        self.state = {s.name: np.zeros(s.shape, np.float32) for s in g.state}
        self.grads = {p.name: np.zeros(p.shape, np.float32) for p in g.params}

    def zero_grads(self):
        for a in self.grads.values():
            a[...] = 0


def run(g: Graph, st: State, feeds: dict[str, np.ndarray], phases=("fwd", "bwd")) -> dict[str, np.ndarray]:
    """Run the nodes of `phases` in order; returns every computed Value by name."""
    env: dict[int, np.ndarray] = {}
    for name, v in g.inputs.items():
        if name in feeds:
            env[v.id] = np.asarray(feeds[name], np.int32 if v.dtype == "i32" else np.float32)
    for p in g.params:
        env[p.id] = st.params[p.name]
    for s in g.state:
        env[s.id] = st.state[s.name]

    def read(v):
        if v.role == "grad":
            return st.grads[v.grad_of.name]
        if v.id not in env:
            raise KeyError(f"value {v.name} is read before it is computed (missing feed?)")
        return env[v.id]

    named: dict[str, np.ndarray] = {}
    for node in g.nodes:
        if node.phase not in phases:
            continue
        outs = OPS[node.op].ref([read(v) for v in node.inputs], node.attrs)
        assert len(outs) == len(node.outputs), f"{node.op}: ref returned {len(outs)} outputs"
        for v, a in zip(node.outputs, outs):
            a = np.asarray(a)
            assert a.shape == v.shape, f"{node.op} {v.name}: ref shape {a.shape} != {v.shape}"
            if v.role == "grad":
                st.grads[v.grad_of.name] += a
            elif "updates" in v.meta:
                target = v.meta["updates"]
                (st.params if target.role == "param" else st.state)[target.name][...] = a
            else:
                env[v.id] = a
            named[v.name] = a
    return named
