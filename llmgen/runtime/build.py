"""Write the emitted source and build it; both steps are cached (write-if-changed, source hash)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path


class BuildError(RuntimeError):
    pass


def write_if_changed_bytes(path: Path, data: bytes) -> bool:
    """Write through a temp file + rename, and only when the bytes differ (keeps mtimes and caches)."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def write_if_changed(path: Path, text: str) -> bool:
    return write_if_changed_bytes(path, text.encode())


def c_compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildError("no C compiler found (install gcc)")
    return cc


C_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=gnu11", "-Wall", "-Wno-unused-function"]


def build_c(src: Path, out: Path, extra_flags: list[str] | None = None) -> Path:
    """gcc -O3 -march=native -fopenmp; skipped when the binary was built from this exact source."""
    cmd = [c_compiler(), *C_FLAGS, *(extra_flags or []), str(src), "-lm", "-o", str(out)]
    return _build(cmd, src, out)


def build_c_library(src: Path, out: Path) -> Path:
    """The same source as a shared library with the in-process API (-DLLMGEN_LIBRARY) instead of main()."""
    return build_c(src, out, ["-shared", "-fPIC", "-DLLMGEN_LIBRARY"])


def _build(cmd: list[str], src: Path, out: Path) -> Path:
    stamp = out.with_name(out.name + ".buildhash")
    h = hashlib.sha256(Path(src).read_bytes() + " ".join(cmd).encode()).hexdigest()
    if out.is_file() and stamp.is_file() and stamp.read_text() == h:
        return out
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"build failed: {' '.join(cmd)}\n{r.stderr[-8000:]}")
    stamp.write_text(h)
    return out
