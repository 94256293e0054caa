"""llm.c's GPT-2 model file, in and out: `llmgen convert`.

The format (llm.c, train_gpt2.c / train_gpt2.py write_model): a header of 256 int32
    [0] 20240326 (magic)   [1] version: 3 = fp32 parameters, 5 = bf16
    [2] max_seq_len  [3] vocab_size  [4] n_layer  [5] n_head  [6] n_embd  [7] padded_vocab_size
then the parameters back to back, in this order and these shapes (L layers stacked; linear
weights as (out, in), the transpose of Hugging Face's Conv1D (in, out)):
    wte (Vp, C)  wpe (maxT, C)  ln1w, ln1b (L, C)  qkvw (L, 3C, C)  qkvb (L, 3C)
    attprojw (L, C, C)  attprojb (L, C)  ln2w, ln2b (L, C)  fcw (L, 4C, C)  fcb (L, 4C)
    fcprojw (L, C, 4C)  fcprojb (L, C)  lnfw, lnfb (C)
The rows of wte past vocab_size are padding (written as zeros, dropped on import).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmgen.checkpoint import bf16_to_f32, f32_to_bf16
from llmgen.files import atomic_write, write_atomic

MAGIC = 20240326
VERSIONS = {3: "fp32", 5: "bf16"}


class LlmcError(ValueError):
    """A file that is not an llm.c GPT-2 model file, or cannot be converted."""


def _layout(L: int, C: int, V: int, Vp: int, T: int) -> list[tuple[str, tuple[int, ...]]]:
    """(llm.c name, shape) in file order."""
    return [
        ("wte", (Vp, C)),
        ("wpe", (T, C)),
        ("ln1w", (L, C)),
        ("ln1b", (L, C)),
        ("qkvw", (L, 3 * C, C)),
        ("qkvb", (L, 3 * C)),
        ("attprojw", (L, C, C)),
        ("attprojb", (L, C)),
        ("ln2w", (L, C)),
        ("ln2b", (L, C)),
        ("fcw", (L, 4 * C, C)),
        ("fcb", (L, 4 * C)),
        ("fcprojw", (L, C, 4 * C)),
        ("fcprojb", (L, C)),
        ("lnfw", (C,)),
        ("lnfb", (C,)),
    ]


# llm.c stacked tensor -> (HF per-layer name, transposed: llm.c (out, in) vs HF Conv1D (in, out))
_PER_LAYER = {
    "ln1w": ("ln_1.weight", False),
    "ln1b": ("ln_1.bias", False),
    "qkvw": ("attn.c_attn.weight", True),
    "qkvb": ("attn.c_attn.bias", False),
    "attprojw": ("attn.c_proj.weight", True),
    "attprojb": ("attn.c_proj.bias", False),
    "ln2w": ("ln_2.weight", False),
    "ln2b": ("ln_2.bias", False),
    "fcw": ("mlp.c_fc.weight", True),
    "fcb": ("mlp.c_fc.bias", False),
    "fcprojw": ("mlp.c_proj.weight", True),
    "fcprojb": ("mlp.c_proj.bias", False),
}


def tensor_places(spec) -> dict[str, tuple[int, tuple[int, ...], bool]]:
    """Where each Hugging Face GPT-2 tensor of `spec` lies in an llm.c model file:
    {HF name: (element offset into the parameter section, the llm.c tensor's shape (one layer's
    slice of a stacked tensor), transposed: llm.c stores it as the transpose of HF's Conv1D)}.
    wte's llm.c shape has the padded vocabulary's rows; HF's has only vocab_size of them.
    The trainers' own reader of llm.c files (-e model.bin) is driven by this table."""
    L, C, V, Vp, T = spec.n_layer, spec.n_embd, spec.vocab_size, spec.padded_vocab_size, spec.max_seq_len
    places, at = {}, 0
    for name, shape in _layout(L, C, V, Vp, T):
        n = int(np.prod(shape))
        if name == "wte":
            places["transformer.wte.weight"] = (at, shape, False)
        elif name == "wpe":
            places["transformer.wpe.weight"] = (at, shape, False)
        elif name in ("lnfw", "lnfb"):
            places["transformer.ln_f." + ("weight" if name == "lnfw" else "bias")] = (at, shape, False)
        else:
            hf, transposed = _PER_LAYER[name]
            per = n // L
            for i in range(L):
                places[f"transformer.h.{i}.{hf}"] = (at + i * per, shape[1:], transposed)
        at += n
    return places


def file_elems(spec) -> int:
    """Parameters in an llm.c model file of `spec` (after the 256-int32 header)."""
    return sum(
        int(np.prod(s))
        for _, s in _layout(spec.n_layer, spec.n_embd, spec.vocab_size, spec.padded_vocab_size, spec.max_seq_len)
    )


def read_llmc(path) -> tuple:
    """(GPT2Spec, {HF GPT-2 name: fp32 array}) from an llm.c model file."""
    from llmgen.spec import GPT2Spec

    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 1024:
        raise LlmcError(f"{path}: {len(raw)} bytes, too short for the 1024-byte llm.c header")
    h = np.frombuffer(raw[:1024], np.int32)
    if h[0] != MAGIC:
        raise LlmcError(f"{path}: magic {h[0]}, expected {MAGIC} (not an llm.c GPT-2 model file)")
    if int(h[1]) not in VERSIONS:
        raise LlmcError(f"{path}: version {h[1]}; llm.c model files are version 3 (fp32) or 5 (bf16)")
    T, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    spec = GPT2Spec(n_layer=L, n_head=NH, n_embd=C, vocab_size=V, max_seq_len=T, padded_vocab_size=Vp)
    layout = _layout(L, C, V, Vp, T)
    width = 4 if h[1] == 3 else 2
    want = 1024 + width * sum(int(np.prod(s)) for _, s in layout)
    if len(raw) != want:
        raise LlmcError(
            f"{path}: {len(raw)} bytes, but the header's shape (n_layer={L}, n_embd={C}, vocab "
            f"{V}/{Vp}, max_seq_len={T}, {VERSIONS[int(h[1])]}) needs {want} (truncated or damaged)"
        )
    data = (
        np.frombuffer(raw, np.float32, offset=1024)
        if width == 4
        else bf16_to_f32(np.frombuffer(raw, np.uint16, offset=1024))
    )
    out, at = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        a = data[at : at + n].reshape(shape)
        at += n
        if name == "wte":
            out["transformer.wte.weight"] = a[:V].copy()
        elif name == "wpe":
            out["transformer.wpe.weight"] = a.copy()
        elif name in ("lnfw", "lnfb"):
            out["transformer.ln_f." + ("weight" if name == "lnfw" else "bias")] = a.copy()
        else:
            hf, transposed = _PER_LAYER[name]
            for i in range(L):
                out[f"transformer.h.{i}.{hf}"] = np.ascontiguousarray(a[i].T if transposed else a[i])
    return spec, out


def write_llmc(path, spec, hf: dict[str, np.ndarray], dtype: str = "fp32") -> None:
    """An llm.c model file from HF GPT-2 tensors (lm_head is tied to wte, as in llm.c)."""
    if dtype not in ("fp32", "bf16"):
        raise LlmcError(f"--dtype {dtype}: llm.c model files hold fp32 (version 3) or bf16 (version 5)")
    L, C, V, Vp, T = spec.n_layer, spec.n_embd, spec.vocab_size, spec.padded_vocab_size, spec.max_seq_len

    def get(name, shape):
        if name not in hf:
            raise LlmcError(f"the checkpoint has no tensor {name}")
        a = np.asarray(hf[name], np.float32)
        if a.shape != shape:
            raise LlmcError(f"{name} has shape {list(a.shape)}, the config needs {list(shape)}")
        return a

    parts = []
    for name, shape in _layout(L, C, V, Vp, T):
        if name == "wte":
            a = np.zeros(shape, np.float32)
            a[:V] = get("transformer.wte.weight", (V, C))
        elif name == "wpe":
            a = get("transformer.wpe.weight", shape)
        elif name in ("lnfw", "lnfb"):
            a = get("transformer.ln_f." + ("weight" if name == "lnfw" else "bias"), shape)
        else:
            hf_name, transposed = _PER_LAYER[name]
            per = shape[1:]
            a = np.stack([get(f"transformer.h.{i}.{hf_name}", per[::-1] if transposed else per) for i in range(L)])
            if transposed:
                a = a.transpose(0, 2, 1)
        parts.append(np.ascontiguousarray(a, np.float32).ravel())
    flat = np.concatenate(parts)
    header = np.zeros(256, np.int32)
    header[:8] = [MAGIC, 3 if dtype == "fp32" else 5, T, V, L, spec.n_head, C, Vp]
    body = flat if dtype == "fp32" else f32_to_bf16(flat)
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(body.tobytes())


def convert(src, dst, dtype: str = "fp32") -> str:
    """llm.c .bin -> Hugging Face folder (model.safetensors + config.json), or a Hugging Face GPT-2
    folder (a checkpoint of ours included) -> llm.c .bin. Returns a line saying what was written."""
    from llmgen.checkpoint import read_safetensors, write_safetensors
    from llmgen.spec import load_spec

    src, dst = Path(src), Path(dst)
    if src.suffix == ".bin":
        spec, hf = read_llmc(src)
        if dst.exists() and not dst.is_dir():
            raise LlmcError(f"{dst} exists and is not a folder")
        if (dst / "model.safetensors").exists():
            raise LlmcError(f"{dst}/model.safetensors exists: refusing to overwrite a model")
        dst.mkdir(parents=True, exist_ok=True)
        write_safetensors(dst / "model.safetensors", hf)
        write_atomic(dst / "config.json", json.dumps(spec.hf_config(), indent=2) + "\n")
        return (
            f"wrote {dst}/model.safetensors + config.json ({spec.n_layer} layers, n_embd {spec.n_embd}, "
            f"vocab {spec.vocab_size}) from {src}"
        )
    if dst.suffix != ".bin":
        raise LlmcError(f"convert {src} -> {dst}: one side must be an llm.c model file (.bin)")
    if not (src / "model.safetensors").is_file():
        raise LlmcError(f"{src}: no model.safetensors (expected a Hugging Face GPT-2 folder or a checkpoint)")
    spec = load_spec(str(src))
    if spec.arch != "gpt2":
        raise LlmcError(f"{src}: llm.c model files hold GPT-2 only, this is {spec.arch}")
    write_llmc(dst, spec, read_safetensors(src / "model.safetensors"), dtype)
    return f"wrote {dst} (llm.c model file, version {3 if dtype == 'fp32' else 5}, {dtype}) from {src}"
