"""The Task protocol (a main task model, MTM) and the base class that gives its optional members defaults.

A task is an object with static configuration and pure, jittable methods:

    state = task.init(key)                               # a pytree (params, optimizer state, ...)
    state = task.train(state, data, key, epochs)         # epochs: static int; a lax.scan over minibatches
    metrics = task.evaluate(state, data)                 # {"reward": [], ...}: higher reward is better
    logs = task.train_metrics(state)                     # {name: []} of a trained state, for the logs
    steps = task.optimizer_steps(state)                  # [] int32: optimiser steps taken to reach state

``data`` is a dict of arrays with a leading example axis: what a simulator's ``sample`` returns, or real
data with the same keys; ``task.data_keys`` names the entries ``train`` and ``evaluate`` read (a renderer
produces only those, an experiment passes only those into jit). The algorithm trains K candidates with a
strategy from :mod:`lts_jax.parallel` and vmaps ``evaluate`` over them.

A task also declares how its K candidates may run (:mod:`lts_jax.parallel`): ``required_strategy``
replaces whatever the caller asked for (a host task that must see all K at once requires ``"vmap"``),
``preferred_strategy`` is what ``"auto"`` resolves to. Each is None (no declaration), a strategy name,
a dict by phase ``{"train": ..., "evaluate": ...}``, or a dict by backend family ``{"cpu": ..., "gpu":
..., "tpu": ...}`` of either.

A host task (scikit-learn) keeps the training data as its state and fits on the host inside
``evaluate``, through :func:`lts_jax.host.host_call`; see :mod:`lts_jax.tasks.svm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from lts_jax.tasks.trainer import TrainState

# A strategy name, or a dict by phase / by backend family of names (see the module docstring).
StrategyDeclaration = str | Mapping[str, str | Mapping[str, str]] | None


class Task(Protocol):
    """What :mod:`lts_jax.lts` and :mod:`lts_jax.parallel` read of a main task model."""

    data_keys: tuple[str, ...]  # the entries of ``data`` that train and evaluate read
    required_strategy: StrategyDeclaration
    preferred_strategy: StrategyDeclaration

    def init(self, key: jax.Array) -> Any: ...

    def train(self, state: Any, data: dict[str, jax.Array], key: jax.Array, epochs: int) -> Any: ...

    def evaluate(self, state: Any, data: dict[str, jax.Array]) -> dict[str, jax.Array]: ...

    def train_metrics(self, state: Any) -> dict[str, jax.Array]: ...

    def optimizer_steps(self, state: Any) -> jax.Array: ...


class TaskBase:
    """Defaults of a task's optional members; a task sets ``data_keys`` and writes init, train, evaluate.

    - ``required_strategy = preferred_strategy = None``: runs with whatever strategy the caller picks.
    - ``train_metrics(state) -> {}``: nothing to log of a trained state.
    - ``optimizer_steps(state)``: the step counter of the shared trainer's state
      (:class:`lts_jax.tasks.trainer.TrainState`), 0 for any other state (a model fitted without an optimiser,
      such as the host SVM). A task with its own state that takes optimiser steps overrides it.
    """

    data_keys: tuple[str, ...]  # no default: every task names what it reads
    required_strategy: StrategyDeclaration = None
    preferred_strategy: StrategyDeclaration = None

    def train_metrics(self, state: Any) -> dict[str, jax.Array]:
        """Scalars [] of a trained state for the logs (the driver logs their mean over candidates as train_*)."""
        del state
        return {}

    def optimizer_steps(self, state: Any) -> jax.Array:
        """[] int32: the optimiser steps taken to reach ``state`` since ``init`` (the driver logs, per iteration,
        the steps the K MTMs and the AMTM took as ``cost_mtm_steps``). Jittable."""
        if isinstance(state, TrainState):
            return jnp.asarray(state.step, jnp.int32)
        return jnp.zeros((), jnp.int32)
