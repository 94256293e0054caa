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
