"""The driver around the algorithm: policy iterations with checkpoints, metrics, TensorBoard, progress, signals.

:func:`run_search` owns everything a run writes in its workdir
(:mod:`lts_jax.run.workdir` lists it) and makes a run resumable: the newest
good checkpoint is restored, metrics.jsonl is cut back to it, and the resumed
run ends bitwise like an uninterrupted one (on CPU). A finished run asked for
more iterations extends from its final checkpoint. SIGINT/SIGTERM stop after
the current iteration with a checkpoint (a second signal stops at once).
Iterations whose search reports extreme rewards (``rewards_extreme``, the
policy's guard against a diverged MTM) get a warning naming them.

Several processes (:mod:`lts_jax.run.distributed`): every process calls
:func:`run_search` alike; only the main process writes metrics.jsonl,
TensorBoard events, the figures and the progress line (every process keeps the
history), every process takes part in the orbax checkpoints, and a stop
requested on any process (a signal, ``should_stop``) stops all of them after
the same iteration.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from lts_jax import lts
from lts_jax.params import ParamSpec
from lts_jax.run import checkpoint, distributed
from lts_jax.run import tensorboard as tb
from lts_jax.run.errors import RunError
from lts_jax.run.files import StorageError
from lts_jax.run.metrics import MetricsLog, sync_metrics
from lts_jax.run.progress import Progress
from lts_jax.run.workdir import (
    CHECKPOINT_DIR,
    RESULTS_FILE,
    RunComplete,
    WorkdirError,
    begin_extension,
    differences_listing,
    flat_settings,
    read_config,
)

DEFAULT_CHECKPOINT_EVERY = 10
DEFAULT_KEEP_CHECKPOINTS = 3
# Entries of a step's identity (lts.step_identity) that say how a simulator runs, not what it samples: a
# resume may change them (CARLA servers moved, another time-out).
VOLATILE_IDENTITY = frozenset({"hosts", "timeout_s", "max_retries", "backoff_s", "render_chunk"})


class Interrupted(RunError):
    """The run stopped early on a signal (or ``should_stop``) after saving a checkpoint.

    The same call (same workdir) resumes it. Attributes: ``signum`` (None for
    should_stop), ``iteration`` (completed), ``num_iterations``, ``checkpoint`` (its path).
    """

    def __init__(
        self, message: str, signum: int | None, iteration: int, checkpoint_path: Path | None, num_iterations: int
    ):
        super().__init__(message)
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint_path
        self.num_iterations = num_iterations


class StopOnSignal:
    """SIGINT/SIGTERM set a flag (``signum``) polled between iterations; a second signal acts at once.

    A context manager (the handlers are installed inside it, on the main thread only); run_search uses it, and
    so can another long loop that should stop cleanly, e.g. the segmentation experiments' pretraining::

        with StopOnSignal(True) as stop:
            for r in range(start, rounds):
                if stop.signum is not None:
                    ...save a checkpoint, raise Interrupted(..., stop.signum, ...)
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool, stream=None):
        # Python delivers signals to the main thread only; elsewhere the handlers cannot be installed.
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

    def __enter__(self) -> StopOnSignal:
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


_StopOnSignal = StopOnSignal  # the earlier name


class ExtremeRewardWarning:
    """Hook: a loud warning, naming the iteration, when the search reports extreme rewards (the metric
    ``rewards_extreme`` of :class:`lts_jax.search.GaussianPolicy`: a candidate's reward far outside the batch,
    usually an MTM that diverged), and one summary line at the end (:meth:`summary`). ``iterations``: those
    that had them."""

    def __init__(self, warn: Callable[[str], None] = logging.warning):
        self.warn = warn
        self.iterations: list[int] = []

    def __call__(self, iteration: int, state, metrics: dict[str, Any]) -> None:
        count = int(metrics.get("rewards_extreme") or 0)
        if count <= 0:
            return
        self.iterations.append(iteration)
        rewards = np.asarray(metrics.get("rewards", []), np.float64).ravel()
        shown = ""
        if rewards.size:
            median = float(np.median(rewards))
            far = rewards[np.argsort(-np.abs(rewards - median))[:count]]
            shown = f" ({', '.join(f'{r:.4g}' for r in far)} against a batch median of {median:.4g})"
        self.warn(
            f"iteration {iteration}: {count} of {rewards.size or '?'} candidate rewards are extreme{shown}; the "
            "policy update clipped them (GaussianPolicy outlier_mads; centered_rank advantages ignore the distance "
            "anyway), the logged rewards are raw. A candidate's MTM probably diverged: check the MTM's learning "
            "rate and the simulator's psi ranges"
        )

    def summary(self) -> str | None:
        """One line naming the iterations that had extreme rewards (None when none had)."""
        if not self.iterations:
            return None
        listed = ", ".join(map(str, self.iterations[:20])) + (" ..." if len(self.iterations) > 20 else "")
        return f"{len(self.iterations)} iteration(s) had extreme rewards, clipped for the policy update: {listed}"


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


def run_search(
    step: Callable,
    state: lts.LTSState,
    base_key,
    num_iterations: int,
    val_data: Any,
    *,
    workdir: str | Path,
    spec: ParamSpec,
    test_data: Any = None,
    test_every: int = 0,
    progress: bool = True,
    log_every: int = 0,
    extra_hooks: Iterable[lts.Hook] = (),
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
    resume: bool = True,
    identity: dict[str, Any] | None = None,
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
    Not jittable (host-side driver around the jitted ``step``).

    Args:
      step, state, base_key, num_iterations, val_data, test_data, test_every: as ``lts.run_loop``.
      workdir: the run's directory (see ``prepare_workdir``).
      spec: the simulator's ParamSpec (readable psi in metrics.jsonl).
      progress, log_every: the progress line (``Progress``).
      extra_hooks: called after each iteration as ``hook(iteration, state, metrics)``.
      checkpoint_every: save every N iterations (0: only at the end and on a stop).
      keep_checkpoints: how many of the newest checkpoints to keep (>= 1).
      resume: restore the newest checkpoint first.
      identity: what the checkpoints record of the simulator, task and search and a resume compares
        (JSON-like); default ``step.identity`` (``lts.make_step`` / ``make_split_step`` set it).
      handle_signals: SIGINT/SIGTERM stop the run after the current iteration
        with a checkpoint (main thread only).
      should_stop: polled between iterations as well (tests, schedulers, time budgets).
      tensorboard: write TensorBoard events to the workdir.
      figures: draw the generic figures (rewards.png, params.png, cost.png) at the end.

    With several processes every process calls it with the same arguments (see the module
    docstring); only the main process writes the run's files.

    Raises:
      Interrupted: stopped early by a signal or ``should_stop``; the checkpoint is saved.
      RunComplete: the workdir holds results.json and a checkpoint at ``num_iterations``.
      WorkdirError: a checkpoint beyond ``num_iterations``, metrics.jsonl lacks iterations,
        checkpoints exist while ``resume`` is off, or the checkpoint was written for another
        simulator, task or search (``differences`` lists them).
      checkpoint.LayoutMismatch: the checkpoint holds a state of another shape.
      StorageError, checkpoint.CheckpointError: a file could not be written (the message names it).
      lts.NonFiniteError: as run_loop; the last good state is checkpointed first.
      ValueError: ``checkpoint_every`` < 0 or ``keep_checkpoints`` < 1.
    """
    workdir = Path(workdir)
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every = {checkpoint_every} is out of range; accepted: an integer >= 0")
    if keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints = {keep_checkpoints} is out of range; accepted: an integer >= 1")
    lts.check_num_iterations(num_iterations)
    if identity is None:
        identity = getattr(step, "identity", None)
    ckpt = checkpoint.Checkpointer(workdir / CHECKPOINT_DIR, keep=keep_checkpoints)
    try:
        return _run(
            step, state, base_key, num_iterations, val_data, workdir, spec, ckpt, checkpoint_every, resume,
            identity=_as_json(identity), test_data=test_data, test_every=test_every, progress=progress,
            log_every=log_every,
            extra_hooks=extra_hooks, handle_signals=handle_signals, should_stop=should_stop,
            tensorboard=tensorboard, figures=figures,
        )  # fmt: skip
    finally:
        ckpt.close()


def _as_json(obj: Any) -> Any:
    # As it reads back from a checkpoint's meta, so that a comparison sees equal values as equal.
    return None if obj is None else json.loads(json.dumps(obj, default=str))


def check_identity(stored: Any, identity: Any, path: Path) -> None:
    """Raises WorkdirError listing the entries (``simulator.height``, ...) of a checkpoint's stored identity that
    differ from this run's. Entries named in VOLATILE_IDENTITY may differ, and only entries both hold are
    compared (a newer version of the code may describe more, with defaults). Nothing to compare: no error."""
    if stored is None or identity is None:
        return

    def volatile(name: str) -> bool:
        return any(part in VOLATILE_IDENTITY for part in name.split("."))

    a, b = flat_settings(stored), flat_settings(identity)
    diffs = [(n, a[n], b[n]) for n in sorted(set(a) & set(b)) if not volatile(n) and a[n] != b[n]]
    if diffs:
        raise WorkdirError(
            lambda p: (
                f"checkpoint {path} was written by a run of another simulator, task or search:\n"
                f"{differences_listing(diffs, lambda name, *v: name)}\nRe-run with the configuration that "
                f"wrote it, choose another {p('workdir')}, or pass {p('overwrite', True)} to start over."
            ),
            path=path,
            differences=diffs,
        )


def _run(
    step, state, base_key, num_iterations, val_data, workdir: Path, spec, ckpt, every, resume, *, identity,
    test_data, test_every, progress, log_every, extra_hooks, handle_signals, should_stop, tensorboard, figures,
):  # fmt: skip
    if not resume and ckpt.steps():
        # Saving would skip the steps that exist and leave another run's states among this run's.
        raise WorkdirError(
            f"{ckpt.directory} holds checkpoints and resume is off; remove them or start over", path=ckpt.directory
        )
    main = distributed.is_main_process()
    distributed.sync("lts_run_search_start")  # every process sees the workdir as prepared
    restored = ckpt.restore_latest(state) if resume else None
    if restored is not None:
        check_identity(restored[1].get("fingerprint"), identity, ckpt.path(int(restored[0].iteration)))
        state = restored[0]
    start = int(state.iteration)
    if start > num_iterations:
        raise WorkdirError(
            lambda p: (
                f"the checkpoint in {ckpt.directory} is at iteration {start}, beyond "
                f"{p('num_iterations', num_iterations)}"
            ),
            path=ckpt.directory,
        )
    finished = (workdir / RESULTS_FILE).exists()
    distributed.sync("lts_run_search_checked")  # the main process's writes below come after every check
    if finished:
        if start >= num_iterations:
            raise RunComplete(
                f"{workdir} already holds this finished run ({start} iterations; {RESULTS_FILE})",
                path=workdir,
                iterations=start,
            )
        if main:
            begin_extension(workdir)
    history = sync_metrics(workdir, start, write=main)

    writer = None
    if tensorboard and main:
        try:
            writer = tb.EventWriter(workdir, start_step=start)
        except OSError as e:
            raise StorageError(f"cannot write TensorBoard events in {workdir}: {e.strerror or e}") from e
    log = MetricsLog(workdir, spec, history=history, writer=writer, write=main)
    show = Progress(num_iterations, enabled=progress and main, log_every=log_every)
    if start > 0 and start < num_iterations:
        show.message(f"resumed {workdir} at iteration {start}/{num_iterations} from {ckpt.path(start)}")
    # The run's identity goes into every checkpoint: its configuration (flags.txt, as prepare_workdir checked
    # and stored it) and what its step runs; a workdir whose flags.txt is lost still knows its run.
    meta = {"num_iterations": num_iterations, "config": read_config(workdir), "fingerprint": identity}
    saver = _CheckpointHook(ckpt, every, num_iterations, meta)
    if restored is not None:
        saver.saved_step = start
    extreme = ExtremeRewardWarning(logging.warning if main else lambda _: None)
    hooks = [log, saver, show, extreme, *extra_hooks]

    stop = StopOnSignal(handle_signals)
    poll = should_stop or (lambda: False)
    show.start(start)  # "compiling" until the first iteration is done

    def stopping() -> bool:  # agreed by every process, so that all stop after the same iteration
        return distributed.any_process(stop.signum is not None or poll())

    try:
        with stop:
            state = lts.run_loop(
                step, state, base_key, num_iterations, val_data, test_data=test_data, test_every=test_every,
                hooks=hooks, should_stop=stopping,
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
        if extreme.summary() and main:
            logging.warning("%s: %s", workdir, extreme.summary())

    done = int(state.iteration)
    path = ckpt.path(done)
    if saver.saved_step != done:
        path = saver.save(state)
    if done < num_iterations:
        why = signal.Signals(stop.signum).name if stop.signum is not None else "a stop request"
        raise Interrupted(
            f"stopped by {why} after iteration {done}/{num_iterations}; checkpoint saved to {path}",
            stop.signum,
            done,
            path,
            num_iterations,
        )
    if figures and log.history and main:
        try:
            from lts_jax.run import plots  # matplotlib is only needed here

            plots.run_figures(log.history, workdir)
        except Exception as e:  # a figure never costs a finished run
            logging.warning("could not draw the run's figures in %s: %s", workdir, e)
    return state, log.history
