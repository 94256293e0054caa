import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_llmgen(*args, check=True, **kw):
    """Run the CLI as a user would (python -m llmgen), returning the CompletedProcess."""
    r = subprocess.run([sys.executable, "-m", "llmgen", *map(str, args)], capture_output=True, text=True,
                       cwd=REPO, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"llmgen {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def run_binary(binary, *args, check=True, timeout=600):
    r = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{binary} {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    """Trainers built once per session, keyed by (spec source, target options)."""
    root = tmp_path_factory.mktemp("builds")
    cache = {}

    def get(spec_source, *extra):
        key = (str(spec_source), extra)
        if key not in cache:
            out = root / f"b{len(cache)}"
            run_llmgen("build", spec_source, *extra, "-o", out)
            cache[key] = out / "train"
        return cache[key]
    return get


def run_in_pty(argv, on_output=None, cols=80, rows=24, timeout=600, cwd=REPO, env=None):
    """Run argv with a pseudo-terminal as its controlling terminal (stdin, stdout, stderr), as from
    an interactive shell: its process group is the terminal's foreground group, so writing b"\\x03"
    to the master makes the line discipline send SIGINT to it, exactly like Ctrl-C.

    on_output(text_so_far) -> bytes to type (b"" for nothing) is called after each read and every
    few milliseconds while the program is quiet (so it can also watch files).
    Returns (exit status as subprocess reports it, all output as text)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time
    pid, master = pty.fork()
    if pid == 0:                                    # the child: set the window size, then exec
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env or os.environ)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    status = None
    while True:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"{argv} in a pty: no end after {timeout} s:\n{out.decode(errors='replace')[-3000:]}")
        r, _, _ = select.select([master], [], [], 0.003)
        chunk = b""
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:                          # EIO: the child closed its side
                chunk = b""
            out += chunk
        if on_output is not None:
            typed = on_output(out.decode(errors="replace"))
            if typed:
                os.write(master, typed)
        if chunk:
            continue
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            while True:                               # what is left in the pty's buffer
                r, _, _ = select.select([master], [], [], 0.1)
                if not r:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            break
    os.close(master)
    rc = os.waitstatus_to_exitcode(status)
    return rc, out.decode(errors="replace")
