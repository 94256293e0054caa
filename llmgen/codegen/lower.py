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
from dataclasses import dataclass, field
from typing import Callable

from llmgen.flags import TRAINER_FLAGS, Flag, usage_lines
from llmgen.ir.graph import Graph, Node, Value
from llmgen.ir.ops import OPS
from llmgen.passes.memory import MemoryPlan
from llmgen.passes.precision import storage_dtypes

# the graph's interface values -> the program's variables: scalars, and what the trainer passes in
SCALARS = {("outputs", "loss"): "s_loss", ("inputs", "dloss"): "s_dloss", ("outputs", "grad_norm"): "s_grad_norm"}
RUNTIME = {"tokens": "inputs", "targets": "targets", "lr": "lr", "t": "step", "weight_decay": "weight_decay"}
ARENAS = {"params": "params_mem", "grads": "grads_mem", "m": "m_mem", "v": "v_mem"}


@dataclass
class Kernel:
    """One emitted function: an op specialised to its constant dimensions, flags and constants."""
    op: str
    family: str                # the op table's kernel family
    name: str
    comment: str
    dims: dict[str, int | str]
    flags: dict[str, bool]
    consts: dict[str, object] = field(default_factory=dict)  # from the op table: eps, scale, table, segments, ...
    cfg: dict[str, int] = field(default_factory=dict)        # the target's launch choices (tile sizes, ...)
    template: str = ""         # the target's family template that defines the macro `op` (set by the target)


@dataclass
class Launch:
    fn: str
    args: list[str]
    comment: str
    needs_targets: bool = False


@dataclass
class ParamRow:
    name: str          # graph name, e.g. h0.attn.c_attn.w
    cname: str         # C field name
    hf: str            # Hugging Face tensor name
    offset: int        # elements into the params / grads / moments arenas
    numel: int
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    transpose: bool    # HF Conv1D stores (in, out): transpose on load/save
    hf_rows: int       # rows present in the checkpoint (wte: the real vocabulary)
    decay: bool        # AdamW weight decay applies (2-D weights)
    init: str          # normal | ones | zeros
    std: float
    # llm.c's GPT-2 model file (-e model.bin), GPT-2 only (llmgen.llmc.tensor_places): where the tensor
    # starts in the file's parameters, how many of its rows are read (wte: the real vocabulary), and
    # whether llm.c stores it as the transpose of our layout (never for GPT-2: both keep (out, in))
    llmc_offset: int = -1
    llmc_rows: int = 0
    llmc_transpose: bool = False


@dataclass
class ActField:
    cname: str
    per_token: int     # offset in elements per token: the arena offset is BT * per_token
    shape: str         # e.g. (B,T,768)
    node: str          # the producing node, for the comment
    dtype: str = "f32"  # storage: f32, or bf16 under the CUDA target's mixed precision


@dataclass
class NamedBuffer:
    """A buffer the in-process runner can read by its graph name (params, grads, moments, activations)."""
    name: str          # graph name: "h0.qkv", "grad.wte", "m.wte"
    expr: str          # C expression of its pointer, e.g. A.h0_qkv
    numel: str         # C expression of its element count
    dtype: str = "f32"  # element type in memory: f32 | bf16


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
    params: list[ParamRow]
    param_elems: int
    acts: list[ActField]
    act_per_token: int
    kernels: list[Kernel]
    forward: list[Launch]
    backward: list[Launch]
    update: list[Launch]
    config_json: str           # the HF config.json the checkpoints carry, as a C string literal
    flops_per_token: int       # matmul FLOPs of one token, forward + backward
    flops_per_token_t: int     # attention FLOPs of one token per unit of sequence length T
    buffers: list[NamedBuffer] = field(default_factory=list)
    dtype: str = "fp32"        # fp32 | bf16 (params and activations; the CUDA target only)
    recompute: int = 0         # activation recompute level the schedule was made with (0, 1, 2)
    scratch_bytes: int = 0     # CUDA: one scratch buffer for partial sums (codegen/cuda.py sizes it)
    tensor_core_attention: bool = False   # CUDA: some attention kernel has a wmma version (codegen/cuda.py)
    flags: tuple[Flag, ...] = TRAINER_FLAGS   # the trainer's flags (llmgen/flags.py): its usage and parser
    usage: list[str] = field(default_factory=list)   # the usage text, one C string literal per line
    llmc_elems: int = 0        # parameters in an llm.c model file of this spec; 0: not GPT-2, no such file
    generation_config_json: str = '"{}"'   # the HF generation_config.json checkpoints carry, a C string literal


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
    return llmc.file_elems(spec)


def cname(name: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_")
    return s if not s[0].isdigit() else "_" + s


def c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def shape_str(v: Value) -> str:
    s = list(v.shape)
    if v.role not in ("act", "input") or "updates" in v.meta:     # parameter-shaped
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
    param_elems: int                       # elements of each parameter-layout arena (the grad norm's N)
    ref: Callable[[Value], str]            # Value -> the C expression of its pointer (or runtime value)
    rows: dict[int, "ParamRow"]            # param id -> its row in the parameter table

    def param_rows(self, values) -> list["ParamRow"]:
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


def lower(g: Graph, plan: MemoryPlan, target: str, version: str, recompute: int = 0,
          scalar_ref: str = "{}") -> Program:
    """scalar_ref: how a kernel argument names one of the graph's scalars ("&{}": a host variable
    whose address is passed, the C target; "{}": already a device pointer, the CUDA target)."""
    spec = g.spec
    stored = storage_dtypes(g, plan.dtype)
    pnames: dict[int, str] = {}
    params = []
    for p in g.params:
        cn = cname(p.name)
        pnames[p.id] = cn
        hf_rows = p.meta.get("hf_rows", p.shape[0])
        hf_shape = (hf_rows,) + tuple(p.shape[1:])
        if p.meta["hf_transpose"]:
            hf_shape = hf_shape[::-1]
        params.append(ParamRow(p.name, cn, p.meta["hf"], plan.param_offset[p.id], p.numel, p.shape, hf_shape,
                               p.meta["hf_transpose"], hf_rows, p.meta["decay"], p.meta["init"],
                               p.meta.get("std", 0.0)))

    acts: list[ActField] = []
    anames: dict[int, str] = {}
    producer = {v.id: n for n in g.nodes for v in n.outputs}
    used: set[str] = set()
    for v in sorted(plan.act_values, key=lambda v: plan.act_offset[v.id]):
        b, t = v.token_axes
        if not (len(v.shape) >= 2 and v.shape[b] == 1 and v.shape[t] == 1):
            raise AssertionError(f"activation {v.name}{list(v.shape)} does not scale with the tokens: "
                                 "the per-token memory plan cannot hold it")
        cn = cname(v.name)
        while cn in used:
            cn += "_"
        used.add(cn)
        anames[v.id] = cn
        acts.append(ActField(cn, plan.act_offset[v.id], shape_str(v), producer[v.id].op, stored[v.id]))
    for vid, root in plan.alias.items():         # in-place outputs name the buffer they overwrite
        anames[vid] = anames[root]

    scalars = {getattr(g, kind)[name].id: scalar_ref.format(c) for (kind, name), c in SCALARS.items()
               if name in getattr(g, kind)}
    runtime = {g.inputs[name].id: c for name, c in RUNTIME.items() if name in g.inputs}

    def ref(v: Value) -> str:
        if v.role == "param":
            return f"P.{pnames[v.id]}"
        if v.role == "grad":
            return f"G.{pnames[v.grad_of.id]}"
        if v.role == "state":
            return f"{v.meta['moment']}.{pnames[v.meta['of'].id]}"
        if v.id in runtime:
            return runtime[v.id]
        if v.id in scalars:
            return scalars[v.id]
        if "updates" in v.meta:
            return ref(v.meta["updates"])
        return f"A.{anames[v.id]}"

    ctx = LowerContext(plan.param_elems, ref, {p.id: r for p, r in zip(g.params, params)})

    kernels: dict[tuple, Kernel] = {}
    launches: dict[str, list[Launch]] = {"fwd": [], "bwd": [], "opt": []}
    needs_targets: set[int] = {g.inputs["targets"].id}
    names: set[str] = set()
    for n in g.nodes:
        opdef = OPS[n.op]
        dims, flags = opdef.dims(n, ctx), _flags(n)
        consts = opdef.consts(n, ctx) if opdef.consts else {}
        key = (n.op, tuple(dims.items()), tuple(sorted(flags.items())), _freeze(consts))
        if key not in kernels:
            name = _kernel_name(n.op, dims, flags)
            while name in names:          # another instance with the same sizes (other constants)
                name += "_"
            names.add(name)
            comment = f"{n.op} " + ", ".join(f"{a}={b}" for a, b in dims.items())
            kernels[key] = Kernel(n.op, opdef.family, name, comment, dims, flags, consts)
        k = kernels[key]
        if opdef.args:
            args = opdef.args(n, ctx)
        else:
            # outputs that update an input in place (AdamW) are that input's buffer: pass it once
            args = [ref(v) for v in n.outputs if "updates" not in v.meta] + [ref(v) for v in n.inputs]
        outs = ", ".join(f"{v.name} {shape_str(v)}" for v in n.outputs[:4])
        if len(n.outputs) > 4:
            outs += f", ... ({len(n.outputs)} outputs)"
        nt = any(v.id in needs_targets for v in n.inputs)
        if nt:
            needs_targets.update(v.id for v in n.outputs)
        launches[n.phase].append(Launch(k.name, args, f"{n.op}: {outs}", nt and n.phase == "fwd"))

    # params are stored in the program's dtype; grads and moments stay fp32
    buffers = [NamedBuffer(f"{pre}{r.name}", f"{arena}.{r.cname}", f"{r.numel}L",
                           "bf16" if arena == "P" and plan.dtype == "bf16" else "f32")
               for pre, arena in (("", "P"), ("grad.", "G"), ("m.", "M"), ("v.", "V")) for r in params]
    act_values = {v.id: v for v in plan.act_values}
    act_dtype = {a.cname: a.dtype for a in acts}
    for v in g.values():
        if v.id in plan.act_offset and v.id in anames:
            size = (act_values.get(v.id) or v).numel
            buffers.append(NamedBuffer(v.name, f"A.{anames[v.id]}", f"(long)BT * {size}",
                                       "bf16" if act_dtype[anames[v.id]] == "bf16" else "f32"))

    return Program(
        target=target, version=version, spec_hash=spec.digest(), arch=spec.arch,
        n_layer=spec.n_layer, n_head=spec.n_head, n_embd=spec.n_embd, vocab_size=spec.vocab_size,
        padded_vocab_size=spec.padded_vocab_size, max_seq_len=spec.max_seq_len,
        params=params, param_elems=plan.param_elems, acts=acts, act_per_token=plan.act_elems,
        kernels=list(kernels.values()), forward=launches["fwd"], backward=launches["bwd"],
        update=launches["opt"], config_json=c_string(json.dumps(spec.hf_config(), indent=2)),
        flops_per_token=graph_flops(g)[0], flops_per_token_t=graph_flops(g)[1], buffers=buffers, dtype=plan.dtype,
        recompute=recompute, usage=[c_string(line + "\n") for line in usage_lines()],
        llmc_elems=llmc_places(spec, params) if spec.arch == "gpt2" else 0,
        generation_config_json=c_string(json.dumps(generation_config(spec), indent=2) + "\n"))
