"""Files: atomic writes, write-if-changed, sha256 of a file, and llmgen's cache folder.

Contract
--------
- ``atomic_write(path)``: a context manager yielding a binary file opened beside ``path``; on
  success it is fsynced and renamed over ``path``, on any error removed, so a reader never sees a
  partial file and a good file is never replaced by a partial one. Permissions as a plain open()
  gives (0666 minus umask).
- ``write_atomic(path, data)``: the same for bytes or text held in memory.
- ``write_if_changed(path, data) -> bool``: write atomically only when the contents differ (keeps
  mtimes, so build caches keyed on them stay valid); True when it wrote.
- ``sha256_file(path)``: hex digest, read in 1 MiB blocks.
- ``cache_dir()``: where llmgen keeps built trainers and downloads: $XDG_CACHE_HOME/llmgen, else
  ~/.cache/llmgen (commands also take --cache-dir).

Every module that writes a file a user keeps goes through here (shards, token tables,
checkpoints from Python, llm.c model files, plots, built sources).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success move it over ``path`` (see the module doc)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    with atomic_write(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_if_changed(path: str | os.PathLike[str], data: bytes | str) -> bool:
    """Write atomically, and only when the bytes differ from what ``path`` holds; True if written."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return False
    write_atomic(path, raw)
    return True


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """llmgen's cache folder: $XDG_CACHE_HOME/llmgen, else ~/.cache/llmgen (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "llmgen"
