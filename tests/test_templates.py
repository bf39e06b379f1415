"""The templates for a new simulator (simulators/template.py) and a new task (lts_jax/tasks/template.py) run
through lts.make_step and learn; a simulator that is not traceable gets a hint to use the host bridge."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import lts, search
from lts_jax.tasks.template import TemplateTask
from simulators.template import TemplateSimulator


def test_template_simulator_contract():
    sim = TemplateSimulator()
    psi = jnp.asarray(sim.spec.preset("val"))
    sample = jax.jit(sim.sample, static_argnums=2)
    data = sample(jax.random.key(0), psi, 64)
    assert data["x"].shape == (64, 2) and data["x"].dtype == jnp.float32 and data["y"].shape == (64,)
    again = sample(jax.random.key(0), psi, 64)
    np.testing.assert_array_equal(np.asarray(data["x"]), np.asarray(again["x"]))  # deterministic per key
    keys, psis = jax.random.split(jax.random.key(1), 3), jnp.stack([psi, psi + 0.5, psi - 0.5])
    batched = jax.vmap(sim.sample, in_axes=(0, 0, None))(keys, psis, 16)
    for k in range(3):  # vmap over (key, psi) equals a loop
        one = sim.sample(keys[k], psis[k], 16)
        np.testing.assert_allclose(np.asarray(batched["x"][k]), np.asarray(one["x"]), rtol=1e-6, atol=1e-6)
    p1 = sim.spec.from_natural({"class_1": 0.9}, base=np.asarray(psi))
    assert float(jnp.mean(sim.sample(jax.random.key(2), jnp.asarray(p1), 2000)["y"])) > 0.8  # the block acts


def test_template_task_and_simulator_learn_through_make_step():
    sim, task = TemplateSimulator(), TemplateTask()
    policy = search.GaussianPolicy(sim.spec, learning_rate=0.1, variance=0.1)
    config = lts.LTSConfig(num_candidates=8, dataset_size=64, mtm_epochs=2, common_sim_key=True)
    step = lts.make_step(config, sim, task, policy)
    state = lts.init_state(config, task, policy, jax.random.key(0), sim.spec.zeros())
    val = sim.sample(jax.random.key(99), jnp.asarray(sim.spec.preset("val")), 400)
    rows = []
    state = lts.run_loop(step, state, jax.random.key(1), 40, val, hooks=[lambda i, s, m: rows.append(m)])
    assert int(state.iteration) == 40 and rows[0]["rewards"].__len__() == 8
    first, last = np.mean([r["reward_mean"] for r in rows[:5]]), np.mean([r["reward_mean"] for r in rows[-5:]])
    assert last > first + 0.05, (first, last)  # the search moves the simulator towards the validation data
    assert rows[-1]["train_loss"] > 0 and rows[-1]["cost_mtm_steps"] == 8 * 2 * 2  # K x epochs x 2 batches


class NumpySimulator(TemplateSimulator):
    """What a first attempt often looks like: NumPy on psi inside sample."""

    def sample(self, key, psi, num):
        p = 1.0 / (1.0 + np.exp(-np.asarray(psi)[0]))
        return {"x": jnp.zeros((num, 2)), "y": jnp.full((num,), int(p > 0.5))}


def test_a_numpy_simulator_is_told_to_use_the_host_bridge():
    sim, task = NumpySimulator(), TemplateTask()
    policy = search.GaussianPolicy(sim.spec)
    config = lts.LTSConfig(num_candidates=2, dataset_size=4)
    step = lts.make_step(config, sim, task, policy)
    state = lts.init_state(config, task, policy, jax.random.key(0), sim.spec.zeros())
    val = TemplateSimulator().sample(jax.random.key(1), jnp.asarray(sim.spec.zeros()), 8)
    with pytest.raises(lts.NotTraceableError, match="HostSimulator") as err:
        step(state, jax.random.key(2), val)
    assert "NumpySimulator.sample(key, psi, num) cannot be traced" in str(err.value)
    assert isinstance(err.value.__cause__, jax.errors.TracerArrayConversionError)
