"""CUDA launch decisions: block sizes, attention tiles and scratch sizes, per kernel instance.

lower.py makes the target-independent Program; for the CUDA target this module then fills
each Kernel's `cfg` (constants the templates substitute), names the template of its family
and sizes the program's scratch buffer. Every number here is a choice for a GPU that the
emulation runs just as well.
"""

from __future__ import annotations

from llmgen.codegen.lower import Kernel, Program

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


def tc_attention_config(HD: int, dtype: str) -> dict[str, int]:
    """Whether the tensor-core attention kernels (templates/cuda/attention_tc.cuh) apply: bf16 builds
    with a head size that is a multiple of 16 up to 128 (so every row width NH*HD is too). Their tiles
    and shared memory follow from HD in the header itself."""
    return {"TC": int(dtype == "bf16" and HD % 16 == 0 and HD <= 128)}


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
    return {**attention_config(HD, k.dims["NH"], k.dims["KV"]), **tc_attention_config(HD, dtype)}, 0


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
    "elementwise": _elementwise,
    "adamw": _adamw,
    "rmsnorm": _norm,
}


# family -> its header in templates/cuda/kernels/
MEMORY_BOUND = {"layernorm": "norms", "rmsnorm": "norms", "xent": "xent", "adamw": "adamw", "embed": "embed"}


def kernel_headers(prog: Program) -> list[str]:
    """The kernel families written as C++ templates that the program pastes before its kernels: the
    tensor-core attention (templates/cuda/attention_tc.cuh) when it runs, the memory-bound families' headers in
    templates/cuda/kernels/ (MEMORY_BOUND, after their common.cuh), then templates/cuda/<family>.cuh of each
    other family the program uses that has one (linear has none: cuBLASLt). The family templates (.cu.j2)
    instantiate them."""
    from llmgen.codegen import templates_dir

    folder = templates_dir() / "cuda"
    families = sorted({k.family for k in prog.kernels})
    tc = ["cuda/attention_tc.cuh"] if prog.tensor_core_attention else []
    # the memory-bound families' kernels (templates/cuda/kernels/, after the common.cuh they share)
    mem = [f"cuda/kernels/{h}.cuh" for f, h in MEMORY_BOUND.items() if f in families]
    own = [f"cuda/{f}.cuh" for f in families if (folder / f"{f}.cuh").is_file()]
    return tc + (["cuda/kernels/common.cuh"] + sorted(set(mem)) if mem else []) + own


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
    prog.tensor_core_attention = any(k.cfg.get("TC") for k in prog.kernels)
    prog.kernel_headers = kernel_headers(prog)
    return prog
