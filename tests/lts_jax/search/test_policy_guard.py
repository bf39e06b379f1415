"""The policy's guard against an extreme but finite reward (a diverged MTM): clipped by default, counted, warned
about by the driver naming the iteration; runs without such a reward are unchanged."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import lts, run
from lts_jax import params as P
from lts_jax.search import policy
from lts_jax.tasks import TaskBase

SPEC = P.ParamSpec([P.gaussian("pos", 2, labels=["x", "y"])])
TARGET = jnp.array([1.0, -1.0, 0.0, 0.0])  # mean (1, -1); the log-variances are not rewarded


def test_clip_extreme_rewards():
    r = jnp.array([-0.80, -0.82, -0.79, -0.81, -1.6e8, -0.83, -0.78, -0.80])
    clipped, n = policy.clip_extreme_rewards(r, 50.0)
    assert int(n) == 1 and -3.0 < float(clipped[4]) < -0.83  # still the worst, but near the others
    np.testing.assert_array_equal(np.delete(np.asarray(clipped), 4), np.delete(np.asarray(r), 4))
    tied = jnp.array([-1.2] * 5 + [-1.0, -1.1, -1.6e8])  # ties do not count towards the scale
    assert int(policy.clip_extreme_rewards(tied, 50.0)[1]) == 1
    saturated = jnp.array([0.998, 1.0, 0.996, 0.998, 0.776, 1.0, 0.998, 0.996])  # a poor candidate, not a diverged one
    assert int(policy.clip_extreme_rewards(saturated, 50.0)[1]) == 0
    for few in ([0.0] * 7 + [0.05], [0.0] * 6 + [0.05, 1e8]):  # fewer than 3 rewards off the median: no scale
        assert int(policy.clip_extreme_rewards(jnp.array(few), 50.0)[1]) == 0
    noise = jax.random.normal(jax.random.key(0), (2000, 8))
    assert int(jnp.sum(jax.vmap(lambda x: policy.clip_extreme_rewards(x, 50.0)[1])(noise))) == 0


def reward_fn(psi):
    return -jnp.sum((psi - TARGET) ** 2, -1)


def learn(pol, iterations=60, spike_at=5):
    """The policy on a quadratic reward; at ``spike_at`` one candidate's reward is -1.6e8. Returns the distance of
    the mean to the target after each iteration and the metrics of the spike's iteration."""
    state = pol.init(jax.random.key(0), jnp.zeros(SPEC.dim))
    tell = jax.jit(pol.tell)
    distances, spike_metrics = [], None
    for i in range(iterations):
        psi = pol.ask(jax.random.fold_in(jax.random.key(1), i), state, 8)
        rewards = reward_fn(psi)
        if i == spike_at:
            rewards = rewards.at[3].set(-1.6e8)
        state, metrics = tell(state, psi, rewards)
        spike_metrics = metrics if i == spike_at else spike_metrics
        distances.append(float(jnp.linalg.norm(pol.center(state)[:2] - TARGET[:2])))
    return np.asarray(distances), spike_metrics


def test_a_diverged_candidate_no_longer_freezes_the_policy():
    guarded, metrics = learn(policy.GaussianPolicy(SPEC, learning_rate=0.05))
    frozen, off = learn(policy.GaussianPolicy(SPEC, learning_rate=0.05, outlier_mads=None))
    assert float(metrics["rewards_extreme"]) == 1 and float(off["rewards_extreme"]) == 0
    assert float(off["grad_norm"]) > 1e6 > 1e3 > float(metrics["grad_norm"])
    # unguarded, Adam's second moment holds the spike: the mean barely moves afterwards
    assert frozen[-1] > 0.9 * frozen[6] and guarded[-1] < 0.5 * guarded[6]


@pytest.mark.parametrize("advantages", ["raw", "normalized", "centered_rank"])
def test_without_extreme_rewards_the_guard_changes_nothing(advantages):
    on = policy.GaussianPolicy(SPEC, advantages=advantages)
    off = policy.GaussianPolicy(SPEC, advantages=advantages, outlier_mads=None)
    s_on, s_off = on.init(jax.random.key(0), jnp.zeros(SPEC.dim)), off.init(jax.random.key(0), jnp.zeros(SPEC.dim))
    for i in range(10):
        psi = on.ask(jax.random.key(i), s_on, 8)
        (s_on, m_on), (s_off, _) = on.tell(s_on, psi, reward_fn(psi)), off.tell(s_off, psi, reward_fn(psi))
        assert float(m_on["rewards_extreme"]) == 0
    for a, b in zip(jax.tree_util.tree_leaves(s_on), jax.tree_util.tree_leaves(s_off)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_centered_ranks_count_but_do_not_clip():
    pol = policy.GaussianPolicy(SPEC, advantages="centered_rank")
    r = jnp.array([-0.80, -0.82, -0.79, -0.81, -1.6e8, -0.83, -0.78, -0.80])
    used, n = pol.guard_rewards(r)
    assert float(n) == 1 and np.array_equal(np.asarray(used), np.asarray(r))
    with pytest.raises(ValueError, match="outlier_mads"):
        policy.GaussianPolicy(SPEC, outlier_mads=0.0)


class PointSim:
    """psi itself as the data (one example per candidate), so the task's reward is a function of psi."""

    spec = SPEC

    def sample(self, key, psi, num):
        return {"psi": jnp.broadcast_to(psi, (num, psi.shape[0]))}


class DivergingTask(TaskBase):
    """Reward -|mean - target|^2, except a candidate whose x exceeds 0.6: its 'MTM diverged' to -1.6e8."""

    data_keys = ("psi",)

    def init(self, key):
        return {"psi": jnp.zeros(SPEC.dim)}

    def train(self, state, data, key, epochs):
        return {"psi": data["psi"][0]}

    def evaluate(self, state, data):
        r = reward_fn(state["psi"])
        return {"reward": jnp.where(state["psi"][0] > 0.6, -1.6e8, r)}


def test_the_driver_warns_naming_the_iteration(tmp_path, caplog):
    pol = policy.GaussianPolicy(SPEC, learning_rate=0.05, variance=0.1)
    config = lts.LTSConfig(num_candidates=8, dataset_size=1, train_strategy="vmap", eval_strategy="vmap")
    step = lts.make_step(config, PointSim(), DivergingTask(), pol)
    state = lts.init_state(config, DivergingTask(), pol, jax.random.key(0), jnp.zeros(SPEC.dim))
    with caplog.at_level(logging.WARNING):
        _, history = run.run_search(step, state, jax.random.key(1), 12, {"psi": jnp.zeros((1, SPEC.dim))},
                                    workdir=tmp_path, spec=SPEC, progress=False, handle_signals=False,
                                    figures=False, tensorboard=False)  # fmt: skip
    flagged = [(h["step"], int(h["rewards_extreme"])) for h in history if h["rewards_extreme"] > 0]
    assert flagged, "the test needs an iteration with a diverged candidate"
    warnings = [r.getMessage() for r in caplog.records if "extreme" in r.getMessage()]
    (first, count), shown = flagged[0], ", ".join(["-1.6e+08"] * flagged[0][1])
    assert f"iteration {first}: {count} of 8 candidate rewards are extreme ({shown} against" in warnings[0]
    assert len(warnings) == len(flagged) + 1
    flagged = [step for step, _ in flagged]
    assert warnings[-1].endswith(", ".join(map(str, flagged)))  # the closing summary names them all
