"""Token shards in llm.c's format: write, read and validate one file.

Contract
--------
- ``write_shard(path, tokens, vocab_size)`` / ``read_shard(path)``: one shard file, llm.c's
  layout (below), written atomically, read with validation (``ShardFormatError``, a ValueError
  that names the file). ``read_shard_header(path)`` checks the header and the file's size only.

Shard layout (llm.c: dev/data/data_common.py, and the dataloader in llmc/)
---------------------------------------------------------------------------
    header: 256 x int32 little-endian
        [0] magic     20240520 (uint16 tokens)  |  20240801 (uint32 tokens)
        [1] version   1                         |  7
        [2] number of tokens that follow
        [3..255] 0
    then the tokens, little-endian uint16 (or uint32), nothing after them.
uint32 is used when the vocabulary has more than 65535 tokens (Llama 3's 128256).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from llmgen.files import atomic_write

SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
SHARD_MAGIC_U16, SHARD_VERSION_U16 = 20240520, 1
SHARD_MAGIC_U32, SHARD_VERSION_U32 = 20240801, 7
# magic -> (version, on-disk token dtype)
_SHARD_KINDS = {
    SHARD_MAGIC_U16: (SHARD_VERSION_U16, np.dtype("<u2")),
    SHARD_MAGIC_U32: (SHARD_VERSION_U32, np.dtype("<u4")),
}
MAX_SHARD_TOKENS = 100_000_000  # per file, as llm.c's fineweb shards
_MAX_HEADER_COUNT = 2**31 - 1  # header[2] is an int32


class DataError(ValueError):
    """A problem with the user's data or with a data file; the message names the file."""


class ShardFormatError(DataError):
    """A file is not a valid token shard."""


class DownloadError(RuntimeError):
    """A corpus could not be downloaded; the message says how to supply it by hand."""


def shard_magic_for_vocab(vocab_size: int) -> tuple[int, int, np.dtype]:
    """(magic, version, token dtype) for a vocabulary of ``vocab_size`` tokens."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise ValueError(f"vocab_size {vocab_size} out of range")
    magic = SHARD_MAGIC_U32 if vocab_size > 65535 else SHARD_MAGIC_U16
    version, dtype = _SHARD_KINDS[magic]
    return magic, version, dtype


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray | Sequence[int], vocab_size: int) -> Path:
    """Write one shard atomically (tmp file, then rename); return its path.

    Every token must lie in [0, vocab_size).
    """
    path = Path(path)
    magic, version, dtype = shard_magic_for_vocab(vocab_size)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens for {path} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"tokens for {path} must be integers, got {arr.dtype}")
    if arr.size > _MAX_HEADER_COUNT:
        raise ValueError(f"{arr.size} tokens do not fit one shard (max {_MAX_HEADER_COUNT})")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab_size):
        raise ValueError(f"tokens for {path} lie in [{int(arr.min())}, {int(arr.max())}], outside [0, {vocab_size})")
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = (magic, version, arr.size)
    body = np.ascontiguousarray(arr, dtype=dtype)
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(memoryview(body).cast("B"))
    return path


@dataclass(frozen=True)
class ShardHeader:
    magic: int
    version: int
    num_tokens: int
    dtype: np.dtype  # on-disk (little-endian) token dtype


def read_shard_header(path: str | os.PathLike[str]) -> ShardHeader:
    """Read and validate a shard's header and its size against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(SHARD_HEADER_BYTES)
    except OSError as e:
        raise ShardFormatError(f"cannot read shard {path}: {e}") from e
    if len(raw) < SHARD_HEADER_BYTES:
        raise ShardFormatError(f"{path}: {size} bytes, too short for a token shard header ({SHARD_HEADER_BYTES} bytes)")
    header = np.frombuffer(raw, dtype="<i4")
    magic, version, count = int(header[0]), int(header[1]), int(header[2])
    if magic not in _SHARD_KINDS:
        raise ShardFormatError(
            f"{path}: not a token shard (magic {magic}, expected {SHARD_MAGIC_U16} or {SHARD_MAGIC_U32})"
        )
    want_version, dtype = _SHARD_KINDS[magic]
    if version != want_version:
        raise ShardFormatError(
            f"{path}: unsupported shard version {version} for magic {magic} (expected {want_version})"
        )
    if count < 0:
        raise ShardFormatError(f"{path}: negative token count {count} in header")
    want = SHARD_HEADER_BYTES + count * dtype.itemsize
    if size < want:
        raise ShardFormatError(
            f"{path}: truncated: header says {count} tokens ({want} bytes) but the file has {size} bytes"
        )
    if size > want:
        raise ShardFormatError(f"{path}: {size - want} unexpected bytes after the {count} tokens the header announces")
    return ShardHeader(magic, version, count, dtype)


def read_shard(path: str | os.PathLike[str], *, mmap: bool = False) -> np.ndarray:
    """The tokens of one shard as uint16 or uint32 (validated; see read_shard_header).

    ``mmap=True`` returns a read-only memory map instead of reading the file.
    """
    path = Path(path)
    head = read_shard_header(path)
    if mmap:
        if head.num_tokens == 0:
            return np.zeros(0, dtype=head.dtype.newbyteorder("="))
        return np.memmap(path, dtype=head.dtype, mode="r", offset=SHARD_HEADER_BYTES, shape=(head.num_tokens,))
    with open(path, "rb") as f:
        f.seek(SHARD_HEADER_BYTES)
        tokens = np.fromfile(f, dtype=head.dtype, count=head.num_tokens)
    if tokens.size != head.num_tokens:  # the file shrank under us
        raise ShardFormatError(f"{path}: truncated while reading ({tokens.size} of {head.num_tokens} tokens)")
    return tokens.astype(head.dtype.newbyteorder("="), copy=False)
