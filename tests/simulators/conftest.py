"""Fixtures of the simulator tests: a task cheap to compile that reads a traffic simulator's outputs."""

import jax
import jax.numpy as jnp
import pytest

from lts_jax.tasks import TaskBase


class MeanColourCountTask(TaskBase):
    """Counts per car type as a linear function of an image's mean colour, fitted by a few gradient steps on
    the L1 error; reward = -L1. It compiles in a second, so step tests are about the simulator's path."""

    data_keys = ("image", "counts")

    def init(self, key):
        return {"w": 0.01 * jax.random.normal(key, (4, 5))}

    def _features(self, images):
        x = images.astype(jnp.float32).mean(axis=(1, 2)) / 255.0
        return jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)

    def train(self, state, data, key, epochs):
        x, y = self._features(data["image"]), data["counts"].astype(jnp.float32)
        rates = 0.5 + 0.01 * jax.random.normal(key, (epochs,))  # uses the key, as a shuffling task would

        def body(w, rate):
            return w - rate * jax.grad(lambda w: jnp.mean(jnp.abs(x @ w - y)))(w), None

        w, _ = jax.lax.scan(body, state["w"], rates)
        return {"w": w}

    def evaluate(self, state, data):
        l1 = jnp.mean(jnp.abs(self._features(data["image"]) @ state["w"] - data["counts"]))
        return {"reward": -l1, "l1": l1}


@pytest.fixture
def count_task():
    return MeanColourCountTask()
