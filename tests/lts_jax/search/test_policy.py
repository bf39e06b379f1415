"""The Gaussian policy: log-prob, REINFORCE, EMA baseline, learning (its options: test_policy_options.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lts_jax import params
from lts_jax.search import policy


def spec1(dim=1):
    return params.ParamSpec([params.gaussian("g", dim)])  # width 2 * dim


def test_log_prob_matches_scipy():
    spec = params.ParamSpec([params.categorical("c", 4), params.bernoulli("b", 2)])
    pol = policy.GaussianPolicy(spec, variance=0.3)
    mean = np.random.default_rng(0).normal(size=spec.dim).astype(np.float32)
    state = pol.init(jax.random.key(0), mean)
    psi = np.random.default_rng(1).normal(size=(7, spec.dim)).astype(np.float32)
    ref = stats.multivariate_normal(mean, 0.3 * np.eye(spec.dim)).logpdf(psi)
    np.testing.assert_allclose(pol.log_prob(state, psi), ref, rtol=1e-5)


def test_frozen_blocks_never_move():
    spec = params.ParamSpec([params.bernoulli("a"), params.categorical("f", 3, frozen=True)])
    pol = policy.GaussianPolicy(spec, learning_rate=0.5)
    psi0 = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    state = pol.init(jax.random.key(0), psi0)
    psi = pol.ask(jax.random.key(1), state, 16)
    np.testing.assert_array_equal(psi[:, 1:], np.broadcast_to(psi0[1:], (16, 3)))
    state, _ = pol.tell(state, psi, jnp.arange(16.0))
    state, _ = pol.tell(state, psi, -jnp.arange(16.0))
    np.testing.assert_array_equal(state.params["mean"][1:], psi0[1:])


def test_ema_baseline():
    spec = params.ParamSpec([params.bernoulli("a")])
    pol = policy.GaussianPolicy(spec, baseline_decay=0.8)
    state = pol.init(jax.random.key(0), np.zeros(1, np.float32))
    psi = jnp.zeros((4, 1))
    rewards = [jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([0.0, 0.0, 0.0, 4.0]), jnp.array([2.0, 2.0, 2.0, 2.0])]
    b = None
    for r in rewards:
        state, m = pol.tell(state, psi, r)
        expected_used = float(np.mean(r)) if b is None else b
        assert float(m["baseline"]) == pytest.approx(expected_used)
        b = 0.8 * expected_used + 0.2 * float(np.mean(r))
        assert float(state.baseline) == pytest.approx(b)


def test_reinforce_gradient_matches_analytic_on_quadratic_bandit():
    # R(psi) = -(psi - 3)^2 ; E[R] under N(w, s^2) = -(w - 3)^2 - s^2 ; dE/dw = -2 (w - 3).
    spec = params.ParamSpec([params.bernoulli("x")])
    pol = policy.GaussianPolicy(spec, variance=0.05)
    w = 1.0
    state = pol.init(jax.random.key(0), np.array([w], np.float32))
    state = state.replace(baseline=jnp.asarray(-((w - 3) ** 2) - 0.05), num_tells=jnp.array(1))
    K = 200_000
    psi = pol.ask(jax.random.key(1), state, K)
    rewards = -((psi[:, 0] - 3.0) ** 2)
    g = float(pol.reinforce_gradient(state, psi, rewards)["mean"][0])
    analytic = -2 * (w - 3)
    # standard error of the estimator, from the per-sample terms
    score = (psi[:, 0] - w) / 0.05
    terms = np.asarray(score * (rewards - state.baseline))
    se = terms.std() / np.sqrt(K)
    assert abs(g - analytic) < 4 * se, (g, analytic, se)


def test_tell_ascends_reward():
    spec = params.ParamSpec([params.bernoulli("x", 3)])
    pol = policy.GaussianPolicy(spec, learning_rate=0.1, optimizer="sgd")
    state = pol.init(jax.random.key(0), np.zeros(3, np.float32))
    psi = pol.ask(jax.random.key(1), state, 64)
    state2, m = pol.tell(state, psi, psi.sum(-1))  # reward grows with every coordinate
    assert np.all(np.asarray(state2.params["mean"]) > 0)
    assert m["grad_norm"] > 0


@pytest.mark.parametrize("learn_variance", [False, True])
def test_policy_learns_known_optimum(learn_variance):
    """The mean reaches the optimum of a 2-D quadratic bandit, inside a jitted lax.scan."""
    spec = params.ParamSpec([params.gaussian("g", 1)])  # 2 entries
    target = jnp.array([1.5, -0.5])
    pol = policy.GaussianPolicy(spec, learning_rate=0.05, learn_variance=learn_variance, variance=0.1)

    def body(state, key):
        psi = pol.ask(key, state, 16)
        rewards = -jnp.sum((psi - target) ** 2, axis=-1)
        return pol.tell(state, psi, rewards)

    state = pol.init(jax.random.key(0), jnp.zeros(2))
    state, metrics = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(1), 400)))(state)
    np.testing.assert_allclose(state.params["mean"], target, atol=0.15)
    assert metrics["reward_mean"][-20:].mean() > metrics["reward_mean"][:20].mean()
    if learn_variance:
        assert float(jnp.exp(state.params["log_std"]).mean()) < np.sqrt(0.1)  # it narrows near the optimum


def test_scan_equals_python_loop():
    spec = params.ParamSpec([params.categorical("c", 3)])
    pol = policy.GaussianPolicy(spec)

    def body(state, key):
        psi = pol.ask(key, state, 4)
        return pol.tell(state, psi, -jnp.sum(psi**2, -1))

    keys = jax.random.split(jax.random.key(3), 5)
    s0 = pol.init(jax.random.key(0), jnp.ones(3))
    s_scan, _ = jax.lax.scan(body, s0, keys)
    s_loop = s0
    for k in keys:
        s_loop, _ = body(s_loop, k)
    np.testing.assert_allclose(s_scan.params["mean"], s_loop.params["mean"], rtol=1e-5, atol=1e-6)


def test_bad_configuration():
    spec = params.ParamSpec([params.bernoulli("x")])
    with pytest.raises(ValueError, match="variance must be > 0"):
        policy.GaussianPolicy(spec, variance=-1)
    with pytest.raises(ValueError, match="baseline_decay"):
        policy.GaussianPolicy(spec, baseline_decay=1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        policy.GaussianPolicy(spec, optimizer="lbfgs")
