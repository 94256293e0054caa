"""Dataset preparation: tokenize documents, split train/val, write shards + token table + manifest.

Contract
--------
- ``prepare_text(files, out_dir, ...)``: the user's UTF-8 text files (GPT-2, or a Llama 3
  tiktoken file) -> ``text_*`` shards (see llmgen/data/__init__.py for the folder's layout).
- ``encode_document(enc, text)``, ``split_point(...)``: the pieces the corpus pipelines share;
  ``write_dataset(...)`` writes one prepared stream idempotently (llmgen.data.corpus uses it too).

Documents: every document (one play/poem, one input file) is prefixed with the separator token,
as llm.c's tinyshakespeare/fineweb scripts do: <|endoftext|> (50256) for GPT-2,
<|begin_of_text|> (128000) for Llama 3. The token stream therefore starts with the separator, and
the separator appears exactly once per document. Text is encoded with ``encode_ordinary``: a
literal "<|endoftext|>" inside a text is ordinary text, never the special token.

Train/val split (deterministic): documents keep their order (Shakespeare: sorted by file name;
text: the order the files were given). The val set is the tail of the token stream, about
``val_fraction`` of all tokens. It starts at the document boundary nearest to that point when one
lies within half the val size of it (then val holds whole documents and begins with the
separator); otherwise (e.g. a single input file) the cut falls exactly at that point, inside a
document. Train and val are never empty.

Memory: a corpus is tokenized whole before it is split, so its token stream is held in memory
(2 bytes per token for GPT-2: about 0.5 GB per GB of English text), plus one input file's text at
a time. Long files are encoded in pieces on all cores (identical tokens; see _is_safe_cut).

Re-running with the same inputs and settings does nothing ("up to date"): the manifest records
the sha256 of every input and every setting that changes the output. Outputs are written with
atomic renames; a run never leaves a partial file where a good one stood. The only files ever
removed are shards that an earlier run of the same pipeline listed in its own manifest and that
the new run no longer produces.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tiktoken

from llmgen.data.shards import (
    _MAX_HEADER_COUNT,
    MAX_SHARD_TOKENS,
    DataError,
    ShardFormatError,
    read_shard_header,
    shard_magic_for_vocab,
    write_shard,
)
from llmgen.files import atomic_write, sha256_file
from llmgen.progress import ByteProgress, byte_progress_wanted
from llmgen.tokenizer import document_separator, get_gpt2_encoding, load_tiktoken_bpe_encoding, token_table_bytes

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
    progress: ByteProgress,
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

DATA_PIPELINE_VERSION = 2  # bump when the same inputs would give different outputs (2: HF tokenizer files)
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


def hf_tokenizer_files(tokenizer_path=None) -> dict[str, bytes]:
    """The Hugging Face tokenizer files written beside tokenizer.bin (trainers copy them into their
    checkpoints): GPT-2's vocab.json + merges.txt + configs, or for a tiktoken file (Llama 3)
    tokenizer.json + configs when transformers is installed to convert it (else none)."""
    from llmgen.tokenizer import gpt2_hf_tokenizer_files, llama3_hf_tokenizer_files

    if tokenizer_path is None:
        return gpt2_hf_tokenizer_files()
    return llama3_hf_tokenizer_files(tokenizer_path)


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
    hf_files = hf_tokenizer_files(tokenizer_path)
    settings = {
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "tokenizer": {**_tokenizer_settings(enc, table, separator), "source": tok_input, "hf_files": sorted(hf_files)},
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
    bar = ByteProgress(total_bytes, "tokenizing", byte_progress_wanted(total_bytes, progress))
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
        extra_files=hf_files,
        quiet=quiet,
    )
    res = _result(out, prefix, manifest, up_to_date=False, seconds=time.monotonic() - t0)
    _log(
        quiet,
        f"{out}: {res['train_tokens']:,} train + {res['val_tokens']:,} val tokens "
        f"from {res['documents']} file(s) ({res['seconds']:.1f} s)",
    )
    return res
