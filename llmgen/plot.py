"""Plots of a training run through matplotlib (the `plot` extra: pip install 'llmgen[plot]').

Contract
--------
- ``plot_run(run_dir, out=None, log_loss=False, smooth=0) -> Path``: reads ``RUN_DIR/log.jsonl``
  (what a trainer writes with ``-o RUN_DIR``) and writes the figure to ``out`` (default
  ``RUN_DIR/loss.png``): PNG or SVG by the file's suffix, written atomically; any other suffix,
  or a folder that does not exist, is a PlotError naming it. Without matplotlib: PlotError that
  says ``pip install 'llmgen[plot]'``.
- ``figure(log, title, log_loss, smooth)``: the matplotlib Figure before it is saved. Three panels
  over the step axis: train loss (line) and val loss (markers + line), the learning rate, and
  tokens/s. ``log_loss`` puts the loss axis on a log scale; ``smooth`` (0 <= smooth < 1) draws
  the train loss as an exponential moving average (weight smooth on the past, bias-corrected as
  TensorBoard does) over the raw curve, drawn faint. Each line carries a gid (train_loss,
  train_loss_raw, val_loss, lr, tokens_per_s) so an SVG names its paths.
- ``read_log(path) -> RunLog``: the log as per-step series, one row per step.
- Bad input raises ``LogError``, a ValueError whose message names the file (and the line number
  when one line is bad): a missing, empty or unreadable log, a line that is not a JSON object
  with an integer "step" and numeric values, a log without training steps.

The log (templates/common/trainer.c.j2 writes it, one JSON object per line)
-------------------------------------------------------------------------
    {"step": 0, "val_loss": 10.9}                          before step 1, when validating
    {"step": 3, "train_loss": 4.5, "lr": 0.001, "grad_norm": 1.2,
     "tokens_per_s": 1234.5, "ms": 12.3[, "val_loss": 4.7]} each training step
A resumed run appends to the same log and repeats the steps after its checkpoint: the later line
for a step replaces the earlier one. NaN and Inf values are left out of the lines; C's printf
spells them nan/-nan/inf, which is not JSON, so those bare words are accepted too. Blank lines
are ignored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmgen import __version__
from llmgen.files import atomic_write

FORMATS = {".png": "png", ".svg": "svg"}
PLOT_EXTRA_HINT = "pip install 'llmgen[plot]'"


class PlotError(ValueError):
    """A plot that cannot be written (no matplotlib, an unknown file type, a missing folder)."""


class LogError(ValueError):
    """A run log that cannot be plotted; the message names the file (and line)."""


# --------------------------------------------------------------------------------------------
# reading the log


@dataclass(frozen=True)
class RunLog:
    """One row per logged step, ascending; NaN where a line lacks the value."""

    path: Path
    step: np.ndarray  # (N,) int64, strictly increasing
    train_loss: np.ndarray  # (N,) float64
    val_loss: np.ndarray  # (N,) float64
    tokens_per_s: np.ndarray  # (N,) float64
    lr: np.ndarray  # (N,) float64


# the fields a log line may carry besides "step"; any other key is ignored
_SERIES = ("train_loss", "val_loss", "tokens_per_s", "lr")
_NUMERIC = _SERIES + ("grad_norm", "ms")

# C's printf spelling of non-finite floats, where a JSON value stands: `: nan,` `: -inf}`
_C_NONFINITE = re.compile(r"(?<=[:\[,])(\s*)(-?)(nan|inf(?:inity)?)(?=\s*[,}\]])", re.IGNORECASE)


def _json_nonfinite(m: re.Match) -> str:
    if m.group(3).lower() == "nan":
        return m.group(1) + "NaN"
    return m.group(1) + m.group(2) + "Infinity"


def _parse_line(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            obj = json.loads(_C_NONFINITE.sub(_json_nonfinite, text))
        except json.JSONDecodeError:
            raise LogError(f"{where}: not a JSON line ({e.msg} at column {e.colno}): {text.strip()[:80]!r}") from None
    if not isinstance(obj, dict):
        raise LogError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "step" not in obj:
        raise LogError(f'{where}: no "step" in the line')
    step = obj["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise LogError(f'{where}: "step" must be an integer >= 0, got {step!r}')
    for key in _NUMERIC:
        v = obj.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise LogError(f"{where}: {key!r} must be a number, got {v!r}")
    return obj


def read_log(path: str | Path) -> RunLog:
    """Parse a run's log.jsonl; later lines for a step win. Raises LogError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LogError(f"{path}: no such log (a trainer writes it when run with -o DIR)") from None
    except OSError as e:
        raise LogError(f"{path}: cannot read the log: {e.strerror or e}") from None
    rows: dict[int, dict] = {}
    for lineno, raw in enumerate(data.splitlines(), 1):
        where = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LogError(f"{where}: not UTF-8 text") from None
        if text.strip():
            obj = _parse_line(text, where)
            rows[obj["step"]] = obj
    if not rows:
        raise LogError(f"{path}: the log is empty")
    if not any("train_loss" in r for r in rows.values()):
        raise LogError(f'{path}: no training steps in the log (no line has "train_loss")')
    steps = sorted(rows)

    def series(key: str) -> np.ndarray:
        return np.array([_float(rows[s].get(key)) for s in steps], dtype=np.float64)

    return RunLog(path, np.array(steps, dtype=np.int64), *(series(k) for k in _SERIES))


def _float(v) -> float:
    return math.nan if v is None else float(v)


# --------------------------------------------------------------------------------------------
# the figure


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise PlotError(f"llmgen plot needs matplotlib: {PLOT_EXTRA_HINT}") from None
    matplotlib.use("Agg", force=True)  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def ema(values: np.ndarray, smooth: float) -> np.ndarray:
    """Exponential moving average over the finite values (NaN stays NaN), debiased like TensorBoard's:
    out_i = sum_j (1-s) s^(i-j) x_j / (1 - s^(k+1)) over the k+1 finite values so far."""
    out = np.full(values.shape, np.nan)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if math.isfinite(v):
            acc = smooth * acc + (1 - smooth) * v
            weight = smooth * weight + (1 - smooth)
            out[i] = acc / weight
    return out


def _finite(steps: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(v)
    return steps[keep], v[keep]


def figure(log: RunLog, title: str, log_loss: bool = False, smooth: float = 0.0):
    """The run's figure (see the module doc); the caller saves or closes it."""
    if not 0 <= smooth < 1:
        raise PlotError(f"--smooth must be in [0, 1), got {smooth}")
    plt = _matplotlib()
    fig, (ax_loss, ax_lr, ax_tok) = plt.subplots(
        3, 1, sharex=True, figsize=(9, 8), height_ratios=(3, 1, 1), layout="constrained"
    )
    fig.suptitle(f"{title}  (llmgen {__version__})")
    train = _finite(log.step, log.train_loss)
    if smooth > 0:
        ax_loss.plot(*train, color="tab:blue", alpha=0.25, lw=1, gid="train_loss_raw")
        sm = _finite(log.step, ema(log.train_loss, smooth))
        ax_loss.plot(*sm, color="tab:blue", lw=1.8, label=f"train loss (EMA {smooth:g})", gid="train_loss")
    else:
        ax_loss.plot(*train, color="tab:blue", lw=1.5, label="train loss", gid="train_loss")
    val = _finite(log.step, log.val_loss)
    if val[0].size:
        ax_loss.plot(*val, color="tab:orange", marker="o", ms=4, lw=1.5, label="val loss", gid="val_loss")
    last = [f"train {train[1][-1]:.4g}"] + ([f"val {val[1][-1]:.4g}"] if val[0].size else [])
    ax_loss.set_title("loss  (last: " + ", ".join(last) + ")", loc="left", fontsize=10)
    ax_loss.set_ylabel("loss" + (" (log scale)" if log_loss else ""))
    if log_loss:
        ax_loss.set_yscale("log")
    ax_loss.legend(loc="upper right")
    ax_lr.plot(*_finite(log.step, log.lr), color="tab:purple", lw=1.5, gid="lr")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_tok.plot(*_finite(log.step, log.tokens_per_s), color="tab:green", lw=1.5, gid="tokens_per_s")
    ax_tok.set_ylabel("tokens/s")
    ax_tok.set_xlabel("step")
    for ax in (ax_loss, ax_lr, ax_tok):
        ax.grid(True, alpha=0.3)
    return fig


def plot_run(run_dir: str | Path, out: str | Path | None = None, log_loss: bool = False, smooth: float = 0.0) -> Path:
    """Plot RUN_DIR/log.jsonl to `out` (default RUN_DIR/loss.png), PNG or SVG by its suffix."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "loss.png"
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise PlotError(f"{out}: unknown image type {out.suffix or '(no suffix)'!r}; name a .png or .svg file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise PlotError(f"{out}: the folder {parent} does not exist")
    log = read_log(run_dir / "log.jsonl")
    plt = _matplotlib()
    fig = figure(log, run_dir.resolve().name, log_loss, smooth)
    try:
        with atomic_write(out) as f:
            fig.savefig(
                f,
                format=fmt,
                dpi=100,
                metadata={"Creator": f"llmgen {__version__}"}
                if fmt == "svg"
                else {"Software": f"llmgen {__version__}"},
            )
    finally:
        plt.close(fig)
    return out
