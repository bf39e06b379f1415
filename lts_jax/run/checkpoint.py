"""Checkpoints of a run's whole state with orbax-checkpoint.

Layout (one orbax CheckpointManager)::

    WORKDIR/checkpoints/<step>/state/     the LTSState pytree (search state with optimiser
                                          state and baseline, AMTM, best MTM, iteration)
    WORKDIR/checkpoints/<step>/meta/      JSON: {"iteration": step, "num_iterations": ..., "time": ...}
    WORKDIR/checkpoints_corrupt/<step>/   a latest checkpoint that failed to restore, moved aside

``<step>`` is the number of completed iterations (``state.iteration``). Saves
are synchronous: a failure (a full disk) surfaces at once, as a
:class:`CheckpointError` naming the path, and orbax only turns a checkpoint
directory into ``<step>`` after all of it is written, so the previous good
checkpoints stay in place. The newest ``keep`` checkpoints are kept.

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

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from lts_jax.run import distributed
from lts_jax.run.errors import RunError

CORRUPT_SUFFIX = "_corrupt"


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


class _DropOrbaxInfo:
    """A logging filter: orbax logs several INFO lines per save through absl; keep its warnings and errors."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "orbax" not in (record.pathname or "")


def quiet_orbax_logs() -> None:
    """Hides orbax's INFO logs (a dozen lines per checkpoint) from the absl logger; warnings still show."""
    absl_logger = logging.get_absl_logger()
    if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxInfo())


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

    # ----- save ------------------------------------------------------------------------------------------------
    def save(self, state: Any, meta: dict[str, Any] | None = None) -> Path:
        """Saves ``state`` as step ``int(state.iteration)``; returns its directory.

        A step that already exists is left as it is (the same iteration of a
        deterministic run). Raises CheckpointError naming the path on failure
        (e.g. a full disk); older checkpoints are untouched then.
        """
        step = int(state.iteration)
        path = self.path(step)
        if step in self.steps():
            return path
        meta = {"iteration": step, "time": time.time(), **(meta or {})}
        manager = self._open()
        ocp = _ocp()
        try:
            manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            manager.wait_until_finished()
        except Exception as e:
            # The manager may hold a half-registered step; a fresh one re-reads the directory.
            self._manager = None
            raise CheckpointError(
                f"could not write checkpoint {path}: {_short(e)}; the previous checkpoints "
                f"{[str(self.path(s)) for s in self.steps()]} are kept"
            ) from e
        return path

    # ----- restore ---------------------------------------------------------------------------------------------
    def restore(self, target: Any, step: int) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint ``step``, arrays shaped like ``target``'s.

        Raises CheckpointError naming the path when it cannot be read or does
        not hold iteration ``step``.
        """
        path = self.path(step)
        ocp = _ocp()
        try:
            restored = self._open().restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target)), meta=ocp.args.JsonRestore()),
            )
            state, meta = restored.state, dict(restored.meta or {})
            got = int(state.iteration)
        except Exception as e:
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
        them all.
        """
        failures: list[tuple[int, CheckpointError]] = []
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(target, step)
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
