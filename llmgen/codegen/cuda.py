"""CUDA launch decisions: block sizes, attention tiles and scratch sizes, per kernel instance.

lower.py makes the target-independent Program; for the CUDA target this module then fills
each Kernel's `cfg` (constants the templates substitute) and the program's scratch size.
Every number here is a choice for a GPU that the emulation runs just as well.
"""

from __future__ import annotations

from llmgen.codegen.lower import Program

# op -> kernel family the CUDA templates implement (templates/cuda/<family>.cu.j2)
SUPPORTED = {
    "embed": "embed", "embed_bwd": "embed",
    "layernorm": "layernorm", "residual_layernorm": "layernorm", "layernorm_bwd": "layernorm",
    "linear": "linear", "linear_dx": "linear", "linear_dw": "linear",
    "attention": "attention", "attention_bwd": "attention",
    "softmax_xent": "xent", "xent": "xent", "xent_bwd": "xent",
    "add": "elementwise", "bias_add": "elementwise", "bias_grad": "elementwise", "gelu": "elementwise",
    "gelu_bwd": "elementwise", "mean": "elementwise", "mean_bwd": "elementwise",
    "grad_norm": "adamw", "adamw": "adamw", "adamw_all": "adamw",
    # Llama 3 (the token embedding has its own file: templates/cuda/token_embed.cu.j2)
    "token_embed": "token_embed", "token_embed_bwd": "token_embed",
    "rmsnorm": "rmsnorm", "residual_rmsnorm": "rmsnorm", "rmsnorm_bwd": "rmsnorm",
    "rope": "rope", "rope_bwd": "rope",
    "gqa_attention": "gqa_attention", "gqa_attention_bwd": "gqa_attention",
    "swiglu": "swiglu", "swiglu_bwd": "swiglu",
}

WARP = 32
LN_WARPS = 8               # layernorm: one warp per row, 8 rows per block
LN_BWD_MAX_BLOCKS = 256    # layernorm backward: column partial sums of at most this many blocks
COLSUM_MAX_BLOCKS = 256    # bias gradients: row chunks summed in a fixed order
NORM_BLOCKS = 512          # grad norm: partial sums of squares (doubles)
ATTN_ROWS = 64             # attention: query (or key) rows per block, one per thread
RMS_PER = 8                # RMSNorm: channels per thread (a block per row: C / 8 threads, 32 ... 1024)
RMS_BWD_MAX_BLOCKS = 256   # RMSNorm backward: dw partial sums of at most this many blocks
GQA_DPT = 32               # GQA attention: at most this many channels of a head per thread
GQA_THREADS = 128          # GQA attention: threads per block (about)


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def gqa_config(HD: int, NH: int, KV: int) -> dict[str, int]:
    """Work split of the GQA attention kernels (templates/cuda/gqa_attention.cu.j2).

    TPR threads share a (query row, head), each holding DPT <= GQA_DPT channels of q and of the
    accumulator in registers (head_dim 64: 2 threads, 128: 4), reducing dot products with TPR-lane
    shuffles. A forward / dq block takes BQ query rows of RB heads of one K/V group (RB divides the
    group size R, RB * TPR <= 8), so a K/V tile staged in shared memory serves RB heads; BQ * TPR is a
    multiple of 32 (whole warps for the shuffles). A dk/dv block takes BK key rows (BK * TPR = 128).
    BC: rows of a K/V (or Q/dY) tile, the scores of a tile stay in registers."""
    R = NH // KV
    tpr = 1
    while -(-HD // tpr) > GQA_DPT and tpr < WARP:
        tpr *= 2
    rb = max(d for d in range(1, R + 1) if R % d == 0 and d * tpr <= max(tpr, 8))
    bq = 1
    while bq * 2 * rb * tpr <= GQA_THREADS:
        bq *= 2
    bq = max(bq, WARP // tpr)
    return {"TPR": tpr, "DPT": -(-HD // tpr), "RB": rb, "BQ": bq, "BC": 32 if HD <= 128 else 16,
            "BK": max(1, GQA_THREADS // tpr)}


def tc_attention_config(HD: int, dtype: str) -> dict[str, int]:
    """Whether the tensor-core attention kernels (templates/cuda/attention_tc.cu.j2) apply: bf16
    builds with a head size that is a multiple of 16 up to 128 (so every row width NH*HD is too);
    else {"TC": 0}. Where they do, TC = 1 and their row strides and shared memory (bytes): 64-row bf16 tiles of two operands, then per warp (4 warps)
    fp32 tiles of 16 rows (SW: scores, and the staging of results, max(64, HD) columns; OS: the
    forward's output, HD; DS: dp, 64) and bf16 tiles (PS: p and ds, 64). Each stride is padded by 16
    bytes, so the rows a warp's lanes walk start in different banks (a 64-float row would put all
    16 in one), and stays a multiple of 16 bytes as wmma's ldm must; every tile starts 32-byte aligned."""
    if dtype != "bf16" or HD % 16 != 0 or HD > 128:
        return {"TC": 0}
    SW, OS, DS, PS = max(64, HD) + 4, HD + 4, 64 + 4, 64 + 8
    tiles = 2 * 64 * HD * 2
    return {"TC": 1, "SW": SW, "OS": OS, "DS": DS, "PS": PS,
            "SMEM_FWD": tiles + 4 * (16 * SW + 16 * OS) * 4 + 4 * 16 * PS * 2,
            "SMEM_DQ": tiles + 4 * (16 * SW + 16 * DS) * 4 + 4 * 16 * PS * 2,
            "SMEM_DKV": tiles + 2 * 64 * 4 + 4 * (16 * SW + 16 * DS) * 4 + 4 * 2 * 16 * PS * 2}


def configure(prog: Program) -> Program:
    missing = sorted({k.op for k in prog.kernels if k.op not in SUPPORTED})
    if missing:
        raise ValueError(f"the CUDA target has no kernels for {', '.join(missing)} yet (arch {prog.arch}); "
                         "build it with --target c")
    scratch = 0                                 # bytes of the shared scratch buffer
    for k in prog.kernels:
        k.family = SUPPORTED[k.op]              # the CUDA template file that renders it
        if k.op in ("layernorm", "residual_layernorm", "layernorm_bwd"):
            C = k.dims["C"]
            k.cfg = {"WARPS": LN_WARPS, "PER": (C + WARP - 1) // WARP, "MAXB": LN_BWD_MAX_BLOCKS}
            if k.op == "layernorm_bwd":
                scratch = max(scratch, 4 * 2 * C * LN_BWD_MAX_BLOCKS)
        elif k.op in ("attention", "attention_bwd"):
            HD = k.dims["HD"]
            bc = 32 if HD <= 128 else 16        # key (query) tile: scores stay in registers
            k.cfg = {"BR": ATTN_ROWS, "BC": bc, **tc_attention_config(HD, prog.dtype)}
        elif k.op in ("softmax_xent", "xent", "xent_bwd"):
            k.cfg = {"NT": min(1024, max(WARP, _pow2_at_least(k.dims["V"] // 16)))}
        elif k.op in ("linear_dw", "bias_grad"):
            N = k.dims["N"] if k.op == "linear_dw" else k.dims["C"]
            k.cfg = {"MAXB": COLSUM_MAX_BLOCKS}
            scratch = max(scratch, 4 * N * (COLSUM_MAX_BLOCKS + 1))
        elif k.op == "grad_norm":
            k.cfg = {"NB": NORM_BLOCKS}
            scratch = max(scratch, 8 * NORM_BLOCKS)
        elif k.op == "mean":
            k.cfg = {"NT": 256}
        elif k.op in ("rmsnorm", "residual_rmsnorm", "rmsnorm_bwd"):
            C = k.dims["C"]
            nt = min(1024, max(WARP, _pow2_at_least(-(-C // RMS_PER))))
            k.cfg = {"NT": nt, "PER": -(-C // nt), "MAXB": RMS_BWD_MAX_BLOCKS}
            if k.op == "rmsnorm_bwd":
                scratch = max(scratch, 4 * C * RMS_BWD_MAX_BLOCKS)
        elif k.op in ("gqa_attention", "gqa_attention_bwd"):
            HD = k.dims["HD"]
            k.cfg = {**gqa_config(HD, k.dims["NH"], k.dims["KV"]), **tc_attention_config(HD, prog.dtype)}
    prog.scratch_bytes = scratch
    prog.tensor_core_attention = any(k.cfg.get("TC") for k in prog.kernels)
    return prog
