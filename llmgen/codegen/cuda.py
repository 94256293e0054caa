"""CUDA launch decisions: block sizes, attention tiles and scratch sizes, per kernel instance.

lower.py makes the target-independent Program; for the CUDA target this module then fills
each Kernel's `cfg` (constants the templates substitute), names the template of its family
and sizes the program's scratch buffer. Every number here is a choice for a GPU that the
emulation runs just as well.
"""

from __future__ import annotations

import dataclasses
import math
import re

from llmgen.codegen.lower import ActField, Kernel, Launch, Loop, Program, render_layers

NAME = "cuda"
PROGRAM = "cuda/program.cu.j2"  # the program skeleton
FAMILY = "cuda/{family}.cu.j2"  # a kernel family: one macro per op
SCALAR_REF = "{}"  # the graph's scalars live in device memory: already pointers

WARP = 32
COLSUM_MAX_BLOCKS = 256  # bias gradients: row chunks summed in a fixed order
NORM_BLOCKS = 1024  # grad norm: partial sums of squares (doubles; templates/cuda/kernels/adamw.cuh)
# layernorm / RMSNorm backward (templates/cuda/kernels/norms.cuh): at most NORM_BWD_BLOCKS blocks each write their
# column sums, the last of each NORM_GROUP adds its group's; NORM_COUNTERS unsigned ints count the finished blocks
NORM_BWD_BLOCKS, NORM_GROUP, NORM_COUNTERS = 512, 16, 64
ATTN_DPT = 32  # attention: at most this many channels of a head per thread
ATTN_THREADS = 128  # attention: threads per block (about)


def attention_config(HD: int, NH: int, KV: int) -> dict[str, int]:
    """Work split of the CUDA-core attention kernels (templates/cuda/attention.cuh).

    TPR threads share a (query row, head), each holding DPT channels of q and of the accumulator in
    registers, reducing dot products with TPR-lane shuffles. TPR keeps DPT <= ATTN_DPT (head_dim up
    to 32: 1 thread, 64: 2, 128: 4), grouped heads or not: the dk/dv kernel holds 4 arrays of DPT
    floats a thread (k, v, dk, dv) and the dq kernel 3, which spill past 255 registers at DPT = 64
    (GPT-2's head_dim with one thread a row, ptxas on sm_90a). A forward / dq block takes BQ query
    rows of RB heads of one K/V group (RB divides the group size R, RB * TPR <= 8), so a K/V tile
    staged in shared memory serves RB heads; BQ * TPR is a multiple of 32 (whole warps for the
    shuffles). A dk/dv block takes BK key rows (BK * TPR = 128). BC: rows of a K/V (or Q/dY) tile,
    the scores of a tile stay in registers."""
    R = NH // KV
    tpr = 1
    while -(-HD // tpr) > ATTN_DPT and tpr < WARP:
        tpr *= 2
    rb = max(d for d in range(1, R + 1) if R % d == 0 and d * tpr <= max(tpr, 8))
    bq = 1
    while bq * 2 * rb * tpr <= ATTN_THREADS:
        bq *= 2
    bq = max(bq, WARP // tpr)
    return {
        "TPR": tpr,
        "DPT": -(-HD // tpr),
        "RB": rb,
        "BQ": bq,
        "BC": 32 if HD <= 128 else 16,
        "BK": max(1, ATTN_THREADS // tpr),
    }


FA2_HEAD_SIZES = (64, 128)  # the head sizes templates/cuda/kernels/attention_fa2.cuh instantiates (Fa2Tiles<HD>)


def fa2_attention_config(HD: int, dtype: str, scale: float) -> dict[str, int]:
    """Whether the FlashAttention-2-class kernels (templates/cuda/kernels/attention_fa2.cuh: mma.sync, ldmatrix,
    cp.async) apply: bf16 builds with a head size the header instantiates and its softmax scale 1/sqrt(HD).
    Row strides are then multiples of 8 elements (HD is); the launcher also checks at run time that every
    operand is 16-byte aligned and takes the CUDA-core kernels otherwise (the trainer's are for any B and T:
    the memory plan aligns every value to 16 elements per token). Any T works."""
    ok = dtype == "bf16" and HD in FA2_HEAD_SIZES and abs(scale * math.sqrt(HD) - 1) < 1e-12
    return {"FA2": int(ok)}


# family -> (kernel, dtype) -> (its launch choices, the scratch bytes it needs)


def _norm(k: Kernel, dtype: str) -> tuple[dict, int]:
    """LayerNorm and RMSNorm (templates/cuda/kernels/norms.cuh: the row layout follows from C and the dtype in the
    header). The backward's scratch: fp32 column sums (dw, db for LayerNorm, and the preceding projection's bias
    gradient: room for it always) of each block and each group of NORM_GROUP blocks, norm_backward_scratch_bytes's
    largest case; its group counters get a place of their own (configure)."""
    if not k.op.endswith("_bwd"):
        return {}, 0
    nacc = (1 if k.family == "rmsnorm" else 2) + 1
    parts = NORM_BWD_BLOCKS + -(-NORM_BWD_BLOCKS // NORM_GROUP)
    return {"MAXB": NORM_BWD_BLOCKS}, 4 * parts * nacc * k.dims["C"]


def _attention(k: Kernel, dtype: str) -> tuple[dict, int]:
    HD = k.dims["HD"]
    fa2 = fa2_attention_config(HD, dtype, k.consts["scale"])
    return {**attention_config(HD, k.dims["NH"], k.dims["KV"]), **fa2}, 0


def _xent(k: Kernel, dtype: str) -> tuple[dict, int]:
    return {}, 0  # templates/cuda/kernels/xent.cuh: a block of 512 threads per row


def _linear(k: Kernel, dtype: str) -> tuple[dict, int]:
    if k.op != "linear_dw":
        return {}, 0
    return {"MAXB": COLSUM_MAX_BLOCKS}, 4 * k.dims["N"] * (COLSUM_MAX_BLOCKS + 1)


def _elementwise(k: Kernel, dtype: str) -> tuple[dict, int]:
    if k.op == "bias_grad":
        return {"MAXB": COLSUM_MAX_BLOCKS}, 4 * k.dims["C"] * (COLSUM_MAX_BLOCKS + 1)
    return ({"NT": 256} if k.op == "mean" else {}), 0


def _adamw(k: Kernel, dtype: str) -> tuple[dict, int]:
    return ({"NB": NORM_BLOCKS}, 8 * NORM_BLOCKS) if k.op == "grad_norm" else ({}, 0)


LAUNCH = {
    "layernorm": _norm,
    "attention": _attention,
    "xent": _xent,
    "linear": _linear,
    "linear_fp8": _linear,  # --dtype fp8's block linears (templates/cuda/linear_fp8.cu.j2): the same colsum scratch
    "elementwise": _elementwise,
    "adamw": _adamw,
    "rmsnorm": _norm,
}


# family -> its header in templates/cuda/kernels/
MEMORY_BOUND = {"layernorm": "norms", "rmsnorm": "norms", "xent": "xent", "adamw": "adamw", "embed": "embed"}
# headers pasted before the kernel headers that need them (each pasted once, before its first user)
HEADER_NEEDS = {
    "cuda/kernels/attention_fa2.cuh": ["cuda/ptx.cuh"],
    "cuda/kernels/fp8.cuh": ["cuda/ptx.cuh"],  # the FP8 casts use ptx.cuh's prmt
    **{f"cuda/kernels/{h}.cuh": ["cuda/kernels/common.cuh"] for h in MEMORY_BOUND.values()},
}


def kernel_headers(prog: Program) -> list[str]:
    """The kernel families written as C++ templates that the program pastes before its kernels, each once:
    the FlashAttention-2-class attention (templates/cuda/kernels/attention_fa2.cuh, after the PTX wrappers of
    templates/cuda/ptx.cuh it uses) when some attention kernel takes it, the memory-bound families' headers in
    templates/cuda/kernels/ (MEMORY_BOUND, after the common.cuh they share), then templates/cuda/<family>.cuh
    of each other family the program uses that has one (linear has none: cuBLASLt). The family templates (.cu.j2)
    instantiate them."""
    from llmgen.codegen import templates_dir

    folder = templates_dir() / "cuda"
    families = sorted({k.family for k in prog.kernels})
    wanted = ["cuda/kernels/attention_fa2.cuh"] if prog.fa2_attention else []
    wanted += ["cuda/kernels/fp8.cuh"] if prog.fp8 else []
    wanted += sorted({f"cuda/kernels/{MEMORY_BOUND[f]}.cuh" for f in families if f in MEMORY_BOUND})
    wanted += [f"cuda/{f}.cuh" for f in families if (folder / f"{f}.cuh").is_file()]
    out: list[str] = []
    for header in wanted:
        for h in [*HEADER_NEEDS.get(header, []), header]:
            if h not in out:
                out.append(h)
    return out


def fa2_d_buffer(prog: Program) -> None:
    """The FA2 backward's D = rowsum(dy * y) (B, NH, T) fp32, laid out like lse: a buffer of its own at the end
    of the activation arena (NH floats per token, the widest attention's), shared by every layer: only the
    attention backward writes and reads it, within one launcher call."""
    nh = max(k.dims["NH"] for k in prog.kernels if k.cfg.get("FA2"))
    per_float = 4 // (2 if prog.dtype == "bf16" else 4)  # arena elements (floatX) per float
    offset = -(-prog.act_per_token // 16) * 16  # 16 elements, as the memory plan aligns its values
    prog.acts.append(ActField("att_D", offset, f"(B,{nh},T)", "attention_bwd", "f32", shared=True, node_id=-2))
    prog.act_per_token = offset + nh * per_float


# ---- the block weight-gradient GEMMs on a second stream (templates/cuda/program.cu.j2's dw_fork) ----


def act_ranges(prog: Program) -> dict[str, tuple[int, int]]:
    """Each activation buffer's C expression (layers as numbers: "A.dfch", "LA[3].fch") -> its range of the
    activation arena in elements (floatX) per token, [start, end): the arena holds B*T times each (ACT_AT)."""
    per_float = 2 if prog.dtype == "bf16" else 1  # an fp32 value of a bf16 program takes 2 floatX elements

    def size(a: ActField) -> int:
        n = math.prod(int(d) for d in re.findall(r"\d+", a.shape))
        return n * (per_float if a.dtype == "f32" else 1)

    out = {f"A.{a.cname}": (a.per_token, a.per_token + size(a)) for a in prog.acts}
    for a in prog.layer_acts:
        for layer in range(prog.n_layer):
            lo = a.per_token + layer * a.stride
            out[f"LA[{layer}].{a.cname}"] = (lo, lo + size(a))
    return out


def _buffer(arg: str) -> str:
    """An argument's buffer: "A.dqkv + 128" -> "A.dqkv" (a part of the buffer counts as all of it)."""
    return arg.split(" + ")[0].strip()


def launch_effects(x: Launch, ranges: dict, by_name: dict[str, str]) -> tuple[list, list]:
    """What a launch (layers as numbers) reads and writes of the activation arena: (reads, writes) as lists of
    (buffer, range). Writes: the outputs its comment names, found in the program's named buffers; where the
    comment does not list them all, every activation argument counts as written."""
    args = [_buffer(render_layers(a)) for a in x.args]
    reads = [(a, ranges[a]) for a in args if a in ranges]
    outs = render_layers(x.comment).partition(": ")[2].split(", ")
    if any(o.startswith("... (") for o in outs):
        return reads, reads
    writes = []
    for o in outs:
        expr = by_name.get(o.rsplit(" (", 1)[0])
        if expr is not None and _buffer(expr) in ranges:
            writes.append((_buffer(expr), ranges[_buffer(expr)]))
    return reads, writes


def _is_block_dw(x: Launch, kernels: dict[str, Kernel]) -> bool:
    k = kernels.get(x.fn)
    return k is not None and k.op == "linear_dw" and k.family == "linear" and not k.flags.get("rows")


def relative(text: str, layer: int | None) -> str:
    """Layer numbers in buffer names ("LA[2].fch") relative to a loop's `l` at `layer` ("LA[l - 1].fch")."""
    if layer is None:
        return text

    def sub(m):
        d = int(m.group(1)) - layer
        return "[l]" if d == 0 else f"[l + {d}]" if d > 0 else f"[l - {-d}]"

    return re.sub(r"\[(\d+)\]", sub, text)


def _only(layers: set, loop: Loop | None) -> str:
    """The guard of a wait in a loop that only some iterations need ("if (l == 0) "; "" where all do)."""
    if loop is None or len(layers) == loop.count:
        return ""
    lo, hi = min(layers), max(layers)
    if len(layers) == 1:
        return f"if (l == {lo}) "
    first, last = sorted((loop.first, loop.first + loop.step * (loop.count - 1)))
    if len(layers) == hi - lo + 1:  # a run of layers: what bounds it within the loop's
        if lo == first or hi == last:
            return f"if (l <= {hi}) " if lo == first else f"if (l >= {lo}) "
        return f"if (l >= {lo} && l <= {hi}) "
    return "if (" + " || ".join(f"l == {x}" for x in sorted(layers)) + ") "


def _pseudo(call: str, about: str) -> Launch:
    """A statement of the schedule that is no kernel: the dW stream's fork, done, wait, join."""
    return Launch(re.search(r"dw_\w+", call).group(0), [], f"dw: {about}" if about else "", call=call)


def dw_stream_schedule(prog: Program) -> None:
    """The backward's block dW launches onto dw_stream (bf16 and fp32 programs; not --dtype fp8, whose dW shares
    its linear's FP8 scratch): each becomes dw_fork(s); dW; dw_done(s), slot s one per dW of the code (a loop's
    dW is one slot for every layer). Stream 0 waits for slot s (dw_wait(s), whose comment names the buffer) right
    before the first later launch that writes an arena range the dW reads (dY, x: the memory plan shares bytes
    between buffers whose lifetimes do not overlap) or names its gradients; a wait inside a loop runs at every
    iteration, and waits only for a dW not waited for yet. The backward ends with dw_join (the weight gradients
    are read next: grad norm, AdamW, the end of a CUDA Graph capture). Sets prog.dw_slots (0: none)."""
    prog.dw_slots = 0
    if prog.fp8 is not None:
        return
    kernels = {k.name: k for k in prog.kernels}
    ranges = act_ranges(prog)
    by_name = {b.name: b.expr for b in prog.buffers}
    # the flat backward, each launch with its place in the code: (block, body position or None, launch)
    flat: list[tuple[int, int | None, Launch]] = []
    slot_of: dict[tuple[int, int | None], int] = {}
    layer_at: list[int | None] = []  # the layer of a loop iteration's launch (its `l`)
    for bi, b in enumerate(prog.backward):
        if isinstance(b, Loop):
            edge = b.edge or [None] * len(b.body)
            for j, (x, e) in enumerate(zip(b.body, edge)):
                if _is_block_dw(x, kernels) and (e is None or e.fn == x.fn):
                    slot_of[(bi, j)] = len(slot_of)
            flat += [(bi, i % len(b.body), x) for i, x in enumerate(b.expand())]
            layer_at += [b.first + b.step * (i // len(b.body)) for i in range(len(b.body) * b.count)]
        else:
            if _is_block_dw(b, kernels):
                slot_of[(bi, None)] = len(slot_of)
            flat.append((bi, None, b))
            layer_at.append(None)
    if not slot_of:
        return
    effects = [launch_effects(x, ranges, by_name) for _, _, x in flat]
    # each dW of the flat backward: the first later launch that writes what it reads or names its gradients, and what
    first: dict[int, tuple[int, str]] = {}
    for i, (bi, j, x) in enumerate(flat):
        if (bi, j) not in slot_of:
            continue
        reads = effects[i][0]
        grads = {render_layers(a) for a in x.args if render_layers(a).startswith(("G.", "LG["))}
        for c in range(i + 1, len(flat)):
            hit = [
                f"{r} (dW reads {a})" if r != a else a
                for r, (lo, hi) in effects[c][1]
                for a, (alo, ahi) in reads
                if lo < ahi and alo < hi
            ]
            hit += [g for g in grads if g in {render_layers(a) for a in flat[c][2].args}]
            if hit:
                first[i] = (c, hit[0])
                break
    # a dW whose every instance is overwritten by the very next launch overlaps nothing: it stays on stream 0 (a wait
    # for it would also wait for every dW before it on dw_stream)
    busy = {(bi, j) for i, (bi, j, _) in enumerate(flat) if (bi, j) in slot_of and first.get(i, (0,))[0] != i + 1}
    slot_of = {place: n for n, place in enumerate(p for p in slot_of if p in busy)}
    if not slot_of:
        return
    # place -> slot -> (the buffer it protects, the layers of the loop iterations whose launch there needs it)
    waits: dict[tuple[int, int | None], dict[int, tuple[str, set]]] = {}
    for i, (c, hit) in first.items():
        if flat[i][:2] in slot_of:
            about, layers = waits.setdefault(flat[c][:2], {}).setdefault(
                slot_of[flat[i][:2]], (relative(hit, layer_at[c]), set())
            )
            layers.add(layer_at[c])

    def wrap_launch(place: tuple[int, int | None], x: Launch, loop: Loop | None = None) -> list[Launch]:
        out = []
        for s, (buf, layers) in sorted(waits.get(place, {}).items()):
            out.append(_pseudo(f"{_only(layers, loop)}dw_wait({s})", f"protects {buf}: written next"))
        if place in slot_of:
            s = slot_of[place]
            fork, done = _pseudo(f"dw_fork({s})", "the dW next runs on dw_stream"), _pseudo(f"dw_done({s})", "issued")
            return out + [fork, x, done]
        return out + [x]

    blocks: list[Launch | Loop] = []
    for bi, b in enumerate(prog.backward):
        if not isinstance(b, Loop):
            blocks += wrap_launch((bi, None), b)
            continue
        body, edge = [], []
        for j, (x, e) in enumerate(zip(b.body, b.edge or [None] * len(b.body))):
            new = wrap_launch((bi, j), x, b)
            body += new
            edge += [e if y is x else None for y in new]
        b.body, b.edge = body, (edge if b.edge else [])
        blocks.append(b)
    blocks.append(_pseudo("dw_join()", "the weight gradients are read next"))
    prog.backward = blocks
    prog.dw_slots = len(slot_of)


def fp8_fuse_amax(prog: Program) -> None:
    """--dtype fp8, current recipe: the kernel that writes an FP8 linear's input x (its output gradient dY) also
    writes the tensor's amax partials where it is one of precision.FP8_AMAX_PRODUCERS and runs right before the GEMM
    that casts it (the rule of precision.fp8_casts, which `inspect` reports, applied to the schedule). The producer
    kernel gets cfg AMAX (its launcher writes the partials into fp8_partials, their count into fp8_amax_parts:
    templates/cuda/layernorm.cu.j2, rmsnorm.cu.j2; at every launch, harmless where no cast follows) and the GEMM cfg
    AMAX_FROM, the producer's name (its cast takes those partials instead of an amax pass:
    templates/cuda/linear_fp8.cu.j2). A GEMM kernel serves several launches (layers; Llama's q and o have one shape):
    where only some of them follow a producer, those launches call a copy of it named `..._amax_...` (the same GEMM,
    the fused cast; `..._amax2_...` where it takes a producer's second set). Whether a launch is fused is decided
    per (kernel, the tensor relative to the layer), so a loop body's launch stands for all its layers."""
    from llmgen.passes.precision import FP8_AMAX_PRODUCERS, FP8_AMAX_SECOND

    if prog.fp8 is None or prog.fp8.delayed:
        return
    by_name = {k.name: k for k in prog.kernels}

    def x_of(launch: Launch, base: int | None) -> tuple[str, str] | None:
        """(kernel, the tensor it casts relative to the layer `base`) of an FP8 GEMM launch that casts its x
        (forward) or its dY (dX, dW) with an amax, else None"""
        k = by_name.get(launch.fn)
        if k is None or k.family != "linear_fp8":
            return None
        if k.op == "linear" and k.flags.get("cast_x"):
            at = 2 if k.flags.get("gelu") else 1  # (pre,) out, x, w, ...
        elif k.op in ("linear_dx", "linear_dw") and k.flags.get("cast_dy"):
            at = 2 if k.op == "linear_dw" and k.flags.get("bias") else 1  # dx | dw (, db), dy, ...
        else:
            return None
        return k.name, render_layers(launch.args[at], base)

    # (kernel, tensor) -> the partials set every such launch takes (1: the launch before wrote them, 2: the second
    # set of the last FP8_AMAX_SECOND launch before it), 0 where some launch has none
    fused: dict[tuple[str, str], int] = {}
    makers: dict[tuple[str, str], set[str]] = {}
    for phase in ("fwd", "bwd"):
        flat = prog.flat[phase]
        for i, launch in enumerate(flat):
            key = x_of(launch, launch.node_layer)
            if key is None:
                continue
            prev = flat[i - 1] if i else None
            pk = by_name.get(prev.fn) if prev else None
            how = 0
            if pk is not None and pk.op in FP8_AMAX_PRODUCERS:
                how = int(render_layers(prev.args[FP8_AMAX_PRODUCERS[pk.op][1]], launch.node_layer) == key[1])
            if not how:
                before = (x for x in reversed(flat[:i]) if by_name.get(x.fn) and by_name[x.fn].op in FP8_AMAX_SECOND)
                prev = next(before, None)
                pk = by_name[prev.fn] if prev else None
                if pk is not None and render_layers(prev.args[FP8_AMAX_SECOND[pk.op][1]], launch.node_layer) == key[1]:
                    how = 2
            fused[key] = how if fused.get(key, how) == how else 0
            if how:
                makers.setdefault(key, set()).add(pk.name)
    # a GEMM kernel whose launches take different partials (none, the first set, the second) -> a copy per fused
    # kind: `..._amax_...` (first set), `..._amax2_...` (second set); the launches with none keep the kernel
    split: dict[tuple[str, int], str] = {}
    for name in {key[0] for key in fused}:
        kinds = {v for key, v in fused.items() if key[0] == name}
        if len(kinds) == 1:
            continue
        k = by_name[name]
        for how in sorted(kinds - {0}):
            parts = name.rsplit("_", 1)
            split[name, how] = f"{parts[0]}_amax{'' if how == 1 else how}_{parts[1]}"
            copy = dataclasses.replace(k, name=split[name, how], cfg=dict(k.cfg))
            prog.kernels.insert(prog.kernels.index(k) + 1, copy)
            by_name[copy.name] = copy
    for key, how in fused.items():
        if not how:
            continue
        k = by_name[split.get((key[0], how), key[0])]
        table = FP8_AMAX_PRODUCERS if how == 1 else FP8_AMAX_SECOND
        k.cfg["AMAX_FROM"] = " / ".join(sorted({table[by_name[m].op][0] for m in makers[key]}))
        k.cfg["AMAX_SET"] = how
        for m in makers[key]:
            by_name[m].cfg["AMAX"] = 1

    def rename(launch: Launch | None, base: int | None) -> None:
        key = x_of(launch, base) if launch is not None else None
        if key is not None and (key[0], fused.get(key)) in split:
            launch.fn = split[key[0], fused[key]]

    for launch in prog.flat["fwd"] + prog.flat["bwd"]:
        rename(launch, launch.node_layer)
    for item in prog.forward + prog.backward:  # the loops' bodies may be copies of the flat launches
        if isinstance(item, Loop):
            for b in item.body:
                rename(b, item.first)
            for e in item.edge:
                rename(e, e.node_layer if e is not None else None)
        else:
            rename(item, item.node_layer)


def configure(prog: Program) -> Program:
    scratch = 0  # bytes of the shared scratch buffer
    for k in prog.kernels:
        k.template = FAMILY.format(family=k.family)
        if k.family in LAUNCH:
            k.cfg, need = LAUNCH[k.family](k, prog.dtype)
            scratch = max(scratch, need)
    norm_bwd = [k for k in prog.kernels if k.op in ("layernorm_bwd", "rmsnorm_bwd")]
    if norm_bwd:  # the norm backward's group counters: past every kernel's part, so nothing else writes them
        scratch = -(-scratch // 256) * 256
        for k in norm_bwd:
            k.cfg["CTR"] = scratch
        scratch += 4 * NORM_COUNTERS
    prog.scratch_bytes = scratch
    fp8_fuse_amax(prog)
    prog.fa2_attention = any(k.cfg.get("FA2") for k in prog.kernels)
    if prog.fa2_attention:
        fa2_d_buffer(prog)
    prog.kernel_headers = kernel_headers(prog)
    dw_stream_schedule(prog)
    return prog
