"""Writing a run's files so that a crash or a full disk never leaves a half-written file behind.

Every failure surfaces as :class:`StorageError` naming the path; what was on
disk before stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lts_jax.run.errors import RunError


class StorageError(RunError, RuntimeError):
    """Writing a run's file failed while running (e.g. a full disk); the message names the path."""


def io_message(path: str | os.PathLike, e: OSError) -> str:
    """``"cannot write PATH: REASON"``, with a full disk said in words."""
    reason = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        reason = "no space left on device"
    return f"cannot write {path}: {reason}"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename.

    A reader sees the old file or the new one, never a part. Raises
    StorageError naming the path when the write fails.
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
        raise StorageError(io_message(path, e)) from e
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


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays (metrics and results hold them)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically (:func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Appends one line (``line`` ends without a newline) and flushes it to the OS.

    Raises StorageError naming the path on failure (a full disk). A partial
    line left behind is dropped on resume (:func:`lts_jax.run.metrics.sync_metrics`).
    """
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise StorageError(io_message(path, e)) from e
