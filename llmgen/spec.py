"""Model specs: short dataclasses, validated when built, with one-line presets.

A spec is everything the compiler needs to specialise a trainer: every size here
becomes a compile-time constant in the emitted program. `load_spec` accepts a
preset name ("gpt2", "d12", "llama3.2-1b", ...), a Python file defining `spec = ...`,
or a Hugging Face config.json (model_type gpt2 or llama).

Two archs share one interface (what codegen, the trainer and the CLI read): `arch`,
`n_layer`, `n_head`, `n_embd`, `head_dim`, `vocab_size`, `padded_vocab_size`,
`max_seq_len`, `dtype`, `digest()`, `hf_config()` and `replace(**changes)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import runpy
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("fp32", "bf16", "fp8")  # fp8: bf16 storage, the block linears' GEMMs in FP8 (CUDA, sm_89+)


class SpecError(ValueError):
    """A spec value breaks a rule; the message names the field and the rule."""


def _check(cond: bool, field: str, rule: str, value) -> None:
    if not cond:
        raise SpecError(f"invalid spec: {field}={value!r}: {rule}")


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class SpecMethods:
    """What every spec dataclass shares: a copy with changes, and a stable digest."""

    def replace(self, **changes):
        fields = dataclasses.asdict(self)
        if "vocab_size" in changes and "padded_vocab_size" not in changes:
            fields["padded_vocab_size"] = 0  # derive the padding again from the new vocabulary
        fields.update(changes)
        return type(self)(**fields)

    def digest(self) -> str:
        """Stable short hash of every field: names the spec in banners and caches."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True)
class GPT2Spec(SpecMethods):
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257  # real vocabulary: the loss never sees more columns than this
    padded_vocab_size: int = 0  # rows of wte the kernels see (0 = round vocab up to 128, like llm.c)
    max_seq_len: int = 1024  # rows of wpe (HF: n_positions)
    layer_norm_eps: float = 1e-5
    dtype: str = "fp32"  # activations/params; bf16 keeps fp32 master weights (CUDA target)
    arch: str = "gpt2"

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "max_seq_len"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool), name, "must be an integer", v)
            _check(v > 0, name, "must be positive", v)
        _check(self.n_embd % self.n_head == 0, "n_embd", f"must be divisible by n_head={self.n_head}", self.n_embd)
        _check(
            isinstance(self.padded_vocab_size, int) and self.padded_vocab_size >= 0,
            "padded_vocab_size",
            "must be a non-negative integer (0 = automatic)",
            self.padded_vocab_size,
        )
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", _round_up(self.vocab_size, 128))
        _check(
            self.padded_vocab_size >= self.vocab_size,
            "padded_vocab_size",
            f"must be >= vocab_size={self.vocab_size}",
            self.padded_vocab_size,
        )
        _check(
            isinstance(self.layer_norm_eps, (int, float)) and 0 < self.layer_norm_eps < 1,
            "layer_norm_eps",
            "must be in (0, 1)",
            self.layer_norm_eps,
        )
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        _check(self.arch == "gpt2", "arch", "must be 'gpt2' for a GPT2Spec", self.arch)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def hf_config(self) -> dict:
        """The config.json a Hugging Face GPT2LMHeadModel needs to load our checkpoints."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "n_positions": self.max_seq_len,
            "n_ctx": self.max_seq_len,
            "n_inner": None,
            "vocab_size": self.vocab_size,
            "layer_norm_epsilon": self.layer_norm_eps,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "tie_word_embeddings": True,
            "bos_token_id": 50256 if self.vocab_size > 50256 else None,
            "eos_token_id": 50256 if self.vocab_size > 50256 else None,
            "torch_dtype": "float32",
        }


# Presets: one row each. GPT-2 sizes from the GPT-2 paper / HF; dNN are llm.c's depth shortcuts,
# which name the same four shapes by their layer count (d12 = 124M ... d48 = 1558M).
PRESETS: dict[str, GPT2Spec] = {
    "gpt2": GPT2Spec(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPT2Spec(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPT2Spec(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPT2Spec(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "d12": GPT2Spec(n_layer=12, n_head=12, n_embd=768),
    "d24": GPT2Spec(n_layer=24, n_head=16, n_embd=1024),
    "d36": GPT2Spec(n_layer=36, n_head=20, n_embd=1280),
    "d48": GPT2Spec(n_layer=48, n_head=25, n_embd=1600),
    # Small shapes for CPU runs and tests.
    "gpt2-tiny": GPT2Spec(n_layer=4, n_head=4, n_embd=128, max_seq_len=256),
}
PRESETS["gpt2-124m"] = PRESETS["gpt2"]
PRESETS["gpt2-350m"] = PRESETS["gpt2-medium"]
PRESETS["gpt2-774m"] = PRESETS["gpt2-large"]
PRESETS["gpt2-1558m"] = PRESETS["gpt2-xl"]


# --------------------------------------------------------------------------------------------
# Llama 3 / 3.1 / 3.2: field names of Meta's ModelArgs (llama-models), plus what llmgen needs.


def llama_ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The SwiGLU hidden size as Meta's FeedForward derives it: 2/3 of 4*dim, times the
    optional multiplier (both truncated to int), rounded up to a multiple of multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return _round_up(hidden, multiple_of)


@dataclass(frozen=True)
class LlamaSpec(SpecMethods):
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # grouped-query attention: K/V heads shared by n_heads // n_kv_heads
    # query heads each (None = n_heads, plain multi-head attention)
    vocab_size: int = 128256  # real vocabulary: the loss never sees more columns than this
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # scales the 8/3*dim hidden size (Llama 3 8B: 1.3)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 500000.0  # RoPE base (Llama 3: 500000; Llama 2: 10000)
    use_scaled_rope: bool = False  # Llama 3.1's frequency scaling for long context (next four fields)
    max_seq_len: int = 2048  # longest sequence a trainer accepts (-t); no table is sized by it
    rope_scaling_factor: float = 8.0  # low frequencies are divided by this (3.1: 8, 3.2 1B/3B: 32)
    rope_low_freq_factor: float = 1.0  # wavelengths above original/low are fully scaled
    rope_high_freq_factor: float = 4.0  # wavelengths below original/high are kept
    rope_original_max_seq_len: int = 8192  # the pre-training context those bounds refer to
    ffn_hidden_dim: int = 0  # explicit SwiGLU hidden size (HF intermediate_size); 0 = Meta's formula
    tie_embeddings: bool = False  # LM head shares embed_tokens (Llama 3.2 1B/3B) or has its own (8B)
    padded_vocab_size: int = 0  # rows of embed_tokens / lm_head the kernels see (0 = round up to 128)
    dtype: str = "fp32"
    arch: str = "llama3"

    def __post_init__(self):
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        for name in (
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "multiple_of",
            "max_seq_len",
            "rope_original_max_seq_len",
        ):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool), name, "must be an integer", v)
            _check(v > 0, name, "must be positive", v)
        _check(self.dim % self.n_heads == 0, "dim", f"must be divisible by n_heads={self.n_heads}", self.dim)
        _check(
            self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0,
            "n_kv_heads",
            f"must divide n_heads={self.n_heads} (each K/V head serves a whole group of query heads)",
            self.n_kv_heads,
        )
        _check(
            self.head_dim % 2 == 0,
            "dim",
            f"dim / n_heads = head_dim = {self.head_dim} must be even (rotary embeddings rotate pairs of channels)",
            self.dim,
        )
        _check(
            self.ffn_dim_multiplier is None
            or (
                isinstance(self.ffn_dim_multiplier, (int, float))
                and not isinstance(self.ffn_dim_multiplier, bool)
                and self.ffn_dim_multiplier > 0
            ),
            "ffn_dim_multiplier",
            "must be None or a positive number",
            self.ffn_dim_multiplier,
        )
        _check(
            isinstance(self.ffn_hidden_dim, int)
            and not isinstance(self.ffn_hidden_dim, bool)
            and self.ffn_hidden_dim >= 0,
            "ffn_hidden_dim",
            "must be a non-negative integer (0 = Meta's formula)",
            self.ffn_hidden_dim,
        )
        _check(
            isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1,
            "norm_eps",
            "must be in (0, 1)",
            self.norm_eps,
        )
        _check(
            isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1,
            "rope_theta",
            "must be > 1",
            self.rope_theta,
        )
        _check(isinstance(self.use_scaled_rope, bool), "use_scaled_rope", "must be true or false", self.use_scaled_rope)
        _check(isinstance(self.tie_embeddings, bool), "tie_embeddings", "must be true or false", self.tie_embeddings)
        _check(
            isinstance(self.rope_scaling_factor, (int, float)) and self.rope_scaling_factor >= 1,
            "rope_scaling_factor",
            "must be >= 1",
            self.rope_scaling_factor,
        )
        _check(
            isinstance(self.rope_low_freq_factor, (int, float)) and self.rope_low_freq_factor > 0,
            "rope_low_freq_factor",
            "must be positive",
            self.rope_low_freq_factor,
        )
        _check(
            isinstance(self.rope_high_freq_factor, (int, float))
            and self.rope_high_freq_factor > self.rope_low_freq_factor,
            "rope_high_freq_factor",
            f"must be greater than rope_low_freq_factor={self.rope_low_freq_factor}",
            self.rope_high_freq_factor,
        )
        _check(
            isinstance(self.padded_vocab_size, int) and self.padded_vocab_size >= 0,
            "padded_vocab_size",
            "must be a non-negative integer (0 = automatic)",
            self.padded_vocab_size,
        )
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", _round_up(self.vocab_size, 128))
        _check(
            self.padded_vocab_size >= self.vocab_size,
            "padded_vocab_size",
            f"must be >= vocab_size={self.vocab_size}",
            self.padded_vocab_size,
        )
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        _check(self.arch == "llama3", "arch", "must be 'llama3' for a LlamaSpec", self.arch)

    # the interface every spec offers (codegen, the trainer and the CLI read these names)
    @property
    def n_layer(self) -> int:
        return self.n_layers

    @property
    def n_head(self) -> int:
        return self.n_heads

    @property
    def n_kv_head(self) -> int:
        return self.n_kv_heads

    @property
    def n_embd(self) -> int:
        return self.dim

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden size (HF intermediate_size)."""
        return self.ffn_hidden_dim or llama_ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def rope_inv_freq(self) -> tuple[float, ...]:
        """RoPE's head_dim / 2 inverse frequencies theta^(-2i/head_dim), with Llama 3.1's scaling when
        use_scaled_rope: wavelengths shorter than original/high_freq_factor stay, longer than
        original/low_freq_factor are divided by the factor, and in between a smooth blend.
        Computed in float64 and rounded once to float32 (HF computes in float32: <= 1 ulp apart)."""
        import numpy as np

        hd = self.head_dim
        freq = 1.0 / (float(self.rope_theta) ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        if self.use_scaled_rope:
            old = float(self.rope_original_max_seq_len)
            lo, hi, factor = (
                float(self.rope_low_freq_factor),
                float(self.rope_high_freq_factor),
                float(self.rope_scaling_factor),
            )
            wavelen = 2 * np.pi / freq
            smooth = (old / wavelen - lo) / (hi - lo)
            blended = (1 - smooth) * freq / factor + smooth * freq
            freq = np.where(wavelen < old / hi, freq, np.where(wavelen > old / lo, freq / factor, blended))
        return tuple(float(f) for f in freq.astype(np.float32))

    def hf_config(self) -> dict:
        """The config.json a Hugging Face LlamaForCausalLM needs to load our checkpoints (rope_theta and
        rope_scaling as transformers 4.x writes them; 5.x reads them into rope_parameters)."""
        special = {}
        if self.vocab_size > 128001:  # Llama 3's <|begin_of_text|> / <|end_of_text|>
            special = {"bos_token_id": 128000, "eos_token_id": 128001}
        elif self.vocab_size == 50257:  # a small model on GPT-2 tokens: <|endoftext|>
            special = {"bos_token_id": 50256, "eos_token_id": 50256}
        scaling = None
        if self.use_scaled_rope:
            scaling = {
                "rope_type": "llama3",
                "factor": float(self.rope_scaling_factor),
                "low_freq_factor": float(self.rope_low_freq_factor),
                "high_freq_factor": float(self.rope_high_freq_factor),
                "original_max_position_embeddings": self.rope_original_max_seq_len,
            }
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": float(self.rope_theta),
            "rope_scaling": scaling,
            "tie_word_embeddings": self.tie_embeddings,
            "vocab_size": self.vocab_size,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "bos_token_id": special.get("bos_token_id"),
            "eos_token_id": special.get("eos_token_id"),
            "torch_dtype": "float32",
        }


# Llama presets: Meta's published shapes (llama-models ModelArgs / HF config.json), one row each.
_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, norm_eps=1e-5)
PRESETS.update(
    {
        "llama3.2-1b": LlamaSpec(
            dim=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            multiple_of=256,
            ffn_dim_multiplier=1.5,
            use_scaled_rope=True,
            rope_scaling_factor=32.0,
            max_seq_len=131072,
            tie_embeddings=True,
            **_LLAMA3,
        ),  # 1.24B
        "llama3.2-3b": LlamaSpec(
            dim=3072,
            n_layers=28,
            n_heads=24,
            n_kv_heads=8,
            multiple_of=256,
            ffn_dim_multiplier=1.0,
            use_scaled_rope=True,
            rope_scaling_factor=32.0,
            max_seq_len=131072,
            tie_embeddings=True,
            **_LLAMA3,
        ),  # 3.21B
        "llama3.1-8b": LlamaSpec(
            dim=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            multiple_of=1024,
            ffn_dim_multiplier=1.3,
            use_scaled_rope=True,
            rope_scaling_factor=8.0,
            max_seq_len=131072,
            **_LLAMA3,
        ),  # 8.03B
        "llama3-8b": LlamaSpec(
            dim=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            multiple_of=1024,
            ffn_dim_multiplier=1.3,
            max_seq_len=8192,
            **_LLAMA3,
        ),  # 8.03B, no scaling
        # Small shapes for CPU runs and tests: GPT-2's tokenizer (vocab 50257), GQA 4:1, RoPE scaled as
        # Llama 3.1 does (factor 8) from an "original" context of 64 to 256.
        "llama3-tiny": LlamaSpec(
            dim=128,
            n_layers=4,
            n_heads=8,
            n_kv_heads=2,
            vocab_size=50257,
            multiple_of=32,
            use_scaled_rope=True,
            rope_original_max_seq_len=64,
            max_seq_len=256,
            tie_embeddings=True,
        ),
        "llama3-micro": LlamaSpec(
            dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=512, multiple_of=16, max_seq_len=128
        ),
    }
)

Spec = GPT2Spec | LlamaSpec


def spec_from_hf_config(cfg: dict, source: str = "config.json") -> Spec:
    """Map a Hugging Face config.json (GPT-2 or Llama) onto a spec, refusing what we don't model."""
    model_type = cfg.get("model_type")
    if model_type == "llama":
        return spec_from_llama_config(cfg, source)
    if model_type != "gpt2":
        raise SpecError(f"{source}: model_type={model_type!r} is not supported (expected 'gpt2' or 'llama')")
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise SpecError(f"{source}: activation_function={act!r}: only the tanh GELU (gelu_new) is supported")
    if cfg.get("n_inner") not in (None, 4 * cfg.get("n_embd", 768)):
        raise SpecError(f"{source}: n_inner={cfg['n_inner']!r}: only the 4*n_embd MLP is supported")
    if cfg.get("tie_word_embeddings", True) is False:
        raise SpecError(f"{source}: tie_word_embeddings=false: GPT-2 ties the LM head to wte")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if cfg.get(flag):
            raise SpecError(f"{source}: {flag}=true is not supported")
    return GPT2Spec(
        n_layer=cfg.get("n_layer", 12),
        n_head=cfg.get("n_head", 12),
        n_embd=cfg.get("n_embd", 768),
        vocab_size=cfg.get("vocab_size", 50257),
        max_seq_len=cfg.get("n_positions", 1024),
        layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
    )


def spec_from_llama_config(cfg: dict, source: str = "config.json") -> LlamaSpec:
    """A Hugging Face LlamaConfig (transformers 4.x rope_theta/rope_scaling or 5.x rope_parameters)
    -> LlamaSpec. Defaults are LlamaConfig's where a key is absent."""
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise SpecError(f"{source}: hidden_act={act!r}: only SwiGLU with SiLU is supported")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise SpecError(f"{source}: {flag}=true is not supported (Llama 3 has no biases)")
    dim, heads = cfg.get("hidden_size", 4096), cfg.get("num_attention_heads", 32)
    if (
        isinstance(dim, int)
        and isinstance(heads, int)
        and heads > 0
        and cfg.get("head_dim") not in (None, dim // heads)
    ):
        raise SpecError(
            f"{source}: head_dim={cfg['head_dim']!r}: only head_dim = hidden_size / "
            f"num_attention_heads = {dim // heads} is supported"
        )
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if isinstance(rope.get("full_attention"), dict):  # 5.x per-layer-type form
        rope = dict(rope["full_attention"])
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise SpecError(f"{source}: partial_rotary_factor != 1 is not supported")
    scaled = {}
    if rope_type == "llama3":
        scaled = dict(
            use_scaled_rope=True,
            rope_scaling_factor=float(rope.get("factor", 8.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_seq_len=rope.get(
                "original_max_position_embeddings", cfg.get("max_position_embeddings", 2048)
            ),
        )
    elif rope_type != "default":
        raise SpecError(f"{source}: rope_scaling type {rope_type!r} is not supported (only 'llama3' or none)")
    return LlamaSpec(
        dim=dim,
        n_layers=cfg.get("num_hidden_layers", 32),
        n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads") or heads,
        vocab_size=cfg.get("vocab_size", 32000),
        ffn_hidden_dim=cfg.get("intermediate_size", 11008),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        **scaled,
    )


def _run_spec_file(path: Path) -> dict:
    """Run a spec file (as a module, not as __main__: an example's main() does not start) and return
    its names. Any error inside it becomes one SpecError line: `<file>:<line>: <what went wrong>`."""
    import traceback

    try:
        return runpy.run_path(str(path), run_name="llmgen_spec")
    except SyntaxError as e:
        where = f"{path}:{e.lineno}" if e.lineno else str(path)
        raise SpecError(f"{where}: syntax error: {e.msg}") from None
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- whatever the user's file raises is reported, not a traceback
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
        where = f"{path}:{frames[-1].lineno}" if frames else str(path)
        msg = str(e)
        if isinstance(e, TypeError) and "unexpected keyword argument" in msg:
            name = msg.split("'")[-2] if msg.count("'") >= 2 else "?"
            cls = msg.split(".")[0].split("(")[0]
            fields = {"GPT2Spec": GPT2Spec, "LlamaSpec": LlamaSpec}.get(cls)
            known = f" (its fields: {', '.join(f.name for f in dataclasses.fields(fields))})" if fields else ""
            msg = f"{cls} has no field {name!r}{known}"
        raise SpecError(
            f"{where}: {type(e).__name__}: {msg}"
            if not msg.startswith(("GPT2Spec", "LlamaSpec"))
            else f"{where}: {msg}"
        ) from None


def load_spec(source: str, dtype: str | None = None) -> Spec:
    """A preset name, a .py file defining `spec`, a config.json, or a folder holding one."""
    path = Path(source)
    if source in PRESETS:
        spec = PRESETS[source]
    elif path.is_dir() and (path / "config.json").is_file():
        return load_spec(str(path / "config.json"), dtype)
    elif path.suffix == ".json":
        if not path.is_file():
            raise SpecError(f"spec file not found: {source}")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}: not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise SpecError(f"{source}: expected a JSON object")
        spec = spec_from_hf_config(cfg, source)
    elif path.suffix == ".py":
        if not path.is_file():
            raise SpecError(f"spec file not found: {source}")
        ns = _run_spec_file(path)
        spec = ns.get("spec")
        if not isinstance(spec, (GPT2Spec, LlamaSpec)):
            raise SpecError(
                f"{source}: must define `spec = GPT2Spec(...)` or `LlamaSpec(...)` (found {type(spec).__name__})"
            )
    else:
        raise SpecError(
            f"unknown spec {source!r}: not a preset ({', '.join(sorted(PRESETS))}), a .py file or a config.json"
        )
    if dtype is not None:
        spec = spec.replace(dtype=dtype)
    return spec
