"""Several processes (hosts) in one run, through JAX's own distributed runtime.

Every process runs the same program (SPMD, multi-controller): it calls :func:`initialize` before any
other JAX call, builds the same configuration with ``num_devices`` = the devices of all processes
(``lts.LTSConfig(num_devices=jax.device_count())``), and runs the same steps; the K candidates are
split over every device of every process (``lts_jax.parallel.candidate_mesh``), so each process
generates data, renders (its own host renderer servers) and trains only its own candidates, and
every process receives the replicated search state and metrics. In ``lts_jax.run`` only the main
process (process 0) writes metrics.jsonl, TensorBoard events, figures and the workdir's stored
configuration; checkpoints go through orbax, which every process calls and which coordinates the
writes itself. The caller writes results.json only where :func:`is_main_process` is true.

The workdir must be one directory that every process sees (a shared file system), and every
process must be given the same flags.

Launch on 2 hosts (the coordinator is process 0's address and a free port; run both, each with its
own ``process_id``)::

    # host A (10.0.0.1)
    python -m experiments.car_count --flagfile=... --workdir=/shared/run \\
        --coordinator=10.0.0.1:12345 --num_processes=2 --process_id=0
    # host B
    python -m experiments.car_count --flagfile=... --workdir=/shared/run \\
        --coordinator=10.0.0.1:12345 --num_processes=2 --process_id=1

The same from the environment: ``JAX_COORDINATOR_ADDRESS=10.0.0.1:12345 JAX_NUM_PROCESSES=2
JAX_PROCESS_ID=0|1``. Under SLURM (``srun``), Open MPI (``mpirun``) and on Cloud TPU VMs nothing is
needed: JAX detects the coordinator, the process count and the process id. Note that JAX then gives
each SLURM or MPI task one GPU (``local_device_ids = [local task id]``): launch one task per GPU
(``srun --ntasks-per-node=8 --gpus-per-task=1 ...``), or one task per host with
``JAX_LOCAL_DEVICE_IDS=0,1,...,7`` (or ``local_device_ids``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np

# Our names for the three settings (JAX itself reads JAX_COORDINATOR_ADDRESS and JAX_LOCAL_DEVICE_IDS).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _int_setting(name: str, value: int | None, env: str) -> int | None:
    if value is not None:
        return int(value)
    text = os.environ.get(env, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: the environment variable {env}={text!r} is not an integer") from None


def _cluster_detected() -> bool:
    """A launcher JAX detects by itself started several processes (SLURM, Open MPI, Cloud TPU pods)."""

    def count(var: str) -> int:
        try:
            return int(os.environ.get(var, "1"))
        except ValueError:
            return 1

    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return (
        ("SLURM_JOB_ID" in os.environ and count("SLURM_NTASKS") > 1)
        or count("OMPI_COMM_WORLD_SIZE") > 1
        or len(tpu_hosts) > 1
    )


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    timeout_s: int = 300,
) -> bool:
    """Starts JAX's distributed runtime when the run spans several processes; returns whether it did.

    Each setting comes from its argument, else from the environment (``JAX_COORDINATOR_ADDRESS``
    ``host:port`` of process 0, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), else from a cluster JAX
    detects itself (SLURM, Open MPI, Cloud TPU). With none of them, or ``num_processes=1``, this is a
    single-process run and nothing is started. Must run before any other JAX call (JAX refuses
    otherwise); calling it again after it started is a no-op. Host-level.

    Raises:
      ValueError: a setting is out of range (naming it), or some are given and others missing
        without a cluster that provides them.
    """
    if _initialized():
        return True
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _int_setting("num_processes", num_processes, ENV_NUM_PROCESSES)
    process_id = _int_setting("process_id", process_id, ENV_PROCESS_ID)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes = {num_processes} is out of range; accepted: an integer >= 1")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        upper = f"{num_processes - 1}" if num_processes is not None else "num_processes - 1"
        raise ValueError(f"process_id = {process_id} is out of range; accepted: 0 .. {upper}")
    if num_processes == 1:
        return False
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if all(v is None for v in given.values()) and not _cluster_detected():
        return False
    if any(v is None for v in given.values()) and not _cluster_detected():
        missing = [k for k, v in given.items() if v is None]
        raise ValueError(
            f"a run on several processes needs coordinator, num_processes and process_id; {missing} "
            f"missing (arguments, or the environment variables {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
            f"{ENV_PROCESS_ID}), and no SLURM / MPI / TPU cluster was detected to provide them"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=list(local_device_ids) if local_device_ids is not None else None,
        initialization_timeout=int(timeout_s),
    )
    return True


def _initialized() -> bool:
    is_initialized = getattr(jax.distributed, "is_initialized", None)
    if is_initialized is not None:
        return bool(is_initialized())
    from jax._src import distributed as _distributed  # pragma: no cover  (jax without is_initialized)

    return _distributed.global_state.client is not None  # pragma: no cover


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0 (and in a single-process run): the one process that writes the run's files."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier: returns once every process reached ``sync(name)`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process (every process must call it; one process: ``flag``).
    E.g. a stop requested by a signal that reached only some of the processes."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))
