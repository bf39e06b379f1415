"""A run's working directory: its layout, its stored configuration, and what re-running in it does.

Layout (what :func:`lts_jax.run.run_search` and the caller write)::

    WORKDIR/flags.txt                  the stored configuration, one ``--name=value`` line per setting
    WORKDIR/metrics.jsonl              one JSON object per policy iteration ("step" = iteration)
    WORKDIR/events.out.tfevents.*      TensorBoard scalars (one file per session; no TensorFlow needed)
    WORKDIR/checkpoints/<step>/        orbax checkpoints of the whole LTSState (newest ``keep_checkpoints``)
    WORKDIR/checkpoints_corrupt/       checkpoints that failed to restore, moved aside
    WORKDIR/rewards.png, params.png    generic figures (plots.run_figures; cost.png too)
    WORKDIR/results.json               the summary a script can read (written by the caller; its
                                       presence marks the run as finished)

What :func:`prepare_workdir` with a ``config`` does when the directory already holds a run:

- fresh: an empty or new directory starts a run.
- resume: an unfinished run (checkpoints, metrics) with the same configuration
  continues (``run_search`` restores the newest good checkpoint).
- extend: a finished run asked for a larger ``num_iterations`` continues from
  its final checkpoint; results.json moves to results.previous.json until the
  caller writes the new one.
- finished: the same configuration again raises :class:`RunComplete`; no file is touched.
- overwrite: ``overwrite=True`` removes the run's files (the list above) and starts over.
- mismatch: any other setting differing from the stored one raises
  :class:`WorkdirError` with the list of differences. Settings named in
  ``ignore`` may differ; ``num_iterations`` may be raised, never lowered below
  the completed iterations.

The stored configuration is the one in the newest checkpoint's meta (written
there by ``run_search`` with every checkpoint), else flags.txt: a run whose
flags.txt was lost is still checked, and its flags.txt is written again from
the checkpoint (on a refusal: the checkpoint's settings, so the message can
point to it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from lts_jax.params import ParamSpec
from lts_jax.run import checkpoint, distributed
from lts_jax.run import tensorboard as tb
from lts_jax.run.errors import NameFn, RunError
from lts_jax.run.files import atomic_write_text

CONFIG_FILE = "flags.txt"
RESULTS_FILE = "results.json"
PREVIOUS_RESULTS_FILE = "results.previous.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
# The one setting a finished run may be re-run with a larger value of (it then extends).
EXTENSIBLE = "num_iterations"
# Files and directories of a run; overwrite removes exactly these (figures are redrawn anyway).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, PREVIOUS_RESULTS_FILE, "rewards.png", "params.png", "cost.png")
RUN_DIRS = (CHECKPOINT_DIR, CHECKPOINT_DIR + checkpoint.CORRUPT_SUFFIX)

Difference = tuple[str, str | None, str | None]  # (name, value in the run, value now); None: absent


class WorkdirError(RunError, RuntimeError):
    """The workdir cannot be used as asked (another configuration, unwritable, inconsistent files).

    Attributes: ``path`` (the directory or file), ``differences`` (``[(name, stored, now)]`` when the
    configuration differs, else empty).
    """

    def __init__(self, compose, *, path: Path | None = None, differences: Iterable[Difference] = ()):
        super().__init__(compose)
        self.path = path
        self.differences = list(differences)


class RunComplete(RunError):
    """The workdir already holds this finished run; nothing to do. Attributes: ``path``, ``iterations``."""

    def __init__(self, compose, *, path: Path | None = None, iterations: int | None = None):
        super().__init__(compose)
        self.path, self.iterations = path, iterations


def psi_export(spec: ParamSpec, psi) -> dict[str, Any]:
    """``{"psi": readable distributions, "psi_raw": [dim]}`` for results.json (what experiments.generate reads)."""
    arr = np.asarray(psi, np.float32)
    return {"psi": spec.describe(arr), "psi_raw": arr.tolist()}


# ----- the stored configuration ---------------------------------------------------------------------------------
def _as_strings(config: Mapping[str, Any]) -> dict[str, str]:
    # Stored as text, so values compare as they read back.
    return {k: str(v) for k, v in config.items()}


def read_config(workdir: str | os.PathLike) -> dict[str, str] | None:
    """The stored configuration (flags.txt) as ``{name: value string}``, or None when there is none."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("--") and "=" in line:
            name, value = line[2:].split("=", 1)
            out[name] = value
    return out


def config_differences(
    stored: Mapping[str, str], config: Mapping[str, Any], ignore: Iterable[str] = ()
) -> list[Difference]:
    """``[(name, value in the run, value now)]`` of the settings that differ (None: absent), by name.

    ``num_iterations`` and the names in ``ignore`` are not compared.
    """
    ignore = set(ignore) | {EXTENSIBLE}
    now = _as_strings(config)
    return [
        (name, stored.get(name), now.get(name))
        for name in sorted(set(stored) | set(now))
        if name not in ignore and stored.get(name) != now.get(name)
    ]


def flat_settings(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested JSON-like mapping as ``{"outer.inner": JSON text}`` (how nested settings are compared)."""
    out = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_settings(v, name + "."))
        else:
            out[name] = json.dumps(v, sort_keys=True, default=str)
    return out


def differences_listing(differences: Iterable[Difference], name_fn: NameFn) -> str:
    """One line per difference: ``  NAME: STORED in the run, now NOW``."""

    def shown(v):
        return "(absent)" if v is None else v

    return "\n".join(f"  {name_fn(n)}: {shown(a)} in the run, now {shown(b)}" for n, a, b in differences)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _write_config(path: Path, config: Mapping[str, Any]) -> None:
    lines = [f"--{k}={v}" for k, v in sorted(_as_strings(config).items())]
    atomic_write_text(path / CONFIG_FILE, "\n".join(lines) + "\n")


def stored_configuration(path: str | os.PathLike) -> tuple[dict[str, str] | None, str]:
    """(the configuration of the run in ``path``, where it was read): the newest checkpoint's (its meta's
    ``config``), else flags.txt's; (None, "") when neither holds one."""
    path = Path(path)
    found = checkpoint.stored_meta(path / CHECKPOINT_DIR, "config")
    if found is not None and isinstance(found[1]["config"], Mapping):
        return _as_strings(found[1]["config"]), str(path / CHECKPOINT_DIR / str(found[0]))
    stored = read_config(path)
    return stored, (str(path / CONFIG_FILE) if stored is not None else "")


def _store_config(path: Path, config: Mapping[str, Any], ignore: Iterable[str], write: bool = True) -> None:
    """Checks ``config`` against the run already in ``path`` (see the module docstring), then stores it
    (``write=False``: only checks)."""
    stored, source = stored_configuration(path)
    steps = checkpoint.list_steps(path / CHECKPOINT_DIR)
    finished = (path / RESULTS_FILE).exists()
    lost = not (path / CONFIG_FILE).exists()
    if steps or finished or (path / METRICS_FILE).exists():
        if stored is None:
            logging.warning("%s holds a run without %s; its configuration cannot be checked", path, CONFIG_FILE)
        else:
            diffs = config_differences(stored, config, ignore)
            if diffs:
                if lost and write:  # the run's own settings, so that the message can point to them
                    _write_config(path, stored)
                raise WorkdirError(
                    lambda p: (
                        f"{p('workdir')} {path} holds a run with a different configuration (recorded in "
                        f"{source}):\n{differences_listing(diffs, p)}\nRe-run with the run's configuration (see "
                        f"{path / CONFIG_FILE}), choose another {p('workdir')}, or pass {p('overwrite', True)} "
                        "to start over."
                    ),
                    path=path,
                    differences=diffs,
                )
            if lost:
                logging.warning("%s was missing; rewritten from %s (the configurations agree)", CONFIG_FILE, source)
        wanted = _int_or_none(config.get(EXTENSIBLE))
        stored_n = _int_or_none((stored or {}).get(EXTENSIBLE))
        completed = steps[-1] if steps else (stored_n if finished and stored_n is not None else 0)
        if wanted is not None and wanted < completed:
            raise WorkdirError(
                lambda p: (
                    f"{p(EXTENSIBLE, wanted)} is lower than the {completed} iterations the run in {path} has "
                    f"completed; pass {p(EXTENSIBLE)}>={completed}, or {p('overwrite', True)} to start over"
                ),
                path=path,
            )
        if finished:
            if wanted is None or wanted <= completed:
                raise RunComplete(
                    lambda p: (
                        f"{path} already holds this finished run ({completed} iterations; see "
                        f"{path / RESULTS_FILE}). Nothing was changed. Pass a larger {p(EXTENSIBLE)} to extend "
                        f"it, or {p('overwrite', True)} to start over."
                    ),
                    path=path,
                    iterations=completed,
                )
            if not steps:
                raise WorkdirError(
                    lambda p: (
                        f"cannot extend the finished run in {path} to {p(EXTENSIBLE, wanted)}: it has no "
                        f"checkpoint in {path / CHECKPOINT_DIR}; choose another {p('workdir')} or pass "
                        f"{p('overwrite', True)}"
                    ),
                    path=path,
                )
            if write:
                begin_extension(path)
    if write:
        _write_config(path, config)


def begin_extension(path: Path) -> None:
    """Marks a finished run as being extended: results.json -> results.previous.json."""
    # Until the extended run writes new results, the old ones live on under another name,
    # and the run counts as unfinished (a re-run after an interruption resumes it).
    os.replace(path / RESULTS_FILE, path / PREVIOUS_RESULTS_FILE)
    logging.info("extending the finished run in %s (%s moved to %s)", path, RESULTS_FILE, PREVIOUS_RESULTS_FILE)


def remove_run_files(path: Path) -> None:
    """Removes the run's files (RUN_FILES, RUN_DIRS, TensorBoard events); anything else in ``path`` stays."""
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
    config: Mapping[str, Any] | None = None,
    ignore: Iterable[str] = (),
) -> Path:
    """Creates the workdir (or checks an existing one) before any work; returns it as a Path.

    Args:
      workdir: the run's directory (created with its parents).
      overwrite: remove the previous run's files (RUN_FILES, checkpoints, events) and start over.
      config: the run's resolved settings ``{name: value}``. Checked against the
        stored configuration of a run already there, then stored (flags.txt).
        None: no check, nothing stored.
      ignore: names of settings that may differ from the stored ones (those
        that change how a run is managed, not what it computes).

    Raises:
      WorkdirError: ``workdir`` is not a usable directory; or it holds a run
        with another configuration (``differences`` lists it), or one that
        completed more than ``num_iterations``, or a finished run without
        checkpoints is asked to extend.
      RunComplete: it holds this run, finished (results.json), and
        ``num_iterations`` was not raised. Nothing is written then.
    """
    path = Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{socket.gethostname()}.{os.getpid()}"  # one per process
        probe.write_text("ok")
        probe.unlink()
    except FileExistsError as e:
        raise WorkdirError(lambda p: f"{p('workdir')} {path} exists and is not a directory", path=path) from e
    except OSError as e:  # not writable, a name too long for the file system, ...
        reason = e.strerror or str(e)  # ``e`` is unbound after the except clause; the message is composed later
        what = "cannot be used" if e.errno == errno.ENAMETOOLONG else "is not writable"
        raise WorkdirError(lambda p: f"{p('workdir')} {path} {what}: {reason}", path=path) from e
    # Several processes (lts_jax.run.distributed): all check the same files, and only the main one
    # writes, after every process has checked, so that all reach the same outcome.
    main, several = distributed.is_main_process(), distributed.process_count() > 1
    if overwrite:
        if main:
            remove_run_files(path)
        distributed.sync("lts_prepare_workdir_removed")
    if config is not None:
        if several:
            _store_config(path, config, ignore, write=False)
            distributed.sync("lts_prepare_workdir_checked")
        if main:
            _store_config(path, config, ignore)
    distributed.sync("lts_prepare_workdir_done")
    return path
