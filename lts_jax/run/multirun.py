"""Several named runs under one root directory: finished ones reused, failures isolated, a summary kept.

Layout::

    ROOT/NAME/              a sub-run's directory: what its ``fn`` writes (a run_search workdir, ...)
    ROOT/NAME/subrun.json   the helper's record: {"name", "config", "status", "result" | "error", "wall_s"}
    SUMMARY_PATH            ``summary_fn(entries)`` (default ``{"runs": entries}``), rewritten atomically
                            after every sub-run, so a job killed half-way leaves the finished ones' numbers

What :meth:`MultiRun.run` does with a sub-run, by what its directory holds:

- nothing: runs ``fn(ROOT/NAME)``.
- a finished sub-run with the same configuration: returns its stored result; ``fn`` is not called.
- an unfinished or failed sub-run with the same configuration: calls ``fn`` again
  (a run_search workdir resumes from its checkpoint).
- another configuration: ``on_mismatch="refuse"`` raises :class:`WorkdirError`
  whose ``differences`` list the settings (nothing is touched);
  ``on_mismatch="rerun"`` removes ROOT/NAME and runs it afresh.
- files without a record (not made by this helper): refused; only ``overwrite`` removes them.
- ``overwrite=True``: every sub-run starts over (ROOT/NAME is removed first).

A sub-run whose ``fn`` raises is recorded as failed (error and traceback) and
the others go on; :meth:`MultiRun.raise_failures` raises at the end if the
caller wants that. Exceptions of the ``propagate`` types (by default
:class:`Interrupted`: a signal asked the whole process to stop) are recorded
as interrupted, the summary is saved, and they are re-raised. Time budgets and
dependencies between sub-runs stay with the caller: :meth:`MultiRun.skip`
records a sub-run that was not run, :attr:`MultiRun.entries` says what ran.

Configurations are JSON-like mappings (nested mappings compare setting by
setting, as ``outer.inner``); results are JSON-serialisable mappings, stored
as they read back, so a reused result equals the one first returned.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from absl import logging

from lts_jax.run.driver import Interrupted
from lts_jax.run.errors import RunError
from lts_jax.run.files import json_default, write_json
from lts_jax.run.workdir import Difference, WorkdirError, differences_listing

RECORD_FILE = "subrun.json"
ON_MISMATCH = ("refuse", "rerun")
DONE, FAILED, SKIPPED, INTERRUPTED, RUNNING = "done", "failed", "skipped", "interrupted", "running"


class SubRunsFailed(RunError, RuntimeError):
    """Sub-runs failed (see :meth:`MultiRun.raise_failures`). Attribute: ``failures`` ({name: error})."""

    def __init__(self, message: str, failures: Mapping[str, str]):
        super().__init__(message)
        self.failures = dict(failures)


def _as_json(obj: Any, what: str) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, NumPy -> Python numbers)."""
    try:
        return json.loads(json.dumps(obj, default=json_default))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable: {e}") from e


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = json.dumps(v, sort_keys=True)
    return out


def _differences(stored: Mapping[str, Any], config: Mapping[str, Any], ignore: Iterable[str]) -> list[Difference]:
    """``[(name, stored, now)]`` of the settings that differ (JSON text; None: absent), by name.

    Nested mappings are compared setting by setting (``outer.inner``); a name in
    ``ignore`` matches a setting or a whole nested mapping.
    """
    ignore = set(ignore)
    a, b = _flatten(stored), _flatten(config)

    def ignored(name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:i]) in ignore for i in range(1, len(parts) + 1))

    return [(n, a.get(n), b.get(n)) for n in sorted(set(a) | set(b)) if not ignored(n) and a.get(n) != b.get(n)]


class MultiRun:
    """Named sub-runs under ``root`` (see the module docstring).

    Args:
      root: the directory of the sub-runs (created).
      summary_path: where the summary is rewritten after every sub-run (None: not written).
      on_mismatch: "refuse" (raise WorkdirError listing the differences) or
        "rerun" (remove the sub-run's directory and run it afresh) when a
        sub-run's stored configuration differs from the one asked for.
      overwrite: start every sub-run over, whatever its directory holds.
      ignore: settings that may differ from the stored ones (how a run is
        managed, not what it computes); a reused sub-run keeps its stored configuration.
      summary_fn: ``summary_fn(entries) -> JSON-ready mapping``: what the summary
        file holds (a sweep's plan, tables of the finished sub-runs, ...).
      propagate: exception types that stop the whole multi-run instead of
        being recorded as one sub-run's failure.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        summary_path: str | os.PathLike | None = None,
        *,
        on_mismatch: str = "refuse",
        overwrite: bool = False,
        ignore: Iterable[str] = (),
        summary_fn: Callable[[Mapping[str, dict[str, Any]]], Mapping[str, Any]] | None = None,
        propagate: tuple[type[BaseException], ...] = (Interrupted,),
    ):
        if on_mismatch not in ON_MISMATCH:
            raise ValueError(f"on_mismatch = {on_mismatch!r} is out of range; accepted: {' | '.join(ON_MISMATCH)}")
        self.root = Path(root)
        self.summary_path = None if summary_path is None else Path(summary_path)
        self.on_mismatch = on_mismatch
        self.overwrite = bool(overwrite)
        self.ignore = frozenset(ignore)
        self.summary_fn = summary_fn or (lambda entries: {"runs": dict(entries)})
        self.propagate = tuple(propagate)
        self._entries: dict[str, dict[str, Any]] = {}

    # ----- queries ---------------------------------------------------------------------------------------------
    @property
    def entries(self) -> Mapping[str, dict[str, Any]]:
        """This session's sub-runs in order: ``{name: {"status", "reused", "wall_s", "result" | "error", ...}}``."""
        return types.MappingProxyType(self._entries)

    def path(self, name: str) -> Path:
        """The directory of sub-run ``name``. Raises ValueError for a name that is not one path component."""
        if not name or name in (".", "..") or Path(name).name != name or name.startswith("."):
            raise ValueError(f"sub-run name {name!r} is not a plain directory name")
        return self.root / name

    def failures(self) -> dict[str, str]:
        """``{name: error}`` of this session's failed (or interrupted) sub-runs."""
        return {n: e["error"] for n, e in self._entries.items() if e["status"] in (FAILED, INTERRUPTED)}

    def raise_failures(self) -> None:
        """Raises SubRunsFailed naming every failed sub-run and its error, if there is one."""
        failed = self.failures()
        if failed:
            listing = "\n".join(f"  {n}: {e}" for n, e in failed.items())
            where = f" (see {self.summary_path})" if self.summary_path else ""
            raise SubRunsFailed(f"{len(failed)} of {len(self._entries)} sub-runs failed{where}:\n{listing}", failed)

    def summary(self) -> dict[str, Any]:
        return dict(self.summary_fn(self.entries))

    def save(self) -> None:
        """Rewrites the summary file (atomically); a no-op without ``summary_path``."""
        if self.summary_path is not None:
            self.summary_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.summary_path, self.summary())

    # ----- the stored record -----------------------------------------------------------------------------------
    def _record(self, name: str) -> dict[str, Any] | None:
        path = self.path(name) / RECORD_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or "config" not in record:
                raise ValueError("no configuration in it")
        except ValueError as e:
            reason = str(e)  # ``e`` is unbound after the except clause; the message is composed later
            raise WorkdirError(
                lambda p: (
                    f"{path} is not a sub-run record ({reason}); remove {path.parent} or pass "
                    f"{p('overwrite', True)} to start it over"
                ),
                path=path,
            ) from None
        return record

    def check(self, name: str, config: Mapping[str, Any]) -> str:
        """What :meth:`run` would do with ``name``: "new", "reuse", "resume" or "rerun"; runs nothing.

        Raises WorkdirError when it would refuse (another configuration under
        ``on_mismatch="refuse"``, or files without a record), so a caller can
        check every sub-run before starting any.
        """
        return self._plan(name, _as_json(dict(config), f"the configuration of sub-run {name!r}"))[0]

    def _plan(self, name: str, config: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        path = self.path(name)
        if self.overwrite:
            return ("rerun" if path.exists() else "new"), None
        record = self._record(name)
        if record is None:
            if path.is_dir() and any(path.iterdir()):
                raise WorkdirError(
                    lambda p: (
                        f"{path} holds files but no sub-run record ({RECORD_FILE}), so its configuration "
                        f"cannot be checked; move it away, or pass {p('overwrite', True)} to start it over"
                    ),
                    path=path,
                )
            return "new", None
        diffs = _differences(record["config"], config, self.ignore)
        if diffs:
            if self.on_mismatch == "refuse":
                raise WorkdirError(
                    lambda p: (
                        f"{path} holds the sub-run {name!r} with a different configuration:\n"
                        f"{differences_listing(diffs, p)}\nRe-run with its configuration, choose another "
                        f"directory, or pass {p('overwrite', True)} to start over."
                    ),
                    path=path,
                    differences=diffs,
                )
            return "rerun", record
        return ("reuse" if record.get("status") == DONE else "resume"), record

    # ----- running ---------------------------------------------------------------------------------------------
    def run(self, name: str, config: Mapping[str, Any], fn: Callable[[Path], Mapping[str, Any]]) -> dict[str, Any]:
        """Runs (or reuses) sub-run ``name`` with ``config``; returns its entry (also in :attr:`entries`).

        ``fn(directory) -> result`` does the work in ``ROOT/NAME`` (created) and
        returns a JSON-serialisable mapping. Entry: ``{"status": "done",
        "reused": bool, "result": ..., "wall_s": ...}``, or ``{"status":
        "failed", "error": "Type: message", "traceback": ..., "wall_s": ...}``.
        The summary is saved before returning.

        Raises:
          WorkdirError: the sub-run is refused (see :meth:`check`); nothing ran or changed.
          ValueError: ``name`` is not a plain directory name, or ran already in this session.
          the ``propagate`` types: re-raised after recording the sub-run as interrupted.
        """
        path = self.path(name)
        if name in self._entries:
            raise ValueError(f"sub-run {name!r} ran already in this multi-run")
        config = _as_json(dict(config), f"the configuration of sub-run {name!r}")
        t0 = time.perf_counter()
        action, record = self._plan(name, config)
        if action == "reuse":
            return self._finish(name, {"status": DONE, "reused": True, "result": record.get("result")}, t0)
        if action == "rerun" and path.exists():
            logging.info("sub-run %s: starting over in %s", name, path)
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        # Written before the work, so a later call knows what this directory's files belong to.
        write_json(path / RECORD_FILE, {"name": name, "config": config, "status": RUNNING})
        try:
            result = fn(path)
            if not isinstance(result, Mapping):
                raise TypeError(f"the sub-run returned {type(result).__name__}, not a mapping")
            result = _as_json(dict(result), f"the result of sub-run {name!r}")
        except self.propagate as e:
            self._finish(name, {"status": INTERRUPTED, "error": f"{type(e).__name__}: {e}"}, t0)
            raise
        except Exception as e:  # one failing sub-run must not lose the others
            logging.error("sub-run %s failed: %s", name, e)
            entry = {"status": FAILED, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            write_json(path / RECORD_FILE, {"name": name, "config": config, "status": FAILED, "error": entry["error"]})
            return self._finish(name, entry, t0)
        wall = time.perf_counter() - t0
        write_json(
            path / RECORD_FILE, {"name": name, "config": config, "status": DONE, "result": result, "wall_s": wall}
        )
        return self._finish(name, {"status": DONE, "reused": False, "result": result}, t0)

    def skip(self, name: str, reason: str) -> dict[str, Any]:
        """Records that sub-run ``name`` was not run (a spent time budget, a dependency that failed)."""
        self.path(name)
        if name in self._entries:
            raise ValueError(f"sub-run {name!r} ran already in this multi-run")
        return self._finish(name, {"status": SKIPPED, "reason": reason}, time.perf_counter())

    def _finish(self, name: str, entry: dict[str, Any], t0: float) -> dict[str, Any]:
        entry["wall_s"] = time.perf_counter() - t0
        self._entries[name] = entry
        self.save()
        return entry
