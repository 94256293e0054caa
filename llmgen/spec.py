"""Model specs: short dataclasses, validated when built, with one-line presets.

A spec is everything the compiler needs to specialise a trainer: every size here
becomes a compile-time constant in the emitted program. `load_spec` accepts a
preset name ("gpt2", "d12", ...), a Python file defining `spec = ...`, or a
Hugging Face config.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import runpy
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("fp32", "bf16")


class SpecError(ValueError):
    """A spec value breaks a rule; the message names the field and the rule."""


def _check(cond: bool, field: str, rule: str, value) -> None:
    if not cond:
        raise SpecError(f"invalid spec: {field}={value!r}: {rule}")


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class GPT2Spec:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257          # real vocabulary: the loss never sees more columns than this
    padded_vocab_size: int = 0       # rows of wte the kernels see (0 = round vocab up to 128, like llm.c)
    max_seq_len: int = 1024          # rows of wpe (HF: n_positions)
    layer_norm_eps: float = 1e-5
    dtype: str = "fp32"              # activations/params; bf16 keeps fp32 master weights (CUDA target)
    arch: str = "gpt2"

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "max_seq_len"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool), name, "must be an integer", v)
            _check(v > 0, name, "must be positive", v)
        _check(self.n_embd % self.n_head == 0, "n_embd",
               f"must be divisible by n_head={self.n_head}", self.n_embd)
        _check(isinstance(self.padded_vocab_size, int) and self.padded_vocab_size >= 0,
               "padded_vocab_size", "must be a non-negative integer (0 = automatic)", self.padded_vocab_size)
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", _round_up(self.vocab_size, 128))
        _check(self.padded_vocab_size >= self.vocab_size, "padded_vocab_size",
               f"must be >= vocab_size={self.vocab_size}", self.padded_vocab_size)
        _check(isinstance(self.layer_norm_eps, (int, float)) and 0 < self.layer_norm_eps < 1,
               "layer_norm_eps", "must be in (0, 1)", self.layer_norm_eps)
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        _check(self.arch == "gpt2", "arch", "must be 'gpt2' for a GPT2Spec", self.arch)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def replace(self, **changes) -> "GPT2Spec":
        fields = dataclasses.asdict(self)
        if "vocab_size" in changes and "padded_vocab_size" not in changes:
            fields["padded_vocab_size"] = 0
        fields.update(changes)
        return GPT2Spec(**fields)

    def digest(self) -> str:
        """Stable short hash of every field: names the spec in banners and caches."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

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


# Presets: one row each. GPT-2 sizes from the GPT-2 paper / HF; dNN are llm.c's depth shortcuts
# (width = 64 * depth, heads = depth... llm.c uses channels 64*d and heads d/ (for d12: 768, 12)).
PRESETS: dict[str, GPT2Spec] = {
    "gpt2":        GPT2Spec(n_layer=12, n_head=12, n_embd=768),            # 124M
    "gpt2-medium": GPT2Spec(n_layer=24, n_head=16, n_embd=1024),           # 350M
    "gpt2-large":  GPT2Spec(n_layer=36, n_head=20, n_embd=1280),           # 774M
    "gpt2-xl":     GPT2Spec(n_layer=48, n_head=25, n_embd=1600),           # 1558M
    "d12":         GPT2Spec(n_layer=12, n_head=12, n_embd=768),
    "d24":         GPT2Spec(n_layer=24, n_head=16, n_embd=1024),
    "d36":         GPT2Spec(n_layer=36, n_head=20, n_embd=1280),
    "d48":         GPT2Spec(n_layer=48, n_head=25, n_embd=1600),
    # Small shapes for CPU runs and tests.
    "gpt2-tiny":   GPT2Spec(n_layer=4, n_head=4, n_embd=128, max_seq_len=256),
}
PRESETS["gpt2-124m"] = PRESETS["gpt2"]
PRESETS["gpt2-350m"] = PRESETS["gpt2-medium"]
PRESETS["gpt2-774m"] = PRESETS["gpt2-large"]
PRESETS["gpt2-1558m"] = PRESETS["gpt2-xl"]


def spec_from_hf_config(cfg: dict, source: str = "config.json") -> GPT2Spec:
    """Map a Hugging Face GPT-2 config.json onto a GPT2Spec, refusing what we don't model."""
    model_type = cfg.get("model_type")
    if model_type != "gpt2":
        raise SpecError(f"{source}: model_type={model_type!r} is not supported (expected 'gpt2')")
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


def load_spec(source: str, dtype: str | None = None) -> GPT2Spec:
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
        ns = runpy.run_path(str(path))
        spec = ns.get("spec")
        if not isinstance(spec, GPT2Spec):
            raise SpecError(f"{source}: must define `spec = GPT2Spec(...)` (found {type(spec).__name__})")
    else:
        raise SpecError(f"unknown spec {source!r}: not a preset ({', '.join(sorted(PRESETS))}), "
                        "a .py file or a config.json")
    if dtype is not None:
        spec = spec.replace(dtype=dtype)
    return spec
