"""C target (the CPU twin) launch decisions: the GEMM engine's cache blocks and the attention
schedule, per kernel instance.

lower.py makes the target-independent Program; for the C target this module then fills each
Kernel's `cfg` (constants the templates substitute) and names the template of its family.
"""

from __future__ import annotations

from llmgen.codegen.lower import Kernel, Program

NAME = "c"
PROGRAM = "c/program.c.j2"          # the program skeleton
FAMILY = "c/{family}.c.j2"          # a kernel family: one macro per op
SCALAR_REF = "&{}"                  # the graph's scalars are host variables: kernels get their address


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


def attention_config(k: Kernel) -> dict[str, int]:
    """The attention schedule (templates/c/attention.c.j2). With one K/V head per query head
    (R = NH/KV = 1), threads split the (b, h) heads and every product is a per-head GEMM of at most
    T x T x HD (the GEMM engine's blocks kc, mc, nc), one block of rb query rows at a time so that
    the masked upper triangle is mostly skipped (~half the work at T = 1024). Grouped heads (R > 1,
    GROUPED = 1) take the row schedule instead: a thread owns a (b, K/V head) and walks the group's
    query heads row by row, so the dk, dv it sums over them need no second pass."""
    return {"kc": 384, "mc": 256, "nc": 1024, "rb": 64, "GROUPED": int(k.dims["NH"] != k.dims["KV"])}


# family -> its launch choices, for the families that have any
LAUNCH = {
    "linear": lambda k: gemm_blocks(k.op, k.dims),
    "attention": attention_config,
}


def configure(prog: Program) -> Program:
    for k in prog.kernels:
        k.template = FAMILY.format(family=k.family)
        if k.family in LAUNCH:
            k.cfg = LAUNCH[k.family](k)
    return prog
