"""The memory plan: lifetimes -> offsets in one arena per kind.

Params, grads and the two AdamW moments share one layout (the same offset for a
parameter in each arena), so the optimizer walks four arrays in lock step. Activations
get offsets by lifetime: a Value lives from its producer to its last reader over the
fwd+bwd schedule, and Values whose lifetimes don't overlap share bytes (greedy by size,
largest first, lowest offset that fits). An op's `inplace` hint lets an output take its
input's bytes when that input dies there (dlogits over logits). Offsets are in elements
(every tensor is 4 bytes per element today), aligned to 16 elements (64 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgen.ir.graph import Graph, Value
from llmgen.ir.ops import OPS
from llmgen.passes.precision import storage_dtypes

ALIGN = 16


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class MemoryPlan:
    param_offset: dict[int, int] = field(default_factory=dict)   # param id -> element offset
    param_elems: int = 0
    act_offset: dict[int, int] = field(default_factory=dict)     # value id -> element offset
    act_elems: int = 0                                            # the activation arena's peak
    act_values: list[Value] = field(default_factory=list)         # planned activations, in order
    unplanned_elems: int = 0                                      # sum of sizes without sharing
    alias: dict[int, int] = field(default_factory=dict)           # in-place value id -> the value it overwrites
    dtype: str = "fp32"                                           # activation element: fp32 or bf16

    def bytes(self) -> dict[str, int]:
        """Bytes per arena. fp32: 4 per element everywhere. bf16 (the CUDA target's mixed precision):
        params are bf16 weights plus fp32 master weights (2 + 4), grads and AdamW moments fp32, and
        the activation arena counts bf16 elements (fp32 values take two)."""
        n = self.param_elems
        act = 2 if self.dtype == "bf16" else 4
        return {"params": n * (6 if self.dtype == "bf16" else 4), "grads": 4 * n, "optimizer_state": 8 * n,
                "activations": self.act_elems * act, "activations_unshared": self.unplanned_elems * act}


def plan_memory(g: Graph, dtype: str = "fp32") -> MemoryPlan:
    plan = MemoryPlan(dtype=dtype)
    stored = storage_dtypes(g, dtype)
    units = {vid: 2 if dtype == "bf16" and dt == "f32" else 1 for vid, dt in stored.items()}
    off = 0
    for p in g.params:
        plan.param_offset[p.id] = off
        off += _align(p.numel)
    plan.param_elems = off

    # lifetimes of activations (scalars are program locals, never in the arena)
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    vals: dict[int, Value] = {}
    alias: dict[int, int] = {}          # value id -> the value whose bytes it takes
    last_read: dict[int, int] = {}      # value id -> index of the last node reading it
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last_read[v.id] = i
    root_last: dict[int, int] = {}      # root id -> last read of the root or any value sharing its bytes
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            root = alias.get(v.id, v.id)
            if root in start:
                end[root] = max(end[root], i)
        for j, v in enumerate(n.outputs):
            if v.role != "act" or v.shape == () or "updates" in v.meta:
                continue
            hint = dict(OPS[n.op].inplace).get(j)
            src = n.inputs[hint] if hint is not None else None
            # in place only where the input dies here: no node after this one reads it (or its bytes)
            if src is not None and alias.get(src.id, src.id) in start and end[alias.get(src.id, src.id)] == i \
                    and root_last.get(alias.get(src.id, src.id), -1) <= i and src.numel == v.numel:
                root = alias.get(src.id, src.id)
                alias[v.id] = root
                root_last[root] = max(root_last[root], last_read.get(v.id, i))
                continue
            start[v.id] = end[v.id] = i
            vals[v.id] = v
            root_last[v.id] = last_read.get(v.id, i)
    plan.act_values = list(vals.values())
    size_of = {vid: _align(v.numel * units.get(vid, 1)) for vid, v in vals.items()}
    plan.unplanned_elems = sum(size_of.values())

    placed: list[tuple[int, int, int, int]] = []          # (offset, size, start, end)
    for v in sorted(vals.values(), key=lambda v: (-v.numel * units.get(v.id, 1), start[v.id])):
        size, s, e = size_of[v.id], start[v.id], end[v.id]
        clashes = sorted((o, o + sz) for o, sz, s2, e2 in placed if not (e2 < s or e < s2))
        offset = 0
        for lo, hi in clashes:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        placed.append((offset, size, s, e))
        plan.act_offset[v.id] = offset
        plan.act_elems = max(plan.act_elems, offset + size)
    for vid, root in alias.items():
        plan.act_offset[vid] = plan.act_offset[root]
    plan.alias = dict(alias)
    return plan
