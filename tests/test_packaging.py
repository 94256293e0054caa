"""The wheel carries the templates, and an installed llmgen renders from them (not from a checkout)."""

import subprocess
import sys

import pytest

from conftest import REPO


def test_wheel_ships_templates_and_renders(tmp_path):
    try:
        import setuptools  # noqa: F401  (the build backend; --no-build-isolation uses the installed one)
    except ImportError:
        pytest.skip("setuptools is not installed, so no wheel can be built offline")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "whl"),
            "-q",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    wheel = next((tmp_path / "whl").glob("llmgen-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    code = (
        "from llmgen.codegen import templates_dir, render; from llmgen.spec import PRESETS; "
        "print(templates_dir()); print(len(render(PRESETS['gpt2-tiny'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    where, size = out.split()
    assert where.startswith(str(tmp_path / "site")) and int(size) > 10000
