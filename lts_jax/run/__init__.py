"""Host-only run management: workdir, metrics and TensorBoard, progress, checkpoints, figures, the driver.

    from lts_jax import run
    workdir = run.prepare_run(path, lts_config, seed=0)    # = prepare_workdir(path, config=run.settings(...))
    state, history = run.run_search(step, state, key, num_iterations, val, workdir=workdir, spec=spec)
    run.write_json(workdir / "results.json", {..., **run.psi_export(spec, psi)})

Modules: ``files`` (atomic writes), ``workdir`` (layout, stored configuration, resume / extend /
complete), ``metrics`` (metrics.jsonl, TensorBoard rows), ``progress``, ``driver`` (run_search,
signals), ``multirun`` (named sub-runs), ``checkpoint`` (orbax), ``tensorboard`` (event files),
``distributed`` (several processes / hosts: initialize, is_main_process), ``configure`` (a run's stored
settings from its configuration objects: settings, prepare_run),
``plots`` (figures; imported on its own: ``from lts_jax.run import plots``, it needs matplotlib).

Nothing here reads a flag: errors name parameters (``overwrite=True``); a front end renders them its
own way with ``RunError.render(name_fn)``.
"""

from lts_jax.run import checkpoint, distributed, progress, tensorboard
from lts_jax.run.checkpoint import CheckpointError
from lts_jax.run.configure import prepare_run, settings
from lts_jax.run.driver import (
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_KEEP_CHECKPOINTS,
    Interrupted,
    StopOnSignal,
    run_search,
)
from lts_jax.run.errors import RunError, SimulatorUnavailable
from lts_jax.run.files import StorageError, append_line, atomic_write_text, write_json
from lts_jax.run.metrics import COST_COLUMNS, MetricsLog, cost_totals, read_metrics, sync_metrics, tensorboard_scalars
from lts_jax.run.multirun import MultiRun, SubRunsFailed
from lts_jax.run.progress import Progress
from lts_jax.run.workdir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    RunComplete,
    WorkdirError,
    config_differences,
    prepare_workdir,
    psi_export,
    read_config,
)

__all__ = [
    "CHECKPOINT_DIR",
    "COST_COLUMNS",
    "CONFIG_FILE",
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_KEEP_CHECKPOINTS",
    "CheckpointError",
    "Interrupted",
    "MetricsLog",
    "MultiRun",
    "Progress",
    "RunComplete",
    "RunError",
    "SimulatorUnavailable",
    "StopOnSignal",
    "StorageError",
    "SubRunsFailed",
    "WorkdirError",
    "append_line",
    "atomic_write_text",
    "checkpoint",
    "config_differences",
    "cost_totals",
    "distributed",
    "prepare_run",
    "prepare_workdir",
    "progress",
    "psi_export",
    "read_config",
    "read_metrics",
    "run_search",
    "settings",
    "sync_metrics",
    "tensorboard",
    "tensorboard_scalars",
    "write_json",
]
