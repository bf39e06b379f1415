"""A minimal main task model (MTM) to copy: the whole contract in one file (tests/test_templates.py runs it).

A task is an object with static configuration (set in ``__init__``) and pure, jittable methods:

    state = task.init(key)                          # a pytree: params and optimiser state
    state = task.train(state, data, key, epochs)    # epochs is a Python int; one lax.scan over minibatches
    metrics = task.evaluate(state, data)            # {"reward": [] float32, ...}: higher reward is better

``data`` is what the simulator's ``sample`` returns for one candidate (``{name: [M, ...]}``) or the validation
set (same keys); ``data_keys`` names the entries the task reads. The step vmaps ``train`` and ``evaluate`` over
the K candidates (or maps / loops them: ``lts_jax.parallel``), so no Python side effects and no host calls
(a scikit-learn model goes through ``lts_jax.host.host_call``: see ``lts_jax/tasks/svm.py``).

This one: logistic regression on 2-D points ``x`` [M, 2] with labels ``y`` [M] in {0, 1}, trained by Adam on
shuffled minibatches with the shared trainer (:mod:`lts_jax.tasks.trainer`: ``TrainState``, ``train_epochs``,
``gradient_step``, which also gives the driver its optimiser-step count); reward = validation accuracy.
It fits :mod:`simulators.template` and the Gaussian-mixture toy (:mod:`simulators.gmm`). Steps to make your own:

1. ``data_keys``: the entries you read. ``init``: a ``TrainState.create(params, optimizer)``.
2. ``train``: ``train_epochs(step_fn, state, key, num, epochs, batch_size)`` with a ``step_fn(state, idx,
   weights)`` that gathers ``data[idx]`` and calls ``gradient_step`` on a ``weights``-weighted mean loss
   (padding examples have weight 0).
3. ``evaluate``: the reward (negate a loss or an error: higher must be better) and any other metrics as
   scalars; they are logged as ``val_*`` / ``test_*`` (means over K).
4. Optional: ``train_metrics(state)`` (logged as ``train_*``), ``preferred_strategy`` (what ``"auto"`` means).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lts_jax.optim import make_optimizer
from lts_jax.tasks.base import TaskBase
from lts_jax.tasks.trainer import TrainState, gradient_step, train_epochs


class TemplateTask(TaskBase):
    """Logistic regression on ``x`` [M, 2] -> ``y`` [M]; reward = accuracy.

    Args:
      batch_size: minibatch size (capped at the data set's size).
      learning_rate: Adam's rate.
    """

    data_keys = ("x", "y")

    def __init__(self, batch_size: int = 32, learning_rate: float = 0.1):
        self.batch_size = int(batch_size)
        self.optimizer = make_optimizer("adam", learning_rate)

    def init(self, key: jax.Array) -> TrainState:
        params = {"w": 0.01 * jax.random.normal(key, (2,)), "b": jnp.zeros(())}
        return TrainState.create(params, self.optimizer)

    @staticmethod
    def _logits(params, x: jax.Array) -> jax.Array:
        return x @ params["w"] + params["b"]

    def train(self, state: TrainState, data: dict, key: jax.Array, epochs: int) -> TrainState:
        x, y = data["x"], data["y"].astype(jnp.float32)
        num = x.shape[0]  # static under jit

        def loss_fn(params, idx, weights):
            z = self._logits(params, x[idx])
            per_example = jax.nn.softplus(z) - y[idx] * z  # the logistic loss
            return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1.0)

        def step_fn(st, idx, weights):
            return gradient_step(self.optimizer, loss_fn, st, idx, weights)

        return train_epochs(step_fn, state, key, num, epochs, min(self.batch_size, num))

    def evaluate(self, state: TrainState, data: dict) -> dict[str, jax.Array]:
        predicted = self._logits(state.params, data["x"]) > 0
        accuracy = jnp.mean(predicted == (data["y"] == 1))
        return {"reward": accuracy, "accuracy": accuracy}

    def train_metrics(self, state: TrainState) -> dict[str, jax.Array]:
        return {"loss": state.train_loss}
