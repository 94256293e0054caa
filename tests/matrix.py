"""The arch x target matrix the trainer tests run over (tests/trainer/test_matrix.py and friends).

An arch is a tiny model (a Hugging Face config written by tests/oracle.py) plus the build flags it
always gets; a target is how its trainer is built: the plain C twin, or the CUDA program compiled
for the CPU through templates/cuda/emulate/ in fp32 or bf16. A row is one arch on one target with
its batch shape, its tolerance table and the optional checks that apply to it; a check that fits
only some rows selects them by these attributes (`rows_with("schedule")`), never by a copied file.

Emulation is ~40x slower than plain C, so the models are tiny and the runs short.

Kernel paths the rows cover
  GPT-2: every kernel of the fused and the unfused schedule, recompute levels 0/1/2, cuBLASLt's fused
  epilogues (GELU_AUX_BIAS, BIAS, DGELU, BGRADB) and, built with -DLLMGEN_NO_FUSED_EPILOGUES, the
  kernels that run when cuBLASLt lacks one. Attention: fp32 programs run the CUDA-core flash kernels
  only (no tensor-core intrinsics in an fp32 program: tests/trainer/test_emitted_source.py); bf16
  programs run the FlashAttention-2-class kernels (templates/cuda/kernels/attention_fa2.cuh: mma.sync,
  ldmatrix, cp.async) when the head size is 64 or 128 (gpt2-fa2: GPT-2's packed qkv, head size 64,
  sharpened scores, T=192: three key tiles, the diagonal and off-diagonal tile bodies) and the
  CUDA-core kernels otherwise (gpt2-tiny, gpt2-wide: head size 16).
  Llama (templates/cuda/{embed,rmsnorm,rope,attention,swiglu}.cu.j2; the attention's work split
  comes from llmgen/codegen/cuda.py's attention_config):
    gqa4-untied-scaled  GQA 4:1, own lm_head, Llama 3.1 scaling from an original context of 64
                        (at T=64 every band of the scaling is hit), head_dim 16: one thread per
                        (query row, head), the 4 heads of a group in one block
    mha-tied            1:1, tied head, no scaling, head_dim 48: a head split over 2 threads of 24 channels
    mha-tied-hd24       the same with head_dim 24 (the C twin's row)
    gqa2-tied-llama31   GQA 2:1, tied, Llama 3.1's own constants (head_dim 8 reaches the blended
                        and divided bands), built with --recompute 2
    odd (step 0 only)   GQA 3:1, head_dim 66 (4 threads of 17 channels: a ragged last slot), B=3,
                        T=37, vocab 129: tails of every tile and loop
    fa2-gqa2 (bf16)     the FA2 kernels with head_dim 64, GQA 2:1, sharpened scores, T=192
    fa2-mqa-hd128       (bf16, step 0 only) the FA2 kernels with head_dim 128, one K/V head for two
                        query heads, T=130: a ragged last tile in every kernel
  In bf16, fa2-gqa2 and fa2-mqa-hd128 run the FA2 attention, gqa4 (head_dim 16), mha-tied (48),
  gqa2-tied-llama31 (8) and odd (66) the CUDA-core one. rope_theta is 500000 everywhere.

Tolerances: every bound carries its reason and the worst error measured when it was set (in
brackets); the run prints the worst errors of this session at the end (conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bound:
    """A tolerance: `value` and why it is that number. kind says how the error is measured:
    "rel" relative to the reference value (to each tensor's largest |value| for tensors),
    "abs" absolute, "exact" bit-identical (value 0)."""

    value: float
    why: str
    kind: str = "rel"


@dataclass(frozen=True, eq=False)
class Arch:
    name: str
    family: str  # "gpt2" or "llama": which oracle and which transformers class
    config: dict  # the keyword arguments of oracle.make_{gpt2,llama}_model_dir
    seed: int
    qk_scale: float = 1.0  # sharper attention, so a missed online-softmax rescale shows
    build_flags: tuple = ()  # flags every build of this arch gets (--recompute 2)
    data_seed: int = 2

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]


@dataclass(frozen=True, eq=False)
class Target:
    name: str
    flags: tuple  # llmgen build flags
    dtype: str = "fp32"

    @property
    def cuda(self) -> bool:
        return "cuda" in self.flags


C = Target("c", ())
CUDA_FP32 = Target("cuda-fp32", ("--target", "cuda", "--emulate"))
CUDA_BF16 = Target("cuda-bf16", ("--dtype", "bf16", "--target", "cuda", "--emulate"), dtype="bf16")


@dataclass(frozen=True, eq=False)
class Row:
    arch: Arch
    target: Target
    B: int
    T: int
    tol: dict  # quantity -> Bound
    n_tokens: int = 4000  # tokens per shard (two shards)
    trained: bool = True  # 10 AdamW steps + the checkpoint in transformers (else step 0 only)
    checks: frozenset = frozenset()  # optional checks that apply: "schedule", "val", "inputs", ...
    routes: dict = field(default_factory=dict)  # other routes to the same losses: route -> its parameters
    source_needles: tuple = ()  # strings the emitted program must contain

    @property
    def id(self) -> str:
        return f"{self.target.name}-{self.arch.name}"

    @property
    def family(self) -> str:
        return self.arch.family

    def __repr__(self) -> str:
        return self.id


# ------------------------------------------------------------------------------------------
# tolerance tables

_FP32_ORDER = "both sides fp32, the kernels and PyTorch sum in different orders"

GPT2_C = {  # the C kernels and PyTorch sum in different orders
    "logits": Bound(3e-6, "values of size ~1-5, a few float32 ulps [2e-7]", "abs"),
    "loss": Bound(2e-6, "[1e-7]"),
    "grads": Bound(2e-5, "small grads carry more relative rounding [< 1e-6]"),
    "losses": Bound(1e-5, "10 AdamW losses: the issue's bound [2e-7]"),
    "norms": Bound(1e-4, "grad norms of the 10 steps"),
    "ckpt": Bound(1e-4, "the issue's bound for the reloaded checkpoint in transformers"),
    "lrs": Bound(1e-12, "the schedule: the same formula in double"),
    "sched_losses": Bound(1e-5, "cosine + warmup + weight decay + 2 micro-batches: as the 10 AdamW losses"),
    "val": Bound(1e-5, "val loss: a mean of 3 batches' losses, as the train losses"),
    "unfused": Bound(1e-6, "fused vs unfused kernels: the same sums, other rounding points"),
}

GPT2_CUDA_FP32 = {  # measured worst over the rows in brackets
    "logits": Bound(3e-6, "values of size ~1-5, a few float32 ulps [3.6e-7]", "abs"),
    "loss": Bound(2e-6, _FP32_ORDER + " [2.0e-7]"),
    "grads": Bound(2e-5, "to each tensor's largest |value| [9.3e-7]"),
    "losses": Bound(1e-4, "10 AdamW losses: the issue's bound [2.0e-7]"),
    "norms": Bound(1e-4, "grad norms [2.5e-7]"),
    "ckpt": Bound(1e-4, "the final checkpoint in GPT2LMHeadModel, next batch"),
    "accum": Bound(1e-6, "-d: two micro-batches of B=2 vs one of B=4, another summation order [0]"),
    "recompute": Bound(0, "the recompute kernels use the cuBLASLt epilogue's own expressions [0]", "exact"),
    "unfused": Bound(1e-6, "unfused kernels and the no-fused-epilogue fallbacks: other rounding points"),
    "twin_losses": Bound(1e-5, "the C twin's losses, 5 steps: two fp32 programs, other summation orders"),
    "twin_norms": Bound(1e-4, "the C twin's grad norms"),
    "twin_dump": Bound(2e-5, "the C twin's step-0 dump, every tensor relative to its largest |value|"),
}

# bf16: parameters and activations rounded to bf16, 8 significant bits: one rounding is up to
# 2^-9 = 2e-3 relative; PyTorch is the fp32 oracle; bounds 1.7-20x the measured error (logits: 1.7x)
GPT2_CUDA_BF16 = {
    "logits": Bound(
        2e-2,
        "a logit is a dot product of n_embd bf16 values after a dozen bf16 roundings of the "
        "residual stream; logits are O(1) [1.2e-2: gpt2-fa2, the same on CUDA cores]",
        "abs",
    ),
    "loss": Bound(1e-3, "the mean of B*T per-token losses averages the roundings [4.4e-5]"),
    "grads": Bound(
        5e-2,
        "to each tensor's largest |value|: activation gradients are bf16 and every GEMM input "
        "is rounded: a few bf16 ulps of the largest value per element [2.2e-2: gpt2-fa2; 2.5e-2 with its "
        "attention on CUDA cores]",
    ),
    "losses": Bound(
        5e-4,
        "means over B*T tokens; Adam's normalised steps keep the weights within a bf16 ulp or "
        "so of the fp32 run [5.7e-5]",
    ),
    "norms": Bound(1e-2, "a sum of squares of bf16-computed gradients [2.7e-3]"),
    "ckpt": Bound(5e-4, "the fp32 master weights after 10 bf16-computed steps: as the losses"),
    "accum": Bound(5e-4, "-d sums fp32 weight gradients in another order [2.3e-5]"),
    "recompute": Bound(
        5e-4,
        "other rounding points: recompute 1 takes GELU of the bf16 pre-activation, not of "
        "the fp32 GEMM result [2.3e-5]",
    ),
}

LLAMA_C = {  # the bound is 1e-4 relative for everything; the measured errors are far below it
    "logits": Bound(1e-4, "relative to max|logit| [< 5e-7 abs on logits of size ~1-5]", "rel"),
    "loss": Bound(1e-4, "[1e-7]"),
    "grads": Bound(1e-4, "to each tensor's max|value| [< 1.5e-6]"),
    "losses": Bound(1e-4, "10 AdamW losses [2e-7]"),
    "norms": Bound(1e-4, "grad norms [3e-7]"),
    "ckpt": Bound(1e-4, "the final checkpoint in LlamaForCausalLM, next batch [2e-7]"),
}

LLAMA_CUDA_FP32 = {  # measured worst over the rows in brackets; the bound is 1e-4 relative
    "logits": Bound(3e-6, "logits of size ~1-5: a few float32 ulps [6.6e-7]", "abs"),
    "loss": Bound(2e-6, _FP32_ORDER + " [9.7e-8]"),
    "grads": Bound(2e-5, "to each tensor's largest |value| [9.9e-7]"),
    "losses": Bound(1e-4, "10 AdamW losses: the issue's bound [1.8e-7]"),
    "norms": Bound(1e-4, "grad norms [3.0e-7]"),
    "ckpt": Bound(1e-4, "the final checkpoint in LlamaForCausalLM, next batch [0]"),
    "accum": Bound(1e-6, "-d: two micro-batches of B=2 vs one of B=4 [8.2e-8]"),
    "recompute": Bound(
        0,
        "recompute 1/2 rerun the same kernels on the same stored inputs (the residual RMSNorm "
        "normalises the floatX sum it stores)",
        "exact",
    ),
    "unfused": Bound(1e-6, "unfused kernels: other rounding points"),
    "twin_losses": Bound(1e-5, "the C twin's losses: two fp32 programs, other summation orders"),
    "twin_norms": Bound(1e-4, "the C twin's grad norms"),
}

# bf16: parameters and activations stored as bf16 (one rounding up to 2^-9 = 2e-3 relative); fp32 master
# weights, moments and parameter gradients; RMSNorm rstd, the attention log-sum-exp and the losses fp32;
# every kernel computes in fp32. The oracle stays fp32. About 4x the measured error, GPT-2's bf16
# bounds where they fit; the logits' 3e-2 is 1.5x fa2-mqa-hd128's (a wider residual stream, dim 256:
# the same error with the CUDA-core attention, so bf16's own, not the attention kernels').
LLAMA_CUDA_BF16 = {
    "logits": Bound(
        3e-2,
        "a logit is a dot product of dim bf16 values after a dozen bf16 roundings of the "
        "residual stream (q/k/v, RoPE, attention, o_proj, SwiGLU's three GEMMs, two norms per "
        "layer) [2.0e-2: fa2-mqa-hd128, dim 256; 2.05e-2 with its attention on CUDA cores]",
        "abs",
    ),
    "loss": Bound(1e-3, "the mean of B*T per-token losses averages the roundings [2.4e-5]"),
    "grads": Bound(
        6e-2,
        "to each tensor's largest |value|: activation gradients are bf16 and every GEMM input is rounded "
        "[2.3e-2: fa2-mqa-hd128; 2.2e-2 with its attention on CUDA cores]",
    ),
    "losses": Bound(5e-4, "means over B*T tokens; Adam's normalised steps [9.5e-5]"),
    "norms": Bound(1e-2, "a sum of squares of bf16-computed gradients [1.6e-3]"),
    "ckpt": Bound(5e-4, "the fp32 master weights after 10 bf16-computed steps [3.9e-5]"),
    "accum": Bound(5e-4, "fp32 weight gradients summed in another order [4.6e-5]"),
    "recompute": Bound(0, "the same kernels on the same stored inputs: bit-identical", "exact"),
}


# ------------------------------------------------------------------------------------------
# archs


def _gpt2(name, n_layer, n_head, n_embd, vocab_size, n_positions, **kw):
    return Arch(
        name,
        "gpt2",
        dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size, n_positions=n_positions),
        seed=7,
        data_seed=2,
        **kw,
    )


def _llama(name, **kw):
    extra = {k: kw.pop(k) for k in ("qk_scale", "build_flags") if k in kw}
    return Arch(name, "llama", kw, seed=5, data_seed=3, **extra)


SHORT_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LLAMA31_SCALING = dict(SHORT_SCALING, original_max_position_embeddings=8192)

GPT2_TINY = _gpt2("gpt2-tiny", 2, 2, 32, 100, 64)
GPT2_ODD = _gpt2("gpt2-odd", 1, 1, 48, 129, 32)  # one head, odd vocab and T: padding and loop tails
GPT2_WIDE = _gpt2("gpt2-wide", 3, 4, 64, 300, 128)
GPT2_FA2 = _gpt2("gpt2-fa2", 2, 2, 128, 300, 256, qk_scale=8.0)  # GPT-2's head size, sharp attention

LLAMA_GQA4 = _llama(
    "llama-gqa4-untied-scaled",
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=1,
    vocab_size=300,
    intermediate_size=96,
    max_position_embeddings=128,
    rope_scaling=SHORT_SCALING,
    tie_word_embeddings=False,
)
LLAMA_MHA = _llama(
    "llama-mha-tied",
    dim=96,
    n_layers=2,
    n_heads=2,
    n_kv_heads=2,
    vocab_size=257,
    intermediate_size=80,
    max_position_embeddings=64,
    rope_scaling=None,
    tie_word_embeddings=True,
)
LLAMA_MHA24 = _llama(
    "llama-mha-tied-hd24",
    dim=48,
    n_layers=2,
    n_heads=2,
    n_kv_heads=2,
    vocab_size=257,
    intermediate_size=80,
    max_position_embeddings=64,
    rope_scaling=None,
    tie_word_embeddings=True,
)
LLAMA_GQA2 = _llama(
    "llama-gqa2-tied-llama31",
    dim=64,
    n_layers=1,
    n_heads=8,
    n_kv_heads=4,
    vocab_size=200,
    intermediate_size=160,
    max_position_embeddings=64,
    rope_scaling=LLAMA31_SCALING,
    tie_word_embeddings=True,
    build_flags=("--recompute", "2"),
)
LLAMA_ODD = _llama(
    "llama-odd",
    dim=198,
    n_layers=1,
    n_heads=3,
    n_kv_heads=1,
    vocab_size=129,
    intermediate_size=100,
    max_position_embeddings=64,
    rope_scaling=None,
    tie_word_embeddings=False,
)
LLAMA_FA2 = _llama(
    "llama-fa2-gqa2",
    dim=256,
    n_layers=1,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=300,
    intermediate_size=128,
    max_position_embeddings=256,
    rope_scaling=None,
    tie_word_embeddings=False,
    qk_scale=4.0,
)  # scores 16x the init's
LLAMA_FA2_HD128 = _llama(
    "llama-fa2-mqa-hd128",
    dim=256,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    vocab_size=300,
    intermediate_size=128,
    max_position_embeddings=256,
    rope_scaling=None,
    tie_word_embeddings=False,
    qk_scale=4.0,
)


# ------------------------------------------------------------------------------------------
# rows

_C_GPT2 = frozenset({"schedule", "val", "inputs", "readable"})
# the same losses by other routes: B=4 in one micro-batch vs -d (two of B=2), recompute 1/2, two runs,
# and a run resumed from its step-3 checkpoint (bf16: the bf16 parameters are a pure function of the fp32
# master: hash-seeded stochastic rounding)
_SAME_LOSSES = {"B": 4, "T": 32}
_CUDA_GPT2_NEEDLES = (
    "// runtime",
    "// model constants",
    "// memory layout",
    "// device helpers",
    "// kernels",
    "// the schedule",
    "// target hooks",
    "// the trainer",
    "/* residual_layernorm: h0.residual2 (B,T,32)",
    "/* attention: h0.atty (B,T,32)",
    "LLMGEN_DYNAMIC_SMEM(float, smem)",
    "CUBLASLT_EPILOGUE_GELU_AUX_BIAS",
    "CUBLASLT_EPILOGUE_BIAS",
    "CUBLASLT_EPILOGUE_DGELU",
    "CUBLASLT_EPILOGUE_BGRADB",
)
_CUDA_LLAMA_KERNELS = (
    "rope_kernel",
    "attention_fwd_kernel",
    "attention_dq_kernel",
    "attention_dkv_kernel",
    "swiglu_kernel",
    "swiglu_bwd_kernel",
    # the memory-bound kernels of templates/cuda/kernels/ (namespace llmk), instantiated at the row's dim 64
    "llmk::embedding_forward<floatX, 64>(",
    "llmk::rmsnorm_forward<floatX, 64>(",
    "llmk::residual_rmsnorm_forward<floatX, 64>(",
    "llmk::rmsnorm_backward<floatX, 64>(",
    "llmk::embedding_backward_tokens<floatX, 64>(",
)
# the schedule's calls, each with the graph value it writes and its shape (rope works in place)
_CUDA_LLAMA_NEEDLES = (
    "attention_4x1x16(LA[0].atty, LA[0].att_lse, LA[0].q, LA[0].k, LA[0].v);  /* l0.atty (B,T,64)",
    "rope_4x16(LA[0].q, LA[0].q);  /* l0.q_rope (B,T,64) */",
)
# head_dim 66 over 4 threads per row (17 channel slots each, the last one ragged): the instance, the
# template's ragged-slot guard, and the warp shuffles
# the FA2 attention: its header pasted after ptx.cuh, D's buffer, the launcher's run-time condition
_FA2_NEEDLES = (
    "// ---- attention_fa2.cuh (templates/cuda/kernels/attention_fa2.cuh)",
    "float *att_D; /* (B,",
    "if ((addresses & 15) == 0) {",
)
_ODD_NEEDLES = ("AttentionShape<3, 1, 66, 198, 66, 4,", "!RAGGED || d < HD", "__shfl_xor_sync")

# the matrix reads as a table: one row a line or two
# fmt: off
ROWS = [
    # GPT-2 on the C twin (-b 4 -t 64 are the flags; 3000-token shards: the accumulation run
    # reads into the second shard)
    Row(GPT2_TINY, C, 4, 64, GPT2_C, n_tokens=3000, checks=_C_GPT2, routes={"unfused": dict(steps=5)}),
    Row(GPT2_ODD, C, 3, 7, GPT2_C, n_tokens=3000, checks=_C_GPT2),
    Row(GPT2_WIDE, C, 2, 32, GPT2_C, n_tokens=3000, checks=_C_GPT2),
    # GPT-2 on the emulated CUDA, fp32
    Row(GPT2_TINY, CUDA_FP32, 4, 64, GPT2_CUDA_FP32, routes={"same_losses": dict(_SAME_LOSSES, steps=6)},
        source_needles=_CUDA_GPT2_NEEDLES),
    Row(GPT2_ODD, CUDA_FP32, 3, 31, GPT2_CUDA_FP32),
    Row(GPT2_WIDE, CUDA_FP32, 2, 100, GPT2_CUDA_FP32,      # T=100: several 64-row query blocks, partial tiles
        routes={"unfused": dict(steps=4), "fallback_epilogues": dict(steps=4), "c_twin": dict(steps=5, dump=True)}),
    # GPT-2, bf16
    Row(GPT2_TINY, CUDA_BF16, 4, 64, GPT2_CUDA_BF16, checks=frozenset({"llmc_flags"}),
        routes={"same_losses": dict(_SAME_LOSSES, steps=6)}),
    Row(GPT2_WIDE, CUDA_BF16, 2, 100, GPT2_CUDA_BF16),
    Row(GPT2_FA2, CUDA_BF16, 2, 192, GPT2_CUDA_BF16,       # the FA2 attention, 3 key tiles
        source_needles=_FA2_NEEDLES + ("llmgen_fa2::attention_fwd<64>(y, lse, q, kk, v, B, T, 2, 2, 384, 384, 128",)),
    # Llama on the C twin
    Row(LLAMA_GQA4, C, 4, 64, LLAMA_C),
    Row(LLAMA_MHA24, C, 4, 64, LLAMA_C),
    Row(LLAMA_GQA2, C, 4, 64, LLAMA_C),
    # Llama on the emulated CUDA, fp32
    Row(LLAMA_GQA4, CUDA_FP32, 4, 64, LLAMA_CUDA_FP32, routes={"same_losses": dict(_SAME_LOSSES, steps=5)},
        source_needles=_CUDA_LLAMA_NEEDLES + _CUDA_LLAMA_KERNELS),
    Row(LLAMA_MHA, CUDA_FP32, 4, 64, LLAMA_CUDA_FP32,
        routes={"unfused": dict(steps=4, T=32), "c_twin": dict(steps=4, T=32)}),
    Row(LLAMA_GQA2, CUDA_FP32, 4, 64, LLAMA_CUDA_FP32),
    Row(LLAMA_ODD, CUDA_FP32, 3, 37, LLAMA_CUDA_FP32, trained=False, source_needles=_ODD_NEEDLES),
    # Llama, bf16
    Row(LLAMA_GQA4, CUDA_BF16, 4, 64, LLAMA_CUDA_BF16, routes={"same_losses": dict(_SAME_LOSSES, steps=5)}),
    Row(LLAMA_MHA, CUDA_BF16, 4, 64, LLAMA_CUDA_BF16),
    Row(LLAMA_GQA2, CUDA_BF16, 4, 64, LLAMA_CUDA_BF16),
    Row(LLAMA_ODD, CUDA_BF16, 3, 37, LLAMA_CUDA_BF16, trained=False, source_needles=_ODD_NEEDLES),
    Row(LLAMA_FA2, CUDA_BF16, 2, 192, LLAMA_CUDA_BF16,
        source_needles=_FA2_NEEDLES + ("llmgen_fa2::attention_bwd<64>(dq, dk, dv, A.att_D,",)),
    Row(LLAMA_FA2_HD128, CUDA_BF16, 2, 130, LLAMA_CUDA_BF16, trained=False,
        source_needles=_FA2_NEEDLES + ("llmgen_fa2::attention_fwd<128>(y, lse, q, kk, v, B, T, 2, 1, 256, 128, 256",)),
]
# fmt: on


def rows(**where):
    """The rows whose attributes match, e.g. rows(family="llama", target=C)."""
    out = ROWS
    for key, want in where.items():
        out = [r for r in out if (r.target if key == "target" else getattr(r, key)) == want]
    return out


def rows_with(check):
    """The rows an optional check applies to: listed in the row's checks or routes."""
    return [r for r in ROWS if check in r.checks or check in r.routes]


def params(selected):
    """pytest.mark.parametrize arguments over rows, with readable ids."""
    return dict(argvalues=selected, ids=[r.id for r in selected])
