"""The run around the algorithm: workdir, metrics, progress, results.

Experiments (``experiments/``) parse flags, build a simulator, a task and a
search strategy, and hand them to :func:`run_search`, which owns everything a
run writes:

    WORKDIR/flags.txt       the resolved flags (one --flag=value per line)
    WORKDIR/metrics.jsonl   one JSON object per policy iteration
    WORKDIR/results.json    the summary a script can read (written by the experiment)

Nothing here reads flags; configuration comes in as arguments.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lts_jax import lts
from lts_jax.params import ParamSpec


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (exists with results, unwritable, ...)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename, so a crash
    or a full disk never leaves a half-written file in place of a good one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare_workdir(workdir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Creates the workdir; refuses one that already holds results unless ``overwrite``.

    Raises WorkdirError naming the path when it exists with results (and
    ``overwrite`` is False) or is not writable.
    """
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} exists and is not a directory")
    if (path / "results.json").exists() and not overwrite:
        raise WorkdirError(
            f"--workdir {path} already holds results (results.json); "
            "choose a new --workdir or pass --overwrite to replace them"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"--workdir {path} is not writable: {e.strerror or e}") from e
    if overwrite:
        for name in ("metrics.jsonl", "results.json"):
            if (path / name).exists():
                (path / name).unlink()
    return path


def write_flags(workdir: Path, flag_values: Mapping[str, Any]) -> None:
    lines = [f"--{k}={v}" for k, v in sorted(flag_values.items())]
    atomic_write_text(Path(workdir) / "flags.txt", "\n".join(lines) + "\n")


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The metrics.jsonl of a run, one dict per iteration."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg})") from e
    return out


class MetricsLog:
    """Hook: appends one JSON line per iteration to ``metrics.jsonl``.

    Per-candidate arrays (``psi``) are dropped to keep lines short; the search's
    current answer is logged as ``center`` (raw psi) and ``params`` (readable).
    """

    def __init__(self, workdir: Path, spec: ParamSpec, drop: Iterable[str] = ("psi",)):
        self.path = Path(workdir) / "metrics.jsonl"
        self.spec = spec
        self.drop = set(drop)
        self.history: list[dict[str, Any]] = []

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        row = {"step": iteration}
        row.update({k: v for k, v in metrics.items() if k not in self.drop})
        if "center" in metrics:
            row["params"] = self.spec.describe(np.asarray(metrics["center"], np.float32))
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
        self.history.append(row)


class Progress:
    """Hook: a one-line progress display (iteration, reward, best, it/s, ETA).

    Quiet when disabled or when stderr is not a terminal (batch jobs, CI logs);
    then a plain line is printed every ``log_every`` iterations instead.
    """

    def __init__(self, total: int, *, enabled: bool = True, log_every: int = 0, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.log_every = log_every
        self.t0 = None
        self.start_iter = None

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self.t0 is None:
            self.t0, self.start_iter = now - metrics.get("time_s", 0.0), iteration
        done = iteration - self.start_iter + 1
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - iteration - 1) / rate if rate > 0 else math.inf
        line = (
            f"iter {iteration + 1}/{self.total}  reward {metrics.get('reward_mean', float('nan')):.4f}  "
            f"best {metrics.get('best_reward', float('nan')):.4f}  {rate:.2f} it/s  ETA {_fmt_time(eta)}"
        )
        if self.tty:
            end = "\n" if iteration + 1 >= self.total else ""
            self.stream.write("\r" + line.ljust(100) + end)
            self.stream.flush()
        elif self.enabled and self.log_every and (iteration % self.log_every == 0 or iteration + 1 >= self.total):
            self.stream.write(line + "\n")
            self.stream.flush()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def run_search(
    step: Callable,
    state: lts.LTSState,
    base_key,
    num_iterations: int,
    val_data: Any,
    *,
    workdir: Path,
    spec: ParamSpec,
    test_data: Any = None,
    test_every: int = 0,
    progress: bool = True,
    log_every: int = 0,
    extra_hooks: Iterable[lts.Hook] = (),
) -> tuple[lts.LTSState, list[dict[str, Any]]]:
    """Runs the policy iterations with metrics logging and progress; returns (state, history)."""
    log = MetricsLog(workdir, spec)
    hooks = [log, Progress(num_iterations, enabled=progress, log_every=log_every), *extra_hooks]
    state = lts.run_loop(
        step, state, base_key, num_iterations, val_data, test_data=test_data, test_every=test_every, hooks=hooks
    )
    return state, log.history
