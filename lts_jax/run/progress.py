"""What a run tells the person watching it: the phases of the job, a progress line, a closing table.

    with progress.phase("car_count", "rendering the validation and test sets (200 + 200 images at 48x160)"):
        val, test = ...
    show = Progress(num_iterations, log_every=10)         # the driver's hook (run.run_search makes one)
    print(progress.format_table({"lts": {"test": -0.81}}, [("final test reward", "test")]))
    print(progress.outputs({"results": workdir / "results.json", "figures": [...]}))

Every line goes to stderr (the results a script reads are in the workdir's files), and only from the main
process of a multi-process run. :func:`quiet_backend_logs` removes the INFO line that jax logs through absl on
every command run without a TPU ("Unable to initialize backend 'tpu'"); its warnings still show.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lts_jax.run import distributed

# jax's loggers whose INFO lines are noise on every command (backend discovery); WARNING and above still show.
BACKEND_LOGGERS = ("jax._src.xla_bridge",)


def quiet_backend_logs() -> None:
    """Raises jax's backend-discovery loggers to WARNING: no "Unable to initialize backend 'tpu'" INFO line on
    every command (absl shows INFO once an experiment sets it up); real warnings still show."""
    for name in BACKEND_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # its own level (NOTSET follows the root, which absl lowers to INFO)
            logger.setLevel(logging.WARNING)


def say(text: str, stream=None) -> None:
    """One line for the person watching (stderr), from the main process only."""
    if not distributed.is_main_process():
        return
    stream = stream or sys.stderr
    stream.write(text + "\n")
    stream.flush()


@contextlib.contextmanager
def phase(name: str, what: str, stream=None) -> Iterator[None]:
    """Announces a phase of a job (``NAME: WHAT ...``) and, when it ends, how long it took
    (``NAME: WHAT: done in 12 s``); an exception passes through with no "done" line."""
    say(f"{name}: {what} ...", stream)
    t0 = time.perf_counter()
    yield
    say(f"{name}: {what}: done in {format_duration(time.perf_counter() - t0)}", stream)


class Progress:
    """Hook: a one-line progress display (iteration, reward, best, it/s, ETA).

    On a terminal the line is redrawn in place. Without a terminal (batch jobs,
    CI logs) there is no live display: a plain line every ``log_every``
    iterations (0: none). ``enabled=False`` prints nothing at all.

    The first iteration of a session compiles the step: :meth:`start` says so before it, its line gives its
    time ("compilation included") instead of an ETA, and the rate and ETA of the later lines count only the
    iterations after it (a resumed run's ETA is right too).
    """

    def __init__(self, total: int, *, enabled: bool = True, log_every: int = 0, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.t0 = None  # end of the session's first iteration
        self.start_iter = None
        self.first_s = None

    def line(self, iteration: int, metrics: Mapping[str, Any], rate: float | None) -> str:
        head = (
            f"iter {iteration + 1}/{self.total}  reward {metrics.get('reward_mean', float('nan')):.4f}  "
            f"best {metrics.get('best_reward', float('nan')):.4f}"
        )
        if rate is None:  # the session's first iteration: it compiled the step
            return f"{head}  first iteration {format_duration(self.first_s or 0.0)} (compiling included)"
        eta = (self.total - iteration - 1) / rate if rate > 0 else math.inf
        return f"{head}  {rate:.2f} it/s  ETA {format_time(eta)}"

    def _show(self, text: str, *, final: bool = False, force: bool = False) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(100) + ("\n" if final else ""))
            self.stream.flush()
        elif force:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A one-off line (e.g. "resumed at iteration 40"), shown under the same rules as progress."""
        if self.tty or (self.enabled and self.log_every):
            self.stream.write(text + "\n")
            self.stream.flush()

    def start(self, iteration: int) -> None:
        """Before the session's first iteration (``iteration``, 0-based): "compiling" instead of an ETA."""
        if not self.enabled or iteration >= self.total:
            return
        text = f"iter {iteration}/{self.total}  compiling the step and running iteration {iteration + 1} ..."
        self._show(text, force=bool(self.log_every))

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.start_iter, self.first_s = now, iteration, float(metrics.get("time_s", 0.0))
            rate = None
        else:
            rate = (iteration - self.start_iter) / max(now - self.t0, 1e-9)
        final = iteration + 1 >= self.total
        periodic = self.log_every and (iteration % self.log_every == 0 or final)
        self._show(self.line(iteration, metrics, rate), final=final, force=bool(periodic))


def format_time(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``; ``?`` for an unknown (infinite) time."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``38 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str]], *, first: str = "", digits: int = 3
) -> str:
    """A plain-text table: one row per name of ``rows``, ``columns`` = (header, key) pairs; floats rounded to
    ``digits`` decimals, integers with thousands separators, missing values as ``-``. ``first``: the header
    of the names' column."""
    headers = [first, *(h for h, _ in columns)]
    body = [[str(name), *(_cell(row.get(k), digits) for _, k in columns)] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def outputs(entries: Mapping[str, Path | str | Sequence[Path | str] | None]) -> str:
    """Where a run's outputs are, one line each (``results: DIR/results.json``); a list gives one indented line
    per path, None or an empty list is left out."""
    lines = []
    for label, value in entries.items():
        if not value:
            continue
        if isinstance(value, str | Path):
            lines.append(f"{label}: {value}")
        else:
            lines.append(f"{label}:")
            lines += [f"  {p}" for p in value]
    return "\n".join(lines)
