"""A one-line progress display for the driver loop (iteration, reward, best, it/s, ETA)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any


class Progress:
    """Hook: a one-line progress display (iteration, reward, best, it/s, ETA).

    On a terminal the line is redrawn in place. Without a terminal (batch jobs,
    CI logs) there is no live display: a plain line every ``log_every``
    iterations (0: none). ``enabled=False`` prints nothing at all.
    The rate counts this session's iterations only, so a resumed run's ETA is right.
    """

    def __init__(self, total: int, *, enabled: bool = True, log_every: int = 0, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.t0 = None
        self.start_iter = None

    def line(self, iteration: int, metrics: Mapping[str, Any], rate: float) -> str:
        eta = (self.total - iteration - 1) / rate if rate > 0 else math.inf
        return (
            f"iter {iteration + 1}/{self.total}  reward {metrics.get('reward_mean', float('nan')):.4f}  "
            f"best {metrics.get('best_reward', float('nan')):.4f}  {rate:.2f} it/s  ETA {format_time(eta)}"
        )

    def message(self, text: str) -> None:
        """A one-off line (e.g. "resumed at iteration 40"), shown under the same rules as progress."""
        if self.tty or (self.enabled and self.log_every):
            self.stream.write(text + "\n")
            self.stream.flush()

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.start_iter = now - metrics.get("time_s", 0.0), iteration
        done = iteration - self.start_iter + 1
        rate = done / max(now - self.t0, 1e-9)
        line = self.line(iteration, metrics, rate)
        if self.tty:
            end = "\n" if iteration + 1 >= self.total else ""
            self.stream.write("\r" + line.ljust(100) + end)
            self.stream.flush()
        elif self.log_every and (iteration % self.log_every == 0 or iteration + 1 >= self.total):
            self.stream.write(line + "\n")
            self.stream.flush()


def format_time(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``; ``?`` for an unknown (infinite) time."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
