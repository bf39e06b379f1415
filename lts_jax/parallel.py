"""How the K candidates' main task models are trained and evaluated.

``run_candidates(fn, strategy, *args, in_axes=...)`` applies ``fn`` to each
candidate's slice of ``args`` (leaves with a leading axis K where ``in_axes``
says 0; shared where it says None) and stacks the results along a new leading
axis K. It is called inside the caller's ``jit``; every strategy traces ``fn``
once per compilation (``loop`` K times) and never again across iterations.

Strategies:

- ``"vmap"``: ``jax.vmap``. Per-candidate weights turn matrix products into
  batched matrix products (good) and convolutions into feature-grouped
  convolutions (bad on GPUs and CPUs; benchmarks/README.md). The counting CNN is written
  as matrix products for this reason (:mod:`lts_jax.models.counting`).
- ``"map"``: ``jax.lax.map``, one compiled body run K times in sequence.
- ``"map:B"``: ``jax.lax.map`` with ``batch_size=B``: chunks of B candidates
  vmapped, chunks in sequence (a remainder chunk is vmapped separately).
- ``"loop"``: K copies of ``fn`` written one after another in the one jit
  (compile time grows with K; XLA may overlap the independent copies).
- ``"auto"``: the strategy measured fastest on the backend, per phase
  (:data:`AUTO`), unless the task states a preference.

Measured (benchmarks/README.md, "MTM throughput"; counting CNN, 96x320, batch
32, K = 8): on an H100 vmap trains 388k images/s in bf16 against 190k for loop,
184k for map and 51k for a per-step dispatch loop; on 2 CPU cores vmap reaches
0.65-0.7x of map and loop, which are within noise of each other (map compiles
once for any K, loop compiles K copies).

What a task declares (:class:`lts_jax.tasks.Task`; None by default in
:class:`lts_jax.tasks.TaskBase`; otherwise a strategy name, a dict by phase
``{"train": ..., "evaluate": ...}``, or a dict by backend family
``{"cpu": ..., "gpu": ..., "tpu": ...}`` of either):

- ``required_strategy``: the only strategy the task runs correctly or sensibly
  with; it replaces whatever the caller asked for. A host-backed task
  (scikit-learn through :func:`lts_jax.host.host_call`) requires ``"vmap"``
  so that the bridge sees all K candidates in one host call.
- ``preferred_strategy``: what ``auto`` resolves to for this task (an explicit
  strategy from the caller still wins). :data:`AUTO` was measured on the
  counting CNN, whose layers are matrix products; a task built on
  convolutions should declare its own measured choice (on GPUs vmap turns K
  convolutions into one grouped convolution, 15x slower than ``loop`` for a
  3x3 CNN; benchmarks/README.md).

:func:`strategy_for` applies both; :func:`train_candidates` and
:func:`evaluate_candidates` use it.

Sharded over devices. With a device mesh (:func:`candidate_mesh`: a 1-D
``jax.sharding.Mesh`` whose axis :data:`CANDIDATE_AXIS` runs over the devices,
across hosts after ``lts_jax.run.distributed.initialize``) the K candidates are
split into equal blocks, one per device, through ``shard_map``
(:func:`over_candidates`; ``run_candidates(..., mesh=mesh)``): each device runs
the strategy above on its K / n candidates; shared arguments (validation data,
a common key) are replicated. K must be a multiple of the device count
(:func:`check_divisible`): padding K with dummy candidates would need masking in
every search strategy's statistics (baseline, ranks, the best candidate), so an
uneven K is refused at start-up instead. Without a mesh, or with a mesh of one
device, nothing changes (the same compiled programs as before).

Host code under a mesh: a ``jax.pure_callback`` (:mod:`lts_jax.host`) inside
``shard_map`` runs once per device with that device's candidates, on the
process that owns the device (under plain ``jit`` with sharded inputs it would
run once, on one device, with every candidate gathered there). The calls of the
devices of one process may run concurrently, from different threads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lts_jax.tasks.base import StrategyDeclaration, Task

STRATEGIES = ("auto", "vmap", "map", "loop")
PHASES = ("train", "evaluate")
CANDIDATE_AXIS = "candidates"  # the mesh axis the K candidates are split over

# What "auto" means, per backend and phase; measured on the counting CNN (benchmarks/README.md, "MTM throughput").
AUTO: dict[str, dict[str, str]] = {
    "cpu": {"train": "map", "evaluate": "map"},
    "gpu": {"train": "vmap", "evaluate": "vmap"},
    # Not measured; vmap is the form TPUs batch natively.
    "tpu": {"train": "vmap", "evaluate": "vmap"},
}
_DEFAULT = {"train": "vmap", "evaluate": "vmap"}


def _backend_family(backend: str | None) -> str:
    backend = (backend or jax.default_backend()).lower()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def _check(strategy: str) -> str:
    name, _, chunk = strategy.partition(":")
    if name not in STRATEGIES or (chunk and (name != "map" or not chunk.isdigit() or int(chunk) < 1)):
        raise ValueError(f"unknown executor strategy {strategy!r}; choose one of {STRATEGIES} or 'map:B' (B >= 1)")
    return strategy


def _declared(value: StrategyDeclaration, phase: str, backend: str | None) -> str | None:
    """The strategy a task's declaration names for ``phase`` on ``backend``, or None."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose one of {PHASES}")
    if isinstance(value, Mapping) and value.keys() <= set(AUTO):
        value = value.get(_backend_family(backend))
    if isinstance(value, Mapping):
        value = value.get(phase)
    return None if value is None else _check(value)


def strategy_for(task: Task, strategy: str = "auto", phase: str = "train", backend: str | None = None) -> str:
    """The concrete strategy for ``task`` in ``phase``: its ``required_strategy`` if it declares one, else
    ``strategy`` with ``auto`` resolved through the task's ``preferred_strategy`` and :data:`AUTO`."""
    required = _declared(task.required_strategy, phase, backend)
    if required is not None:
        return resolve(required, backend, phase=phase)
    return resolve(strategy, backend, phase=phase, preferred=_declared(task.preferred_strategy, phase, backend))


def resolve(strategy: str, backend: str | None = None, *, phase: str = "train", preferred: str | None = None) -> str:
    """The concrete strategy that ``strategy`` stands for.

    Args:
      strategy: a strategy name; only ``"auto"`` is resolved.
      backend: "cpu", "gpu" ("cuda", "rocm"), "tpu"; default: JAX's default backend.
      phase: "train" or "evaluate" (they are measured separately).
      preferred: a task's preference (``preferred_strategy``), honoured by ``auto`` only.
    """
    _check(strategy)
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; choose one of {PHASES}")
    if strategy != "auto":
        return strategy
    if preferred is not None and preferred != "auto":
        return _check(preferred)
    return AUTO.get(_backend_family(backend), _DEFAULT)[phase]


def run_candidates(
    fn: Callable[..., Any],
    strategy: str,
    *args: Any,
    in_axes: Sequence[int | None] | None = None,
    phase: str = "train",
    preferred: str | None = None,
    mesh: Mesh | None = None,
) -> Any:
    """Applies ``fn`` per candidate and stacks the outputs along a new leading axis.

    Args:
      fn: per-candidate function of unbatched arguments.
      strategy: one of :data:`STRATEGIES`, or ``"map:B"``.
      *args: pytrees; leaves batched along axis 0 where ``in_axes`` says 0.
      in_axes: per argument, 0 (batched) or None (shared); default all 0.
      phase, preferred: passed to :func:`resolve` for ``auto``.
      mesh: a device mesh (:func:`candidate_mesh`) to split the candidates over; each device
        runs ``strategy`` on its K / n candidates (:func:`over_candidates`). None or one device:
        no sharding. Inside ``jit``.

    Returns:
      ``fn``'s output pytree with a leading axis K on every leaf (sharded over ``mesh``).
    """
    in_axes = tuple(in_axes) if in_axes is not None else (0,) * len(args)
    if len(in_axes) != len(args):
        raise ValueError(f"in_axes has {len(in_axes)} entries for {len(args)} arguments")
    if any(ax not in (0, None) for ax in in_axes):
        raise ValueError(f"in_axes entries must be 0 or None, got {in_axes}")
    strategy = resolve(strategy, phase=phase, preferred=preferred)
    pairs = list(zip(args, in_axes, strict=True))
    sizes = {leaf.shape[0] for a, ax in pairs if ax == 0 for leaf in jax.tree_util.tree_leaves(a)}
    if len(sizes) != 1:
        raise ValueError(f"batched arguments disagree on the candidate axis (or there are none): {sorted(sizes)}")
    (num,) = sizes
    if _num_devices(mesh) > 1:
        check_divisible(num, _num_devices(mesh))

        def local(*shard_args):  # this device's K / n candidates
            return run_candidates(fn, strategy, *shard_args, in_axes=in_axes, phase=phase)

        return over_candidates(local, mesh, in_axes)(*args)

    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)(*args)

    if strategy.startswith("map"):
        _, _, chunk = strategy.partition(":")
        batched = [a for a, ax in pairs if ax == 0]

        def body(xs):
            it = iter(xs)
            return fn(*[next(it) if ax == 0 else a for a, ax in pairs])

        return jax.lax.map(body, batched, batch_size=int(chunk) if chunk else None)

    def take(i):
        return [jax.tree_util.tree_map(lambda x: x[i], a) if ax == 0 else a for a, ax in pairs]

    outs = [fn(*take(i)) for i in range(num)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def train_candidates(
    task: Task,
    states: Any,
    data: Any,
    keys: jax.Array,
    epochs: int,
    strategy: str = "auto",
    *,
    shared_states: bool = False,
) -> Any:
    """Trains K models: ``task.train(states[k], data[k], keys[k], epochs)`` for every k.

    states: the task's state with a leading axis K (or one state for all if
    ``shared_states``, e.g. the same initialisation); data: leaves [K, M, ...];
    keys: [K] typed keys; epochs: static. Returns states with a leading axis K.
    """
    return run_candidates(
        lambda s, d, k: task.train(s, d, k, epochs),
        strategy_for(task, strategy, "train"),
        states,
        data,
        keys,
        in_axes=(None if shared_states else 0, 0, 0),
        phase="train",
    )


def evaluate_candidates(task: Task, states: Any, data: Any, strategy: str = "auto", *, shared_data: bool = True) -> Any:
    """Evaluates K models: ``task.evaluate(states[k], data)`` (one shared data set unless ``shared_data=False``,
    then data[k]). Returns the metrics dict with a leading axis K on every entry."""
    return run_candidates(
        task.evaluate,
        strategy_for(task, strategy, "evaluate"),
        states,
        data,
        in_axes=(0, None if shared_data else 0),
        phase="evaluate",
    )


# ----- sharding over devices -------------------------------------------------------------------------------------
def _num_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.size)


def candidate_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D device mesh, axis :data:`CANDIDATE_AXIS`, over ``num_devices`` devices (None: all of them).

    With one process: the first ``num_devices`` of ``jax.devices()``. With several processes
    (``lts_jax.run.distributed.initialize``): the same number of local devices from every process,
    in process order, so each process owns a contiguous block of candidates; ``num_devices`` must
    then be a multiple of the process count. Host-level; call it after ``distributed.initialize``.

    Raises ValueError naming ``num_devices`` and the devices JAX sees when they do not allow it.
    """
    total, procs = jax.device_count(), jax.process_count()
    n = total if num_devices is None else int(num_devices)
    seen = f"JAX sees {total} {jax.default_backend()} device(s)" + (f" on {procs} processes" if procs > 1 else "")
    if not 1 <= n <= total:
        raise ValueError(f"num_devices = {n} is out of range; accepted: 1 .. {total} ({seen})")
    if procs == 1:
        devices = jax.devices()[:n]
    else:
        by_process: dict[int, list] = {}
        for d in jax.devices():
            by_process.setdefault(d.process_index, []).append(d)
        per, fewest = n // procs, min(len(v) for v in by_process.values())
        if n % procs or per > fewest:
            raise ValueError(
                f"num_devices = {n} cannot be split evenly over the {procs} processes ({seen}, at least "
                f"{fewest} per process); accepted: a multiple of {procs} up to {procs * fewest}"
            )
        devices = [d for p in sorted(by_process) for d in by_process[p][:per]]
    return Mesh(np.array(devices), (CANDIDATE_AXIS,))


def check_divisible(num_candidates: int, num_devices: int) -> None:
    """ValueError unless ``num_candidates`` (K) is a multiple of ``num_devices``.

    Why refuse rather than pad: a padded candidate would have to be masked out of every search
    strategy's statistics (REINFORCE's baseline and normalisation, evolution strategies' ranks,
    the best candidate, the logged means), or it would change them.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices = {num_devices} is out of range; accepted: an integer >= 1")
    if num_candidates % num_devices:
        fits = [d for d in range(1, num_devices + 1) if num_candidates % d == 0]
        raise ValueError(
            f"num_candidates = {num_candidates} (K) is not divisible by num_devices = {num_devices}: every device "
            f"runs K / num_devices candidates, and K is not padded (that would change the search's statistics). "
            f"Choose K a multiple of {num_devices}, or num_devices in {fits}"
        )


def candidate_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (candidate) axis split over the mesh, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(CANDIDATE_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (search state, validation data, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def _shard_map(fn: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
    # jax.shard_map is public from jax 0.6; jax.experimental.shard_map is the older home (deprecated).
    # No replication checking: a scan whose carry starts replicated (a common MTM init) and becomes
    # per-candidate is fine here, and every output is per-candidate anyway.
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map  # pragma: no cover

    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)  # pragma: no cover


def over_candidates(fn: Callable[..., Any], mesh: Mesh | None, in_axes: Sequence[int | None]) -> Callable[..., Any]:
    """``fn`` of batched arguments (leading axis K where ``in_axes`` says 0, shared where None), run on each
    device of ``mesh`` with that device's K / n candidates (``shard_map``); outputs keep the leading axis K,
    split over the mesh. ``mesh`` None or of one device: ``fn`` itself. Inside or outside ``jit``."""
    if _num_devices(mesh) == 1:
        return fn
    in_specs = tuple(PartitionSpec(CANDIDATE_AXIS) if ax == 0 else PartitionSpec() for ax in in_axes)
    return _shard_map(fn, mesh, in_specs, PartitionSpec(CANDIDATE_AXIS))


def _place(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = _place(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if not x.is_fully_addressable:  # a global array laid out otherwise: reshard on the devices
            return jax.jit(lambda a: a, out_shardings=sharding)(x)
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        x = np.asarray(x)  # a process-local array: every process holds the same value (SPMD)
    return jax.device_put(np.asarray(x) if not isinstance(x, np.ndarray) else x, sharding)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """``tree``'s arrays replicated on every device of ``mesh`` (None or one device: ``tree`` unchanged).

    Leaves already laid out so are kept as they are (cheap to call every iteration). Process-local
    values (NumPy, arrays of one device) must be equal on every process, as in any SPMD program.
    Host-level, not jittable. Use it once for validation and test data (``lts.replicate``) so that
    they are not copied to the devices in every iteration.
    """
    if _num_devices(mesh) == 1:
        return tree
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: _place(x, sharding), tree)


def shard(tree: Any, mesh: Mesh | None) -> Any:
    """``tree``'s arrays split over ``mesh`` along their leading (candidate) axis (None or one device:
    unchanged). Process-local inputs hold the whole array on every process. Host-level (benchmarks,
    tests); the library's steps shard inside ``jit``."""
    if _num_devices(mesh) == 1:
        return tree
    sharding = candidate_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: _place(x, sharding), tree)
