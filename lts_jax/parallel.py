"""How the K candidates' main task models are trained and evaluated.

``run_candidates(fn, strategy, *args, in_axes=...)`` applies ``fn`` to each
candidate's slice of ``args`` (leaves with a leading axis K where ``in_axes``
says 0; shared where it says None) and stacks the results along a new leading
axis K. It is called inside the caller's ``jit``; every strategy traces ``fn``
once per compilation (``loop`` K times) and never again across iterations.

Strategies:

- ``"vmap"``: ``jax.vmap``. Per-candidate weights turn matrix products into
  batched matrix products (good) and convolutions into feature-grouped
  convolutions (bad on GPUs and CPUs; DESIGN.md). The counting CNN is written
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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lts_jax.tasks.base import StrategyDeclaration, Task

STRATEGIES = ("auto", "vmap", "map", "loop")
PHASES = ("train", "evaluate")

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
) -> Any:
    """Applies ``fn`` per candidate and stacks the outputs along a new leading axis.

    Args:
      fn: per-candidate function of unbatched arguments.
      strategy: one of :data:`STRATEGIES`, or ``"map:B"``.
      *args: pytrees; leaves batched along axis 0 where ``in_axes`` says 0.
      in_axes: per argument, 0 (batched) or None (shared); default all 0.
      phase, preferred: passed to :func:`resolve` for ``auto``.

    Returns:
      ``fn``'s output pytree with a leading axis K on every leaf.
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
