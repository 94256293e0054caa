"""Lowering: the scheduled, planned graph -> typed template contexts (target-independent).

Python decides everything here (kernel instances, their compile-time dimensions and
flags, argument lists, buffer names and offsets); the templates only substitute and loop.
The batch shape (B, T) stays a runtime value of the emitted program: the graph is built
at B = T = 1, so every activation size in the plan is "per token" and the program carves
the arena at `BT * offset`. Every other size is a literal constant in the kernels.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from llmgen.flags import TRAINER_FLAGS, Flag, usage_lines
from llmgen.ir.graph import Graph, Node, Value
from llmgen.ir.ops import OPS
from llmgen.passes.memory import MemoryPlan
from llmgen.passes.precision import storage_dtypes

SCALARS = {"loss": "s_loss", "dloss": "s_dloss", "grad_norm": "s_grad_norm"}
# the C target keeps the graph's scalars in host variables (&s_loss); the CUDA target keeps
# them in device memory, where s_loss already is a pointer
SCALAR_REF = {"c": "&{}", "cuda": "{}"}
RUNTIME = {"tokens": "inputs", "targets": "targets", "lr": "lr", "t": "step", "weight_decay": "weight_decay"}


@dataclass
class Kernel:
    """One emitted function: an op specialised to its constant dimensions and flags."""
    op: str
    family: str
    name: str
    comment: str
    dims: dict[str, int | str]
    flags: dict[str, bool]
    eps: float = 0.0
    scale: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.0
    eps_adam: float = 0.0
    max_norm: float = 0.0
    decay: bool = False
    segments: list["ParamRow"] = field(default_factory=list)
    cfg: dict[str, int] = field(default_factory=dict)   # target launch constants (tile sizes, ...)
    table: tuple = ()          # a constant table the kernel embeds (RoPE: the head_dim/2 inverse frequencies)


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
    flops_per_token: int
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
    if v.name.endswith(".lse"):
        return f"(B,{s[1]},T)"
    if len(s) >= 2:
        return "(" + ",".join(["B", "T"] + [str(d) for d in s[2:]]) + ")"
    return str(tuple(s))


def _dims(node: Node, param_elems: int) -> dict[str, int | str]:
    op, ins, outs = node.op, node.inputs, node.outputs
    if op == "embed":
        return {"BT": "BT", "T": "T", "C": outs[0].shape[-1]}
    if op == "embed_bwd":
        return {"BT": "BT", "T": "T", "C": outs[0].shape[-1], "V": outs[0].shape[0], "P": outs[1].shape[0]}
    if op in ("layernorm", "residual_layernorm", "layernorm_bwd"):
        return {"N": "BT", "C": ins[0].shape[-1] if op != "layernorm_bwd" else ins[1].shape[-1]}
    if op == "linear":
        return {"M": "BT", "K": ins[1].shape[1], "N": ins[1].shape[0]}
    if op == "linear_dx":
        return {"M": "BT", "K": ins[1].shape[1], "N": ins[1].shape[0]}
    if op == "linear_dw":
        return {"M": "BT", "K": outs[0].shape[1], "N": outs[0].shape[0]}
    if op in ("attention", "attention_bwd"):
        qkv = ins[0] if op == "attention" else ins[1]
        nh = node.attrs["n_head"]
        C = qkv.shape[-1] // 3
        return {"NH": nh, "HD": C // nh, "C": C}
    # Llama 3 ops
    if op == "token_embed":
        return {"BT": "BT", "C": outs[0].shape[-1]}
    if op == "token_embed_bwd":
        return {"BT": "BT", "C": outs[0].shape[-1], "V": outs[0].shape[0]}
    if op in ("rmsnorm", "residual_rmsnorm", "rmsnorm_bwd"):
        return {"N": "BT", "C": ins[0].shape[-1] if op != "rmsnorm_bwd" else ins[1].shape[-1]}
    if op in ("rope", "rope_bwd"):
        nh = node.attrs["n_head"]
        return {"NH": nh, "HD": ins[0].shape[-1] // nh}
    if op in ("gqa_attention", "gqa_attention_bwd"):
        q = ins[0] if op == "gqa_attention" else ins[1]
        nh, kv = node.attrs["n_head"], node.attrs["n_kv_head"]
        return {"NH": nh, "KV": kv, "HD": q.shape[-1] // nh}
    if op in ("swiglu", "swiglu_bwd"):
        return {"F": outs[0].shape[-1]}
    if op in ("softmax_xent", "xent", "xent_bwd"):
        logits = ins[0] if op != "xent_bwd" else ins[1]
        return {"V": node.attrs["vocab"], "Vp": logits.shape[-1]}
    if op in ("bias_add", "bias_grad"):
        return {"R": "BT", "C": ins[0].shape[-1]}
    if op in ("add", "gelu", "gelu_bwd", "mean", "mean_bwd"):
        v = outs[0] if op != "mean" else ins[0]
        per_token = v.numel
        return {"N": "BT" if per_token == 1 else f"BT * {per_token}"}
    if op == "grad_norm":
        return {"N": param_elems}
    if op == "adamw":
        return {"N": ins[0].numel}
    if op == "adamw_all":
        return {}
    raise NotImplementedError(f"no C lowering for op {op}")


def _flags(node: Node) -> dict[str, bool]:
    flags = {f"acc{i}": v.role == "grad" for i, v in enumerate(node.outputs)}
    for k in ("bias", "gelu", "dgelu"):
        flags[k] = bool(node.attrs.get(k))
    flags["residual"] = bool(node.attrs.get("accumulate"))
    return flags


def _kernel_name(op: str, dims: dict, flags: dict) -> str:
    parts = [op] + [k for k in ("bias", "gelu", "dgelu", "residual") if flags.get(k)]
    if any(v for k, v in flags.items() if k.startswith("acc")):
        parts.append("acc" + "".join(k[3:] for k, v in sorted(flags.items()) if k.startswith("acc") and v))
    consts = [str(v) for v in dims.values() if isinstance(v, int)]
    return "_".join(parts + (["x".join(consts)] if consts else []))


def gemm_blocks(op: str, dims: dict) -> dict[str, int]:
    """Cache blocks of the C target's GEMM engine (templates/c/gemm.c.j2) for one linear kernel.

    kc: the reduction slice. A kc x NR panel of B (NR = 32 floats with AVX-512) should stay in L1
        and an MC x kc block of A in L2, so kc <= 384; the reduction is cut into equal slices
        (768 -> 2 x 384, 3072 -> 8 x 384), rounded up to 16 (the packing's transpose width).
        linear_dw reduces over the runtime B*T rows: 384 there.
    mc: rows of A per block, MC x kc x 4 bytes ~ 512 KiB (half of a 1-2 MiB L2).
    nc: columns of B per block, kc x NC x 4 bytes ~ 1.5 MiB: the packed panels a thread reuses
        across its MC row blocks (only when it has more than MC rows) sit in L2/L3.
    Measured on one Zen 5 core at the GPT-2 124M shapes (B*T = 256): kc from 128 to 384 all within
    +-4% (85-90% of the core's fp32 peak on the layer GEMMs); 384 makes the fewest passes over C."""
    reduction = {"linear": dims["K"], "linear_dx": dims["N"], "linear_dw": dims["M"]}[op]
    if isinstance(reduction, int):
        per_slice = -(-reduction // -(-reduction // 384))          # ceil(R / ceil(R / 384))
        kc = -(-per_slice // 16) * 16
    else:
        kc = 384
    return {"kc": kc, "mc": max(16, (512 * 1024 // 4) // kc), "nc": max(32, (1536 * 1024 // 4) // kc)}


def flops_per_token(g: Graph) -> int:
    """Matmul FLOPs of one training token (forward + backward; 2 per multiply-add),
    plus attention's q.k and p.v at full sequence length counted by the caller's T."""
    total = 0
    for n in g.nodes:
        if n.op == "linear":
            total += 2 * n.inputs[1].numel
        elif n.op in ("linear_dx", "linear_dw"):
            total += 2 * (n.inputs[1].numel if n.op == "linear_dx" else n.outputs[0].numel)
    return total


def lower(g: Graph, plan: MemoryPlan, target: str, version: str, recompute: int = 0) -> Program:
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
        if not (len(v.shape) >= 2 and v.shape[0] == 1 and (v.shape[1] == 1 or v.name.endswith(".lse"))):
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

    def ref(v: Value) -> str:
        if v.role == "param":
            return f"P.{pnames[v.id]}"
        if v.role == "grad":
            return f"G.{pnames[v.grad_of.id]}"
        if v.role == "state":
            return f"{v.meta['moment']}.{pnames[v.meta['of'].id]}"
        if v.role == "input" and v.name in RUNTIME:
            return RUNTIME[v.name]
        if v.name in SCALARS:
            return scalar(v.name)
        if "updates" in v.meta:
            return ref(v.meta["updates"])
        return f"A.{anames[v.id]}"

    def scalar(name: str) -> str:
        return SCALAR_REF[target].format(SCALARS[name])

    kernels: dict[tuple, Kernel] = {}
    launches: dict[str, list[Launch]] = {"fwd": [], "bwd": [], "opt": []}
    needs_targets: set[int] = {g.inputs["targets"].id}
    for n in g.nodes:
        dims, flags = _dims(n, plan.param_elems), _flags(n)
        extra = {}
        if n.op in ("layernorm", "residual_layernorm"):
            extra["eps"] = float(n.attrs["eps"])
        if n.op in ("attention", "attention_bwd", "gqa_attention", "gqa_attention_bwd"):
            extra["scale"] = 1.0 / math.sqrt(dims["HD"])
        if n.op in ("rmsnorm", "residual_rmsnorm"):
            extra["eps"] = float(n.attrs["eps"])
        if n.op in ("rope", "rope_bwd"):
            extra["table"] = tuple(n.attrs["inv_freq"])
        if n.op in ("adamw", "adamw_all"):
            extra.update(beta1=n.attrs["beta1"], beta2=n.attrs["beta2"], eps_adam=n.attrs["eps"],
                         max_norm=n.attrs["max_norm"])
        if n.op == "adamw":
            extra["decay"] = bool(n.attrs["decay"])
        key = (n.op, tuple(dims.items()), tuple(sorted(flags.items())), tuple(sorted(extra.items())))
        if key not in kernels:
            name = _kernel_name(n.op, dims, flags)
            if n.op == "adamw":
                name += "_decay" if extra["decay"] else "_nodecay"
            k = Kernel(n.op, OPS[n.op].family, name, "", dims, flags, **extra)
            if n.op == "adamw_all":
                k.segments = params
            k.comment = f"{n.op} " + ", ".join(f"{a}={b}" for a, b in dims.items())
            if target == "c" and n.op in ("linear", "linear_dx", "linear_dw"):
                k.cfg = gemm_blocks(n.op, dims)
            if target == "c" and n.op in ("attention", "attention_bwd"):
                # per-head GEMMs of at most T x T x HD (gemm_blocks); rb: query rows per causal block
                # (keys past the block's last row are skipped: ~half the work at T = 1024)
                k.cfg = {"kc": 384, "mc": 256, "nc": 1024, "rb": 64}
            kernels[key] = k
        k = kernels[key]
        if n.op == "grad_norm":
            args = [scalar("grad_norm"), "grads_mem"]
        elif n.op == "adamw_all":
            args = ["params_mem", "grads_mem", "m_mem", "v_mem", scalar("grad_norm"), "lr", "step", "weight_decay"]
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
        flops_per_token=flops_per_token(g), buffers=buffers, dtype=plan.dtype, recompute=recompute,
        usage=[c_string(line + "\n") for line in usage_lines()],
        llmc_elems=llmc_places(spec, params) if spec.arch == "gpt2" else 0,
        generation_config_json=c_string(json.dumps(generation_config(spec), indent=2) + "\n"))
