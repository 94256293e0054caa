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
LN_WARPS = 8  # layernorm: one warp per row, 8 rows per block
LN_BWD_MAX_BLOCKS = 256  # layernorm backward: column partial sums of at most this many blocks
COLSUM_MAX_BLOCKS = 256  # bias gradients: row chunks summed in a fixed order
NORM_BLOCKS = 512  # grad norm: partial sums of squares (doubles)
RMS_PER = 8  # RMSNorm: channels per thread (a block per row: C / 8 threads, 32 ... 1024)
RMS_BWD_MAX_BLOCKS = 256  # RMSNorm backward: dw partial sums of at most this many blocks
ATTN_DPT = 32  # attention: at most this many channels of a head per thread
ATTN_THREADS = 128  # attention: threads per block (about)


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


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


def _layernorm(k: Kernel, dtype: str) -> tuple[dict, int]:
    C = k.dims["C"]
    cfg = {"WARPS": LN_WARPS, "PER": (C + WARP - 1) // WARP, "MAXB": LN_BWD_MAX_BLOCKS}
    return cfg, 4 * 2 * C * LN_BWD_MAX_BLOCKS if k.op == "layernorm_bwd" else 0


def _attention(k: Kernel, dtype: str) -> tuple[dict, int]:
    HD = k.dims["HD"]
    return {**attention_config(HD, k.dims["NH"], k.dims["KV"]), **tc_attention_config(HD, dtype)}, 0


def _xent(k: Kernel, dtype: str) -> tuple[dict, int]:
    return {"NT": min(1024, max(WARP, _pow2_at_least(k.dims["V"] // 16)))}, 0


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


def _rmsnorm(k: Kernel, dtype: str) -> tuple[dict, int]:
    C = k.dims["C"]
    nt = min(1024, max(WARP, _pow2_at_least(-(-C // RMS_PER))))
    cfg = {"NT": nt, "PER": -(-C // nt), "MAXB": RMS_BWD_MAX_BLOCKS}
    return cfg, 4 * C * RMS_BWD_MAX_BLOCKS if k.op == "rmsnorm_bwd" else 0


LAUNCH = {
    "layernorm": _layernorm,
    "attention": _attention,
    "xent": _xent,
    "linear": _linear,
    "linear_fp8": _linear,  # --dtype fp8's block linears (templates/cuda/linear_fp8.cu.j2): the same colsum scratch
    "elementwise": _elementwise,
    "adamw": _adamw,
    "rmsnorm": _rmsnorm,
}


def kernel_headers(prog: Program) -> list[str]:
    """The kernel families written as C++ templates that the program pastes before its kernels: the
    tensor-core attention (templates/cuda/attention_tc.cuh) when it runs, then templates/cuda/<family>.cuh of
    each family the program uses that has one (linear has none: cuBLASLt). They do not use one another; the
    family templates (.cu.j2) instantiate them."""
    from llmgen.codegen import templates_dir

    folder = templates_dir() / "cuda"
    families = sorted({k.family for k in prog.kernels})
    tc = ["cuda/attention_tc.cuh"] if prog.tensor_core_attention else []
    fp8 = ["cuda/ptx.cuh", "cuda/kernels/fp8.cuh"] if prog.fp8 else []  # the FP8 casts need ptx.cuh's prmt
    return tc + fp8 + [f"cuda/{f}.cuh" for f in families if (folder / f"{f}.cuh").is_file()]


def configure(prog: Program) -> Program:
    scratch = 0  # bytes of the shared scratch buffer
    for k in prog.kernels:
        k.template = FAMILY.format(family=k.family)
        if k.family in LAUNCH:
            k.cfg, need = LAUNCH[k.family](k, prog.dtype)
            scratch = max(scratch, need)
    prog.scratch_bytes = scratch
    prog.tensor_core_attention = any(k.cfg.get("TC") for k in prog.kernels)
    prog.kernel_headers = kernel_headers(prog)
    return prog
