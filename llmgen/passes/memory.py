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

The classifier in row chunks (plan_memory(chunk_classifier=True), the CUDA target): the logits, a (B*T, Vp) value
the fused softmax + cross-entropy overwrites with dlogits, leave the per-token arena for a buffer of R rows of
their own (`ClassifierChunks`). The program then runs, R rows at a time, logits = x W^T and the cross-entropy
(forward: the losses; backward: the logits again, dlogits in place, dx = dlogits W, dW += dlogits^T x in the
chunks' fixed order; a training micro-step does all of it in the forward's loop, so dx lives from the classifier's
forward on). R: the most rows whose logits fit LOGITS_BUDGET bytes, a multiple of 128 (the last chunk
may be shorter); LLMGEN_CLASSIFIER_ROWS=<rows> at build time sets it (tests force small chunks with it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llmgen.ir.graph import Graph, Value, field_of
from llmgen.ir.ops import OPS
from llmgen.passes.precision import Fp8Cast, Fp8Choice, fp8_casts, fp8_choices, fp8_nodes, storage_dtypes

ALIGN = 16
LOGITS_BUDGET = 256 << 20  # bytes the classifier's chunk of logits may take (a chunk of R rows x Vp)
CHUNK_ROW_MULTIPLE = 128  # R is a multiple of this (full GEMM tiles; the ragged last chunk aside)


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
    fp8: Fp8Plan | None = None  # --dtype fp8: the FP8 GEMMs' buffers (plan_fp8); dtype is then bf16
    classifier: ClassifierChunks | None = None  # the classifier in row chunks (chunk_classifier=True)

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
        } | ({"fp8_weights": self.fp8.weight_bytes, "fp8_meta": self.fp8.meta_bytes} if self.fp8 else {})


@dataclass(frozen=True)
class ClassifierChunks:
    """The classifier (linear -> softmax_xent -> linear_dx, linear_dw) run `rows` rows at a time: its logits
    live in a buffer of min(rows, B*T) x vp elements outside the per-token arena."""

    rows: int  # R: rows per chunk (the last chunk of a micro-batch may be shorter)
    vp: int  # the padded vocabulary (elements per logits row)
    elem_bytes: int  # bytes per logits element (2 in bf16 programs, 4 in fp32)
    linear: int  # node ids: the logits' GEMM, the fused cross-entropy, dX and dW of the classifier
    xent: int
    dx: int
    dw: int
    logits: int  # value ids: the logits and the dlogits written over them
    dlogits: int

    def buffer_bytes(self, tokens: int) -> int:
        """The chunk buffer at B*T = tokens."""
        return min(self.rows, tokens) * self.vp * self.elem_bytes

    def whole_bytes(self, tokens: int) -> int:
        """What the logits took in the arena, unchunked."""
        return tokens * self.vp * self.elem_bytes

    def chunks(self, tokens: int) -> int:
        return -(-tokens // self.rows)


def classifier_rows(vp: int, elem_bytes: int, budget: int = LOGITS_BUDGET) -> int:
    """R: LLMGEN_CLASSIFIER_ROWS if set, else the most rows (a multiple of 128, at least 128) whose logits fit
    `budget` bytes."""
    env = os.environ.get("LLMGEN_CLASSIFIER_ROWS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"LLMGEN_CLASSIFIER_ROWS must be a positive row count (got {env!r})")
        return int(env)
    rows = budget // (vp * elem_bytes) // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE
    return max(rows, CHUNK_ROW_MULTIPLE)


def find_classifier(g: Graph, elem_bytes: int, rows: int | None = None) -> ClassifierChunks | None:
    """The fused classifier (a linear without bias whose only reader is softmax_xent, whose dlogits only the
    classifier's linear_dx and linear_dw read), or None (an unfused graph: no chunks)."""
    producer = {v.id: n for n in g.nodes for v in n.outputs}
    readers: dict[int, list] = {}
    for n in g.nodes:
        for v in n.inputs:
            readers.setdefault(v.id, []).append(n)
    xents = [n for n in g.nodes if n.op == "softmax_xent"]
    if len(xents) != 1:
        return None
    xent = xents[0]
    logits, dlogits = xent.inputs[0], xent.outputs[1]
    lin = producer.get(logits.id)
    if lin is None or lin.op != "linear" or lin.attrs.get("bias") or len(lin.inputs) != 2:
        return None
    if [n.id for n in readers.get(logits.id, [])] != [xent.id]:
        return None
    back = readers.get(dlogits.id, [])
    ops = sorted(n.op for n in back)
    if ops != ["linear_dw", "linear_dx"]:
        return None
    dx = next(n for n in back if n.op == "linear_dx")
    dw = next(n for n in back if n.op == "linear_dw")
    x, w = lin.inputs
    # dW reads x, or with --recompute 2 its copy recomputed in the backward (the same numbers)
    if dx.inputs[1].id != w.id or x.id not in (dw.inputs[1].id, dw.inputs[1].meta.get("recomputes")):
        return None
    # the backward's chunk loop runs at the later of dX and dW (after x's recompute): nothing in between may read dx
    order = [n.id for n in g.nodes]
    lo, hi = sorted((order.index(dx.id), order.index(dw.id)))
    if any(v.id == dx.outputs[0].id for n in g.nodes[lo + 1 : hi] for v in n.inputs):
        return None
    vp = logits.shape[-1]
    rows = classifier_rows(vp, elem_bytes) if rows is None else rows
    return ClassifierChunks(rows, vp, elem_bytes, lin.id, xent.id, dx.id, dw.id, logits.id, dlogits.id)


@dataclass(frozen=True)
class Fp8Buffer:
    """One buffer of the FP8 GEMMs: `bytes` in all (per token for scratch), at `offset` of its arena."""

    name: str  # x8, x8t, W8, W8t, dY8, dY8t, meta, amax
    arena: str  # fp8_weights (W8/W8t of every FP8 weight) | fp8_scratch (per token) | fp8_meta
    offset: int  # bytes into the arena (scratch: per token)
    bytes: int  # bytes (scratch: per token)
    what: str  # shape and lifetime, for `inspect`


@dataclass
class Fp8Plan:
    """The FP8 GEMMs' buffers (--dtype fp8; kernels/fp8.cuh's USE IN A TRAINER).

    fp8_weights: W8 (N, K) and W8t (K, N) E4M3 copies of every FP8 weight, cast once per optimizer step after
    AdamW, laid out layer after layer (`layer_stride` bytes apart, like the parameters).
    fp8_scratch (per token, BT * bytes): x8, the E4M3 input of the forward GEMM; x8t, its transpose, which the
    dW GEMM needs: the backward casts x again with the forward's scale (bit-identical codes), so x8 and x8t
    never live at once and share bytes; dY8 and dY8t (E5M2) live from the dX GEMM to the dW GEMM of one linear.
    fp8_meta: an Fp8Meta (scale, 1/scale, amax, step: 16 bytes) for x, W and dY of every FP8 linear, then the
    amax partials (1024 floats, or more where the GPU runs more blocks of a producer at once: the program sizes
    them at start-up, SMs x blocks per SM; reused by every cast).
    casts: each current-recipe cast and where its amax comes from (precision.fp8_casts: the producing kernel or
    an amax pass).
    """

    choices: list[Fp8Choice]  # every forward linear, FP8 or not, and why
    nodes: set[int]  # ids of the graph nodes (linear, linear_dx, linear_dw) that run in FP8
    weight_offset: dict[int, int] = field(default_factory=dict)  # FP8 weight param id -> W8's byte offset
    layer_stride: int = 0  # bytes from a layer's W8 copies to the next layer's
    weight_bytes: int = 0
    meta_index: dict[int, int] = field(default_factory=dict)  # FP8 weight param id -> its first Fp8Meta (x, W, dY)
    meta_per_layer: int = 0  # Fp8Metas per layer
    metas: int = 0
    scratch_per_token: int = 0
    buffers: list[Fp8Buffer] = field(default_factory=list)
    casts: list[Fp8Cast] = field(default_factory=list)

    AMAX_PARTIALS = 1024  # fp8.cuh's MAX_FLAT_BLOCKS
    META_BYTES = 16

    @property
    def meta_bytes(self) -> int:
        return self.metas * self.META_BYTES + 4 * self.AMAX_PARTIALS


def plan_fp8(g: Graph, choices: list[Fp8Choice] | None = None) -> Fp8Plan:
    """The FP8 buffers of the linears `choices` marks FP8 (precision.fp8_choices by default)."""
    choices = fp8_choices(g) if choices is None else choices
    plan = Fp8Plan(choices, fp8_nodes(g, choices))
    chosen = [c for c in choices if c.fp8]
    if not chosen:
        return plan
    # W8 and W8t of each weight, layer by layer; every layer has the same FP8 linears (blocks repeat)
    per_layer: dict[int, list[Fp8Choice]] = {}
    for c in chosen:
        per_layer.setdefault(c.layer, []).append(c)
    layers = sorted(per_layer)
    one = [(c.N, c.K) for c in per_layer[layers[0]]]
    if any([(c.N, c.K) for c in per_layer[l]] != one for l in layers):
        raise ValueError("--dtype fp8: the blocks' linears differ from layer to layer")
    plan.layer_stride = sum(2 * N * K for N, K in one)
    plan.meta_per_layer = 3 * len(one)
    for l in layers:
        off = l * plan.layer_stride
        for j, c in enumerate(per_layer[l]):
            plan.weight_offset[c.weight.id] = off
            plan.meta_index[c.weight.id] = l * plan.meta_per_layer + 3 * j
            off += 2 * c.N * c.K
    plan.weight_bytes = (layers[-1] + 1) * plan.layer_stride
    plan.metas = (layers[-1] + 1) * plan.meta_per_layer
    kmax, nmax = max(c.K for c in chosen), max(c.N for c in chosen)
    plan.scratch_per_token = kmax + 2 * nmax
    plan.casts = fp8_casts(g, choices)
    n_w = len(chosen)
    plan.buffers = [
        Fp8Buffer("W8", "fp8_weights", 0, plan.weight_bytes // 2, f"E4M3 (out, in) of {n_w} weights, every step"),
        Fp8Buffer("W8t", "fp8_weights", 0, plan.weight_bytes // 2, "E4M3 (in, out), each right after its W8"),
        Fp8Buffer("x8", "fp8_scratch", 0, kmax, "E4M3 (B,T,in): forward GEMM input, cast once per input"),
        Fp8Buffer("x8t", "fp8_scratch", 0, kmax, "E4M3 (in,B*T): dW input, recast in the backward (x8's bytes)"),
        Fp8Buffer("dY8", "fp8_scratch", kmax, nmax, "E5M2 (B,T,out): dX GEMM input"),
        Fp8Buffer("dY8t", "fp8_scratch", kmax + nmax, nmax, "E5M2 (out,B*T): dW GEMM input"),
        Fp8Buffer("meta", "fp8_meta", 0, plan.metas * plan.META_BYTES, f"{plan.metas} Fp8Meta: x, W, dY per linear"),
        Fp8Buffer("amax", "fp8_meta", plan.metas * plan.META_BYTES, 4 * plan.AMAX_PARTIALS, "amax partials (or more)"),
    ]
    return plan


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


def plan_memory(g: Graph, dtype: str = "fp32", chunk_classifier: bool = False) -> MemoryPlan:
    """dtype fp32 | bf16 | fp8 (the bf16 plan and the FP8 GEMMs' buffers, plan.fp8). chunk_classifier: the
    logits leave the arena for the classifier's chunk buffer (plan.classifier; the CUDA target)."""
    fp8 = dtype == "fp8"
    dtype = "bf16" if fp8 else dtype
    plan = MemoryPlan(dtype=dtype, fp8=plan_fp8(g) if fp8 else None)
    if chunk_classifier:
        plan.classifier = find_classifier(g, 2 if dtype == "bf16" else 4)
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
    if plan.classifier is not None:  # the logits (and the dlogits over them) live in the chunk buffer
        for vid in (plan.classifier.logits, plan.classifier.dlogits):
            vals.pop(vid, None)
            alias.pop(vid, None)
        # a training micro-step runs the classifier's backward in the forward's chunk loop: dX lives from there
        at = {n.id: i for i, n in enumerate(g.nodes)}
        dx = next(n for n in g.nodes if n.id == plan.classifier.dx).outputs[0]
        if dx.id in vals:
            start[dx.id] = min(start[dx.id], at[plan.classifier.linear])
        # the chunk loop reads x until its last chunk, after it wrote the first chunk's losses: x lives through the
        # cross-entropy (with --recompute 2 the linear is its last forward reader)
        x = next(n for n in g.nodes if n.id == plan.classifier.linear).inputs[0]
        if x.id in vals:
            end[x.id] = max(end[x.id], at[plan.classifier.xent])
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
