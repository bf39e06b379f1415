"""Main task models (MTMs): init / train / evaluate.

A task is an object with static configuration and three pure, jittable methods:

    state = task.init(key)                               # a pytree (params, optimizer state, ...)
    state = task.train(state, data, key, epochs)         # epochs: static int; a lax.scan over minibatches
    metrics = task.evaluate(state, data)                 # {"reward": [], ...}: higher reward is better

``data`` is the dict a simulator's ``sample`` returns (leading axis = examples),
or real data with the same keys. The algorithm trains K candidates with a
strategy from :mod:`lts_jax.parallel` and vmaps ``evaluate`` over them.

A host task (scikit-learn) keeps the training data as its state and fits on the
host inside ``evaluate``, through :func:`lts_jax.simulator.host_call`; see
:mod:`lts_jax.tasks.svm`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax


class Task(Protocol):
    def init(self, key: jax.Array) -> Any: ...

    def train(self, state: Any, data: dict[str, jax.Array], key: jax.Array, epochs: int) -> Any: ...

    def evaluate(self, state: Any, data: dict[str, jax.Array]) -> dict[str, jax.Array]: ...
