"""Loss curves of a training run, drawn to a PNG with numpy alone (no plotting library).

Contract
--------
- ``plot_run(run_dir, out_png=None) -> Path``: reads ``RUN_DIR/log.jsonl`` (what a
  trainer writes with ``-o RUN_DIR``), draws the curves to ``out_png`` (default
  ``RUN_DIR/loss.png``, written atomically) and returns that path.
- ``read_log(path) -> RunLog``: the log as per-step series, one row per step.
- ``render(log, title) -> (600,900,3) uint8``: the picture, before encoding.
- ``encode_png(rgb) -> bytes``: an (H,W,3) uint8 image as a PNG file.
- Bad input raises ``LogError``, a ValueError whose message names the file (and the
  line number when one line is bad): a missing, empty or unreadable log, a line that is
  not a JSON object with an integer "step" and numeric values, a log without training
  steps.

The log (templates/common/trainer.c.j2 writes it, one JSON object per line)
-------------------------------------------------------------------------
    {"step": 0, "val_loss": 10.9}                          before step 1, when validating
    {"step": 3, "train_loss": 4.5, "lr": 0.001, "grad_norm": 1.2,
     "tokens_per_s": 1234.5, "ms": 12.3[, "val_loss": 4.7]} each training step
A resumed run appends to the same log and repeats the steps after its checkpoint: the
later line for a step replaces the earlier one. NaN and Inf values are skipped when
drawing; C's printf spells them nan/-nan/inf, which is not JSON, so those bare words
are accepted too. Blank lines are ignored.

The picture (900 x 600, RGB 8-bit)
----------------------------------
    loss  RUN_NAME                      -- train 3.21   -o- val 3.30   (last values)
    +--------------------------------------------------------------+
    |  train loss (blue line), val loss (orange markers + line)    |  top panel
    +--------------------------------------------------------------+
    tokens/s
    +--------------------------------------------------------------+
    |  tokens/s (green line)                                       |  bottom panel
    +--------------------------------------------------------------+
                                   step
Both panels share the step axis. Axes are linear, ticks at 1/2/5 x 10^k, labels in a
built-in 5x7 bitmap font. Lines are 2 px wide and anti-aliased; their centre pixels
carry the exact series colour (tests look for it). More points than the panel has
pixel columns are reduced to each column's min and max first, so a long run draws as
fast as a short one and keeps its spikes.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmgen import __version__
from llmgen.tokenizer import atomic_write


class LogError(ValueError):
    """A run log that cannot be plotted; the message names the file (and line)."""


# --------------------------------------------------------------------------------------------
# reading the log

@dataclass(frozen=True)
class RunLog:
    """One row per logged step, ascending; NaN where a line lacks the value."""
    path: Path
    step: np.ndarray          # (N,) int64, strictly increasing
    train_loss: np.ndarray    # (N,) float64
    val_loss: np.ndarray      # (N,) float64
    tokens_per_s: np.ndarray  # (N,) float64


# the fields a log line may carry besides "step"; any other key is ignored
_SERIES = ("train_loss", "val_loss", "tokens_per_s")
_NUMERIC = _SERIES + ("lr", "grad_norm", "ms")

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
        raise LogError(f"{where}: no \"step\" in the line")
    step = obj["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise LogError(f"{where}: \"step\" must be an integer >= 0, got {step!r}")
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
        raise LogError(f"{path}: no training steps in the log (no line has \"train_loss\")")
    steps = sorted(rows)

    def series(key: str) -> np.ndarray:
        return np.array([_float(rows[s].get(key)) for s in steps], dtype=np.float64)

    return RunLog(path, np.array(steps, dtype=np.int64), *(series(k) for k in _SERIES))


def _float(v) -> float:
    return math.nan if v is None else float(v)


# --------------------------------------------------------------------------------------------
# the 5x7 font: per glyph, 7 rows top to bottom as 2 hex digits each; bit 4 is the left column

_FONT_HEX = {
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", "A": "0e11111f111111", "B": "1e11111e11111e",
    "C": "0e11101010110e", "D": "1c12111111121c", "E": "1f10101e10101f", "F": "1f10101e101010",
    "G": "0e11101711110f", "H": "1111111f111111", "I": "0e04040404040e", "J": "0702020202120c",
    "K": "11121418141211", "L": "1010101010101f", "M": "111b1515111111", "N": "11111915131111",
    "O": "0e11111111110e", "P": "1e11111e101010", "Q": "0e11111115120d", "R": "1e11111e141211",
    "S": "0f10100e01011e", "T": "1f040404040404", "U": "1111111111110e", "V": "11111111110a04",
    "W": "1111111515150a", "X": "11110a040a1111", "Y": "11110a04040404", "Z": "1f01020408101f",
    "a": "00000e010f110f", "b": "1010161911111e", "c": "00000e1010110e", "d": "01010d1311110f",
    "e": "00000e111f100e", "f": "0609081c080808", "g": "000f11110f010e", "h": "10101619111111",
    "i": "04000c0404040e", "j": "0200060202120c", "k": "10101214181412", "l": "0c04040404040e",
    "m": "00001a15151111", "n": "00001619111111", "o": "00000e1111110e", "p": "00001e111e1010",
    "q": "00000d130f0101", "r": "00001619101010", "s": "00000e100e011e", "t": "08081c08080906",
    "u": "0000111111130d", "v": "00001111110a04", "w": "0000111115150a", "x": "0000110a040a11",
    "y": "000011110f010e", "z": "00001f0204081f", ".": "00000000000c0c", ",": "000000000c0408",
    "-": "0000001f000000", "+": "0004041f040400", "/": "00010204081000", ":": "000c0c000c0c00",
    "_": "0000000000001f", "=": "00001f001f0000", "(": "02040808080402", ")": "08040202020408",
    "%": "18190204081303", "#": "0a0a1f0a1f0a0a", "?": "0e110102040004", " ": "00000000000000",
}
GLYPH_W, GLYPH_H = 5, 7


def _glyph_bits(hexrows: str) -> np.ndarray:
    rows = np.array([int(hexrows[i:i + 2], 16) for i in range(0, 2 * GLYPH_H, 2)])
    return ((rows[:, None] >> np.arange(GLYPH_W - 1, -1, -1)) & 1).astype(bool)  # (7,5)


FONT = {ch: _glyph_bits(h) for ch, h in _FONT_HEX.items()}


def text_bitmap(s: str, scale: int = 1) -> np.ndarray:
    """(7*scale, (6*len-1)*scale) bool: the string in the 5x7 font, 1 column between
    glyphs; a character without a glyph draws as '?'."""
    if not s:
        return np.zeros((GLYPH_H * scale, 0), dtype=bool)
    gap = np.zeros((GLYPH_H, 1), dtype=bool)
    parts = []
    for ch in s:
        parts += [FONT.get(ch, FONT["?"]), gap]
    bits = np.hstack(parts[:-1])
    return np.kron(bits, np.ones((scale, scale), dtype=bool)).astype(bool)


def text_width(s: str, scale: int) -> int:
    return max(0, (6 * len(s) - 1) * scale)


# --------------------------------------------------------------------------------------------
# canvas: float RGB in 0..255, painted with coverage masks (anti-aliasing = fractional coverage)

@dataclass(frozen=True)
class Rect:
    """Pixel box [x0, x1) x [y0, y1); the frame is drawn on its outermost pixels."""
    x0: int
    y0: int
    x1: int
    y1: int


WIDTH, HEIGHT = 900, 600
TOP = Rect(88, 44, 880, 318)       # train/val loss
BOTTOM = Rect(88, 378, 880, 548)   # tokens/s

WHITE = (255, 255, 255)
INK = (40, 40, 40)           # frame, ticks, text
GRID = (228, 228, 228)
MUTED = (130, 130, 130)      # "no data" notes
TRAIN = (31, 119, 180)       # blue
VAL = (255, 127, 14)         # orange
SPEED = (44, 160, 44)        # green

LINE_W = 2.0                 # px
MARKER_R = 3.5               # px, val markers
MAX_MARKERS = 120            # more val points than this draw as a line only
FONT_SCALE = 2               # 5x7 glyphs drawn 10x14


def _paint(canvas: np.ndarray, box: Rect, mask: np.ndarray, color) -> None:
    """Blend color into canvas[box] with per-pixel coverage mask (box-sized, 0..1)."""
    region = canvas[box.y0:box.y1, box.x0:box.x1]
    region += mask[..., None] * (np.asarray(color, dtype=np.float32) - region)


def _fill(canvas: np.ndarray, box: Rect, color) -> None:
    canvas[box.y0:box.y1, box.x0:box.x1] = color


def _text(canvas: np.ndarray, x: int, y: int, s: str, color, scale: int = FONT_SCALE) -> None:
    """Draw s with its top-left corner at (x, y), clipped to the canvas."""
    bits = text_bitmap(s, scale)
    h, w = bits.shape
    H, W = canvas.shape[:2]
    cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if cx0 < cx1 and cy0 < cy1:
        sub = bits[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
        canvas[cy0:cy1, cx0:cx1][sub] = color


def _box(x0: float, y0: float, x1: float, y1: float, pad: float, shape) -> tuple[int, int, int, int]:
    """Integer pixel bounds (i0, i1, j0, j1) around a float box, clipped to shape."""
    h, w = shape
    return (max(math.floor(y0 - pad), 0), min(math.ceil(y1 + pad) + 1, h),
            max(math.floor(x0 - pad), 0), min(math.ceil(x1 + pad) + 1, w))


def _stroke(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, width: float) -> None:
    """Max-accumulate the coverage of an anti-aliased polyline into mask.

    Coordinates are in mask pixels, pixel (i, j) centred at (x=j, y=i). Coverage is
    1 within width/2 - 0.5 of the line and falls linearly to 0 one pixel further out.
    Taking the max (not blending per segment) keeps the joints from darkening.
    """
    reach = width / 2 + 0.5
    pts = list(zip(xs.tolist(), ys.tolist()))
    segs = itertools.pairwise(pts) if len(pts) > 1 else [(pts[0], pts[0])]
    for (ax, ay), (bx, by) in segs:
        i0, i1, j0, j1 = _box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by), reach, mask.shape)
        if i0 >= i1 or j0 >= j1:
            continue
        px = np.arange(j0, j1, dtype=np.float64)[None, :]
        py = np.arange(i0, i1, dtype=np.float64)[:, None]
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        t = np.clip(((px - ax) * dx + (py - ay) * dy) / len2, 0.0, 1.0) if len2 > 0 else 0.0
        dist = np.hypot(px - (ax + t * dx), py - (ay + t * dy))
        cov = np.clip(reach - dist, 0.0, 1.0)
        np.maximum(mask[i0:i1, j0:j1], cov, out=mask[i0:i1, j0:j1])


def _dots(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float) -> None:
    """Max-accumulate anti-aliased filled discs (centres in mask pixels) into mask."""
    reach = radius + 0.5
    for x, y in zip(xs.tolist(), ys.tolist()):
        i0, i1, j0, j1 = _box(x, y, x, y, reach, mask.shape)
        if i0 >= i1 or j0 >= j1:
            continue
        px = np.arange(j0, j1, dtype=np.float64)[None, :]
        py = np.arange(i0, i1, dtype=np.float64)[:, None]
        cov = np.clip(reach - np.hypot(px - x, py - y), 0.0, 1.0)
        np.maximum(mask[i0:i1, j0:j1], cov, out=mask[i0:i1, j0:j1])


# --------------------------------------------------------------------------------------------
# axes: ranges, ticks, labels

@dataclass(frozen=True)
class Axis:
    lo: float
    hi: float  # hi > lo always

    def frac(self, v: np.ndarray) -> np.ndarray:
        return (np.asarray(v, dtype=np.float64) - self.lo) / (self.hi - self.lo)


def axis_range(values: np.ndarray, pad: float) -> Axis:
    """[min, max] of the finite values widened by pad x span on each side. A constant
    (or single) value, or one varying by under 1e-6 of itself (below float32's
    resolution), gets a span of 20% of itself (2 when it is 0), never 0."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Axis(0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    if span <= 1e-6 * max(abs(lo), abs(hi)) or span == 0.0:
        half = abs(hi) * 0.1 or 1.0
        return Axis(lo - half, hi + half)
    return Axis(lo - pad * span, hi + pad * span)


def nice_ticks(axis: Axis, target: int = 6, integer: bool = False) -> tuple[np.ndarray, float]:
    """Ticks at multiples of 1, 2 or 5 x 10^k inside the axis, about `target` of them;
    with integer=True the spacing is at least 1. Returns (ticks, spacing)."""
    raw = (axis.hi - axis.lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(step, 1.0)
    first = math.ceil(axis.lo / step - 1e-9)
    last = math.floor(axis.hi / step + 1e-9)
    return np.arange(first, last + 1, dtype=np.float64) * step, step


def tick_labels(ticks: np.ndarray, step: float) -> list[str]:
    """Labels with as many decimals as the spacing needs; k/M/G for large magnitudes
    (from 10^4, so 2500 reads 2500), scientific from 10^12 and below 10^-3."""
    big = float(np.max(np.abs(ticks))) if ticks.size else 0.0
    if big >= 1e12 or 0.0 < big < 1e-3:
        return [_sci(t) for t in ticks]
    unit, suffix = next(((u, s) for u, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if big >= max(u, 1e4)), (1.0, ""))
    decimals = max(0, -math.floor(math.log10(step / unit) + 1e-9))
    out = []
    for t in ticks:
        s = f"{t / unit:.{decimals}f}"
        if float(s) == 0.0:
            out.append(s.lstrip("-") if unit == 1.0 else "0")  # no "-0.0", no "0k"
        else:
            out.append(s + suffix)
    return out


def _sci(v: float) -> str:
    if v == 0.0:
        return "0"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"  # 1.5e-7, not 1.5e-07


def _decimate(xs: np.ndarray, ys: np.ndarray, ncols: int) -> tuple[np.ndarray, np.ndarray]:
    """When there are more points than 2 per pixel column, keep each column's min and max
    (in the order they occur) so spikes survive; xs are pixel x, ascending."""
    if xs.size <= 2 * ncols:
        return xs, ys
    col = np.floor(xs).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    lo = np.minimum.reduceat(ys, starts)
    hi = np.maximum.reduceat(ys, starts)
    first = ys[starts]
    min_first = np.abs(first - lo) <= np.abs(first - hi)
    a = np.where(min_first, lo, hi)
    b = np.where(min_first, hi, lo)
    cx = col[starts].astype(np.float64)
    return np.repeat(cx, 2), np.column_stack([a, b]).ravel()


# --------------------------------------------------------------------------------------------
# panels

@dataclass(frozen=True)
class Series:
    steps: np.ndarray   # (N,) step of each value
    values: np.ndarray  # (N,) float64, non-finite values are skipped
    color: tuple
    markers: bool = False


def _draw_panel(canvas: np.ndarray, box: Rect, xaxis: Axis, xticks: tuple[np.ndarray, float],
                series: list[Series]) -> None:
    """Grid, data, frame, ticks and tick labels of one panel."""
    inner = Rect(box.x0 + 1, box.y0 + 1, box.x1 - 1, box.y1 - 1)
    iw, ih = inner.x1 - inner.x0, inner.y1 - inner.y0
    finite = [s for s in series if np.isfinite(s.values).any()]
    yaxis = axis_range(np.concatenate([s.values for s in series]), pad=0.06)
    yticks, ystep = nice_ticks(yaxis, target=5)
    xticks, xstep = xticks

    def to_px(step, value):  # inner-box pixel coordinates
        return xaxis.frac(step) * (iw - 1), (1.0 - yaxis.frac(value)) * (ih - 1)

    xt_px = inner.x0 + np.rint(to_px(xticks, 0.0)[0]).astype(int)  # canvas column of each x tick
    yt_px = inner.y0 + np.rint(to_px(0.0, yticks)[1]).astype(int)  # canvas row of each y tick

    # grid
    for x in xt_px.tolist():
        _fill(canvas, Rect(x, inner.y0, x + 1, inner.y1), GRID)
    for y in yt_px.tolist():
        _fill(canvas, Rect(inner.x0, y, inner.x1, y + 1), GRID)

    # data: one coverage mask per series (line + markers), series in order: val over train
    for s in finite:
        ok = np.isfinite(s.values)
        px, py = to_px(s.steps[ok], s.values[ok])
        px, py = _decimate(px, py, iw)
        mask = np.zeros((ih, iw), dtype=np.float32)
        _stroke(mask, px, py, LINE_W)
        if (s.markers and ok.sum() <= MAX_MARKERS) or ok.sum() == 1:  # a lone point gets a marker too
            _dots(mask, px, py, MARKER_R)
        _paint(canvas, inner, mask, s.color)
    gh = GLYPH_H * FONT_SCALE
    if not finite:
        note = "no data"
        _text(canvas, inner.x0 + (iw - text_width(note, FONT_SCALE)) // 2, inner.y0 + (ih - gh) // 2, note, MUTED)

    # frame, ticks (5 px outward), labels
    _fill(canvas, Rect(box.x0, box.y0, box.x1, box.y0 + 1), INK)
    _fill(canvas, Rect(box.x0, box.y1 - 1, box.x1, box.y1), INK)
    _fill(canvas, Rect(box.x0, box.y0, box.x0 + 1, box.y1), INK)
    _fill(canvas, Rect(box.x1 - 1, box.y0, box.x1, box.y1), INK)
    for x, label in zip(xt_px.tolist(), tick_labels(xticks, xstep)):
        _fill(canvas, Rect(x, box.y1, x + 1, box.y1 + 5), INK)
        _text(canvas, x - text_width(label, FONT_SCALE) // 2, box.y1 + 8, label, INK)
    for y, label in zip(yt_px.tolist(), tick_labels(yticks, ystep)):
        _fill(canvas, Rect(box.x0 - 5, y, box.x0, y + 1), INK)
        _text(canvas, box.x0 - 8 - text_width(label, FONT_SCALE), y - gh // 2, label, INK)


def _last_finite(v: np.ndarray) -> float | None:
    ok = np.flatnonzero(np.isfinite(v))
    return float(v[ok[-1]]) if ok.size else None


def _legend(canvas: np.ndarray, right: int, y: int, entries: list[tuple[str, tuple, bool]]) -> int:
    """Right-aligned legend row: a line swatch (with a marker if asked) and a label per
    entry. Returns the x where it starts."""
    sw, gap = 24, 14
    widths = [sw + 6 + text_width(label, FONT_SCALE) for label, _, _ in entries]
    x = right - sum(widths) - gap * (len(entries) - 1)
    start = x
    cy = y + GLYPH_H * FONT_SCALE // 2
    for (label, color, marker), w in zip(entries, widths):
        box = Rect(x, cy - 5, x + sw, cy + 6)
        mask = np.zeros((box.y1 - box.y0, box.x1 - box.x0), dtype=np.float32)
        _stroke(mask, np.array([1.0, sw - 2.0]), np.array([5.0, 5.0]), LINE_W)
        if marker:
            _dots(mask, np.array([sw / 2]), np.array([5.0]), MARKER_R)
        _paint(canvas, box, mask, color)
        _text(canvas, x + sw + 6, y, label, INK)
        x += w + gap
    return start


def render(log: RunLog, title: str) -> np.ndarray:
    """The plot of a parsed log as an (HEIGHT, WIDTH, 3) uint8 image."""
    canvas = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    canvas[:] = WHITE
    steps = log.step.astype(np.float64)
    drawn = np.isfinite(log.train_loss) | np.isfinite(log.val_loss) | np.isfinite(log.tokens_per_s)
    xaxis = axis_range(steps[drawn] if drawn.any() else steps, pad=0.02)
    xticks = nice_ticks(xaxis, target=8, integer=True)

    _draw_panel(canvas, TOP, xaxis, xticks, [
        Series(steps, log.train_loss, TRAIN),
        Series(steps, log.val_loss, VAL, markers=True),
    ])
    _draw_panel(canvas, BOTTOM, xaxis, xticks, [Series(steps, log.tokens_per_s, SPEED)])

    entries = []
    for name, values, color, marker in (("train", log.train_loss, TRAIN, False), ("val", log.val_loss, VAL, True)):
        last = _last_finite(values)
        if last is not None or name == "train":
            entries.append((name if last is None else f"{name} {last:.4g}", color, marker))
    gh = GLYPH_H * FONT_SCALE
    legend_x = _legend(canvas, TOP.x1, TOP.y0 - gh - 10, entries)
    room = (legend_x - 24 - TOP.x0) // (6 * FONT_SCALE)  # characters that fit left of the legend
    head = f"loss  {title}"
    if len(head) > room:
        head = head[:max(room - 3, 0)] + "..."
    _text(canvas, TOP.x0, TOP.y0 - gh - 10, head, INK)
    _text(canvas, BOTTOM.x0, BOTTOM.y0 - gh - 10, "tokens/s", INK)
    xlabel = "step"
    _text(canvas, (BOTTOM.x0 + BOTTOM.x1 - text_width(xlabel, FONT_SCALE)) // 2, BOTTOM.y1 + 8 + gh + 8, xlabel, INK)
    return np.rint(canvas).clip(0, 255).astype(np.uint8)


def plot_run(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """Plot RUN_DIR/log.jsonl to out_png (default RUN_DIR/loss.png); returns its path."""
    run_dir = Path(run_dir)
    out = Path(out_png) if out_png is not None else run_dir / "loss.png"
    log = read_log(run_dir / "log.jsonl")
    png = encode_png(render(log, run_dir.resolve().name), {"Software": f"llmgen {__version__}"})
    with atomic_write(out) as f:
        f.write(png)
    return out


# --------------------------------------------------------------------------------------------
# PNG (ISO/IEC 15948): signature, IHDR, [tEXt], IDAT (zlib of filtered rows), IEND

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """(H,W,3) uint8 -> PNG bytes, 8-bit RGB, not interlaced. Each row gets the filter
    (None, Sub or Up) whose output has the smallest sum of |signed bytes| (libpng's
    heuristic). `text` becomes tEXt chunks (Latin-1 keywords and values)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"encode_png wants a non-empty (H,W,3) uint8 array, got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    rows = rgb.reshape(h, w * 3).astype(np.int16)
    up = np.vstack([np.zeros((1, w * 3), np.int16), rows[:-1]])
    left = np.hstack([np.zeros((h, 3), np.int16), rows[:, :-3]])
    cands = np.stack([rows, rows - left, rows - up]) & 0xFF               # (3, H, W*3): None, Sub, Up
    cost = np.abs(cands.astype(np.uint8).view(np.int8).astype(np.int32)).sum(axis=2)
    best = cost.argmin(axis=0)                                            # (H,) filter type per row
    raw = np.hstack([best[:, None], cands[best, np.arange(h)]]).astype(np.uint8)
    out = [PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    out += [_chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)), _chunk(b"IEND", b"")]
    return b"".join(out)
