"""The run around the algorithm: workdir, checkpoints, metrics, progress, figures.

Experiments (``experiments/``) parse flags, build a simulator, a task and a
search strategy, and hand them to :func:`run_search`, which owns everything a
run writes:

    WORKDIR/flags.txt                  the resolved flags (one --flag=value per line)
    WORKDIR/metrics.jsonl              one JSON object per policy iteration ("step" = iteration)
    WORKDIR/events.out.tfevents.*      TensorBoard scalars (one file per session; no TensorFlow needed)
    WORKDIR/checkpoints/<step>/        orbax checkpoints of the whole LTSState (newest ``keep``)
    WORKDIR/checkpoints_corrupt/       checkpoints that failed to restore, moved aside
    WORKDIR/rewards.png, params.png    generic figures (plots.run_figures), redrawn by experiments.plot
    WORKDIR/results.json               the summary a script can read (written by the experiment; its
                                       presence marks the run as finished)

Workdir semantics (what re-running the same command does):

- fresh: an empty or new directory starts a run.
- resume: a directory holding an unfinished run (checkpoints, metrics) with the
  same flags continues from the newest checkpoint that restores; metrics.jsonl
  is cut back to that iteration, so it never holds duplicate or missing lines.
  The resumed run ends bitwise like an uninterrupted one (on CPU).
- extend: a finished run re-run with a larger ``--num_iterations`` continues
  from its final checkpoint; its results.json is moved to results.previous.json
  until the experiment writes the new one.
- finished: a finished run re-run with the same flags raises :class:`RunComplete`
  (experiments exit 0 with "already complete"); no file is touched.
- overwrite: ``overwrite=True`` removes the run's files (the list above) and starts over.
- mismatch: any other flag differing from flags.txt raises :class:`WorkdirError`
  listing the differing flags (experiments exit 2). Run-management flags
  (:data:`RUN_MANAGEMENT_FLAGS`) may differ; ``--num_iterations`` may be raised,
  never lowered below the completed iterations.

Nothing here reads flags; configuration comes in as arguments.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from lts_jax import lts
from lts_jax.params import ParamSpec
from lts_jax.run import checkpoint
from lts_jax.run import tensorboard as tb

# Flags that change how a run is managed, not what it computes: they may differ on resume.
RUN_MANAGEMENT_FLAGS = frozenset(
    {"workdir", "overwrite", "progress", "log_every", "checkpoint_every", "keep_checkpoints"}
)
EXTENSIBLE_FLAG = "num_iterations"
DEFAULT_CHECKPOINT_EVERY = 10
DEFAULT_KEEP_CHECKPOINTS = 3
CHECKPOINT_DIR = "checkpoints"
# Files and directories of a run; --overwrite removes exactly these (figures are redrawn anyway).
RUN_FILES = ("flags.txt", "metrics.jsonl", "results.json", "results.previous.json", "rewards.png", "params.png")
RUN_DIRS = (CHECKPOINT_DIR, CHECKPOINT_DIR + checkpoint.CORRUPT_SUFFIX)


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked (different flags, unwritable, inconsistent files)."""


class StorageError(RuntimeError):
    """Writing a run's file failed while running (e.g. a full disk); the message names the path."""


class RunComplete(Exception):
    """The workdir already holds this finished run; nothing to do (experiments exit 0)."""


class Interrupted(Exception):
    """The run stopped early on a signal (or ``should_stop``) after saving a checkpoint.

    Attributes: ``signum`` (None for should_stop), ``iteration`` (completed), ``checkpoint`` (its path).
    """

    def __init__(self, message: str, signum: int | None, iteration: int, checkpoint_path: Path | None):
        super().__init__(message)
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint_path


# ----- files ----------------------------------------------------------------------------------------------------
def _io_message(path: Path, e: OSError) -> str:
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        reason = "no space left on device"
    return f"cannot write {path}: {reason}"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename, so a crash
    or a full disk never leaves a half-written file in place of a good one.

    Raises StorageError naming the path when the write fails.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise StorageError(_io_message(path, e)) from e
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _unlink_quietly(path) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def append_line(path: Path, line: str) -> None:
    """Appends one line (``line`` ends without a newline) and flushes it to the OS.

    Raises StorageError naming the path on failure (a full disk). A partial
    line left behind is dropped on resume (:func:`sync_metrics`).
    """
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise StorageError(_io_message(Path(path), e)) from e


def psi_export(spec: ParamSpec, psi) -> dict[str, Any]:
    """``{"psi": readable distributions, "psi_raw": [dim]}`` for results.json (what experiments.generate reads)."""
    arr = np.asarray(psi, np.float32)
    return {"psi": spec.describe(arr), "psi_raw": arr.tolist()}


# ----- workdir and flags ----------------------------------------------------------------------------------------
def _format_flags(flag_values: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in flag_values.items()}


def read_flags(workdir: str | os.PathLike) -> dict[str, str] | None:
    """flags.txt as ``{name: value string}``, or None when there is none."""
    path = Path(workdir) / "flags.txt"
    if not path.exists():
        return None
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("--") and "=" in line:
            name, value = line[2:].split("=", 1)
            out[name] = value
    return out


def flag_differences(
    saved: Mapping[str, str], current: Mapping[str, Any], ignore: Iterable[str] = RUN_MANAGEMENT_FLAGS
) -> list[tuple[str, str | None, str | None]]:
    """``[(name, value in the run, value now)]`` of the flags that differ (None: absent)."""
    ignore = set(ignore) | {EXTENSIBLE_FLAG}
    now = _format_flags(current)
    out = []
    for name in sorted(set(saved) | set(now)):
        if name not in ignore and saved.get(name) != now.get(name):
            out.append((name, saved.get(name), now.get(name)))
    return out


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def write_flags(
    workdir: str | os.PathLike, flag_values: Mapping[str, Any], *, ignore: Iterable[str] = RUN_MANAGEMENT_FLAGS
) -> None:
    """Checks the flags against the run already in ``workdir``, then writes flags.txt.

    Raises:
      WorkdirError: the workdir holds a run with different flags (the message
        lists them), or ``num_iterations`` is below the completed iterations, or
        a finished run without checkpoints is asked to extend.
      RunComplete: the workdir holds this run, finished (results.json), and
        ``num_iterations`` was not raised. Nothing is written then.
    """
    path = Path(workdir)
    saved = read_flags(path)
    steps = checkpoint.list_steps(path / CHECKPOINT_DIR)
    finished = (path / "results.json").exists()
    has_run = bool(steps) or finished or (path / "metrics.jsonl").exists()
    if has_run:
        if saved is None:
            logging.warning("%s holds a run without flags.txt; its flags cannot be checked", path)
        else:
            diffs = flag_differences(saved, flag_values, ignore)
            if diffs:
                listing = "\n".join(
                    f"  --{n}: {'(absent)' if a is None else a} in the run, now {b}" for n, a, b in diffs
                )
                raise WorkdirError(
                    f"--workdir {path} holds a run with different flags:\n{listing}\n"
                    f"Re-run with the run's flags (see {path / 'flags.txt'}), choose a new --workdir, "
                    "or pass --overwrite to start over."
                )
        wanted = _int_or_none(flag_values.get(EXTENSIBLE_FLAG))
        saved_n = _int_or_none((saved or {}).get(EXTENSIBLE_FLAG))
        completed = steps[-1] if steps else (saved_n if finished and saved_n is not None else 0)
        if wanted is not None and wanted < completed:
            raise WorkdirError(
                f"--{EXTENSIBLE_FLAG}={wanted} is lower than the {completed} iterations the run in {path} "
                f"has completed; pass --{EXTENSIBLE_FLAG}>={completed}, or --overwrite to start over"
            )
        if finished:
            if wanted is None or wanted <= completed:
                raise RunComplete(
                    f"{path} already holds this finished run ({completed} iterations; see "
                    f"{path / 'results.json'}). Nothing was changed. Pass a larger --{EXTENSIBLE_FLAG} to "
                    "extend it, or --overwrite to start over."
                )
            if not steps:
                raise WorkdirError(
                    f"cannot extend the finished run in {path} to --{EXTENSIBLE_FLAG}={wanted}: it has no "
                    f"checkpoint in {path / CHECKPOINT_DIR}; choose a new --workdir or pass --overwrite"
                )
            _begin_extension(path)
    lines = [f"--{k}={v}" for k, v in sorted(_format_flags(flag_values).items())]
    atomic_write_text(path / "flags.txt", "\n".join(lines) + "\n")


def _begin_extension(path: Path) -> None:
    # Until the extended run writes new results, the old ones live on under another name,
    # and the run counts as unfinished (a re-run after an interruption resumes it).
    os.replace(path / "results.json", path / "results.previous.json")
    logging.info("extending the finished run in %s (results.json moved to results.previous.json)", path)


def _remove_run_files(path: Path) -> None:
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (path / name).is_dir():
            shutil.rmtree(path / name)
    for events in tb.event_files(path):
        events.unlink()


def prepare_workdir(
    workdir: str | os.PathLike,
    *,
    overwrite: bool = False,
    flags: Mapping[str, Any] | None = None,
    ignore: Iterable[str] = RUN_MANAGEMENT_FLAGS,
) -> Path:
    """Creates the workdir (or checks an existing one) before any work.

    ``overwrite`` removes the previous run's files (RUN_FILES, checkpoints,
    events) so the run starts over. With ``flags`` (the resolved flag values)
    it also checks and writes flags.txt (:func:`write_flags`); experiments
    that call :func:`write_flags` themselves right after get the same checks.

    Raises WorkdirError naming the path when it is not a usable directory;
    see :func:`write_flags` for the checks against a previous run.
    """
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"--workdir {path} is not writable: {e.strerror or e}") from e
    if overwrite:
        _remove_run_files(path)
    if flags is not None:
        write_flags(path, flags, ignore=ignore)
    return path


# ----- metrics --------------------------------------------------------------------------------------------------
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


def sync_metrics(workdir: str | os.PathLike, iteration: int) -> list[dict[str, Any]]:
    """Cuts metrics.jsonl back to the iterations ``0 .. iteration - 1`` a checkpoint holds; returns them.

    Lines of later iterations (run after the checkpoint, run again now) and a
    partial last line (a write cut short) are removed, so a resumed run's file
    has neither duplicates nor gaps. Raises WorkdirError naming the file when
    it lacks an iteration the checkpoint has.
    """
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        if iteration > 0:
            raise WorkdirError(
                f"{path} is missing, but the run's checkpoint is at iteration {iteration}; restore the file "
                "or pass --overwrite to start over"
            )
        return []
    kept_lines, rows = [], []
    with open(path) as f:
        raw = f.read().split("\n")
    for n, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if len(rows) < iteration:
                raise WorkdirError(
                    f"{path}: line {n} is not valid JSON; it belongs to iteration {len(rows)}, which the "
                    "checkpoint holds. Restore the file or pass --overwrite to start over"
                ) from None
            break  # a partial line after the checkpoint
        step = row.get("step")
        if isinstance(step, int) and step >= iteration:
            break
        if step != len(rows):
            raise WorkdirError(f"{path}: line {n} has step {step}, expected {len(rows)}")
        rows.append(row)
        kept_lines.append(line)
    if len(rows) < iteration:
        raise WorkdirError(
            f"{path} holds {len(rows)} iterations, but the checkpoint is at iteration {iteration}; "
            "restore the file or pass --overwrite to start over"
        )
    if len(kept_lines) != sum(1 for line in raw if line.strip()) or (raw and raw[-1] != ""):
        atomic_write_text(path, "".join(line + "\n" for line in kept_lines))
    return rows


def tensorboard_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one metrics row for TensorBoard: numbers, plus the readable psi as ``params/...``."""
    out = {}
    for k, v in row.items():
        if k in ("step", "iteration") or isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[k] = float(v)
    for block, desc in (row.get("params") or {}).items():
        if "prob" in desc:
            out[f"params/{block}"] = desc["prob"]
        elif "probs" in desc:
            for label, p in desc["probs"].items():
                out[f"params/{block}/{label}"] = p
        else:
            for i, (m, var) in enumerate(zip(desc.get("mean", []), desc.get("variance", []))):
                out[f"params/{block}/mean{i}"] = m
                out[f"params/{block}/variance{i}"] = var
    return out


class MetricsLog:
    """Hook: appends one JSON line per iteration to ``metrics.jsonl`` (and TensorBoard scalars).

    Per-candidate arrays (``psi``) are dropped to keep lines short; the search's
    current answer is logged as ``center`` (raw psi) and ``params`` (readable).
    ``history`` holds the rows of earlier sessions of a resumed run.
    """

    def __init__(
        self,
        workdir: Path,
        spec: ParamSpec,
        drop: Iterable[str] = ("psi",),
        *,
        history: list[dict[str, Any]] | None = None,
        writer: tb.EventWriter | None = None,
    ):
        self.path = Path(workdir) / "metrics.jsonl"
        self.spec = spec
        self.drop = set(drop)
        self.history: list[dict[str, Any]] = list(history or [])
        self.writer = writer

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        row = {"step": iteration}
        row.update({k: v for k, v in metrics.items() if k not in self.drop})
        if "center" in metrics:
            row["params"] = self.spec.describe(np.asarray(metrics["center"], np.float32))
        append_line(self.path, json.dumps(row, default=_json_default))
        self.history.append(row)
        if self.writer is not None:
            try:
                self.writer.scalars(iteration, tensorboard_scalars(row))
                self.writer.flush()
            except OSError as e:
                raise StorageError(_io_message(self.writer.path, e)) from e


# ----- progress -------------------------------------------------------------------------------------------------
class Progress:
    """Hook: a one-line progress display (iteration, reward, best, it/s, ETA).

    On a terminal the line is redrawn in place. Without a terminal (batch jobs,
    CI logs) there is no live display: a plain line every ``log_every``
    iterations (0: none). ``enabled=False`` (``--noprogress``) prints nothing.
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
            f"best {metrics.get('best_reward', float('nan')):.4f}  {rate:.2f} it/s  ETA {_fmt_time(eta)}"
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


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ----- signals and checkpoints ----------------------------------------------------------------------------------
class _StopOnSignal:
    """SIGINT/SIGTERM set a flag polled between iterations; a second signal acts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.stream = stream or sys.stderr
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            self.restore()
            signal.raise_signal(signum)  # the previous behaviour: KeyboardInterrupt or termination
            return
        self.signum = signum
        self.stream.write(
            f"\n{signal.Signals(signum).name} received: stopping after this iteration and saving a checkpoint "
            "(send it again to stop at once, without saving)\n"
        )
        self.stream.flush()

    def __enter__(self) -> _StopOnSignal:
        if self.enabled:
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def __exit__(self, *exc) -> None:
        self.restore()


class _CheckpointHook:
    """Hook: saves the state every ``every`` iterations (0: never here) and at the last one."""

    def __init__(self, ckpt: checkpoint.Checkpointer, every: int, num_iterations: int, meta: dict[str, Any]):
        self.ckpt, self.every, self.num_iterations, self.meta = ckpt, every, num_iterations, meta
        self.last_state = None
        self.saved_step: int | None = None

    def save(self, state) -> Path:
        path = self.ckpt.save(state, self.meta)
        self.saved_step = int(state.iteration)
        return path

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        self.last_state = state
        done = iteration + 1
        if (self.every and done % self.every == 0) or done == self.num_iterations:
            self.save(state)


def _setting(value, saved_flags: Mapping[str, str] | None, name: str, default: int) -> int:
    # Experiments that do not pass a run-management setting still honour their flag, read back from
    # flags.txt (which write_flags filled from the resolved flags).
    if value is not None:
        return int(value)
    parsed = _int_or_none((saved_flags or {}).get(name))
    return default if parsed is None else parsed


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
    checkpoint_every: int | None = None,
    keep_checkpoints: int | None = None,
    resume: bool = True,
    handle_signals: bool = True,
    should_stop: Callable[[], bool] | None = None,
    tensorboard: bool = True,
    figures: bool = True,
) -> tuple[lts.LTSState, list[dict[str, Any]]]:
    """Runs the policy iterations with checkpoints, metrics, TensorBoard and progress; returns (state, history).

    ``state`` is the freshly initialised state: it starts a new run and is the
    structure a checkpoint is restored into. With ``resume`` the newest good
    checkpoint in ``WORKDIR/checkpoints`` is restored first (a corrupt newer one
    is moved aside with a warning), metrics.jsonl is cut back to it, and the
    loop continues at its iteration; ``history`` is then the whole run's rows.

    Args:
      checkpoint_every: save every N iterations (0: only at the end and on a
        stop). None: the ``checkpoint_every`` recorded in flags.txt, else 10.
      keep_checkpoints: how many checkpoints to keep; None: flags.txt's
        ``keep_checkpoints``, else 3.
      handle_signals: SIGINT/SIGTERM stop the run after the current iteration
        with a checkpoint (main thread only).
      should_stop: polled between iterations as well (tests, schedulers).
      tensorboard: write TensorBoard events to the workdir.
      figures: draw the generic figures (rewards.png, params.png) at the end.

    Raises:
      Interrupted: stopped early by a signal or ``should_stop``; the checkpoint is saved.
      RunComplete: the workdir holds results.json and a checkpoint at ``num_iterations``.
      WorkdirError: a checkpoint beyond ``num_iterations``, metrics.jsonl lacks iterations, or
        checkpoints exist while ``resume`` is off.
      StorageError, checkpoint.CheckpointError: a file could not be written (the message names it).
      lts.NonFiniteError: as run_loop; the last good state is checkpointed first.
    """
    workdir = Path(workdir)
    saved_flags = read_flags(workdir)
    every = _setting(checkpoint_every, saved_flags, "checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    keep = _setting(keep_checkpoints, saved_flags, "keep_checkpoints", DEFAULT_KEEP_CHECKPOINTS)
    if every < 0:
        raise ValueError(f"checkpoint_every = {every} is out of range; accepted: an integer >= 0")
    ckpt = checkpoint.Checkpointer(workdir / CHECKPOINT_DIR, keep=keep)
    try:
        return _run(
            step, state, base_key, num_iterations, val_data, workdir, spec, ckpt, every, resume,
            test_data=test_data, test_every=test_every, progress=progress, log_every=log_every,
            extra_hooks=extra_hooks, handle_signals=handle_signals, should_stop=should_stop,
            tensorboard=tensorboard, figures=figures,
        )  # fmt: skip
    finally:
        ckpt.close()


def _run(
    step, state, base_key, num_iterations, val_data, workdir: Path, spec, ckpt, every, resume, *,
    test_data, test_every, progress, log_every, extra_hooks, handle_signals, should_stop, tensorboard, figures,
):  # fmt: skip
    if not resume and ckpt.steps():
        # Saving would skip the steps that exist and leave another run's states among this run's.
        raise WorkdirError(f"{ckpt.directory} holds checkpoints and resume is off; remove them or start over")
    restored = ckpt.restore_latest(state) if resume else None
    if restored is not None:
        state = restored[0]
    start = int(state.iteration)
    if start > num_iterations:
        raise WorkdirError(
            f"the checkpoint in {ckpt.directory} is at iteration {start}, beyond num_iterations = {num_iterations}"
        )
    if (workdir / "results.json").exists():
        if start >= num_iterations:
            raise RunComplete(f"{workdir} already holds this finished run ({start} iterations; results.json)")
        _begin_extension(workdir)
    history = sync_metrics(workdir, start)

    writer = None
    if tensorboard:
        try:
            writer = tb.EventWriter(workdir, start_step=start)
        except OSError as e:
            raise StorageError(f"cannot write TensorBoard events in {workdir}: {e.strerror or e}") from e
    log = MetricsLog(workdir, spec, history=history, writer=writer)
    show = Progress(num_iterations, enabled=progress, log_every=log_every)
    if start > 0 and start < num_iterations:
        show.message(f"resumed {workdir} at iteration {start}/{num_iterations} from {ckpt.path(start)}")
    saver = _CheckpointHook(ckpt, every, num_iterations, {"num_iterations": num_iterations})
    if restored is not None:
        saver.saved_step = start
    hooks = [log, saver, show, *extra_hooks]

    stop = _StopOnSignal(handle_signals)
    poll = should_stop or (lambda: False)
    try:
        with stop:
            state = lts.run_loop(
                step, state, base_key, num_iterations, val_data, test_data=test_data, test_every=test_every,
                hooks=hooks, should_stop=lambda: stop.signum is not None or poll(),
            )  # fmt: skip
    except (StorageError, checkpoint.CheckpointError, KeyboardInterrupt):
        raise
    except Exception:
        # Keep the last good iteration (e.g. before a non-finite reward) so nothing computed is lost.
        if saver.last_state is not None and saver.saved_step != int(saver.last_state.iteration):
            try:
                saver.save(saver.last_state)
            except Exception as e:  # the original error matters more
                logging.warning("could not save the last good state: %s", e)
        raise
    finally:
        if writer is not None:
            writer.close()

    done = int(state.iteration)
    path = ckpt.path(done)
    if saver.saved_step != done:
        path = saver.save(state)
    if done < num_iterations:
        why = signal.Signals(stop.signum).name if stop.signum is not None else "a stop request"
        raise Interrupted(
            f"stopped by {why} after iteration {done}/{num_iterations}; checkpoint saved to {path}. "
            "Re-run the same command to resume.",
            stop.signum,
            done,
            path,
        )
    if figures and log.history:
        try:
            from lts_jax.run import plots  # matplotlib is only needed here

            plots.run_figures(log.history, workdir)
        except Exception as e:  # a figure never costs a finished run
            logging.warning("could not draw the run's figures in %s: %s", workdir, e)
    return state, log.history
