"""Checkpoints of a run's whole state with orbax-checkpoint.

Layout (one orbax CheckpointManager)::

    WORKDIR/checkpoints/<step>/state/     the LTSState pytree (search state with optimiser
                                          state and baseline, AMTM, best MTM, iteration)
    WORKDIR/checkpoints/<step>/meta/      JSON: {"iteration": step, "num_iterations", "time", "layout",
                                          "config", "fingerprint"} (see "The run's identity")
    WORKDIR/checkpoints_corrupt/<step>/   a latest checkpoint that failed to restore, moved aside

``<step>`` is the number of completed iterations (``state.iteration``). Saves
are synchronous: a failure (a full disk) surfaces at once, as a
:class:`CheckpointError` naming the path, and orbax only turns a checkpoint
directory into ``<step>`` after all of it is written, so the previous good
checkpoints stay in place. The newest ``keep`` checkpoints are kept (also
after a resume that saved nothing: :meth:`Checkpointer.prune`), and the
temporary directory of a save that a crash cut short is removed.

The run's identity travels with every checkpoint, in its meta: ``layout``
(every array of the state: ``{path: "float32[8]"}``, :func:`state_layout`),
and what the caller gives: ``config`` (the run's resolved settings, as
flags.txt holds them) and ``fingerprint`` (descriptions of the simulator, task
and search). :func:`stored_meta` reads them back without orbax, so a workdir
whose flags.txt is gone still knows its run. A checkpoint whose layout is not
the target's (another configuration's run) raises :class:`LayoutMismatch`
naming the arrays that differ, before orbax is asked; it is neither corrupt
nor moved aside.

Restoring needs a *target*: a state of the same structure (the freshly
initialised one), whose shapes, dtypes and shardings the restored arrays take.
A restored state continues bitwise like the uninterrupted run (on CPU).

Across meshes: the target's sharding decides how a checkpoint is read, not the
layout it was written from, so a checkpoint written on N devices restores on 1
and the other way round (``lts.init_state`` gives a target replicated on the
run's devices). Several processes: every process calls save and restore (orbax
coordinates them: the primary process writes the replicated arrays and the
metadata, and commits the step after all are done); the directory must be on
a file system all processes share; only the main process moves a corrupt
checkpoint aside.

Works with orbax-checkpoint 0.12.x (the API of CheckpointManager,
``ocp.args.StandardSave/StandardRestore/JsonSave/JsonRestore/Composite``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from lts_jax.run import distributed
from lts_jax.run.errors import RunError

CORRUPT_SUFFIX = "_corrupt"
META_ITEM = "meta"  # the orbax item holding the JSON meta: <step>/meta/metadata
# orbax writes a step into "<step>.orbax-checkpoint-tmp..." and renames it when complete
TMP_MARKER = ".orbax-checkpoint-tmp"


def _ocp():
    # orbax is imported on first use: experiments that stop at flag validation do not pay for it.
    import orbax.checkpoint

    return orbax.checkpoint


def __getattr__(name: str):
    if name == "ocp":  # ``checkpoint.ocp``: the orbax module (for tests that patch it)
        return _ocp()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class CheckpointError(RunError, RuntimeError):
    """A checkpoint cannot be written or no checkpoint can be restored; the message names the path."""


class LayoutMismatch(CheckpointError):
    """A checkpoint holds a state of another structure or shape than the run's (another configuration's
    run). Attributes: ``path``, ``differences`` (``[(array, in the checkpoint, now)]``)."""

    def __init__(self, compose, *, path: Path, differences: list[tuple[str, str | None, str | None]]):
        super().__init__(compose)
        self.path, self.differences = path, differences


class _DropOrbaxInfo:
    """A logging filter: orbax logs several INFO lines per save through absl; keep its warnings and errors,
    except while a Checkpointer call runs (``quiet``): a failure there becomes one CheckpointError naming
    the path, instead of a traceback per orbax thread (a full disk: a dozen)."""

    quiet = 0

    def filter(self, record) -> bool:
        if "orbax" not in (record.pathname or ""):
            return True
        return record.levelno >= 30 and not _DropOrbaxInfo.quiet


def quiet_orbax_logs() -> None:
    """Hides orbax's INFO logs (a dozen lines per checkpoint) from the absl logger; warnings still show."""
    absl_logger = logging.get_absl_logger()
    if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxInfo())


@contextlib.contextmanager
def _orbax_quiet():
    quiet_orbax_logs()
    _DropOrbaxInfo.quiet += 1
    try:
        yield
    finally:
        _DropOrbaxInfo.quiet -= 1


def _finish_abandoned_work() -> None:
    """After a failed orbax call: finalises the coroutines it abandoned now, while the interpreter runs. Left to
    the exit, each prints a traceback ("Event loop is closed", "Python is likely shutting down")."""
    with _orbax_quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()


# ----- the run's identity ---------------------------------------------------------------------------------------
def state_layout(tree: Any) -> dict[str, str]:
    """``{path: "dtype[shape]"}`` of every array leaf of ``tree`` (e.g. ``"search.params.mean": "float32[8]"``):
    what a checkpoint must match to restore into it."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(_key_name(k) for k in path)
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            out[name] = f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}"
        else:
            out[name] = type(leaf).__name__
    return out


def _key_name(key: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def layout_differences(stored: Mapping[str, str], now: Mapping[str, str]) -> list[tuple[str, str | None, str | None]]:
    """``[(array, in the checkpoint, now)]`` (None: absent) of two :func:`state_layout` s, by name."""
    return [(k, stored.get(k), now.get(k)) for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]


def read_meta(step_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON meta of the checkpoint directory ``step_dir`` (read without orbax), or None when it is
    missing or unreadable."""
    path = Path(step_dir) / META_ITEM / "metadata"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def stored_meta(directory: str | os.PathLike, key: str = "config") -> tuple[int, dict[str, Any]] | None:
    """(step, meta) of the newest checkpoint in ``directory`` whose meta holds ``key``, or None."""
    directory = Path(directory)
    for step in reversed(list_steps(directory)):
        meta = read_meta(directory / str(step))
        if meta is not None and meta.get(key) is not None:
            return step, meta
    return None


def _orbax_layout(step_dir: Path) -> dict[str, str] | None:
    """``{path: "[shape]"}`` of the arrays in orbax's own tree metadata (checkpoints written before the meta had
    a layout); None when it cannot be read."""
    try:
        tree = json.loads((step_dir / "state" / "_METADATA").read_text())["tree_metadata"]
        out = {}
        for entry in tree.values():
            value = entry["value_metadata"]
            if value.get("write_shape") is None:  # None leaves (no AMTM, no best MTM) hold no array
                continue
            out[".".join(str(k["key"]) for k in entry["key_metadata"])] = str(list(value["write_shape"]))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _shapes_only(layout: Mapping[str, str]) -> dict[str, str]:
    return {k: v[v.index("[") :] if "[" in v else v for k, v in layout.items()}


def list_steps(directory: str | os.PathLike) -> list[int]:
    """Completed checkpoint steps in ``directory``, ascending, without opening orbax.

    Orbax writes into a temporary directory and renames it to ``<step>`` when
    complete, so integer-named directories are the finished checkpoints.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _abstract(target: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of the target's array leaves; other leaves as they are."""

    def leaf(x):
        if isinstance(x, jax.Array | np.ndarray | np.generic):
            return _ocp().utils.to_shape_dtype_struct(x)
        return x

    return jax.tree_util.tree_map(leaf, target)


def _short(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + " ..."


class Checkpointer:
    """Saves and restores a run's state pytree under ``directory`` (orbax CheckpointManager).

    Args:
      directory: the checkpoint root (created on the first save).
      keep: how many of the newest checkpoints to keep (>= 1).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep = {keep} is out of range; accepted: an integer >= 1")
        self.directory = Path(directory).absolute()
        self.keep = int(keep)
        self._manager = None  # orbax CheckpointManager, opened on first use

    # ----- orbax manager ---------------------------------------------------------------------------------------
    def _open(self):
        if self._manager is None:
            ocp = _ocp()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep,
                create=True,
                # Synchronous: a failed save is reported here, before the run goes on.
                enable_async_checkpointing=False,
            )
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=options)
            except OSError as e:
                raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {_short(e)}") from e
        return self._manager

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- queries ---------------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        return list_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def meta(self, step: int) -> dict[str, Any] | None:
        """The JSON meta of checkpoint ``step`` (:func:`read_meta`), or None."""
        return read_meta(self.path(step))

    # ----- save ------------------------------------------------------------------------------------------------
    def save(self, state: Any, meta: dict[str, Any] | None = None) -> Path:
        """Saves ``state`` as step ``int(state.iteration)`` with ``meta`` (JSON; the state's
        :func:`state_layout` is added); returns its directory.

        A step that already exists is left as it is (the same iteration of a
        deterministic run). Raises CheckpointError naming the path on failure
        (e.g. a full disk); older checkpoints are untouched then.
        """
        step = int(state.iteration)
        path = self.path(step)
        if step in self.steps():
            return path
        meta = {"iteration": step, "time": time.time(), **(meta or {}), "layout": state_layout(state)}
        ocp = _ocp()
        try:
            with _orbax_quiet():
                manager = self._open()
                manager.save(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=True,
                )
                manager.wait_until_finished()
        except Exception as e:
            # The manager may hold a half-registered step; a fresh one re-reads the directory.
            self._manager = None
            _finish_abandoned_work()
            self._remove_temporary()
            kept = [str(self.path(s)) for s in self.steps()]
            previous = f"the previous checkpoints {kept} are kept" if kept else "there is no earlier checkpoint"
            raise CheckpointError(f"could not write checkpoint {path}: {_short(e)}; {previous}") from e
        self.prune()
        return path

    def prune(self) -> list[int]:
        """Removes the checkpoints beyond the newest ``keep`` and the temporary directories of saves a crash
        cut short (main process only); returns the steps removed."""
        if not distributed.is_main_process():
            return []
        steps = self.steps()
        old = steps[: max(len(steps) - self.keep, 0)]
        if old:
            self.close()  # the manager caches the step list
        for step in old:
            shutil.rmtree(self.path(step), ignore_errors=True)
        self._remove_temporary()
        return old

    def _remove_temporary(self) -> None:
        if not self.directory.is_dir() or not distributed.is_main_process():
            return
        for p in self.directory.iterdir():
            if TMP_MARKER in p.name:
                shutil.rmtree(p, ignore_errors=True)

    # ----- restore ---------------------------------------------------------------------------------------------
    def check_layout(self, target: Any, step: int, *, after_failure: bool = False) -> None:
        """Raises LayoutMismatch when checkpoint ``step`` holds a state of another structure or shape than
        ``target``. Read from the meta's layout; without one (older checkpoints), after a failed restore
        (``after_failure``), from orbax's tree metadata, comparing shapes only."""
        path = self.path(step)
        now = state_layout(target)
        stored = (self.meta(step) or {}).get("layout")
        if stored is None:
            stored, now = _orbax_layout(path), _shapes_only(now)
            # Before orbax is asked, trust its metadata only where it names the very arrays of the target
            # (its naming of other pytrees may differ from ours); after a failed restore, any difference counts.
            if stored is None or (not after_failure and set(stored) != set(now)):
                return
        diffs = layout_differences(stored, now)
        if not diffs:
            return
        shown = "; ".join(f"{n}: {a or '(absent)'} in the checkpoint, {b or '(absent)'} now" for n, a, b in diffs[:6])
        more = f"; {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise LayoutMismatch(
            lambda p: (
                f"checkpoint {path} holds the state of another configuration ({shown}{more}): it is not this "
                f"run's. Re-run with the configuration that wrote it, choose another {p('workdir')}, or pass "
                f"{p('overwrite', True)} to start over"
            ),
            path=path,
            differences=diffs,
        )

    def restore(self, target: Any, step: int) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint ``step``, arrays shaped like ``target``'s.

        Raises LayoutMismatch when it holds a state of another shape (checked before orbax reads it), and
        CheckpointError naming the path when it cannot be read or does not hold iteration ``step``.
        """
        path = self.path(step)
        self.check_layout(target, step)
        ocp = _ocp()
        try:
            with _orbax_quiet():
                restored = self._open().restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_abstract(target)), meta=ocp.args.JsonRestore()
                    ),
                )
            state, meta = restored.state, dict(restored.meta or {})
            got = int(state.iteration)
        except Exception as e:
            _finish_abandoned_work()
            self.check_layout(target, step, after_failure=True)
            raise CheckpointError(f"cannot restore checkpoint {path}: {_short(e)}") from e
        if got != step or int(meta.get("iteration", step)) != step:
            raise CheckpointError(
                f"checkpoint {path} holds iteration {got} (meta: {meta.get('iteration')}), expected {step}"
            )
        return state, meta

    def restore_latest(
        self, target: Any, *, warn: Callable[[str], None] = logging.warning
    ) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores, or None when there is none.

        A newer checkpoint that fails to restore is reported through ``warn``
        (naming its path) and, once an older one restored, moved aside to
        ``<directory>_corrupt/`` so that the run can write that step again.
        When every checkpoint fails, nothing is moved and CheckpointError lists
        them all. A checkpoint of another layout is not corrupt: LayoutMismatch
        is raised at once, nothing moved. After a restore the checkpoints beyond
        ``keep`` are removed (:meth:`prune`).
        """
        failures: list[tuple[int, CheckpointError]] = []
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(target, step)
            except LayoutMismatch:
                raise
            except CheckpointError as e:
                warn(f"{e}; falling back to the previous checkpoint")
                failures.append((step, e))
                continue
            if failures:
                self.close()  # the manager caches the step list; reopen after moving
                for bad, _ in failures:
                    if distributed.is_main_process():
                        dest = self._move_aside(bad)
                        warn(f"corrupt checkpoint {self.path(bad)} moved to {dest}; resuming from {self.path(step)}")
                distributed.sync("lts_checkpoint_moved_aside")
            self.prune()
            return state, meta
        if failures:
            listing = "; ".join(str(e) for _, e in failures)
            raise CheckpointError(
                lambda p: (
                    f"no checkpoint in {self.directory} can be restored ({listing}). Remove or repair "
                    f"them, or start over ({p('overwrite', True)})"
                )
            )
        return None

    def _move_aside(self, step: int) -> Path:
        aside = self.directory.parent / (self.directory.name + CORRUPT_SUFFIX)
        aside.mkdir(parents=True, exist_ok=True)
        dest = aside / str(step)
        n = 1
        while dest.exists():
            dest = aside / f"{step}.{n}"
            n += 1
        shutil.move(str(self.path(step)), str(dest))
        return dest
