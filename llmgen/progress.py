"""Progress on stderr through tqdm: one bar for byte counts (tokenizing) and one for training steps.

Contract
--------
- On a terminal a bar is one line redrawn in place that fits the terminal's width, whatever it
  is (tqdm's dynamic_ncols; tqdm trims to the width, so the fields are ordered most important
  first); other lines (val losses, samples, checkpoints) go into the scroll-back above it
  (tqdm.write), never over it.
- When stderr is not a terminal (a log file, a pipe, CI) there is no bar: plain lines, one per
  training step, and nothing at all for byte counts unless asked.
- ``ncols`` fixes the width (tests); ``file`` defaults to sys.stderr.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

PROGRESS_MIN_BYTES = 10 * 1024 * 1024  # byte bars appear on their own for inputs over 10 MB


class ByteProgress:
    """A bar over a number of bytes: advance(n) as they are processed, close() at the end."""

    def __init__(self, total_bytes: int, label: str, enabled: bool, file: TextIO | None = None):
        self.bar = tqdm(
            total=max(1, int(total_bytes)),
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            disable=not enabled,
            file=file or sys.stderr,
            dynamic_ncols=True,
            mininterval=0.1,
            leave=True,
        )

    def advance(self, nbytes: float) -> None:
        self.bar.update(nbytes)

    def close(self) -> None:
        self.bar.close()


def byte_progress_wanted(total_bytes: int, progress: bool | None, file: TextIO | None = None) -> bool:
    """An explicit choice wins; otherwise a bar for big inputs, or on a terminal."""
    if progress is not None:
        return progress
    return total_bytes > PROGRESS_MIN_BYTES or (file or sys.stderr).isatty()


class TrainProgress:
    """Training steps: a bar on a terminal, plain lines otherwise.

    update() takes one parsed step line of the trainer; note() prints any other line into the
    scroll-back. The last val loss stays in the bar (a val loss comes every -v steps) and each one
    is also printed as its own line, so the history is kept.
    """

    BAR = "step {n_fmt}/{total_fmt} |{bar}| ETA {remaining}{desc}"  # desc: the fields after the ETA

    def __init__(self, file: TextIO | None = None, tty: bool | None = None, ncols: int | None = None):
        self.file = file or sys.stderr
        self.tty = self.file.isatty() if tty is None else tty
        self.ncols = ncols
        self.bar: tqdm | None = None
        self.last_val: str | None = None
        self.step = 0
        self.first: tuple[int, float] | None = None  # (step, time) of the first step seen: the ETA's base

    def _open(self, step: int, total: int) -> tqdm:
        return tqdm(
            total=total,
            initial=step - 1,
            bar_format=self.BAR,
            file=self.file,
            ncols=self.ncols,
            dynamic_ncols=self.ncols is None,
            mininterval=0.2,
            leave=True,
            smoothing=0.1,
        )

    def update(self, step: int, total: int, loss: str, tok_s: float, val: str | None) -> None:
        self.step = step
        if val:
            self.last_val = val
            self.note(f"step {step}/{total} | val loss {val}")
        if not self.tty:
            if self.first is None:
                self.first = (step, time.monotonic())
            s0, t0 = self.first
            eta = (time.monotonic() - t0) / max(step - s0 + 1, 1) * (total - step)
            self.file.write(
                f"step {step}/{total} | loss {loss} | {tok_s:,.0f} tok/s | ETA {eta:,.0f}s"
                + (f" | val {self.last_val}" if self.last_val else "")
                + "\n"
            )
            self.file.flush()
            return
        if self.bar is None:
            self.bar = self._open(step, total)
        fields = f" | loss {loss}" + (f" | val {self.last_val}" if self.last_val else "") + f" | {tok_s:,.0f} tok/s"
        self.bar.set_description_str(fields, refresh=False)
        self.bar.update(step - self.bar.n)

    def note(self, line: str) -> None:
        """A line into the scroll-back (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(line, file=self.file)
        else:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
