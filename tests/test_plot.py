"""Tests for llmgen/plot.py: log parsing, the PNG it writes, and what the picture shows.

The PNG is decoded here with zlib + struct alone (chunk CRCs checked, rows unfiltered),
so these tests share no code with the writer. Everything is offline and fast.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib

import numpy as np
import pytest

from llmgen import plot
from llmgen.plot import (
    BOTTOM,
    HEIGHT,
    SPEED,
    TOP,
    TRAIN,
    VAL,
    WIDTH,
    LogError,
    plot_run,
    read_log,
)

# --------------------------------------------------------------------------------------------
# helpers: a log writer and an independent PNG decoder

def write_log(run_dir, lines):
    """lines: dicts (dumped as JSON) or raw strings; returns the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    (run_dir / "log.jsonl").write_text(text)
    return run_dir


def train_line(step, loss, tok=1000.0, **extra):
    return {"step": step, "train_loss": loss, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": tok, "ms": 10.0, **extra}


def read_chunks(data):
    """[(type, payload)] of a PNG file; checks the signature, lengths and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad PNG signature"
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert len(payload) == n, f"chunk {kind} truncated"
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, f"bad CRC in chunk {kind}"
        chunks.append((kind, payload))
        pos += 12 + n
    assert pos == len(data), "bytes after the last chunk"
    return chunks


def decode_png(data):
    """(H,W,3) uint8 image and the per-row filter types of an 8-bit RGB PNG.
    Only the filters the writer documents (0 None, 1 Sub, 2 Up) are accepted."""
    chunks = read_chunks(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and kinds.count(b"IEND") == 1
    w, h, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, comp, filt, interlace) == (8, 2, 0, 0, 0), "want 8-bit RGB, not interlaced"
    idat = b"".join(p for k, p in chunks if k == b"IDAT")
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8)
    assert raw.size == h * (1 + 3 * w), "wrong amount of image data"
    raw = raw.reshape(h, 1 + 3 * w)
    img = np.zeros((h, 3 * w), dtype=np.uint8)
    prev = np.zeros(3 * w, dtype=np.uint8)
    for y in range(h):
        f, row = raw[y, 0], raw[y, 1:]
        if f == 0:
            cur = row
        elif f == 1:  # Sub: each byte adds the byte 3 to its left -> running sum per channel
            cur = (row.reshape(w, 3).astype(np.int64).cumsum(axis=0) % 256).astype(np.uint8).ravel()
        elif f == 2:  # Up
            cur = row + prev  # uint8 wraps mod 256
        else:
            raise AssertionError(f"row {y}: filter type {f} (the writer uses None/Sub/Up only)")
        img[y] = prev = cur
    return img.reshape(h, w, 3), raw[:, 0]


def load(path):
    img, _ = decode_png(path.read_bytes())
    return img


def colored(img, box, color):
    """bool mask of exactly-`color` pixels inside box (a plot.Rect)."""
    sub = img[box.y0:box.y1, box.x0:box.x1]
    return np.all(sub == np.array(color, dtype=np.uint8), axis=2)


def mean_rows_left_right(mask):
    """Mean row of the True pixels in the left and right thirds of mask."""
    w = mask.shape[1]
    left, right = mask[:, : w // 3], mask[:, 2 * w // 3:]
    assert left.any() and right.any()
    return np.nonzero(left)[0].mean(), np.nonzero(right)[0].mean()


def decreasing_run(tmp_path, n=60, name="run"):
    lines = [{"step": 0, "val_loss": 11.0}]
    for s in range(1, n + 1):
        loss = 3.0 + 8.0 * math.exp(-s / 15)
        lines.append(train_line(s, loss, tok=1000.0 + 10 * s, **({"val_loss": loss + 0.1} if s % 10 == 0 else {})))
    return write_log(tmp_path / name, lines)


# --------------------------------------------------------------------------------------------
# the file

def test_plot_run_writes_a_valid_png_atomically(tmp_path):
    run = decreasing_run(tmp_path)
    out = plot_run(run)
    assert out == run / "loss.png" and out.is_file()
    data = out.read_bytes()
    chunks = read_chunks(data)
    w, h = struct.unpack(">II", chunks[0][1][:8])
    assert (w, h) == (WIDTH, HEIGHT) == (900, 600)
    img, filters = decode_png(data)
    assert img.shape == (600, 900, 3)
    texts = dict(p.split(b"\0", 1) for k, p in chunks if k == b"tEXt")
    assert texts[b"Software"].startswith(b"llmgen ")
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "loss.png"], "temporary file left behind"
    print(f"png: {len(data)} bytes, row filters used {sorted(set(filters.tolist()))}")


def test_out_png_argument_replaces_an_existing_file(tmp_path):
    run = decreasing_run(tmp_path)
    target = tmp_path / "elsewhere" / "curves.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    out = plot_run(str(run), str(target))
    assert out == target
    assert load(out).shape == (HEIGHT, WIDTH, 3)
    assert not (run / "loss.png").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["curves.png"]


# --------------------------------------------------------------------------------------------
# what the picture shows

def test_train_and_val_colors_in_their_panels(tmp_path):
    img = load(plot_run(decreasing_run(tmp_path)))
    assert colored(img, TOP, TRAIN).sum() > 500, "no train line in the top panel"
    assert colored(img, TOP, VAL).sum() > 50, "no val markers/line in the top panel"
    assert colored(img, BOTTOM, SPEED).sum() > 500, "no tokens/s line in the bottom panel"
    assert not colored(img, BOTTOM, TRAIN).any() and not colored(img, TOP, SPEED).any()
    assert len({TRAIN, VAL, SPEED}) == 3


@pytest.mark.parametrize("direction", [-1, +1])
def test_lines_follow_the_data(tmp_path, direction):
    """Loss going down (up) puts the train line's right third lower (higher) on the image
    than its left third; tokens/s does the opposite in the bottom panel."""
    lines = [train_line(s, 5.0 + direction * 0.05 * s, tok=2000.0 - direction * 10 * s) for s in range(1, 61)]
    img = load(plot_run(write_log(tmp_path / "run", lines)))
    left, right = mean_rows_left_right(colored(img, TOP, TRAIN))
    print(f"direction {direction:+d}: train mean row left {left:.1f} right {right:.1f}")
    assert (right - left) * -direction > 100  # image rows grow downwards
    left, right = mean_rows_left_right(colored(img, BOTTOM, SPEED))
    assert (right - left) * direction > 50


def test_descending_loss_with_val(tmp_path):
    img = load(plot_run(decreasing_run(tmp_path)))
    left, right = mean_rows_left_right(colored(img, TOP, TRAIN))
    print(f"train mean row left {left:.1f} right {right:.1f}")
    assert left < right - 50


def test_single_step(tmp_path):
    img = load(plot_run(write_log(tmp_path / "run", [train_line(1, 4.5)])))
    assert colored(img, TOP, TRAIN).sum() >= 9, "a lone point should draw as a marker"
    assert colored(img, BOTTOM, SPEED).sum() >= 9


def test_constant_series(tmp_path):
    lines = [train_line(s, 2.0, tok=0.0) for s in range(1, 21)]
    img = load(plot_run(write_log(tmp_path / "run", lines)))
    for box, color in ((TOP, TRAIN), (BOTTOM, SPEED)):
        rows = np.nonzero(colored(img, box, color))[0]
        assert rows.size > 500
        assert rows.max() - rows.min() <= 2, "a constant series is a horizontal line"
        h = box.y1 - box.y0
        assert h // 4 < rows.mean() < 3 * h // 4, "and it sits mid-panel"


def test_nonfinite_values_are_skipped(tmp_path):
    # JSON's NaN/Infinity and C printf's nan/-nan/inf (what the trainer's %.9g prints)
    lines = ['{"step": 0, "val_loss": nan}']
    for s in range(1, 31):
        loss = "NaN" if s == 5 else "-nan" if s == 6 else f"{10 - 0.2 * s}"
        lines.append(f'{{"step": {s}, "train_loss": {loss}, "lr": 0.001, "grad_norm": -nan, '
                     f'"tokens_per_s": {"inf" if s % 2 else "Infinity"}, "ms": 1.5}}')
    run = write_log(tmp_path / "run", lines)
    log = read_log(run / "log.jsonl")
    assert np.isnan(log.train_loss[[5, 6]]).all() and np.isfinite(log.train_loss[7:]).all()
    assert np.isnan(log.val_loss).all() and np.isinf(log.tokens_per_s[1:]).all()
    img = load(plot_run(run))
    left, right = mean_rows_left_right(colored(img, TOP, TRAIN))
    assert left < right - 100
    assert not colored(img, TOP, VAL).any() and not colored(img, BOTTOM, SPEED).any()


def test_resumed_log_later_line_wins(tmp_path):
    first = [{"step": 0, "val_loss": 11.0}] + [train_line(s, 9.0) for s in range(1, 11)]
    resumed = [train_line(s, 1.0, val_loss=1.5 if s == 10 else None) for s in range(6, 13)]
    for r in resumed:
        if r["val_loss"] is None:
            del r["val_loss"]
    run = write_log(tmp_path / "run", first + resumed + ["", "   "])
    log = read_log(run / "log.jsonl")
    assert log.step.tolist() == list(range(13))
    assert log.train_loss[1:6].tolist() == [9.0] * 5 and log.train_loss[6:].tolist() == [1.0] * 7
    assert np.isnan(log.train_loss[0]) and log.val_loss[0] == 11.0 and log.val_loss[10] == 1.5
    assert plot_run(run).is_file()


def test_long_log_is_fast_and_keeps_spikes(tmp_path):
    """50k steps: drawn in well under a few seconds (columns reduced to min/max), and a
    one-step spike still reaches the top of the panel."""
    n, spike = 50_000, 31_337
    loss = np.full(n, 3.0)
    loss[spike - 1] = 9.0
    lines = [f'{{"step": {s}, "train_loss": {v}, "tokens_per_s": 1500000.0}}' for s, v in zip(range(1, n + 1), loss)]
    run = write_log(tmp_path / "run", lines)
    t0 = time.perf_counter()
    out = plot_run(run)
    dt = time.perf_counter() - t0
    print(f"50k-step log plotted in {dt:.2f} s")
    assert dt < 10
    rows, cols = np.nonzero(colored(load(out), TOP, TRAIN))
    top = rows.min()
    assert top < 0.15 * (TOP.y1 - TOP.y0), "the spike was lost"
    spike_x = cols[rows == top].mean() / (TOP.x1 - TOP.x0)
    assert abs(spike_x - spike / n) < 0.03


# --------------------------------------------------------------------------------------------
# errors name the file (and the line)

@pytest.mark.parametrize("content, needle", [
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
])
def test_bad_logs_raise_value_error_naming_the_file(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    log = run / "log.jsonl"
    if isinstance(content, bytes):
        log.write_bytes(content)
    elif content is not None:
        log.write_text(content)
    with pytest.raises(ValueError) as e:
        plot_run(run)
    assert isinstance(e.value, LogError)
    msg = str(e.value)
    print(msg)
    assert str(log) in msg and needle in msg
    assert not (run / "loss.png").exists()


# --------------------------------------------------------------------------------------------
# pieces: font, ticks, PNG encoder

def test_font_has_the_needed_glyphs():
    needed = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-/: "
    assert set(needed) <= set(plot.FONT)
    shapes = {}
    for ch, bits in plot.FONT.items():
        assert bits.shape == (7, 5) and bits.dtype == bool, ch
        assert bits.any() == (ch != " "), ch
        shapes.setdefault(bits.tobytes(), []).append(ch)
    assert all(len(v) == 1 for v in shapes.values()), [v for v in shapes.values() if len(v) > 1]
    assert np.array_equal(plot.text_bitmap("\u00e9"), plot.FONT["?"]), "unknown characters draw as '?'"
    bm = plot.text_bitmap("ab", scale=2)
    assert bm.shape == (14, 22) and bm.shape[1] == plot.text_width("ab", 2)
    assert not bm[:, 10:12].any(), "one blank column between glyphs"


def test_ticks_and_labels():
    ticks, step = plot.nice_ticks(plot.Axis(-0.3, 50_000.0), target=6)
    assert ticks.tolist() == [0, 10_000, 20_000, 30_000, 40_000, 50_000] and step == 10_000
    assert plot.tick_labels(ticks, step) == ["0", "10k", "20k", "30k", "40k", "50k"]
    ticks, step = plot.nice_ticks(plot.Axis(-1.0, 1.0), target=5)
    assert plot.tick_labels(ticks, step) == ["-1.0", "-0.5", "0.0", "0.5", "1.0"]
    ticks, step = plot.nice_ticks(plot.Axis(2900.0, 3100.0), target=5)
    assert plot.tick_labels(ticks, step) == ["2900", "2950", "3000", "3050", "3100"]
    ticks, step = plot.nice_ticks(plot.Axis(1.46e6, 1.54e6), target=4)
    assert plot.tick_labels(ticks, step) == ["1.46M", "1.48M", "1.50M", "1.52M", "1.54M"]
    ticks, step = plot.nice_ticks(plot.Axis(1e-7, 3e-7), target=4)
    assert plot.tick_labels(ticks, step)[0] == "1.0e-7"
    ticks, step = plot.nice_ticks(plot.Axis(0.9, 1.1), target=8, integer=True)
    assert ticks.tolist() == [1.0] and step == 1.0
    for values in ([2.0, 2.0], [0.0], [7.5, np.nan], [np.nan], [-3.0, -3.0 + 1e-9]):
        ax = plot.axis_range(np.array(values), pad=0.05)
        assert ax.hi > ax.lo and math.isfinite(ax.hi - ax.lo)


def test_encode_png_roundtrip_and_filters():
    rng = np.random.default_rng(0)
    h, w = 48, 40
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:16] = (np.arange(w)[None, :, None] * 5) % 256                # horizontal ramp: Sub wins
    img[16:32] = (np.arange(16)[:, None, None] * 7 + 3) % 256         # vertical ramp: Up wins
    img[32:] = rng.integers(0, 256, size=(16, w, 3), dtype=np.uint8)  # noise
    got, filters = decode_png(plot.encode_png(img, {"Comment": "x"}))
    assert np.array_equal(got, img)
    assert {1, 2} <= set(filters.tolist())
    with pytest.raises(ValueError):
        plot.encode_png(img.astype(np.float32))
    with pytest.raises(ValueError):
        plot.encode_png(img[..., :2])
