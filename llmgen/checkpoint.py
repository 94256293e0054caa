"""Checkpoints in the Hugging Face layout (model.safetensors + config.json), from Python.

The emitted programs read and write the same files in C (templates/common/runtime.h);
this module is the Python side: the mapping between the graph's parameters and HF
tensors, and a small numpy safetensors reader/writer (format: u64 header length, JSON
header {name: {dtype, shape, data_offsets}}, raw little-endian data).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from llmgen.files import atomic_write

# safetensors dtype -> numpy dtype of the stored values (little-endian); BF16 is widened by hand
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
}


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file; the message names the file and the fault."""


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 values given as their uint16 bits, widened exactly to float32."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), rounded to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), ((u >> 16) | 0x40).astype(np.uint16), r)


def read_safetensors_header(path) -> tuple[dict, int, int]:
    """(header without __metadata__, offset of the data, file size), checked: the header length and
    JSON, each tensor's dtype, shape and byte range (inside the file, the size its shape needs)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(
                    f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)"
                )
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise SafetensorsError(
                    f"{path}: header length {n} runs past the end of the file ({size} bytes): "
                    "truncated, or not a safetensors file"
                )
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SafetensorsError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(
                f"{path}: tensor {name}: header entry {info!r} lacks dtype, shape or data_offsets"
            ) from None
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has dtype {dtype}; readable: {', '.join(_DTYPES)}")
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if not (isinstance(b, int) and isinstance(e, int) and 0 <= b <= e):
            raise SafetensorsError(f"{path}: tensor {name}: bad data_offsets {[b, e]}")
        if e - b != need:
            raise SafetensorsError(f"{path}: tensor {name}: {e - b} bytes for shape {shape} {dtype} (needs {need})")
        if base + e > size:
            raise SafetensorsError(
                f"{path}: truncated: tensor {name} ends at byte {base + e}, the file has {size} bytes"
            )
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [b, e]}
    return out, base, size


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor as float32 (F64, F16, BF16 and integer tensors converted), named as in the file.
    A damaged or foreign file raises SafetensorsError naming the file and the fault."""
    header, base, _ = read_safetensors_header(path)
    data = Path(path).read_bytes()
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(
            data, _DTYPES[info["dtype"]], count=(e - b) // np.dtype(_DTYPES[info["dtype"]]).itemsize, offset=base + b
        )
        arr = bf16_to_f32(arr) if info["dtype"] == "BF16" else arr
        out[name] = arr.reshape(info["shape"]).astype(np.float32, copy=True)
    return out


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """F32 tensors, metadata {"format": "pt"}, written atomically (llmgen.files)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def hf_to_params(graph, hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF tensors -> the graph's parameter arrays (transposing Conv1D, padding vocab rows)."""
    out = {}
    for p in graph.params:
        name = p.meta["hf"]
        if name not in hf:
            raise ValueError(f"checkpoint has no tensor {name} (parameter {p.name})")
        a = hf[name]
        if p.meta["hf_transpose"]:
            a = a.T
        want = list(p.shape)
        if "hf_rows" in p.meta:
            want[0] = p.meta["hf_rows"]
        if list(a.shape) != want:
            raise ValueError(
                f"{name}: shape {list(hf[name].shape)} does not match the spec "
                f"(expected {want[::-1] if p.meta['hf_transpose'] else want})"
            )
        full = np.zeros(p.shape, np.float32)
        full[: a.shape[0]] = a
        out[p.name] = full
    return out


def params_to_hf(graph, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for p in graph.params:
        a = params[p.name]
        if "hf_rows" in p.meta:
            a = a[: p.meta["hf_rows"]]
        out[p.meta["hf"]] = np.ascontiguousarray(a.T if p.meta["hf_transpose"] else a)
    return out
