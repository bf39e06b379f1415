"""Runs an experiment's command with a failure injected at a chosen point, for tests/reliability.

    LTS_KILL_AT=after_iteration:2 python -m tests.reliability.inject gmm_toy --flagfile=... --workdir=...

``LTS_KILL_AT`` (the process kills itself with SIGKILL, as ``kill -9`` would):
  ``after_iteration:N``  once iteration N's metrics line is written (and its checkpoint, if one is due)
  ``in_checkpoint:S``    while checkpoint S is being written: its files are there, it is not committed
  ``in_metrics:N``       half-way through writing iteration N's metrics line (a truncated metrics.jsonl)
``LTS_FILE_SIZE_LIMIT=BYTES``: no file may grow beyond BYTES (RLIMIT_FSIZE: a write fails as on a full disk).
"""

from __future__ import annotations

import os
import resource
import runpy
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str) -> None:
    where, _, value = point.partition(":")
    n = int(value)
    if where == "after_iteration":
        from lts_jax.run import driver

        hook = driver._CheckpointHook.__call__

        def after(self, iteration, state, metrics):
            hook(self, iteration, state, metrics)
            if iteration == n:
                _kill()

        driver._CheckpointHook.__call__ = after
    elif where == "in_checkpoint":
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize_or_die(self, *args, **kwargs):
            if os.path.basename(str(self._final_path)) == str(n):  # the step's directory, not an item's
                _kill()
            return await finalize(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
    elif where == "in_metrics":
        from lts_jax.run import metrics

        append = metrics.append_line

        def append_or_die(path, line):
            if str(path).endswith("metrics.jsonl") and f'"step": {n},' in line:
                with open(path, "a") as f:
                    f.write(line[: len(line) // 2])
                _kill()
            return append(path, line)

        metrics.append_line = append_or_die
    else:
        raise SystemExit(f"unknown LTS_KILL_AT={point!r}")


def main() -> None:
    command, argv = sys.argv[1], sys.argv[2:]
    limit = os.environ.get("LTS_FILE_SIZE_LIMIT")
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    if os.environ.get("LTS_KILL_AT"):
        _install(os.environ["LTS_KILL_AT"])
    sys.argv = [command, *argv]
    runpy.run_module(f"experiments.{command}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
