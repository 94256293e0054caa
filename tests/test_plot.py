"""Tests for llmgen/plot.py and `llmgen plot`: log parsing, and what the written PNG / SVG holds.

The files are read back by independent parsers (Pillow for the PNG, the standard library's XML
parser for the SVG); the SVG's paths are checked point by point against the log's values.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import REPO, run_llmgen

matplotlib = pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")

from llmgen.plot import LogError, PlotError, ema, figure, plot_run, read_log  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def write_log(run_dir, lines):
    """lines: dicts (dumped as JSON) or raw strings; returns the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (run_dir / "log.jsonl").write_text(text)
    return run_dir


def train_line(step, loss, tok=1000.0, lr=1e-3, **extra):
    return {"step": step, "train_loss": loss, "lr": lr, "grad_norm": 1.0, "tokens_per_s": tok, "ms": 10.0, **extra}


def noisy_run(tmp_path, n=40, name="run"):
    """A run whose curves have no three collinear points (so no drawing step may merge any)."""
    rng = np.random.default_rng(7)
    lines = [{"step": 0, "val_loss": 11.0}]
    for s in range(1, n + 1):
        loss = 3.0 + 8.0 * math.exp(-s / 12) + 0.3 * rng.random()
        extra = {"val_loss": loss + 0.2} if s % 8 == 0 else {}
        lines.append(train_line(s, loss, tok=900.0 + 300 * rng.random(), lr=1e-3 * (0.5 + rng.random()), **extra))
    return write_log(tmp_path / name, lines)


def svg_path_points(svg_file, gid):
    """(x, y) vertices of the line with this gid in a matplotlib SVG."""
    root = ET.parse(svg_file).getroot()
    group = next(g for g in root.iter(f"{SVG}g") if g.get("id") == gid)
    d = next(group.iter(f"{SVG}path")).get("d")
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", d)]
    return np.array(nums).reshape(-1, 2)


def assert_affine_image(points, xs, ys):
    """The drawn points are the data under one x-scale+offset and one y-scale+offset (an SVG's
    axes are linear maps), to the SVG's 6-decimal rounding."""
    assert len(points) == len(xs), f"{len(points)} points drawn for {len(xs)} values"
    for col, data in ((0, xs), (1, ys)):
        A = np.stack([np.asarray(data, float), np.ones(len(data))], 1)
        coef, *_ = np.linalg.lstsq(A, points[:, col], rcond=None)
        assert abs(coef[0]) > 1e-3, "a flat line"
        np.testing.assert_allclose(A @ coef, points[:, col], atol=1e-4)


# --------------------------------------------------------------------------------------------
# what the files hold


def test_svg_paths_are_the_logs_values(tmp_path):
    run = noisy_run(tmp_path)
    log = read_log(run / "log.jsonl")
    out = plot_run(run, tmp_path / "curves.svg")
    assert out.read_bytes().lstrip().startswith(b"<?xml") and ET.parse(out).getroot().tag == f"{SVG}svg"
    train = np.isfinite(log.train_loss)
    val = np.isfinite(log.val_loss)
    assert_affine_image(svg_path_points(out, "train_loss"), log.step[train], log.train_loss[train])
    assert_affine_image(svg_path_points(out, "val_loss"), log.step[val], log.val_loss[val])
    assert_affine_image(svg_path_points(out, "lr"), log.step[train], log.lr[train])
    assert_affine_image(svg_path_points(out, "tokens_per_s"), log.step[train], log.tokens_per_s[train])
    # the val points are what the log holds: step 0 (before training) and every 8th step
    assert log.step[val].tolist() == [0, 8, 16, 24, 32, 40]


def test_png_parses_and_shows_the_three_panels(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) is missing")
    run = noisy_run(tmp_path)
    out = plot_run(run)
    assert out == run / "loss.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(out)
    img.load()  # decodes every row: a damaged file raises here
    assert img.size == (900, 800)
    rgb = np.asarray(img.convert("RGB")).astype(int)
    # each series' colour is present (matplotlib's tab: palette): blue train, orange val, purple lr, green tok/s
    for name, color in (
        ("train", (31, 119, 180)),
        ("val", (255, 127, 14)),
        ("lr", (148, 103, 189)),
        ("tokens/s", (44, 160, 44)),
    ):
        near = (np.abs(rgb - np.array(color)).sum(axis=2) < 30).sum()
        assert near > 50, f"no {name} line in the PNG"
    # and the panels are stacked: the green tokens/s line lies in the bottom third, blue loss in the top half
    green_rows = np.nonzero(np.abs(rgb - np.array((44, 160, 44))).sum(axis=2) < 30)[0]
    blue_rows = np.nonzero(np.abs(rgb - np.array((31, 119, 180))).sum(axis=2) < 30)[0]
    assert green_rows.min() > 2 * 800 / 3 and np.median(blue_rows) < 800 / 2


def test_figure_lines_equal_the_log_and_options(tmp_path):
    run = noisy_run(tmp_path)
    log = read_log(run / "log.jsonl")
    fig = figure(log, "t", log_loss=True, smooth=0.6)
    ax_loss, ax_lr, ax_tok = fig.axes[:3]
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines}
    train = np.isfinite(log.train_loss)
    np.testing.assert_array_equal(
        lines["train_loss_raw"].get_xydata(), np.stack([log.step[train], log.train_loss[train]], 1)
    )
    # the smoothed curve: a debiased EMA, computed here as explicit weighted means
    x = log.train_loss[train]
    w = 0.6 ** (np.arange(len(x))[:, None] - np.arange(len(x))[None, :])
    w = np.tril(w)
    expect = (w @ x) / w.sum(1)
    np.testing.assert_allclose(lines["train_loss"].get_xydata()[:, 1], expect, rtol=1e-12)
    np.testing.assert_allclose(ema(np.array([2.0, np.nan, 4.0]), 0.5), [2.0, np.nan, (0.5 * 2 + 4) / 1.5])
    assert ax_loss.get_yscale() == "log" and ax_lr.get_yscale() == "linear"
    assert ax_tok.get_xlabel() == "step"
    matplotlib.pyplot.close(fig)
    with pytest.raises(PlotError, match="smooth"):
        figure(log, "t", smooth=1.0)


def test_nonfinite_values_are_left_out(tmp_path):
    # JSON's NaN/Infinity and C printf's nan/-nan/inf (what the trainer's %.9g prints)
    lines = ['{"step": 0, "val_loss": nan}']
    for s in range(1, 31):
        loss = "NaN" if s == 5 else "-nan" if s == 6 else f"{10 - 0.2 * s}"
        lines.append(
            f'{{"step": {s}, "train_loss": {loss}, "lr": 0.001, "grad_norm": -nan, '
            f'"tokens_per_s": {"inf" if s % 2 else "Infinity"}, "ms": 1.5}}'
        )
    run = write_log(tmp_path / "run", lines)
    log = read_log(run / "log.jsonl")
    assert np.isnan(log.train_loss[[5, 6]]).all() and np.isfinite(log.train_loss[7:]).all()
    assert np.isnan(log.val_loss).all() and np.isinf(log.tokens_per_s[1:]).all()
    fig = figure(log, "t")
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines}
    assert lines["train_loss"].get_xdata().tolist() == [s for s in range(1, 31) if s not in (5, 6)]
    assert "val_loss" not in lines and lines["tokens_per_s"].get_xdata().size == 0
    matplotlib.pyplot.close(fig)
    assert plot_run(run).is_file()


def test_resumed_log_later_line_wins(tmp_path):
    first = [{"step": 0, "val_loss": 11.0}] + [train_line(s, 9.0) for s in range(1, 11)]
    resumed = [train_line(s, 1.0, **({"val_loss": 1.5} if s == 10 else {})) for s in range(6, 13)]
    run = write_log(tmp_path / "run", first + resumed + ["", "   "])
    log = read_log(run / "log.jsonl")
    assert log.step.tolist() == list(range(13))
    assert log.train_loss[1:6].tolist() == [9.0] * 5 and log.train_loss[6:].tolist() == [1.0] * 7
    assert np.isnan(log.train_loss[0]) and log.val_loss[0] == 11.0 and log.val_loss[10] == 1.5


# --------------------------------------------------------------------------------------------
# errors: one line naming the file, exit 1


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such log"),
        ("", "empty"),
        ("\n  \n", "empty"),
        ('{"step": 0, "val_loss": 10.9}\n', "no training steps"),
        ('{"step": 1, "train_loss": 4.0}\n{"step": 2, "train_loss": \n', ":2: not a JSON line"),
        ('{"step": 1, "train_loss": 4.0}\n\n[1, 2]\n', ":3: expected a JSON object"),
        ('{"train_loss": 4.0}\n', ':1: no "step"'),
        ('{"step": -1, "train_loss": 4.0}\n', ':1: "step" must be an integer'),
        ('{"step": 1.5, "train_loss": 4.0}\n', ':1: "step" must be an integer'),
        ('{"step": true, "train_loss": 4.0}\n', ':1: "step" must be an integer'),
        ('{"step": 1, "train_loss": "4.0"}\n', ":1: 'train_loss' must be a number"),
        ('{"step": 1, "train_loss": 4.0, "tokens_per_s": false}\n', ":1: 'tokens_per_s' must be a number"),
        (b'{"step": 1, "train_loss": 4.0}\n\xff\xfe\n', ":2: not UTF-8"),
    ],
)
def test_bad_logs_raise_value_error_naming_the_file(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    log = run / "log.jsonl"
    if isinstance(content, bytes):
        log.write_bytes(content)
    elif content is not None:
        log.write_text(content)
    with pytest.raises(LogError) as e:
        plot_run(run)
    msg = str(e.value)
    assert str(log) in msg and needle in msg
    assert not (run / "loss.png").exists()


def test_cli_output_names_and_errors(tmp_path):
    run = noisy_run(tmp_path, n=10)
    r = run_llmgen("plot", run, "-o", tmp_path / "x.svg")
    assert f"wrote {tmp_path / 'x.svg'}" in r.stdout and (tmp_path / "x.svg").stat().st_size > 1000
    r = run_llmgen("plot", run, "-o", tmp_path / "x.jpg", check=False)
    assert r.returncode == 1 and "x.jpg" in r.stderr and ".png or .svg" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.jpg").exists()
    r = run_llmgen("plot", run, "-o", tmp_path / "nodir" / "x.png", check=False)
    assert r.returncode == 1 and f"{tmp_path / 'nodir'} does not exist" in r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    r = run_llmgen("plot", run, "--log-loss", "--smooth", "0.9")
    assert (run / "loss.png").is_file()


def test_without_matplotlib_it_names_the_extra(tmp_path):
    """matplotlib made unimportable (None in sys.modules): a clear error that names the extra."""
    run = noisy_run(tmp_path, n=5)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from llmgen.cli import main\n"
        f"sys.exit(main(['plot', {str(run)!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "pip install 'llmgen[plot]'" in r.stderr and "Traceback" not in r.stderr
    assert not (run / "loss.png").exists()
