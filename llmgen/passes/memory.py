"""The memory plan: lifetimes -> offsets in one arena per kind.

Params, grads and the two AdamW moments share one layout (the same offset for a parameter in each
arena), so the optimizer walks four arrays in lock step. The graph lists parameters block by block,
so each layer's parameters sit one constant stride after the previous layer's.

Activations get offsets by lifetime: a Value lives from its producer to its last reader over the
fwd+bwd schedule, and Values whose lifetimes don't overlap share bytes. An op's `inplace` hint lets
an output take its input's bytes when that input dies there (dlogits over logits).

The plan is layer-periodic, so the program can loop over the layers: the instances of one block
value in every layer (h0.qkv, h1.qkv, ...: one *field*, "qkv") are placed together. A field whose
instances are never alive at the same time is *shared*: one buffer every layer reuses (llm.c's
scratch buffers; a backward temporary such as dqkv). A field whose instances overlap (what the
backward reads of the forward: ln1, qkv, atty, ...) is an *array*: layer l's instance at
base + l * size, llm.c's (L, B, T, ...) activations. Fields and the values outside the blocks are
then packed greedily, largest first, each at the lowest offset free during all of its lifetimes.
Offsets are in elements (4 bytes each in fp32 programs; bf16 elements in bf16 programs, where an
fp32 value takes two), aligned to 16 elements (64 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgen.ir.graph import Graph, Value, field_of
from llmgen.ir.ops import OPS
from llmgen.passes.precision import storage_dtypes

ALIGN = 16


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Placement:
    """Where one activation field lives: `offset + layer * stride` elements per token (stride 0: one
    buffer shared by every layer, or a value outside the blocks)."""

    kind: str  # global (outside the blocks) | shared | array
    offset: int
    stride: int = 0
    size: int = 0  # elements per token of one instance


@dataclass
class MemoryPlan:
    param_offset: dict[int, int] = field(default_factory=dict)  # param id -> element offset
    param_elems: int = 0
    act_offset: dict[int, int] = field(default_factory=dict)  # value id -> element offset
    act_elems: int = 0  # the activation arena's peak
    act_values: list[Value] = field(default_factory=list)  # planned activations, in order
    unplanned_elems: int = 0  # sum of sizes without sharing
    alias: dict[int, int] = field(default_factory=dict)  # in-place value id -> the value it overwrites
    dtype: str = "fp32"  # activation element: fp32 or bf16
    fields: dict[str, Placement] = field(default_factory=dict)  # field key (layer_key) -> its placement

    def bytes(self) -> dict[str, int]:
        """Bytes per arena. fp32: 4 per element everywhere. bf16 (the CUDA target's mixed precision):
        params are bf16 weights plus fp32 master weights (2 + 4), grads and AdamW moments fp32, and
        the activation arena counts bf16 elements (fp32 values take two)."""
        n = self.param_elems
        act = 2 if self.dtype == "bf16" else 4
        return {
            "params": n * (6 if self.dtype == "bf16" else 4),
            "grads": 4 * n,
            "optimizer_state": 8 * n,
            "activations": self.act_elems * act,
            "activations_unshared": self.unplanned_elems * act,
        }


def layer_key(v: Value) -> str:
    """The field a value belongs to: "<field>@l" for a block value ("qkv@l"), its name outside the blocks."""
    return f"{field_of(v)}@l" if v.layer is not None else v.name


def _lifetimes(g: Graph, units: dict[int, int], no_alias: set[str]):
    """Values to place (start, end: node indices, the end covering readers of values sharing their bytes)
    and the in-place aliases (value id -> root id), never for a value whose field is in `no_alias`."""
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    vals: dict[int, Value] = {}
    alias: dict[int, int] = {}  # value id -> the value whose bytes it takes
    last_read: dict[int, int] = {}  # value id -> index of the last node reading it
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last_read[v.id] = i
    root_last: dict[int, int] = {}  # root id -> last read of the root or any value sharing its bytes
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
            if src is not None and layer_key(v) not in no_alias:
                root = alias.get(src.id, src.id)
                if (
                    root in start
                    and end[root] == i
                    and root_last.get(root, -1) <= i
                    and src.numel == v.numel
                    and units.get(src.id, 1) == units.get(v.id, 1)
                ):
                    alias[v.id] = root
                    root_last[root] = max(root_last[root], last_read.get(v.id, i))
                    continue
            start[v.id] = end[v.id] = i
            vals[v.id] = v
            root_last[v.id] = last_read.get(v.id, i)
    return vals, start, end, alias


def _inconsistent_aliases(vals: dict[int, Value], alias: dict[int, int], every: dict[str, list[Value]]) -> set[str]:
    """Fields whose instances do not all take the bytes of the same field in the same relative layer."""
    how: dict[str, set] = {}
    aliased = {v.id: v for vs in every.values() for v in vs if v.id in alias}
    for vid, v in aliased.items():
        r = vals[alias[vid]]
        shift = None if v.layer is None or r.layer is None else r.layer - v.layer
        how.setdefault(layer_key(v), set()).add((layer_key(r), shift, v.layer is None, r.layer is None))
    return {key for key, kinds in how.items() if len(kinds) != 1 or any(v.id not in alias for v in every[key])}


def plan_memory(g: Graph, dtype: str = "fp32") -> MemoryPlan:
    plan = MemoryPlan(dtype=dtype)
    stored = storage_dtypes(g, dtype)
    units = {vid: 2 if dtype == "bf16" and dt == "f32" else 1 for vid, dt in stored.items()}
    off = 0
    for p in g.params:
        plan.param_offset[p.id] = off
        off += _align(p.numel)
    plan.param_elems = off

    # lifetimes (scalars are program locals, never in the arena); in-place aliases only where every
    # instance of a field takes the bytes of the same field, so that layers stay alike
    no_alias: set[str] = set()
    while True:
        vals, start, end, alias = _lifetimes(g, units, no_alias)
        every: dict[str, list[Value]] = {}
        for v in list(vals.values()) + [x for n in g.nodes for x in n.outputs if x.id in alias]:
            every.setdefault(layer_key(v), []).append(v)
        bad = _inconsistent_aliases(vals, alias, every) - no_alias
        if not bad:
            break
        no_alias |= bad
    plan.act_values = list(vals.values())
    size_of = {vid: _align(v.numel * units.get(vid, 1)) for vid, v in vals.items()}
    plan.unplanned_elems = sum(size_of.values())

    # the items to pack: a value outside the blocks, or a field (its instances in every layer)
    groups: dict[str, list[Value]] = {}
    for v in vals.values():
        groups.setdefault(layer_key(v), []).append(v)
    items = []  # (key, kind, instance size, span, rects: (offset in the item, start, end))
    for key, vs in groups.items():
        sizes = {size_of[v.id] for v in vs}
        if vs[0].layer is not None and len(sizes) == 1:
            size = sizes.pop()
            lives = sorted((start[v.id], end[v.id]) for v in vs)
            if all(a[1] < b[0] for a, b in zip(lives, lives[1:])):  # never two layers' at once: shared
                items.append((key, "shared", size, size, [(0, s, e) for s, e in lives]))
            else:  # one slot per layer
                items.append(
                    (
                        key,
                        "array",
                        size,
                        (max(v.layer for v in vs) + 1) * size,
                        sorted((v.layer * size, start[v.id], end[v.id]) for v in vs),
                    )
                )
        else:  # outside the blocks (or layers of different sizes): one buffer per value
            for v in vs:
                items.append((v.name, "global", size_of[v.id], size_of[v.id], [(0, start[v.id], end[v.id])]))

    # largest first, each at the lowest offset where none of its rectangles (bytes x lifetime) meets a
    # placed one: an array's slot is free again once its layer's instance is dead
    placed: list[tuple[int, int, int, int]] = []  # (first element, last element + 1, start, end)
    for key, kind, size, span, rects in sorted(items, key=lambda it: (-it[3], min(r[1] for r in it[4]))):
        banned = []  # offsets where a rectangle of ours would meet a placed one
        for off, s, e in rects:
            banned += [(lo - off - size, hi - off) for lo, hi, s2, e2 in placed if not (e2 < s or e < s2)]
        offset = 0
        for lo, hi in sorted(banned):  # the lowest offset in none of the open intervals
            if offset <= lo:
                break
            offset = max(offset, hi)
        placed += [(offset + off, offset + off + size, s, e) for off, s, e in rects]
        plan.fields[key] = Placement(kind, offset, size if kind == "array" else 0, size)
        plan.act_elems = max(plan.act_elems, offset + span)
    for v in vals.values():
        p = plan.fields[layer_key(v)] if layer_key(v) in plan.fields else plan.fields[v.name]
        plan.act_offset[v.id] = p.offset + (v.layer or 0) * p.stride
    for vid, root in alias.items():
        plan.act_offset[vid] = plan.act_offset[root]
    plan.alias = dict(alias)
    return plan
