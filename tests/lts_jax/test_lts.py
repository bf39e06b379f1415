"""Algorithm 1: one jitted step, strategies, AMTM, best MTM, driver loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import lts, search
from lts_jax.search import policy
from lts_jax.tasks.svm import SVMTask
from simulators import gmm


def setup(task, strategy="loop", **cfg):
    sim = gmm.GMMSimulator(1)
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=4, dataset_size=32, train_strategy=strategy, **cfg)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 64))
    step = lts.make_step(config, sim, task, pol)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    return step, state, val


def test_step_shapes_and_metrics(logistic_task):
    step, state, val = setup(logistic_task)
    state, m = step(state, jax.random.key(1), val)
    assert m["rewards"].shape == (4,) and m["psi"].shape == (4, 8) and m["center"].shape == (8,)
    assert int(state.iteration) == 1
    for name in ("reward_mean", "reward_max", "best_reward", "baseline", "val_accuracy"):
        assert name in m


@pytest.mark.parametrize("strategy", ["vmap", "map"])
def test_strategies_equal_loop(logistic_task, strategy):
    step_l, s_l, val = setup(logistic_task, "loop")
    step_s, s_s, _ = setup(logistic_task, strategy)
    for i in range(3):
        s_l, m_l = step_l(s_l, jax.random.key(i), val)
        s_s, m_s = step_s(s_s, jax.random.key(i), val)
        np.testing.assert_allclose(m_l["rewards"], m_s["rewards"], atol=1e-6)
    np.testing.assert_allclose(s_l.search.params["mean"], s_s.search.params["mean"], rtol=1e-5, atol=1e-6)


def test_vmapped_candidates_equal_a_loop_over_candidates(logistic_task):
    """The K candidates of one step equal K separate single-candidate computations."""
    sim = gmm.GMMSimulator(1)
    task = logistic_task
    pol = search.FixedSearch(sim.spec)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 64))
    config = lts.LTSConfig(num_candidates=3, dataset_size=16, train_strategy="vmap")
    k = jax.random.key(5)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    _, m = lts.make_step(config, sim, task, pol)(state, k, val)
    k_ask, k_sim, k_init, k_train, _ = jax.random.split(k, 5)
    sim_keys, train_keys = jax.random.split(k_sim, 3), jax.random.split(k_train, 3)
    for i in range(3):
        data = sim.sample(sim_keys[i], m["psi"][i], 16)
        mtm = task.train(task.init(k_init), data, train_keys[i], 1)
        assert float(task.evaluate(mtm, val)["reward"]) == pytest.approx(float(m["rewards"][i]), abs=1e-6)


def test_retain_mtm_and_keep_best(logistic_task):
    step, state, val = setup(logistic_task, retain_mtm=True, keep_best_mtm=True)
    test = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(2, 64))
    rewards = []
    for i in range(3):
        state, m = step(state, jax.random.key(i), val, test)
        rewards.append(np.asarray(m["rewards"]))
    assert "amtm_val_reward" in m and "amtm_test_reward" in m and "test_reward" in m
    assert float(state.best_mtm_reward) == pytest.approx(np.max(rewards))
    assert int(state.best_mtm_iteration) == int(np.argmax([r.max() for r in rewards]))
    # the kept model really scores its recorded reward
    assert float(logistic_task.evaluate(state.best_mtm, val)["reward"]) == pytest.approx(float(state.best_mtm_reward))


def test_resume_continues_exactly(logistic_task):
    step, s0, val = setup(logistic_task)
    base = jax.random.key(9)
    full = lts.run_loop(step, s0, base, 6, val)
    half = lts.run_loop(step, s0, base, 3, val)
    resumed = lts.run_loop(step, half, base, 6, val)
    np.testing.assert_array_equal(full.search.params["mean"], resumed.search.params["mean"])


def test_non_finite_reward_names_the_iteration(logistic_task):
    class NaNTask(type(logistic_task)):
        def evaluate(self, state, data):
            out = super().evaluate(state, data)
            return {**out, "reward": out["reward"] * jnp.nan}

    sim = gmm.GMMSimulator(1)
    pol = policy.GaussianPolicy(sim.spec)
    config = lts.LTSConfig(num_candidates=2, dataset_size=8)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 16))
    step = lts.make_step(config, sim, NaNTask(), pol)
    state = lts.init_state(config, NaNTask(), pol, jax.random.key(0), sim.spec.zeros())
    with pytest.raises(lts.NonFiniteError, match="iteration 0: non-finite"):
        lts.run_loop(step, state, jax.random.key(1), 3, val)


def test_svm_task_one_host_call_per_iteration():
    sim = gmm.GMMSimulator(2)
    task = SVMTask(40)
    pol = policy.GaussianPolicy(sim.spec)
    config = lts.LTSConfig(num_candidates=6, dataset_size=40)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 50))
    step = lts.make_step(config, sim, task, pol)
    state = lts.init_state(config, task, pol, jax.random.key(0), sim.spec.zeros())
    state = lts.run_loop(step, state, jax.random.key(1), 4, val)
    assert task.host_calls == 4


def test_config_validation():
    with pytest.raises(ValueError, match="num_candidates = 0"):
        lts.LTSConfig(num_candidates=0)
    with pytest.raises(ValueError, match="dataset_size"):
        lts.LTSConfig(dataset_size=0)
    with pytest.raises(ValueError, match="mtm_epochs"):
        lts.LTSConfig(mtm_epochs=-1)
    with pytest.raises(ValueError, match="train_strategy"):
        lts.LTSConfig(train_strategy="gpu")


class TwoStageGMM:
    """The GMM as a two-stage source for make_split_step: 'scenes' are the data, rendering is host-level."""

    def __init__(self):
        self.sim = gmm.GMMSimulator(1)
        self.spec = self.sim.spec
        self.renders = 0

    def sample_scenes(self, key, psi, num):
        return self.sim.sample(key, psi, num)

    def render_batches(self, flat):
        self.renders += 1
        assert flat["x"].ndim == 2  # one leading axis of K * M
        return flat


def test_split_step_equals_fused_step(logistic_task):
    source = TwoStageGMM()
    task = logistic_task
    pol = policy.GaussianPolicy(source.spec, learning_rate=0.1)
    config = lts.LTSConfig(
        num_candidates=3, dataset_size=16, retain_mtm=True, keep_best_mtm=True, common_train_key=True
    )
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 32))
    test = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(2, 32))
    programs = lts.Programs()
    fused = lts.make_step(config, source.sim, task, pol)
    split = lts.make_split_step(config, source, task, pol, programs=programs)
    s_f = s_s = lts.init_state(config, task, pol, jax.random.key(0), source.spec.zeros())
    for i in range(3):
        args = (val, test) if i == 2 else (val,)
        s_f, m_f = fused(s_f, jax.random.key(i), *args)
        s_s, m_s = split(s_s, jax.random.key(i), *args)
        assert set(m_f) == set(m_s)
        for k in m_f:
            np.testing.assert_allclose(np.asarray(m_f[k]), np.asarray(m_s[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(s_f), jax.tree_util.tree_leaves(s_s)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert source.renders == 3
    # a second run with the same objects reuses the compiled pieces
    n = len(programs._cache)
    lts.make_split_step(config, source, task, pol, programs=programs)
    assert len(programs._cache) == n


class _CounterTask:
    """state = how many trainings it went through; reward = that number (so the start of each MTM shows)."""

    data_keys = ("x", "y")
    required_strategy = preferred_strategy = None

    def init(self, key):
        return jnp.zeros((), jnp.float32)

    def train(self, state, data, key, epochs):
        return state + 1.0

    def evaluate(self, state, data):
        return {"reward": state}

    def train_metrics(self, state):
        return {}

    def optimizer_steps(self, state):
        return state.astype(jnp.int32)  # one "step" per training


@pytest.mark.parametrize("from_amtm", [False, True])
def test_candidates_fine_tune_the_amtm(from_amtm):
    sim, task = gmm.GMMSimulator(1), _CounterTask()
    cfg = lts.LTSConfig(num_candidates=2, dataset_size=4, retain_mtm=True, candidates_from_amtm=from_amtm)
    strategy = search.FixedSearch(sim.spec)
    step = lts.make_step(cfg, sim, task, strategy)
    state = lts.init_state(cfg, task, strategy, jax.random.key(0), sim.spec.zeros())
    val = gmm.sample_real(seed=1, num=8)
    for i in range(3):
        state, m = step(state, jax.random.key(i), val)
        # from the AMTM: iteration i's candidates start at i trainings; from scratch: at 0
        np.testing.assert_array_equal(np.asarray(m["rewards"]), [i + 1.0 if from_amtm else 1.0] * 2)
        # cost: each of the 2 candidates and the AMTM took one "step" from its start, whichever that was
        assert int(m["cost_mtm_steps"]) == 3 and int(m["cost_images"]) == 2 * 4
    assert float(state.amtm) == 3.0


def test_candidates_from_amtm_needs_retain_mtm():
    with pytest.raises(ValueError, match="candidates_from_amtm"):
        lts.LTSConfig(candidates_from_amtm=True)
