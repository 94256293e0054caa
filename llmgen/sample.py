"""Sampling from a checkpoint with a compiled model: what `llmgen sample` runs.

Contract
--------
- ``resolve_checkpoint(path)``: a checkpoint folder (model.safetensors + config.json), or a run
  folder's latest checkpoint.
- ``load_model(ckpt, backend, cache_dir, max_tokens, batch)``: an object with
  ``last_logits(rows (b, t)) -> float32 (b, vocab_size)`` for up to ``batch`` rows, and ``max_len``:
    "transformers": GPT2LMHeadModel / LlamaForCausalLM (from_pretrained) with its KV cache: one
                    token of work per new token;
    "compiled":     the in-process library of the same trainer llmgen train builds (cached per
                    spec; llmgen.runtime.process.CompiledModel): one forward of the context per token;
    "auto":         transformers when it and torch are installed, else compiled.
- ``generate(model, prompt, n, temperature, top_k, rng, stop)``: yields up to n token ids;
  ``generate_batch(..., num_samples)`` yields, per step, the next token of each of num_samples
  sequences computed together (one forward for all of them; row i draws before row i+1).
  temperature <= 0 or top_k == 1 is greedy (argmax, first of equal maxima, as torch's argmax);
  otherwise softmax(logits / temperature) over the top_k largest (top_k <= 0: all), drawn with
  ``rng`` (numpy Generator: a seed gives the same text on both backends up to float rounding).
  The context is the last ``max_len`` tokens.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from collections.abc import Iterator

import numpy as np

BACKENDS = ("auto", "transformers", "compiled")


class SampleError(ValueError):
    """A checkpoint or an option that sampling cannot use; the message says why."""


def resolve_checkpoint(path: Path) -> Path:
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "latest").is_file():
        ck = path / (path / "latest").read_text().strip()
        if (ck / "model.safetensors").is_file():
            return ck
    raise SampleError(f"{path}: neither a checkpoint (model.safetensors) nor a run folder with a `latest` checkpoint")


def checkpoint_spec(ckpt: Path):
    from llmgen.spec import spec_from_hf_config

    cfg_path = ckpt / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise SampleError(f"{cfg_path}: cannot read the model's config ({e})") from None
    return spec_from_hf_config(cfg, str(cfg_path)).replace(dtype="fp32")


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None


class TransformersModel:
    """A transformers causal LM (float32 on the CPU) fed incrementally through its KV cache."""

    def __init__(self, ckpt: Path, spec):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        self.torch = torch
        transformers.utils.logging.disable_progress_bar()  # stderr stays for our own lines
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        self.model = AutoModelForCausalLM.from_pretrained(str(ckpt), **{dtype_kw: torch.float32}).eval()
        self.max_len = spec.max_seq_len
        self.past, self.fed = None, None
        import inspect

        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the last position's logits only

    def last_logits(self, rows) -> np.ndarray:
        torch = self.torch
        rows = np.asarray(rows, np.int64)
        n = 0 if self.fed is None or self.past is None else self.fed.shape[1]
        if n and rows.shape[0] == self.fed.shape[0] and rows.shape[1] > n and np.array_equal(rows[:, :n], self.fed):
            new = rows[:, n:]  # the cache holds the prefix: feed only what is new
        else:
            self.past, new = None, rows  # first call, or the window slid: start over
        with torch.inference_mode():
            out = self.model(
                torch.from_numpy(np.ascontiguousarray(new)), use_cache=True, **{self.cache_kw: self.past}, **self.extra
            )
        self.past = getattr(out, "cache", None) or out.past_key_values
        self.fed = rows.copy()
        return out.logits[:, -1].float().numpy()


def _f32_copy_if_needed(ckpt: Path) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The C reader takes F32/BF16/F16 weights; a checkpoint saved in F64 is converted to a temporary
    F32 copy (same names) for the compiled model."""
    from llmgen.checkpoint import read_safetensors, read_safetensors_header, write_safetensors

    header, _, _ = read_safetensors_header(ckpt / "model.safetensors")
    if all(info["dtype"] in ("F32", "BF16", "F16") for info in header.values()):
        return ckpt, None
    tmp = tempfile.TemporaryDirectory(prefix="llmgen-sample-")
    write_safetensors(Path(tmp.name) / "model.safetensors", read_safetensors(ckpt / "model.safetensors"))
    (Path(tmp.name) / "config.json").write_text((ckpt / "config.json").read_text())
    return Path(tmp.name), tmp


class CompiledSampler:
    """The compiled trainer's library, holding the checkpoint's weights (llmgen.runtime.process)."""

    def __init__(self, ckpt: Path, spec, cache_dir: Path, capacity: int, batch: int = 1):
        from llmgen.codegen import Options
        from llmgen.runtime.build import cached_build
        from llmgen.runtime.process import CompiledModel

        library = cached_build(spec, Options(target="c"), cache_dir, library=True)
        weights, self._tmp = _f32_copy_if_needed(ckpt)
        self.max_len = capacity
        self.model = CompiledModel(library, spec, capacity, weights, batch=batch)

    def last_logits(self, rows) -> np.ndarray:
        return self.model.last_logits(np.asarray(rows).reshape(-1, np.shape(rows)[-1]))


def load_model(
    ckpt: Path, backend: str = "auto", cache_dir: Path | None = None, max_tokens: int | None = None, batch: int = 1
):
    """The model of one checkpoint for sampling (see the module doc); max_tokens bounds the context the
    compiled model allocates for (prompt + new tokens), batch the rows it runs at once."""
    from llmgen.files import cache_dir as default_cache

    if backend not in BACKENDS:
        raise SampleError(f"--backend {backend}: one of {', '.join(BACKENDS)}")
    spec = checkpoint_spec(ckpt)
    if backend == "auto":
        backend = "transformers" if transformers_available() else "compiled"
    if backend == "transformers":
        if not transformers_available():
            raise SampleError("--backend transformers needs transformers and torch (pip install transformers torch)")
        return TransformersModel(ckpt, spec)
    capacity = min(spec.max_seq_len, max_tokens or spec.max_seq_len)
    return CompiledSampler(ckpt, spec, Path(cache_dir) if cache_dir else default_cache(), capacity, batch)


def pick_next(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """One token from the logits (the rule in the module doc)."""
    if temperature <= 0 or top_k == 1:
        return int(np.argmax(logits))
    z = np.asarray(logits, np.float64) / temperature
    if 0 < top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z[z < cut] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate_batch(
    model,
    prompt: list[int],
    n: int,
    temperature: float = 1.0,
    top_k: int = 40,
    rng: np.random.Generator | None = None,
    stop: int | None = None,
    num_samples: int = 1,
) -> Iterator[list[int]]:
    """Yield, n times, the next token of each of num_samples sequences continuing `prompt`, computed in
    one batch; ends early once every sequence has produced `stop`."""
    if not prompt:
        raise SampleError("an empty prompt: start from at least one token")
    rng = rng if rng is not None else np.random.default_rng(0)
    rows = np.tile(np.asarray(prompt, np.int64), (num_samples, 1))
    done = np.zeros(num_samples, bool)
    for _ in range(n):
        logits = np.asarray(model.last_logits(rows[:, -model.max_len :])).reshape(num_samples, -1)
        nxt = [pick_next(logits[i], temperature, top_k, rng) for i in range(num_samples)]
        rows = np.concatenate([rows, np.asarray(nxt, np.int64)[:, None]], 1)
        yield nxt
        done |= np.asarray(nxt) == stop
        if done.all():
            return


def generate(
    model,
    prompt: list[int],
    n: int,
    temperature: float = 1.0,
    top_k: int = 40,
    rng: np.random.Generator | None = None,
    stop: int | None = None,
) -> Iterator[int]:
    """Yield up to n sampled token ids continuing `prompt` (stops after yielding `stop`)."""
    for (tok,) in generate_batch(model, prompt, n, temperature, top_k, rng, stop, 1):
        yield tok


class TextCodec:
    """Text <-> token ids for a checkpoint: GPT-2's tiktoken encoding for its 50257-token vocabulary,
    else the checkpoint's own tokenizer.json (Hugging Face tokenizers) when it has one."""

    def __init__(self, ckpt: Path, spec):
        if spec.vocab_size == 50257:
            from llmgen.tokenizer import EOT, get_gpt2_encoding

            self.enc, self.start, self.stop = get_gpt2_encoding(), EOT, EOT
            self.encode = self.enc.encode_ordinary
            self.token_bytes = self.enc.decode_single_token_bytes
            return
        tj = ckpt / "tokenizer.json"
        if not tj.is_file() or importlib.util.find_spec("tokenizers") is None:
            raise SampleError(
                f"{ckpt}: vocab_size {spec.vocab_size}: text needs GPT-2's vocabulary (50257) or a "
                "tokenizer.json in the checkpoint (with the tokenizers package installed)"
            )
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tj))
        bos = tok.token_to_id("<|begin_of_text|>")
        eos = tok.token_to_id("<|end_of_text|>")
        self.start, self.stop = bos, eos
        self.encode = lambda s: tok.encode(s, add_special_tokens=False).ids
        self.token_bytes = lambda i: tok.decode([i], skip_special_tokens=False).encode("utf-8")


def write_stream(tokens: Iterator[int], codec: TextCodec, out=sys.stdout) -> None:
    """Print tokens as they come, holding back bytes of a character split across tokens."""
    pending = b""
    for tok in tokens:
        if tok == codec.stop:
            break
        pending += codec.token_bytes(tok)
        try:
            out.write(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
        out.flush()
    out.write(pending.decode("utf-8", errors="replace"))
    out.flush()
