"""Lowering: the scheduled, planned graph -> typed template contexts (target-independent).

Python decides everything here (kernel instances, their compile-time dimensions, flags and
constants, argument lists, buffer names and offsets); the templates only substitute and loop.
What each op contributes (dims, consts, flags, launch args, FLOPs) is its row in the op table
(llmgen/ir/ops.py); the target modules (codegen/c.py, codegen/cuda.py) then add their launch
choices (tiles, block sizes) to each kernel's `cfg`.
The batch shape (B, T) stays a runtime value of the emitted program: the graph is built
at B = T = 1, so every activation size in the plan is "per token" and the program carves
the arena at `BT * offset`. Every other size is a literal constant in the kernels.
"""

from __future__ import annotations

import json
import re
from itertools import zip_longest
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from llmgen.codegen.text import WIDTH, wrap, wrap_comment
from llmgen.flags import c_options, c_rows, usage_lines
from llmgen.ir.graph import Graph, Value, field_of
from llmgen.ir.ops import OPS
from llmgen.passes.memory import MemoryPlan, layer_key, plan_memory
from llmgen.passes.precision import fp8_weight_of, storage_dtypes

# the graph's interface values -> the program's variables: scalars, and what the trainer passes in
SCALARS = {("outputs", "loss"): "s_loss", ("inputs", "dloss"): "s_dloss", ("outputs", "grad_norm"): "s_grad_norm"}
RUNTIME = {"tokens": "inputs", "targets": "targets", "lr": "lr", "t": "step", "weight_decay": "weight_decay"}
ARENAS = {"params": "params_mem", "grads": "grads_mem", "m": "m_mem", "v": "v_mem"}


@dataclass
class Kernel:
    """One emitted function: an op specialised to its constant dimensions, flags and constants."""

    op: str
    family: str  # the op table's kernel family
    name: str
    comment: str
    dims: dict[str, int | str]
    flags: dict[str, bool]
    consts: dict[str, object] = field(default_factory=dict)  # from the op table: eps, scale, table, segments, ...
    cfg: dict[str, int] = field(default_factory=dict)  # the target's launch choices (tile sizes, ...)
    template: str = ""  # the target's family template that defines the macro `op` (set by the target)


# A layer index inside a launch argument ("LA[@3@].qkv") or a comment ("h#3#.qkv"): the flat
# schedule names layers by number, a loop over the layers renders them relative to its variable l.
LAYER_MARK = re.compile(r"([@#])(-?\d+)\1")


def mark(layer: int, kind: str = "@") -> str:
    return f"{kind}{layer}{kind}"


def render_layers(text: str, base: int | None = None) -> str:
    """Layer marks -> C: the number itself (base None), or in a loop whose iteration at hand is layer `base`,
    `l`, `l + 1`, `l - 1` (arguments) and `[l]`, `[l+1]` (comments: "h[l+1].ln1")."""

    def sub(m):
        k = int(m.group(2))
        if base is None:
            return str(k)
        d = k - base
        if m.group(1) == "#":
            return "[l]" if d == 0 else f"[l{d:+d}]"
        return "l" if d == 0 else f"l + {d}" if d > 0 else f"l - {-d}"

    return LAYER_MARK.sub(sub, text)


def shift_layers(text: str, by: int) -> str:
    return LAYER_MARK.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + by}{m.group(1)}", text)


@dataclass
class Launch:
    """One call of the schedule: a kernel instance (its launcher on CUDA) with its arguments. Arguments and
    comment carry layer marks; `node_layer` is the layer of the graph node it computes."""

    fn: str
    args: list[str]
    comment: str
    needs_targets: bool = False
    node_layer: int | None = None
    # the statement the target writes for this kernel, $0, $1, ... standing for the arguments (the C target: its
    # body called with literal sizes, see codegen/c.py's bind_calls); empty: a call of the function `fn`
    call: str = ""

    def key(self) -> tuple:
        return (self.fn, tuple(self.args), self.comment, self.needs_targets)

    def shifted(self, by: int) -> Launch:
        return Launch(
            self.fn,
            [shift_layers(a, by) for a in self.args],
            shift_layers(self.comment, by),
            self.needs_targets,
            None if self.node_layer is None else self.node_layer + by,
            self.call,
        )

    def statement(self, base: int | None = None) -> str:
        """The call (with its `if (targets)` guard) in a loop whose iteration at hand is layer `base`, or with
        every layer as a number (base None, what the unrolled schedule runs); see render_layers."""
        guard = "if (targets) " if self.needs_targets else ""
        args = [render_layers(a, base) for a in self.args]
        if not self.call:
            return f"{guard}{self.fn}({', '.join(args)});"
        # `*&x` (a scalar's value where the graph passes its address) reads as x
        return guard + re.sub(r"\*&(?=\w)", "", re.sub(r"\$(\d+)", lambda m: args[int(m.group(1))], self.call)) + ";"

    def flat(self) -> str:
        """The call with every layer as a number (what the unrolled schedule runs)."""
        return self.statement()

    def lines(self, indent: int, base: int | None = None) -> list[str]:
        """The comment and the call, wrapped to WIDTH columns, at `indent` spaces; base: see render_layers."""
        pad = " " * indent
        call = f"{pad}{self.statement(base)}"
        outs, lines = render_layers(self.comment, base).partition(": ")[2], wrap(call)
        if len(f"{lines[-1]}  /* {outs} */") <= WIDTH:  # the outputs after the call (the kernel names the op)
            return lines[:-1] + [f"{lines[-1]}  /* {outs} */"]
        return wrap_comment(render_layers(self.comment, base), pad) + lines


@dataclass
class Loop:
    """Launches repeated once per layer: `for (int l = first; ...; l += step)` over `count` layers; `body` is
    the first iteration's launches (layer `first`). One iteration, layer `edge_layer` (the first block, which
    reads the embedding), may differ: `edge` holds its own launch where it does (None where it is the body's),
    rendered as a conditional argument (`l == 0 ? A.encoded : LA[l - 1].residual3`) where only arguments
    differ and as `if (l == 0) ...; else ...;` where the kernel does."""

    first: int
    count: int
    step: int  # +1 (forward) or -1 (backward)
    body: list[Launch]
    n_layer: int
    edge_layer: int | None = None
    edge: list[Launch | None] = field(default_factory=list)

    def _bound(self, x: int) -> str:
        return (
            "N_LAYER" if x == self.n_layer else f"N_LAYER - {self.n_layer - x}" if 0 < self.n_layer - x <= 2 else str(x)
        )

    @property
    def header(self) -> str:
        last = self.first + self.step * (self.count - 1)
        if self.step > 0:
            return f"for (int l = {self._bound(self.first)}; l < {self._bound(last + 1)}; l++)"
        return f"for (int l = {self._bound(self.first)}; l >= {self._bound(last)}; l--)"

    def expand(self) -> list[Launch]:
        edge = self.edge or [None] * len(self.body)
        return [
            e if e is not None and self.first + self.step * j == self.edge_layer else b.shifted(self.step * j)
            for j in range(self.count)
            for b, e in zip(self.body, edge)
        ]

    def lines(self, indent: int) -> list[str]:
        """The loop as C: its header, each body launch (merged with the edge iteration's), its closing brace."""
        pad, out = " " * (indent + 4), [" " * indent + self.header + " {"]
        at = self._bound(self.edge_layer) if self.edge else ""
        for b, e in zip(self.body, self.edge or [None] * len(self.body)):
            if e is None:
                out += b.lines(indent + 4, self.first)
            elif e.fn == b.fn and len(e.args) == len(b.args):
                # the same kernel: an argument that differs at the edge layer is chosen by `l`, and a value
                # the comment names differently is named for both
                here = b.shifted(self.edge_layer - self.first)  # the body at the edge layer, to compare
                args = [
                    a if render_layers(x) == render_layers(y) else f"l == {at} ? {render_layers(x)} : {a}"
                    for x, y, a in zip(e.args, here.args, b.args)
                ]
                op, _, outs = b.comment.partition(": ")
                # an output the edge's node lacks (its argument NULL there) is marked "none" at the edge
                items = [
                    y if render_layers(x) == render_layers(z) else f"{y} (l = {at}: {render_layers(x)})"
                    for x, y, z in zip_longest(
                        e.comment.partition(": ")[2].split(", "),
                        outs.split(", "),
                        here.comment.partition(": ")[2].split(", "),
                        fillvalue="none",
                    )
                ]
                merged = Launch(b.fn, args, f"{op}: {', '.join(items)}", b.needs_targets, call=b.call)
                out += merged.lines(indent + 4, self.first)
            else:
                # another kernel at the edge layer (the first block's norm has no residual to add)
                edge, rest = render_layers(e.comment), render_layers(b.comment, self.first)
                out += wrap_comment(f"at l = {at} {edge}, else {rest}", pad)
                out += wrap(f"{pad}if (l == {at}) {e.flat()}") + wrap(f"{pad}else {b.statement(self.first)}")
        return out + [" " * indent + "}"]


def merge_edge(loop: Loop, edge: list[Launch], layer: int) -> Loop | None:
    """`loop` extended by one iteration, layer `layer` just before or after it, whose launches are `edge`,
    where that iteration is mostly the body's (more launches equal than not, no `if (targets)` among those that
    differ); None where it is not."""
    if len(edge) != len(loop.body) or layer < 0 or layer >= loop.n_layer:
        return None
    body = [b.shifted(layer - loop.first) for b in loop.body]
    same = [e.key()[:2] == b.key()[:2] and e.needs_targets == b.needs_targets for e, b in zip(edge, body)]
    if 2 * sum(same) <= len(same) or any(
        e.needs_targets or b.needs_targets for e, b, s in zip(edge, body, same) if not s
    ):
        return None
    before = (layer - loop.first) * loop.step < 0
    return Loop(
        layer if before else loop.first,
        loop.count + 1,
        loop.step,
        body if before else loop.body,
        loop.n_layer,
        layer,
        [None if s else e for e, s in zip(edge, same)],
    )


def find_loop(launches: list[Launch], step: int, min_count: int = 2) -> tuple[int, int, int] | None:
    """The longest run of launches that repeats once per layer: (start, period, count) such that launch
    i + period is launch i with every layer moved by `step`, for `count` periods from `start`. Of the runs
    covering the most launches, one that starts where a layer's launches start (llm.c's loop body: a
    whole block), else the earliest. None when nothing repeats `min_count` times."""
    n, best, best_key = len(launches), None, None
    keys = [x.key() for x in launches]
    shifted = [x.shifted(step).key() for x in launches]
    for period in range(1, n // min_count + 1):
        run = [0] * (n + 1)  # run[k]: how many launches from k on repeat `period` launches later
        for k in range(n - period - 1, -1, -1):
            run[k] = run[k + 1] + 1 if shifted[k] == keys[k + period] else 0
        for i in range(n - period):
            count = run[i] // period + 1
            if count < min_count:
                continue
            boundary = i == 0 or launches[i].node_layer != launches[i - 1].node_layer
            key = (count * period, boundary, -i)
            if best_key is None or key > best_key:
                best, best_key = (i, period, count), key
    return best


def loop_schedule(launches: list[Launch], step: int, n_layer: int) -> list[Launch | Loop]:
    """The phase's launches with its per-layer run as a Loop: prologue launches, the loop, epilogue."""
    found = find_loop(launches, step)
    if found is None:
        return list(launches)
    start, period, count = found
    body = launches[start : start + period]
    first = body[0].node_layer
    if first is None:  # no node layer: the layers its arguments name, lowest first
        marks = [int(m.group(2)) for b in body for a in b.args for m in LAYER_MARK.finditer(a)]
        if not marks:
            return list(launches)
        first = min(marks) if step > 0 else max(marks)
    loop, end = Loop(first, count, step, body, n_layer), start + period * count
    merged = merge_edge(loop, launches[start - period : start], first - step) if start >= period else None
    if merged is not None:
        return [*launches[: start - period], merged, *launches[end:]]
    merged = merge_edge(loop, launches[end : end + period], first + step * count)
    if merged is not None:
        return [*launches[:start], merged, *launches[end + period :]]
    return [*launches[:start], loop, *launches[end:]]


def expand_schedule(blocks: list[Launch | Loop]) -> list[Launch]:
    """The flat launch list a schedule with loops runs (the inverse of loop_schedule)."""
    return [x for b in blocks for x in (b.expand() if isinstance(b, Loop) else [b])]


@dataclass
class ParamRow:
    name: str  # graph name, e.g. h0.attn.c_attn.w
    cname: str  # C field name (of the global table P, or of the per-layer table LP[l])
    hf: str  # Hugging Face tensor name
    offset: int  # elements into the params / grads / moments arenas
    numel: int
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    transpose: bool  # HF Conv1D stores (in, out): transpose on load/save
    hf_rows: int  # rows present in the checkpoint (wte: the real vocabulary)
    decay: bool  # AdamW weight decay applies (2-D weights)
    init: str  # normal | ones | zeros
    std: float
    layer: int | None = None  # the block it belongs to (None: outside the blocks, or no periodic layout)
    # llm.c's GPT-2 model file (-e model.bin), GPT-2 only (llmgen.llmc.tensor_places): where the tensor
    # starts in the file's parameters, how many of its rows are read (wte: the real vocabulary), and
    # whether llm.c stores it as the transpose of our layout (never for GPT-2: both keep (out, in))
    llmc_offset: int = -1
    llmc_rows: int = 0
    llmc_transpose: bool = False
    llmc_stride: int = 0  # a layer row: elements between layer l's and layer l+1's tensor in the file

    @property
    def table(self) -> str:
        return "P" if self.layer is None else "LP"

    def c_row(self) -> list[str]:
        """The row of the program's PARAM_ROWS: one line, or two where one would pass WIDTH columns. The
        element count and the checkpoint's shape are left for param_table_init to derive."""
        rows, cols = self.shape[0], self.shape[1] if len(self.shape) > 1 else 1
        derived = ((cols, rows) if self.transpose else (self.hf_rows, cols))[: len(self.hf_shape)]
        if self.numel != rows * cols or tuple(self.hf_shape) != derived:
            raise AssertionError(
                f"{self.name}: numel {self.numel} or checkpoint shape {self.hf_shape} is not what "
                "the program derives from its shape, transpose and hf_rows"
            )
        init = {"normal": "n", "ones": "1", "zeros": "0"}[self.init]
        # the shortest decimal that reads back as the float32 the trainer multiplies by (numpy's str)
        std = f"{str(np.float32(self.std))}f" if self.std else "0"
        head = f'    {{"{self.pattern(self.name)}", "{self.pattern(self.hf)}", {self.offset}, {len(self.shape)},'
        tail = f" {{{rows}, {cols}}}, {int(self.transpose)}, {self.hf_rows}, {int(self.decay)}, '{init}', {std}}},"
        return [head + tail] if len(head + tail) <= WIDTH else [head, "     " + tail]

    def pattern(self, text: str) -> str:
        """A layer row's name with its layer as %d ("h%d.ln_1.w"), for the table the program expands."""
        return text if self.layer is None else _layer_pattern(text, self.layer)


def _layer_pattern(text: str, layer: int) -> str:
    """`text` with the layer number of its one layer component ("3" in "transformer.h.3.ln_1.weight", or the
    first component "h3" of "h3.ln_1.w") as %d; ValueError where there is not exactly one."""
    parts = text.split(".")
    hits = [i for i, c in enumerate(parts) if c == str(layer) or (i == 0 and re.fullmatch(rf"[A-Za-z]+{layer}", c))]
    if len(hits) != 1:
        raise ValueError(f"{text}: layer {layer} is not named once")
    parts[hits[0]] = parts[hits[0]][: -len(str(layer))] + "%d"
    return ".".join(parts)


@dataclass
class ParamTable:
    """The parameter table as the program expands it at startup: the rows before the layers, one layer's
    rows (names with %d) repeated N_LAYER times `stride` elements apart, the rows after the layers."""

    before: list[ParamRow]
    layer: list[ParamRow]
    after: list[ParamRow]
    stride: int  # elements from one layer's parameters to the next's

    @property
    def rows(self) -> list[ParamRow]:
        return self.before + self.layer + self.after

    @staticmethod
    def members(rows: list[ParamRow]) -> list[tuple[str, str]]:
        """The pointer declarations of a Params struct, one line per module (the tensors whose checkpoint
        names differ in the last component only: a weight and its bias), with their shapes and checkpoint
        names: ("ln_1_w, *ln_1_b", "(768,), (768,) transformer.h.%d.ln_1.{weight,bias}")."""
        groups: list[list[ParamRow]] = []
        for r in rows:
            module = r.pattern(r.hf).rpartition(".")[0]
            g = groups[-1] if groups else []
            if g and module and g[0].pattern(g[0].hf).rpartition(".")[0] == module and len(g) < 4:
                g.append(r)
            else:
                groups.append([r])
        out = []
        for g in groups:
            names = ", *".join(r.cname for r in g)
            shapes = ", ".join(str(r.shape) for r in g)
            hf = (
                g[0].pattern(g[0].hf)
                if len(g) == 1
                else g[0].pattern(g[0].hf).rpartition(".")[0]
                + ".{"
                + ",".join(r.hf.rpartition(".")[2] for r in g)
                + "}"
            )
            if len(f"    floatX *{names}; /* {shapes} {hf} */") > WIDTH and len(g) > 1:
                out += [(r.cname, f"{r.shape} {r.pattern(r.hf)}") for r in g]
            else:
                out.append((names, f"{shapes} {hf}"))
        return out


@dataclass
class ActField:
    cname: str
    per_token: int  # offset in elements per token: the arena offset is BT * per_token (layer 0's, in a table)
    shape: str  # e.g. (B,T,768)
    node: str  # the producing node, for the comment
    dtype: str = "f32"  # storage: f32, or bf16 under the CUDA target's mixed precision
    stride: int = 0  # per-layer table LA[l]: elements per token from one layer's buffer to the next's
    shared: bool = False  # a block value every layer reuses (one buffer, in A)
    node_id: int = -1  # the producing node (its outputs share a line of the struct)


@dataclass
class NamedBuffer:
    """A buffer the in-process runner can read by its graph name (params, grads, moments, activations)."""

    name: str  # graph name: "h0.qkv", "grad.wte", "m.wte"
    expr: str  # C expression of its pointer, e.g. LA[0].qkv
    numel: str  # C expression of its element count
    dtype: str = "f32"  # element type in memory: f32 | bf16


@dataclass
class ActName:
    """One row of the library build's lookup table of activations by graph name."""

    name: str  # the graph name, %d for the layer ("h%d.qkv"), or the name itself
    table: str  # "A" or "LA"
    cname: str  # the struct member
    per_token: int  # elements per token
    layered: bool  # the name has a %d


@dataclass
class Fp8Weight:
    """One FP8 weight of a block, as layer l's instance: the bf16 parameter (`expr`, in a loop over l), its
    E4M3 copies at fp8_w8(l, offset) (W8 (N, K), then W8t (K, N)) and its Fp8Metas fp8_meta(l, meta) (x, W, dY)."""

    expr: str  # e.g. LP[l].c_attn_w
    name: str  # layer 0's graph name, for comments
    N: int  # out features
    K: int  # in features
    offset: int  # bytes into the layer's W8 copies
    meta: int  # index of its first Fp8Meta in the layer's


@dataclass
class Fp8Program:
    """--dtype fp8: what the FP8 linears share (llmgen/passes/memory.py's Fp8Plan, rendered by
    templates/cuda/linear_fp8.cu.j2's setup)."""

    weights: list[Fp8Weight]  # one layer's FP8 weights
    layer_stride: int  # bytes between layers' W8 copies
    metas_per_layer: int
    metas: int
    weight_bytes: int
    kmax: int  # largest in features: x8 / x8t take BT * kmax bytes
    nmax: int  # largest out features: dY8 and dY8t take BT * nmax bytes each
    wmax: int = 0  # the largest dimension of an FP8 weight (sizes the cast_transpose partials)
    margin: int = 0  # scale = MAX / amax / 2^margin (fp8.cuh's Recipe)
    delayed: bool = False  # the delayed recipe: each use's scale from the last update, an amax history of `history`
    history: int = 16


def fp8_program(g: Graph, plan: MemoryPlan, ref: Callable[[Value], str]) -> Fp8Program | None:
    fp8 = plan.fp8
    chosen = [c for c in fp8.choices if c.fp8] if fp8 else []
    if not chosen:
        return None
    first = min(c.layer for c in chosen)
    weights = [
        Fp8Weight(
            render_layers(ref(c.weight), first),
            c.weight.name,
            c.N,
            c.K,
            fp8.weight_offset[c.weight.id] - c.layer * fp8.layer_stride,
            fp8.meta_index[c.weight.id] - c.layer * fp8.meta_per_layer,
        )
        for c in chosen
        if c.layer == first
    ]
    return Fp8Program(
        weights,
        fp8.layer_stride,
        fp8.meta_per_layer,
        fp8.metas,
        fp8.weight_bytes,
        max(c.K for c in chosen),
        max(c.N for c in chosen),
        max(max(c.K, c.N) for c in chosen),
    )


def fp8_node_flags(g: Graph, plan: MemoryPlan) -> dict[int, dict]:
    """The extra flags of each FP8 GEMM node, and its x meta. fp8: it runs in FP8. cast_dy (dX, dW): it casts dY
    (E5M2, both layouts) into the dY8 / dY8t scratch: the first of a linear's dX and dW GEMMs, and the second
    too where another linear's cast came between them. cast_x (forward, dW): it casts x into fp8_x8 (x8 in the
    forward, x8t in the backward); a linear reading the x the previous FP8 linear of its phase cast (Llama's q, k, v;
    gate, up) reuses its codes and its scale: "xmeta" names the weight whose Fp8Meta holds x's scale."""
    if plan.fp8 is None:
        return {}
    out: dict[int, dict] = {}
    holder = last = None  # the weight whose dY the dY8 scratch holds; the last forward FP8 linear
    x_holder: dict[str, int] = {}  # phase -> the x value whose codes fp8_x8 holds
    x_scale: dict[int, Value] = {}  # weight id -> the weight whose Fp8Meta holds its x's forward scale
    for n in g.nodes:
        if n.id not in plan.fp8.nodes:
            continue
        w = fp8_weight_of(n)
        out[n.id] = {"fp8": True}
        if n.op in ("linear_dx", "linear_dw"):
            out[n.id]["cast_dy"] = holder is not w
            holder = w
        if n.op in ("linear", "linear_dw"):
            x = n.inputs[0] if n.op == "linear" else n.inputs[1]
            out[n.id]["cast_x"] = x_holder.get(n.phase) != x.id
            if n.op == "linear":  # the forward sets x's scale where it casts x; the dW GEMMs cast x8t with it
                x_scale[w.id] = w if out[n.id]["cast_x"] else x_scale[last.id]
                last = w
            x_holder[n.phase] = x.id
            out[n.id]["xmeta"] = x_scale[w.id]
    return out


@dataclass
class Program:
    """Everything a program template needs; one per emitted file."""

    target: str
    version: str
    spec_hash: str
    arch: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    padded_vocab_size: int
    max_seq_len: int
    params: list[ParamRow]  # every parameter, in the arenas' order
    param_table: ParamTable
    param_elems: int
    acts: list[ActField]  # the global activation table A (values outside the blocks, shared block values)
    layer_acts: list[ActField]  # the per-layer table LA[l] (a block value every layer keeps)
    act_per_token: int
    kernels: list[Kernel]
    forward: list[Launch | Loop]
    backward: list[Launch | Loop]
    update: list[Launch | Loop]
    flat: dict[str, list[Launch]]  # the unrolled schedule per phase (fwd, bwd, opt): what the loops expand to
    config_json: str  # the HF config.json the checkpoints carry, as a C string literal
    flops_per_token: int  # matmul FLOPs of one token, forward + backward
    flops_per_token_t: int  # attention FLOPs of one token per unit of T
    buffers: list[NamedBuffer] = field(default_factory=list)
    act_names: list[ActName] = field(default_factory=list)
    dtype: str = "fp32"  # fp32 | bf16 (params and activations; the CUDA target only)
    recompute: int = 0  # activation recompute level the schedule was made with (0, 1, 2)
    scratch_bytes: int = 0  # CUDA: one scratch buffer for partial sums (codegen/cuda.py sizes it)
    fa2_attention: bool = False  # CUDA: some attention kernel takes attention_fa2.cuh (codegen/cuda.py)
    kernel_headers: list[str] = field(default_factory=list)  # CUDA: the .cuh kernel templates to paste
    # the trainer's flags (llmgen/flags.py): its Options members, FLAGS rows and usage text (C string literals)
    options: list[str] = field(default_factory=list)
    flag_rows: list[str] = field(default_factory=list)
    usage: list[str] = field(default_factory=list)
    llmc_elems: int = 0  # parameters in an llm.c model file of this spec; 0: not GPT-2, no such file
    generation_config_json: str = '"{}"'  # the HF generation_config.json checkpoints carry, a C string literal
    layer_note: str = ""  # why the parameters are not in per-layer tables, where they are not
    distributed: bool = False  # data parallel over processes (comm.h pasted; Options.distributed)
    code: Callable | None = None  # C: the kernels' source -> the header code it uses (codegen/c.py's used_code)
    c_kernels: dict[str, str] = field(default_factory=dict)  # C: kernels with functions of their own, the calls
    fp8: Fp8Program | None = None  # --dtype fp8 (the CUDA target): the FP8 linears' shared buffers
    # CUDA: the classifier in row chunks (passes/memory.py's ClassifierChunks): rows, vp and the names of its
    # host functions (fwd, bwd, logits) and GEMM launchers; None: the logits are a whole activation
    classifier: dict | None = None

    @staticmethod
    def pack(statements: list[str], pad: str) -> list[str]:
        """Statements on as few lines of at most WIDTH columns as their order allows (one node's outputs)."""
        lines = []
        for x in statements:
            if lines and len(f"{lines[-1]} {x}") <= WIDTH:
                lines[-1] += f" {x}"
            else:
                lines.append(pad + x)
        return lines

    @staticmethod
    def act_groups(fields: list[ActField]) -> list[list[ActField]]:
        """An activation table's members as the struct declares them: the outputs of one node (consecutive
        members from the same op, of one type) on one line, `float *ln1, *ln1_mean, *ln1_rstd;`, while its
        declaration and comment fit in WIDTH columns."""
        groups: list[list[ActField]] = []
        for a in fields:
            g = groups[-1] if groups else []
            names, shapes = ", *".join(x.cname for x in [*g, a]), ", ".join(x.shape for x in [*g, a])
            size = len(f"    floatX *{names}; /* {shapes} from {a.node}{', every layer' if a.shared else ''}'s */")
            if (
                g
                and (a.node, a.dtype, a.shared, a.node_id) == (g[0].node, g[0].dtype, g[0].shared, g[0].node_id)
                and size <= WIDTH
            ):
                g.append(a)
            else:
                groups.append([a])
        return groups


def generation_config(spec) -> dict:
    """The generation_config.json transformers reads beside config.json: the special token ids of the
    spec's Hugging Face config (GPT-2's vocabulary: <|endoftext|> 50256), those that are set."""
    hf = spec.hf_config()
    return {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}


def llmc_places(spec, params: list[ParamRow]) -> int:
    """Give each GPT-2 ParamRow its place in an llm.c model file; returns the file's parameter count."""
    from llmgen import llmc

    places = llmc.tensor_places(spec)
    for r in params:
        offset, shape, _ = places[r.hf]
        if tuple(shape) == tuple(r.shape):
            transpose = False
        elif len(shape) == 2 and tuple(shape[::-1]) == tuple(r.shape):
            transpose = True
        else:
            raise AssertionError(f"{r.name}: llm.c shape {shape} vs ours {r.shape}")
        r.llmc_offset, r.llmc_transpose = offset, transpose
        r.llmc_rows = shape[0] if transpose else r.hf_rows
        if r.layer is not None and spec.n_layer > 1:  # llm.c stacks the layers: one tensor's stride
            other = r.layer + 1 if r.layer + 1 < spec.n_layer else r.layer - 1
            r.llmc_stride = (places[r.hf.replace(f".{r.layer}.", f".{other}.")][0] - offset) // (other - r.layer)
    return llmc.file_elems(spec)


def cname(name: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_")
    return s if not s[0].isdigit() else "_" + s


def c_string(text: str, indent: int = 4, first: int = 40) -> str:
    """`text` as a C string literal; a long one as adjacent literals broken after its newlines, each line
    of the result within WIDTH columns (`first`: the column the literal starts at, `indent`: the next lines')."""
    esc = lambda t: t.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    pieces, cur, col = [], "", first
    for line in text.splitlines(keepends=True):
        part = esc(line)
        if cur and col + len(cur) + len(part) + 2 > WIDTH:
            pieces.append(f'"{cur}"')
            cur, col = "", indent
        cur += part
    pieces.append(f'"{cur}"')
    return ("\n" + " " * indent).join(pieces)


def shape_str(v: Value) -> str:
    s = list(v.shape)
    if v.role not in ("act", "input") or "updates" in v.meta:  # parameter-shaped
        return "(" + ",".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"
    if len(s) >= 2:
        b, t = v.token_axes
        return "(" + ",".join("B" if i == b else "T" if i == t else str(d) for i, d in enumerate(s)) + ")"
    return str(tuple(s))


def _flags(node) -> dict[str, bool]:
    """acc<i>: output i is a parameter gradient (the kernel accumulates into it); bias, gelu, dgelu,
    residual from the attrs; then the op's own flags (its row in the op table)."""
    flags = {f"acc{i}": v.role == "grad" for i, v in enumerate(node.outputs)}
    for k in ("bias", "gelu", "dgelu"):
        flags[k] = bool(node.attrs.get(k))
    flags["residual"] = bool(node.attrs.get("accumulate"))
    opdef = OPS[node.op]
    return flags | (opdef.flags(node) if opdef.flags else {})


def _kernel_name(op: str, dims: dict, flags: dict) -> str:
    parts = [op] + [k for k, v in flags.items() if v and not k.startswith("acc")]
    if any(v for k, v in flags.items() if k.startswith("acc")):
        parts.append("acc" + "".join(k[3:] for k, v in sorted(flags.items()) if k.startswith("acc") and v))
    consts = [str(v) for v in dims.values() if isinstance(v, int)]
    return "_".join(parts + (["x".join(consts)] if consts else []))


def graph_flops(g: Graph) -> tuple[int, int]:
    """FLOPs of one training token, forward + backward (2 per multiply-add), from each op's row:
    (the part that does not depend on T: the matmuls, the part per unit of T: attention's q.k and
    p.v, counted over the full sequence as llm.c does)."""
    fixed = per_t = 0
    for n in g.nodes:
        f = OPS[n.op].flops
        if f:
            a, b = f(n)
            fixed, per_t = fixed + a, per_t + b
    return fixed, per_t


def flops_per_token(g: Graph, T: int) -> int:
    """FLOPs of one training token at sequence length T (what MFU and `llmgen inspect` count)."""
    fixed, per_t = graph_flops(g)
    return fixed + per_t * T


@dataclass
class LowerContext:
    """The lowering's view of the program that the op table's dims / consts / args functions get."""

    param_elems: int  # elements of each parameter-layout arena (the grad norm's N)
    ref: Callable[[Value], str]  # Value -> the C expression of its pointer (or runtime value)
    rows: dict[int, ParamRow]  # param id -> its row in the parameter table

    def param_rows(self, values) -> list[ParamRow]:
        return [self.rows[v.id] for v in values]

    def arena(self, kind: str) -> str:
        return ARENAS[kind]


def _freeze(x):
    """A hashable key for a kernel's constants (so equal instances share one kernel)."""
    if isinstance(x, dict):
        return tuple((k, _freeze(v)) for k, v in sorted(x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x if isinstance(x, (int, float, str, bool, type(None))) else repr(x)


def param_table(rows: list[ParamRow], n_layer: int) -> tuple[ParamTable, str]:
    """The rows as a table the program expands (ParamTable), and "" ; or, where the parameters are not laid
    out block after block with one constant stride, every row outside the layers and a note saying why."""

    def flat(why: str) -> tuple[ParamTable, str]:
        for r in rows:
            r.layer = None
        return ParamTable(rows, [], [], 0), why

    layered = [r for r in rows if r.layer is not None]
    if not layered:
        return ParamTable(rows, [], [], 0), ""
    first = next(i for i, r in enumerate(rows) if r.layer is not None)
    per = len(layered) // n_layer
    block = rows[first : first + len(layered)]
    if len(layered) != per * n_layer or block != layered or per == 0:
        return flat("the parameters of the blocks are not listed block after block")
    one = block[:per]
    stride = block[per].offset - block[0].offset if n_layer > 1 else 0
    for l in range(n_layer):
        for r0, r in zip(one, block[l * per : (l + 1) * per]):
            same = (
                r.layer == l
                and r.cname == r0.cname
                and r.offset == r0.offset + l * stride
                and (r.numel, r.shape, r.hf_shape, r.transpose, r.hf_rows, r.decay, r.init, r.std)
                == (r0.numel, r0.shape, r0.hf_shape, r0.transpose, r0.hf_rows, r0.decay, r0.init, r0.std)
                and r.llmc_offset - r0.llmc_offset == l * r0.llmc_stride
            )
            try:
                same = same and r.pattern(r.name) == r0.pattern(r0.name) and r.pattern(r.hf) == r0.pattern(r0.hf)
            except ValueError:
                same = False
            if not same:
                return flat(f"parameter {r.name} does not repeat {r0.name} of layer 0 at a constant stride")
    return ParamTable(rows[:first], one, rows[first + len(layered) :], stride), ""


def lower(g: Graph, plan: MemoryPlan, target: str, version: str, recompute: int = 0, scalar_ref: str = "{}") -> Program:
    """scalar_ref: how a kernel argument names one of the graph's scalars ("&{}": a host variable
    whose address is passed, the C target; "{}": already a device pointer, the CUDA target)."""
    spec = g.spec
    if target == "cuda" and plan.classifier is None:  # the classifier in row chunks (passes/memory.py)
        chunked = plan_memory(g, "fp8" if plan.fp8 is not None else plan.dtype, chunk_classifier=True)
        plan = chunked if chunked.classifier is not None else plan
    chunks = plan.classifier
    stored = storage_dtypes(g, plan.dtype)
    params = []
    for p in g.params:
        hf_rows = p.meta.get("hf_rows", p.shape[0])
        hf_shape = (hf_rows,) + tuple(p.shape[1:])
        if p.meta["hf_transpose"]:
            hf_shape = hf_shape[::-1]
        params.append(
            ParamRow(
                p.name,
                cname(field_of(p)),
                p.meta["hf"],
                plan.param_offset[p.id],
                p.numel,
                p.shape,
                hf_shape,
                p.meta["hf_transpose"],
                hf_rows,
                p.meta["decay"],
                p.meta["init"],
                p.meta.get("std", 0.0),
                p.layer,
            )
        )
    llmc_elems = llmc_places(spec, params) if spec.arch == "gpt2" else 0
    table, layer_note = param_table(params, spec.n_layer)
    if layer_note:
        for r in params:
            r.cname = cname(r.name)
    prow = {p.id: r for p, r in zip(g.params, params)}

    # activations: the global table A (values outside the blocks and block values every layer shares), and
    # the per-layer table LA[l] (a block value each layer keeps until the backward), from the plan's fields
    producer = {v.id: n for n in g.nodes for v in n.outputs}
    acts: list[ActField] = []
    layer_acts: list[ActField] = []
    slot: dict[int, tuple[str, str]] = {}  # value id -> (table, member)
    members: dict[str, str] = {}  # field key -> member
    used = {"A": set(), "LA": set()}
    born = {v.id: i for i, n in reversed(list(enumerate(g.nodes))) for v in n.outputs}
    for v in sorted(plan.act_values, key=lambda v: born[v.id]):  # in the order the schedule writes them
        b, t = v.token_axes
        if not (len(v.shape) >= 2 and v.shape[b] == 1 and v.shape[t] == 1):
            raise AssertionError(
                f"activation {v.name}{list(v.shape)} does not scale with the tokens: "
                "the per-token memory plan cannot hold it"
            )
        key = layer_key(v) if layer_key(v) in plan.fields else v.name
        place = plan.fields[key]
        tab = "LA" if place.kind == "array" else "A"
        if key not in members:
            cn = cname(field_of(v) if key != v.name else v.name)
            while cn in used[tab]:
                cn += "_"
            used[tab].add(cn)
            members[key] = cn
            fieldrow = ActField(
                cn,
                place.offset,
                shape_str(v),
                producer[v.id].op,
                stored[v.id],
                place.stride,
                place.kind == "shared",
                producer[v.id].id,
            )
            (layer_acts if tab == "LA" else acts).append(fieldrow)
        slot[v.id] = (tab, members[key])
    for vid, root in plan.alias.items():  # in-place outputs name the buffer they overwrite
        slot[vid] = slot[root]
    act_values = {v.id: v for v in plan.act_values}
    every_act = {v.id: v for v in g.values() if v.id in slot}

    scalars = {
        getattr(g, kind)[name].id: scalar_ref.format(c)
        for (kind, name), c in SCALARS.items()
        if name in getattr(g, kind)
    }
    runtime = {g.inputs[name].id: c for name, c in RUNTIME.items() if name in g.inputs}

    def ref(v: Value) -> str:
        if v.role in ("param", "grad", "state"):
            p = v if v.role == "param" else v.grad_of if v.role == "grad" else v.meta["of"]
            r = prow[p.id]
            arena = {"param": "P", "grad": "G", "state": v.meta.get("moment")}[v.role]
            return f"{arena}.{r.cname}" if r.layer is None else f"L{arena}[{mark(r.layer)}].{r.cname}"
        if v.id in runtime:
            return runtime[v.id]
        if v.id in scalars:
            return scalars[v.id]
        if "updates" in v.meta:
            return ref(v.meta["updates"])
        tab, member = slot[v.id]
        return f"A.{member}" if tab == "A" else f"LA[{mark(v.layer)}].{member}"

    def label(v: Value) -> str:  # a value's name in a comment, its layer marked
        if "updates" in v.meta:
            return label(v.meta["updates"])
        if v.layer is None or g.layer_prefix == "" or not v.name.startswith(f"{g.layer_prefix}{v.layer}."):
            return v.name
        return f"{g.layer_prefix}{mark(v.layer, '#')}.{field_of(v)}"

    ctx = LowerContext(plan.param_elems, ref, prow)

    fp8_flags = fp8_node_flags(g, plan)
    kernels: dict[tuple, Kernel] = {}
    launches: dict[str, list[Launch]] = {"fwd": [], "bwd": [], "opt": []}
    needs_targets: set[int] = {g.inputs["targets"].id}
    names: set[str] = set()
    by_id = {n.id: n for n in g.nodes}
    chunk_parts = {chunks.linear, chunks.xent, chunks.dx, chunks.dw} if chunks else set()
    classifier: dict | None = None  # the chunked classifier's host functions (templates/cuda/xent.cu.j2)
    for n in g.nodes:
        opdef = OPS[n.op]
        if n.id == getattr(chunks, "xent", None):  # its forward launch: the chunk loop (losses only)
            lin = by_id[chunks.linear]
            needs_targets.update(v.id for v in n.outputs)
            classifier = {"rows": chunks.rows, "vp": chunks.vp, "dims": opdef.dims(n, ctx), "K": lin.inputs[1].shape[1]}
            name = f"classifier_{classifier['K']}x{chunks.vp}"
            classifier |= {"fwd": f"{name}_fwd", "bwd": f"{name}_bwd", "logits": f"{name}_logits"}
            classifier["x"], classifier["w"] = ref(lin.inputs[0]), ref(lin.inputs[1])
            dx, dw = by_id[chunks.dx].outputs[0], by_id[chunks.dw].outputs[0]
            args = [ref(n.outputs[0]), ref(dx), ref(dw), ref(lin.inputs[0]), ref(lin.inputs[1]), ref(n.inputs[1])]
            args.append(ref(n.inputs[2]))
            comment = f"classifier in chunks of {chunks.rows} rows: {label(n.outputs[0])} {shape_str(n.outputs[0])}"
            launches["fwd"].append(Launch(classifier["fwd"], args, comment, True, None))
            continue
        fp8_node = {f: v for f, v in fp8_flags.get(n.id, {}).items() if f != "xmeta"}
        dims, flags = opdef.dims(n, ctx), _flags(n) | fp8_node
        if n.id in chunk_parts:  # a GEMM of the chunked classifier: its launcher takes the chunk's rows
            flags["rows"] = True
        consts = opdef.consts(n, ctx) if opdef.consts else {}
        key = (n.op, tuple(dims.items()), tuple(sorted(flags.items())), _freeze(consts))
        if key not in kernels:
            name = _kernel_name(n.op, dims, flags)
            while name in names:  # another instance with the same sizes (other constants)
                name += "_"
            names.add(name)
            comment = f"{n.op} " + ", ".join(f"{a}={b}" for a, b in dims.items())
            family = "linear_fp8" if n.id in fp8_flags else opdef.family  # templates/cuda/linear_fp8.cu.j2
            kernels[key] = Kernel(n.op, family, name, comment, dims, flags, consts)
        k = kernels[key]
        if n.id == getattr(chunks, "linear", None):
            classifier_linear = k.name
            continue
        if n.id == getattr(chunks, "dx", None):
            classifier["linear_dx"] = k.name
        if n.id == getattr(chunks, "dw", None):  # the chunk loop's kernel, after its GEMMs
            classifier |= {"linear": classifier_linear, "linear_dw": k.name, "acc": bool(flags.get("acc0"))}
            dims = dict(classifier["dims"]) | {"K": classifier["K"], "R": chunks.rows}
            comment = f"classifier_chunks K={classifier['K']}, Vp={chunks.vp}, R={chunks.rows}"
            kernels[("classifier_chunks",)] = Kernel(
                "classifier_chunks", "xent", "classifier", comment, dims, {}, dict(classifier)
            )
        if n.id in (getattr(chunks, "dx", None), getattr(chunks, "dw", None)):
            # the classifier's backward, the chunk loop with dX and dW in it, at the later of the two nodes: after
            # --recompute 2's copy of x, which it reads (the forward's x has died by then)
            if "linear_dx" in classifier and "linear_dw" in classifier:
                xent, dx, dw = by_id[chunks.xent], by_id[chunks.dx], by_id[chunks.dw]
                args = [ref(dx.outputs[0]), ref(dw.outputs[0])]
                args += [ref(dw.inputs[1]), classifier["w"], ref(xent.inputs[1]), ref(xent.inputs[2])]
                comment = f"classifier backward in chunks: {label(dx.outputs[0])} {shape_str(dx.outputs[0])}, "
                comment += f"{label(dw.outputs[0])} {shape_str(dw.outputs[0])}"
                launches["bwd"].append(Launch(classifier["bwd"], args, comment, False, None))
            continue
        if opdef.args:
            args = opdef.args(n, ctx)
        else:
            # outputs that update an input in place (AdamW) are that input's buffer: pass it once
            args = [ref(v) for v in n.outputs if "updates" not in v.meta] + [ref(v) for v in n.inputs]
        if n.id in fp8_flags:  # an FP8 GEMM: the weight's E4M3 copies (not dW's), its linear's Fp8Metas, x's
            w, fp8 = fp8_weight_of(n), plan.fp8
            off = fp8.weight_offset[w.id] - w.layer * fp8.layer_stride
            args += [] if n.op == "linear_dw" else [f"fp8_w8({mark(w.layer)}, {off}L)"]
            for m in [w] + ([fp8_flags[n.id]["xmeta"]] if n.op != "linear_dx" else []):
                args.append(f"fp8_meta({mark(m.layer)}, {fp8.meta_index[m.id] - m.layer * fp8.meta_per_layer})")
        outs = ", ".join(f"{label(v)} {shape_str(v)}" for v in n.outputs[:4])
        if len(n.outputs) > 4:
            outs += f", ... ({len(n.outputs)} outputs)"
        nt = any(v.id in needs_targets for v in n.inputs)
        if nt:
            needs_targets.update(v.id for v in n.outputs)
        launches[n.phase].append(Launch(k.name, args, f"{n.op}: {outs}", nt and n.phase == "fwd", n.layer))
    fp8_prog = fp8_program(g, plan, ref)
    if fp8_prog is not None:  # the FP8 weights follow the bf16 ones AdamW wrote
        launches["opt"].append(Launch("fp8_cast_weights", [], "fp8: the block weights' E4M3 copies W8, W8t"))

    # params are stored in the program's dtype; grads and moments stay fp32
    buffers = [
        NamedBuffer(
            f"{pre}{r.name}",
            render_layers(f"{arena}.{r.cname}" if r.layer is None else f"L{arena}[{mark(r.layer)}].{r.cname}"),
            f"{r.numel}L",
            "bf16" if arena == "P" and plan.dtype == "bf16" else "f32",
        )
        for pre, arena in (("", "P"), ("grad.", "G"), ("m.", "M"), ("v.", "V"))
        for r in params
    ]
    act_names: dict[tuple, ActName] = {}
    for v in every_act.values():
        size = (act_values.get(v.id) or v).numel
        tab, member = slot[v.id]
        buffers.append(
            NamedBuffer(
                v.name,
                render_layers(ref(v)),
                f"(long)BT * {size}",
                "bf16" if stored.get(plan.alias.get(v.id, v.id)) == "bf16" else "f32",
            )
        )
        layered = label(v) != v.name
        pattern = f"{g.layer_prefix}%d.{field_of(v)}" if layered else v.name
        act_names.setdefault((pattern, tab, member), ActName(pattern, tab, member, size, layered))

    return Program(
        target=target,
        version=version,
        spec_hash=spec.digest(),
        arch=spec.arch,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        n_embd=spec.n_embd,
        vocab_size=spec.vocab_size,
        padded_vocab_size=spec.padded_vocab_size,
        max_seq_len=spec.max_seq_len,
        params=params,
        param_table=table,
        param_elems=plan.param_elems,
        acts=acts,
        layer_acts=layer_acts,
        act_per_token=plan.act_elems,
        kernels=list(kernels.values()),
        forward=loop_schedule(launches["fwd"], +1, spec.n_layer),
        backward=loop_schedule(launches["bwd"], -1, spec.n_layer),
        update=loop_schedule(launches["opt"], +1, spec.n_layer),
        flat=launches,
        config_json=c_string(json.dumps(spec.hf_config(), indent=2)),
        flops_per_token=graph_flops(g)[0],
        flops_per_token_t=graph_flops(g)[1],
        buffers=buffers,
        act_names=sorted(act_names.values(), key=lambda a: a.name),
        dtype=plan.dtype,
        recompute=recompute,
        usage=[c_string(line + "\n") for line in usage_lines()],
        options=c_options(),
        flag_rows=c_rows(spec.max_seq_len, recompute),
        llmc_elems=llmc_elems,
        layer_note=layer_note,
        generation_config_json=c_string(json.dumps(generation_config(spec), indent=2) + "\n"),
        fp8=fp8_prog,
        classifier=classifier,
    )
