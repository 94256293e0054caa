"""Checkpoints in the Hugging Face layout (model.safetensors + config.json), from Python.

The emitted programs read and write the same files in C (templates/common/runtime.h);
this module is the Python side: the mapping between the graph's parameters and HF
tensors, and a small numpy safetensors reader/writer (format: u64 header length, JSON
header {name: {dtype, shape, data_offsets}}, raw little-endian data).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 values given as their uint16 bits, widened exactly to float32."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), rounded to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), ((u >> 16) | 0x40).astype(np.uint16), r)


def read_safetensors(path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({len(data)} bytes)")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[base + b: base + e]
        if info["dtype"] == "BF16":
            arr = bf16_to_f32(np.frombuffer(raw, np.uint16))
        else:
            arr = np.frombuffer(raw, _DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float32, copy=True)
    return out


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """F32 tensors, metadata {"format": "pt"}, written to a temp file then renamed."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
            raise ValueError(f"{name}: shape {list(hf[name].shape)} does not match the spec "
                             f"(expected {want[::-1] if p.meta['hf_transpose'] else want})")
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
