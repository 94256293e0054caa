"""A roofline model of one training step: per kernel, the FLOPs and the bytes the graph says it
must move, and the time a GPU's ceilings allow; summed per kernel class and over the step.

    python -m llmgen.roofline gpt2 --gpu h200 -b 16 -t 1024 --dtype bf16
    roofline_report(spec, B, T, "h200", "bf16") -> the same text (`llmgen inspect --gpu` prints it)

Contract. The graph is the program's own (compile_graph at the real B and T, fused, as built), so
every kernel of a micro-batch step is one node; AdamW, the grad norm and the per-step zeroing of
the gradients run once per optimizer step. For each kernel:

- FLOPs: matmuls exactly (2 per multiply-add): a linear / linear_dx / linear_dw of M rows is
  2*M*N*K (epilogues not counted). Causal attention counts the pairs it must visit, the diagonal
  included (P = T*(T+1)/2 per head, HALVED against the full T*T): forward 2 matmuls (QK^T, PV),
  2*2*B*NH*hd*P FLOPs; backward 5, as FlashAttention-2 does (S recomputed from the saved log-sum-exp,
  dV, dP, dQ, dK), 2.5x the forward, or 7 (3.5x) where the program runs its deterministic FlashAttention-2-class
  kernels (attention_bwd_factor). Other kernels: an estimated FLOPs per element (OP_TABLE),
  which never bind (their intensity is far below the fp32 ridge).
- Bytes: the least the kernel must move: each input read once and each output written once at the
  size the program stores it (bf16 builds: activations bf16 except the fp32 statistics of
  passes/precision.py, weights read as the bf16 copy, gradients fp32 and accumulated (+=, so read
  and written), AdamW's master weights and moments fp32); no re-reads from tiling (a GEMM or flash
  attention with a good tile order reaches this through L2). A gather (embedding) reads the rows
  it gathers, not the whole table; its backward adds into at most min(B*T, V) rows.
  AdamW per parameter: fp32 builds read p, g, m, v and write p, m, v (28 bytes); bf16 builds
  read master, g, m, v and write master, m, v and the bf16 weight (30 bytes).
- Time: max(FLOPs / matmul or fp32 rate, bytes / bandwidth) per kernel, summed over the kernels
  (kernels run one after another on one stream). Matmuls and attention run on the bf16 tensor
  cores in bf16 builds, on fp32 CUDA cores in fp32 builds (the program's fp32 GEMMs use no tensor
  cores). Not modelled: launch gaps, host syncs and the token upload, the exp throughput of the
  special-function units, tail effects of partial waves.
- MFU: the trainer's own convention (its log's "mfu", PaLM's / llm.c's): model FLOPs = the matmul
  FLOPs above + 12 * n_layer * C * T per token for attention (forward + backward, NOT halved),
  over the datasheet dense peak.

OP_TABLE is the one place that knows op names: when ops are renamed or added, update it
(tests/test_roofline.py fails on a GPT-2 or Llama op it does not know).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from llmgen.ir.graph import Graph, Node, Value


# --------------------------------------------------------------------------------------------
# GPUs: datasheet ceilings, and the ones a program can reach


@dataclass(frozen=True)
class GPU:
    name: str
    hbm_bps: float  # datasheet memory bandwidth, bytes/s
    bf16_flops: float  # datasheet dense bf16 tensor-core FLOP/s (fp32 accumulate, no sparsity)
    fp32_flops: float  # datasheet fp32 FLOP/s on the CUDA cores (no tensor cores)
    achievable_bps: float  # what a copy kernel reaches
    achievable_bf16: float  # what a large bf16 GEMM reaches
    achievable_fp32: float
    memory_bytes: float  # device memory, bytes (datasheet)
    source: str


# Fractions measured on this workplace's H200 (/work/.library/device/KINDS.md, 2026-10-28 and
# 2026-11-04): a device-to-device copy moved 4.3 TB/s of the 4.8 (0.90), an 8192^3 bf16 matmul on
# random data ran at 788 TFLOP/s of the 989 (0.80). The H100 and A100 rows have no measurement here:
# they assume the same fractions (the H100 is the same chip at the same clocks; the A100 a guess).
_BW_FRAC, _MM_FRAC = 4.3 / 4.8, 788 / 989.4

GPUS: dict[str, GPU] = {
    "h200": GPU(
        "NVIDIA H200 SXM 141GB",
        4.8e12,
        989.4e12,
        66.9e12,
        4.3e12,
        788e12,
        66.9e12 * _MM_FRAC,
        141e9,
        "datasheet: NVIDIA H200 Tensor Core GPU (HBM3e 4.8 TB/s; H100 SXM compute: 989 TFLOP/s dense "
        "bf16, 67 fp32); achievable: measured here (KINDS.md: 4.3 TB/s copy, 788 TFLOP/s 8192^3 bf16 "
        "matmul)",
    ),
    "h100": GPU(
        "NVIDIA H100 SXM5 80GB",
        3.35e12,
        989.4e12,
        66.9e12,
        3.35e12 * _BW_FRAC,
        989.4e12 * _MM_FRAC,
        66.9e12 * _MM_FRAC,
        80e9,
        "datasheet: NVIDIA H100 Tensor Core GPU, SXM5 (HBM3 3.35 TB/s, 989 TFLOP/s dense bf16, 67 fp32); "
        "achievable: not measured, the H200's measured fractions (0.90 bandwidth, 0.80 matmul) assumed",
    ),
    "a100": GPU(
        "NVIDIA A100 SXM4 80GB",
        2.039e12,
        312e12,
        19.5e12,
        2.039e12 * _BW_FRAC,
        312e12 * _MM_FRAC,
        19.5e12 * _MM_FRAC,
        80e9,
        "datasheet: NVIDIA A100 Tensor Core GPU, SXM4 80GB (HBM2e 2.039 TB/s, 312 TFLOP/s dense bf16, "
        "19.5 fp32); achievable: not measured, the H200's measured fractions assumed",
    ),
}


def get_gpu(gpu) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    key = str(gpu).lower().replace("nvidia", "").replace(" ", "").replace("-", "")
    for k in GPUS:
        if key.startswith(k):
            return GPUS[k]
    raise ValueError(f"unknown GPU {gpu!r} (known: {', '.join(sorted(GPUS))})")


# --------------------------------------------------------------------------------------------
# the op table: op -> (kernel class, cost rule, estimated FLOPs per element for non-matmul kernels)

CLASSES = {  # class -> what it holds, in report order
    "gemm fwd": "GEMMs forward (+ bias / GELU epilogues)",
    "gemm bwd": "GEMMs backward (dX, dW + bias grads)",
    "attention fwd": "attention forward",
    "attention bwd": "attention backward",
    "norms": "layernorm / RMSNorm, forward and backward",
    "softmax-xent": "softmax + cross-entropy (+ dlogits)",
    "embedding": "embedding forward and backward",
    "adamw": "AdamW + grad norm + zeroing the grads",
    "elementwise": "elementwise (residual adds, GELU, RoPE, SwiGLU, loss mean)",
    "other": "ops OP_TABLE does not know (counted as streams)",
}

OP_TABLE: dict[str, tuple[str, str, float]] = {
    "linear": ("gemm fwd", "mm", 0),
    "linear_dx": ("gemm bwd", "mm_dx", 0),
    "linear_dw": ("gemm bwd", "mm_dw", 0),
    "attention": ("attention fwd", "attn_fwd", 0),
    "attention_bwd": ("attention bwd", "attn_bwd", 0),
    "layernorm": ("norms", "stream", 8),
    "residual_layernorm": ("norms", "stream", 9),
    "layernorm_bwd": ("norms", "stream", 12),
    "rmsnorm": ("norms", "stream", 5),
    "residual_rmsnorm": ("norms", "stream", 6),
    "rmsnorm_bwd": ("norms", "stream", 9),
    "softmax_xent": ("softmax-xent", "stream", 8),
    "xent": ("softmax-xent", "stream", 5),
    "xent_bwd": ("softmax-xent", "stream", 5),
    "embed": ("embedding", "gather", 1),
    "embed_bwd": ("embedding", "scatter", 1),
    "grad_norm": ("adamw", "stream", 2),
    "adamw": ("adamw", "adamw", 15),
    "adamw_all": ("adamw", "adamw", 15),
    "add": ("elementwise", "stream", 1),
    "bias_add": ("elementwise", "stream", 1),
    "bias_grad": ("elementwise", "stream", 1),
    "gelu": ("elementwise", "stream", 15),
    "gelu_bwd": ("elementwise", "stream", 20),
    "mean": ("elementwise", "stream", 1),
    "mean_bwd": ("elementwise", "stream", 1),
    "rope": ("elementwise", "stream", 3),
    "rope_bwd": ("elementwise", "stream", 3),
    "swiglu": ("elementwise", "stream", 6),
    "swiglu_bwd": ("elementwise", "stream", 12),
}


@dataclass
class KernelCost:
    name: str  # the graph node's first output (or a program step such as zero_grads)
    op: str
    cls: str
    flops: float
    bytes: float
    matmul: bool  # FLOPs at the matmul rate (tensor cores in bf16 builds)
    per_step: bool  # runs once per optimizer step (else once per micro-batch)
    speedup: float = 1.0  # the matmul rate times this: FP8_SPEEDUP for an FP8 GEMM of --dtype fp8
    compute_s: float = 0.0
    memory_s: float = 0.0

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)


@dataclass
class Prediction:
    spec: object
    B: int
    T: int
    dtype: str
    accum: int
    gpu: GPU
    kernels: list[KernelCost]
    step_s: float  # at the achievable ceilings
    datasheet_step_s: float  # at the datasheet ceilings
    model_flops: float  # per step, the MFU convention (module docstring)
    n_params: int
    memory_bytes: dict = field(default_factory=dict)  # the memory plan at B, T (bytes per arena)

    @property
    def tokens(self) -> int:
        return self.B * self.T * self.accum

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_s

    @property
    def mfu(self) -> float:
        tc = self.dtype in ("bf16", "fp8")  # fp8: against the bf16 peak, as the trainer's log does
        return self.model_flops / self.step_s / (self.gpu.bf16_flops if tc else self.gpu.fp32_flops)

    def classes(self) -> dict[str, dict]:
        """class -> kernels, flops, bytes, seconds (per step, micro-batch kernels times accum), share."""
        out: dict[str, dict] = {}
        for k in self.kernels:
            n = 1 if k.per_step else self.accum
            c = out.setdefault(
                k.cls, {"kernels": 0, "flops": 0.0, "bytes": 0.0, "seconds": 0.0, "compute_bound_s": 0.0}
            )
            c["kernels"] += n
            c["flops"] += n * k.flops
            c["bytes"] += n * k.bytes
            c["seconds"] += n * k.seconds
            c["compute_bound_s"] += n * k.seconds * (k.compute_s >= k.memory_s)
        for c in out.values():
            c["share"] = c["seconds"] / self.step_s
        return {k: out[k] for k in CLASSES if k in out}


# --------------------------------------------------------------------------------------------
# costs


def _store_bytes(v: Value, stored: dict[int, str], dtype: str) -> int:
    """Bytes per element of v as the program keeps it."""
    if v.shape == ():
        return 4  # scalars (loss, grad norm, lr) are fp32 program scalars
    if v.role == "param":
        return 2 if dtype == "bf16" else 4  # kernels read the bf16 copy; the master is AdamW's
    if v.role in ("grad", "state", "input"):
        return 4  # fp32 grads / moments; int32 tokens, fp32 scalars
    return 2 if stored.get(v.id, "bf16" if dtype == "bf16" else "f32") == "bf16" else 4


def _rows(v: Value) -> int:
    return v.numel // v.shape[-1]


def _stream_bytes(n: Node, sb) -> float:
    """Every distinct input read once, every output written once; gradients (+=) read too."""
    seen: set[int] = set()
    total = 0.0
    for v in n.inputs:
        if v.id not in seen:
            seen.add(v.id)
            total += v.numel * sb(v)
    for v in n.outputs:
        total += v.numel * sb(v) * (2 if v.role == "grad" else 1)
    return total


def _attention_dims(n: Node, rule: str) -> tuple[int, int, int]:
    """(B, T, query heads x head size) of an attention node: its y (forward) or dy (backward)."""
    v = n.outputs[0] if rule == "attn_fwd" else n.inputs[0]
    return v.shape[0], v.shape[1], v.shape[-1]


def attention_bwd_factor(n: Node, dtype: str, C: int) -> float:
    """The attention backward's FLOPs over the forward's, as the program executes them: the FlashAttention-2-class
    kernels (bf16 and fp8 builds, head size 64 or 128: codegen/cuda.py) do 7 matmuls, 3.5x (dk/dv: S, dP, dV, dK;
    dq recomputes S and dP before dQ, so that no float atomics are needed), the others FlashAttention-2's 5, 2.5x."""
    from llmgen.codegen.cuda import FA2_HEAD_SIZES

    return 3.5 if dtype in ("bf16", "fp8") and C // n.attrs["n_head"] in FA2_HEAD_SIZES else 2.5


def kernel_cost(n: Node, g: Graph, sb, dtype: str, param_elems: int) -> KernelCost:
    cls, rule, per_elem = OP_TABLE.get(n.op, ("other", "stream", 1))
    name = n.outputs[0].name if n.outputs else n.op
    matmul = rule.startswith(("mm", "attn"))
    if rule in ("mm", "mm_dx", "mm_dw"):
        if rule == "mm":  # x (M, K) . w (N, K)^T
            w = n.inputs[1]
            N, K = w.shape
            M = _rows(n.inputs[0])
        elif rule == "mm_dx":  # dy (M, N) . w (N, K)
            N, K = n.inputs[1].shape
            M = _rows(n.inputs[0])
        else:  # dy (M, N)^T . x (M, K) -> dw (N, K)
            N, K = n.outputs[0].shape
            M = _rows(n.inputs[0])
        return KernelCost(name, n.op, cls, 2.0 * M * N * K, _stream_bytes(n, sb), matmul, False)
    if rule in ("attn_fwd", "attn_bwd"):
        B, T, C = _attention_dims(n, rule)
        pairs = T * (T + 1) / 2  # causal: (query, key) pairs with key <= query
        fwd = 2 * 2.0 * B * C * pairs  # QK^T and PV over the pairs, all heads
        return KernelCost(
            name,
            n.op,
            cls,
            attention_bwd_factor(n, dtype, C) * fwd if rule == "attn_bwd" else fwd,
            _stream_bytes(n, sb),
            matmul,
            False,
        )
    if rule == "adamw":
        elems = param_elems if n.op == "adamw_all" else n.inputs[0].numel
        per = 30 if dtype == "bf16" else 28
        return KernelCost(name, n.op, cls, per_elem * elems, per * elems, False, True)
    if rule == "gather":  # tokens (B, T) index the first table's rows; a second table by position
        tokens, tables = n.inputs[0], n.inputs[1:]
        total = tokens.numel * sb(tokens) + sum(v.numel * sb(v) for v in n.outputs)
        for i, w in enumerate(tables):
            rows = min(tokens.numel if i == 0 else g.T, w.shape[0])
            total += rows * w.shape[-1] * sb(w)
        return KernelCost(name, n.op, cls, per_elem * n.outputs[0].numel, total, False, False)
    if rule == "scatter":  # dx (B, T, C) added into the rows its tokens name (and by position)
        dx, tokens = n.inputs[0], n.inputs[1]
        total = dx.numel * sb(dx) + tokens.numel * sb(tokens)
        for i, w in enumerate(n.outputs):
            rows = min(tokens.numel if i == 0 else g.T, w.shape[0])
            total += rows * w.shape[-1] * sb(w) * (2 if w.role == "grad" else 1)
        return KernelCost(name, n.op, cls, per_elem * dx.numel, total, False, False)
    largest = max([v.numel for v in n.inputs + n.outputs] or [0])
    return KernelCost(name, n.op, cls, per_elem * largest, _stream_bytes(n, sb), False, n.phase == "opt")


def kernel_costs(g: Graph, dtype: str, param_elems: int) -> list[KernelCost]:
    """One KernelCost per node of g, plus the program's per-step memset of the gradients."""
    from llmgen.passes.precision import storage_dtypes

    stored = storage_dtypes(g, dtype)

    def sb(v: Value) -> int:
        return _store_bytes(v, stored, dtype)

    out = [kernel_cost(n, g, sb, dtype, param_elems) for n in g.nodes]
    out.append(KernelCost("zero_grads", "memset", "adamw", 0.0, 4.0 * param_elems, False, True))
    return out


def attention_model_flops(g: Graph) -> float:
    """Attention's share of the MFU convention: 12 * B * T^2 * C per layer (forward + backward, the
    full T x T, not halved), i.e. 12 * n_layer * C * T per token."""
    total = 0.0
    for n in g.nodes:
        cls, rule, _ = OP_TABLE.get(n.op, ("other", "", 0))
        if rule == "attn_fwd":
            B, T, C = _attention_dims(n, rule)
            total += 12.0 * B * T * T * C
    return total


# --dtype fp8: the block linears' GEMMs at twice the bf16 rate (H100 / H200 datasheet: 1979 dense FP8 TFLOP/s
# against 989 bf16; the achievable fraction is assumed the bf16 GEMM's, not measured); the A100 has no FP8. Their
# bytes are the bf16 GEMM's (the FP8 operands are half, but the casts and amax passes read the bf16 tensors again).
FP8_SPEEDUP = 2.0
FP8_GPUS = ("h200", "h100")


def predict(
    spec, B: int, T: int, gpu="h200", dtype: str | None = None, accum: int = 1, recompute: int = 0
) -> Prediction:
    """The roofline of one optimizer step of `accum` micro-batches of B x T tokens (module docstring)."""
    from llmgen.compiler import compile_graph

    if B < 1 or T < 1 or accum < 1:
        raise ValueError(f"B, T and accum must be >= 1 (got B={B} T={T} accum={accum})")
    if T > spec.max_seq_len:
        raise ValueError(f"T={T} exceeds the spec's max_seq_len={spec.max_seq_len}")
    gpu = get_gpu(gpu)
    dtype = dtype or spec.dtype
    if dtype not in ("fp32", "bf16", "fp8"):
        raise ValueError(f"dtype must be fp32, bf16 or fp8, got {dtype!r}")
    if dtype == "fp8" and gpu not in [GPUS[k] for k in FP8_GPUS]:
        raise ValueError(f"--dtype fp8: {gpu.name} has no FP8 tensor cores (FP8 roofline for {', '.join(FP8_GPUS)})")
    spec = spec.replace(dtype=dtype)
    g, plan = compile_graph(spec, B=B, T=T, recompute=recompute, dtype=dtype)
    kernels = kernel_costs(g, plan.dtype, plan.param_elems)  # fp8: the bf16 plan's bytes
    for n, k in zip(g.nodes, kernels):
        if plan.fp8 is not None and n.id in plan.fp8.nodes:
            k.speedup = FP8_SPEEDUP
    mm_dtype = plan.dtype  # the tensor-core rate of bf16 and fp8 builds

    def total(mm_rate: float, other_rate: float, bps: float) -> float:
        s = 0.0
        for k in kernels:
            c = k.flops / (mm_rate * k.speedup if k.matmul else other_rate)
            m = k.bytes / bps
            s += max(c, m) * (1 if k.per_step else accum)
        return s

    mm_peak = gpu.achievable_bf16 if mm_dtype == "bf16" else gpu.achievable_fp32
    for k in kernels:
        k.compute_s = k.flops / (mm_peak * k.speedup if k.matmul else gpu.achievable_fp32)
        k.memory_s = k.bytes / gpu.achievable_bps
    step = total(mm_peak, gpu.achievable_fp32, gpu.achievable_bps)
    sheet = total(gpu.bf16_flops if mm_dtype == "bf16" else gpu.fp32_flops, gpu.fp32_flops, gpu.hbm_bps)
    gemm = sum(k.flops for k in kernels if k.cls.startswith("gemm"))
    model_flops = accum * (gemm + attention_model_flops(g))
    return Prediction(
        spec, B, T, dtype, accum, gpu, kernels, step, sheet, model_flops, sum(p.numel for p in g.params), plan.bytes()
    )


# --------------------------------------------------------------------------------------------
# the report


def _si(x: float, unit: str) -> str:
    for p, s in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.2f} {s}{unit}"
    return f"{x:.0f} {unit}"


def format_prediction(p: Prediction, verbose: bool = False) -> str:
    gpu, spec = p.gpu, p.spec
    tc = p.dtype in ("bf16", "fp8")  # tensor-core matmuls
    mm = gpu.achievable_bf16 if tc else gpu.achievable_fp32
    lines = [
        f"roofline: {spec.arch} n_layer={spec.n_layer} n_embd={spec.n_embd} ({p.n_params / 1e6:.0f}M parameters) "
        f"{p.dtype}, B={p.B} T={p.T}"
        + (f" x {p.accum} micro-batches" if p.accum > 1 else "")
        + f" = {p.tokens:,} tokens per optimizer step, on {gpu.name}",
        f"ceilings (achievable): {mm / 1e12:.0f} TFLOP/s {'bf16 tensor-core' if tc else 'fp32'} "
        f"matmul, {gpu.achievable_fp32 / 1e12:.1f} TFLOP/s fp32 elsewhere, {gpu.achievable_bps / 1e12:.2f} TB/s "
        f"({gpu.source})",
        "",
        "| kernel class | kernels | FLOPs | bytes | FLOP/byte | bound by | time (ms) | share |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for cls, c in p.classes().items():
        frac = c["compute_bound_s"] / c["seconds"] if c["seconds"] else 0.0
        bound = "compute" if frac > 0.9 else "memory" if frac < 0.1 else f"mixed ({frac:.0%} compute)"
        inten = c["flops"] / c["bytes"] if c["bytes"] else float("inf")
        lines.append(
            f"| {CLASSES[cls]} | {c['kernels']} | {_si(c['flops'], 'FLOP')} | {_si(c['bytes'], 'B')} | "
            f"{inten:.1f} | {bound} | {c['seconds'] * 1e3:.3f} | {c['share']:.1%} |"
        )
    n_k = sum(1 if k.per_step else p.accum for k in p.kernels)
    lines.append(
        f"| step | {n_k} | {_si(sum(c['flops'] for c in p.classes().values()), 'FLOP')} | "
        f"{_si(sum(c['bytes'] for c in p.classes().values()), 'B')} | | | {p.step_s * 1e3:.3f} | 100% |"
    )
    attn = sum(c["share"] for k, c in p.classes().items() if k.startswith("attention"))
    peak = gpu.bf16_flops if tc else gpu.fp32_flops
    mem = p.memory_bytes
    plan = mem.get("params", 0) + mem.get("grads", 0) + mem.get("optimizer_state", 0) + mem.get("activations", 0)
    lines += [
        "",
        f"predicted: {p.step_s * 1e3:.2f} ms/step, {p.tokens_per_s:,.0f} tokens/s, MFU {p.mfu:.1%} "
        f"({_si(p.model_flops, 'FLOP')} model FLOPs per step over the {peak / 1e12:.0f} TFLOP/s datasheet peak); "
        f"attention {attn:.1%} of the step",
        f"at the datasheet ceilings: {p.datasheet_step_s * 1e3:.2f} ms/step, "
        f"{p.tokens / p.datasheet_step_s:,.0f} tokens/s",
        f"memory plan: {plan / 2**30:.2f} GiB (parameters, grads, AdamW moments, activations; no cuBLAS workspace "
        "or scratch)"
        + (
            f": MORE than the {gpu.memory_bytes / 1e9:.0f} GB this GPU has"
            if plan > gpu.memory_bytes
            else f" of the {gpu.memory_bytes / 1e9:.0f} GB"
        ),
        "assumptions: causal attention FLOPs halved (pairs with key <= query), backward 3.5x forward "
        "(the FA2-class kernels' 7 matmuls; 2.5x elsewhere); MFU counts attention as 6 * 2 * n_layer * C * T "
        "per token, not halved (the trainer's convention); each kernel moves its inputs and outputs once; "
        "no launch gaps or host syncs.",
    ]
    n_fp8 = sum(k.speedup != 1.0 for k in p.kernels)
    if n_fp8:
        lines.append(
            f"fp8: {n_fp8} GEMMs (the block linears' forward, dX, dW) at {FP8_SPEEDUP:g}x the bf16 rate: the "
            "datasheet's dense FP8 rate, its achievable fraction assumed the bf16 GEMM's; their bytes are the "
            "bf16 GEMM's (the casts and amax passes are not separate kernels here); MFU against the bf16 peak."
        )
    unknown = sorted({k.op for k in p.kernels if k.cls == "other"})
    if unknown:
        lines.append(f"note: ops not in OP_TABLE, counted as streams of their operands: {', '.join(unknown)}")
    if verbose:
        lines += [
            "",
            "| kernel | op | class | FLOPs | bytes | compute (us) | memory (us) |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for k in p.kernels:
            lines.append(
                f"| {k.name} | {k.op} | {k.cls} | {_si(k.flops, 'FLOP')} | {_si(k.bytes, 'B')} | "
                f"{k.compute_s * 1e6:.1f} | {k.memory_s * 1e6:.1f} |"
            )
    return "\n".join(lines)


def roofline_report(
    spec,
    B: int,
    T: int,
    gpu="h200",
    dtype: str | None = None,
    accum: int = 1,
    recompute: int = 0,
    verbose: bool = False,
) -> str:
    """The text `llmgen inspect SPEC --gpu GPU` prints: per kernel class FLOPs, bytes and the time the
    roofline allows, then the predicted ms/step, tokens/s and MFU. Raises ValueError on bad input."""
    return format_prediction(predict(spec, B, T, gpu, dtype, accum, recompute), verbose)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmgen.roofline", description=__doc__.splitlines()[0])
    ap.add_argument("spec", help="preset name (gpt2, llama3.1-8b, ...), a .py file defining `spec`, or a config.json")
    ap.add_argument("--gpu", default="h200", help=f"one of {', '.join(sorted(GPUS))} [h200]")
    ap.add_argument("-b", type=int, default=16, help="micro-batch size [16]")
    ap.add_argument("-t", type=int, default=0, help="sequence length [min(1024, max_seq_len)]")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step [1]")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp8"), default=None, help="override the spec's dtype")
    ap.add_argument("--recompute", type=int, choices=(0, 1, 2), default=0, help="activation recompute level [0]")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list every kernel")
    args = ap.parse_args(argv)
    from llmgen.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec, args.dtype)
        T = args.t or min(1024, spec.max_seq_len)
        print(roofline_report(spec, args.b, T, args.gpu, args.dtype, args.accum, args.recompute, args.verbose))
    except (SpecError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
