"""GaussianPolicy's options, each against an analytic or NumPy reference; the probability floor (ParamSpec);
the null test: pure-noise rewards must not move the recommended policy far (benchmarks/search_null_drift.py at
full size)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from lts_jax import params, search
from lts_jax.search import diagnostics, policy

# a learnable Bernoulli pair, a learnable 3-way categorical and a frozen categorical (the mask is exercised)
SPEC = params.ParamSpec([params.bernoulli("b", 2), params.categorical("c", 3), params.categorical("f", 2, frozen=True)])
MASK = SPEC.learnable_mask()


def batch(pol, num=8, seed=0, **state_fields):
    """A state after one tell (EMA baseline 0.3) and a batch psi [num, dim] with rewards [num]."""
    mean = np.random.default_rng(seed).normal(size=SPEC.dim).astype(np.float32)
    state = pol.init(jax.random.key(0), mean)
    state = state.replace(baseline=jnp.float32(0.3), num_tells=jnp.array(1), **state_fields)
    psi = pol.ask(jax.random.key(seed + 1), state, num)
    rewards = jnp.asarray(np.random.default_rng(seed + 2).normal(size=num), jnp.float32)
    return state, psi, rewards


def reference_advantages(rewards, baseline, advantages, ema=0.3):
    r = np.asarray(rewards, np.float64)
    k = r.size
    b = {"ema": ema, "batch_mean": r.mean(), "leave_one_out": (r.sum() - r) / (k - 1)}[baseline]
    a = r - b
    if advantages == "normalized":
        return a / a.std()
    if advantages == "centered_rank":
        return (stats.rankdata(r) - 1) / (k - 1) - 0.5
    return a


@pytest.mark.parametrize(("baseline", "advantages"), list(itertools.product(policy.BASELINES, policy.ADVANTAGES)))
def test_gradient_matches_numpy_for_every_baseline_and_advantage(baseline, advantages):
    """d/d omega = mean_k A_k (psi_k - omega) / sigma^2 and d/d log sigma = mean_k A_k ((psi_k - omega)^2 / sigma^2
    - 1) on the learnable entries (0 on the frozen), A_k from the chosen baseline and advantages."""
    pol = policy.GaussianPolicy(SPEC, learn_variance=True, baseline=baseline, advantages=advantages)
    state, psi, rewards = batch(pol)
    g = pol.reinforce_gradient(state, psi, rewards)
    a = reference_advantages(rewards, baseline, advantages)[:, None]
    mean = np.asarray(state.params["mean"], np.float64)
    var = np.exp(2 * np.asarray(state.params["log_std"], np.float64))
    d = np.asarray(psi, np.float64) - mean
    np.testing.assert_allclose(g["mean"], np.mean(a * d / var, 0) * MASK, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["log_std"], np.mean(a * (d**2 / var - 1), 0) * MASK, rtol=1e-4, atol=1e-6)

    # tell hands exactly this gradient to the optimiser: SGD at rate 1 adds it
    sgd = policy.GaussianPolicy(
        SPEC, learn_variance=True, baseline=baseline, advantages=advantages, optimizer="sgd", learning_rate=1.0
    )
    new, _ = sgd.tell(state.replace(opt_state=sgd.optimizer.init(state.params)), psi, rewards)
    np.testing.assert_allclose(new.params["mean"], state.params["mean"] + g["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.params["log_std"], state.params["log_std"] + g["log_std"], rtol=1e-5, atol=1e-6)


def test_learned_log_sigma_gradient_matches_the_analytic_one():
    """R = -(psi - 3)^2 under N(w, s^2): E[R] = -(w - 3)^2 - s^2, so d E[R] / d log s = -2 s^2 (and d/dw =
    -2 (w - 3)); the estimate agrees within 4 standard errors at K = 200,000."""
    spec = params.ParamSpec([params.bernoulli("x")])
    pol = policy.GaussianPolicy(spec, variance=0.05, learn_variance=True)
    w, s2 = 1.0, 0.05
    state = pol.init(jax.random.key(0), np.array([w], np.float32))
    expected = -((w - 3) ** 2) - s2
    state = state.replace(baseline=jnp.float32(expected), num_tells=jnp.array(1))
    k = 200_000
    psi = pol.ask(jax.random.key(1), state, k)
    rewards = -((psi[:, 0] - 3.0) ** 2)
    g = pol.reinforce_gradient(state, psi, rewards)
    d = np.asarray(psi[:, 0], np.float64) - w
    a = np.asarray(rewards, np.float64) - expected
    for name, analytic, terms in (("log_std", -2 * s2, a * (d**2 / s2 - 1)), ("mean", -2 * (w - 3), a * d / s2)):
        se = terms.std() / np.sqrt(k)
        assert abs(float(g[name][0]) - analytic) < 4 * se, (name, float(g[name][0]), analytic, se)


def test_centered_ranks_match_scipy_and_share_tied_ranks():
    x = jnp.array([3.0, 1.0, 3.0, 2.0, -5.0])
    np.testing.assert_allclose(policy.centered_ranks(x), (stats.rankdata(x) - 1) / 4 - 0.5)
    np.testing.assert_array_equal(policy.centered_ranks(jnp.ones(4)), np.zeros(4))
    np.testing.assert_array_equal(policy.centered_ranks(jnp.ones(1)), np.zeros(1))


@pytest.mark.parametrize("advantages", ["normalized", "centered_rank"])
def test_tied_rewards_give_zero_advantages_not_a_blow_up(advantages):
    """All K rewards equal (or within tie_tolerance): the advantages are 0, the update is finite and does not move
    the mean; a spread just above the tolerance is normalised to unit std (the policy still moves)."""
    pol = policy.GaussianPolicy(SPEC, advantages=advantages, learning_rate=0.5)
    state, psi, _ = batch(pol)
    for rewards in (jnp.full(8, 0.7), 0.7 + 1e-7 * jnp.arange(8.0)):
        adv, tied, _ = pol.compute_advantages(state, rewards)
        assert bool(tied)
        np.testing.assert_array_equal(adv, np.zeros(8))
        new, m = pol.tell(state, psi, rewards)
        np.testing.assert_array_equal(new.params["mean"], state.params["mean"])
        assert float(m["rewards_tied"]) == 1.0 and all(np.isfinite(float(v)) for v in m.values())
    near = 0.7 + 1e-4 * jnp.arange(8.0)
    adv, tied, _ = pol.compute_advantages(state, near)
    assert not bool(tied)
    if advantages == "normalized":
        assert float(jnp.std(adv)) == pytest.approx(1.0, rel=1e-3)
    new, _ = pol.tell(state, psi, near)
    assert np.abs(np.asarray(new.params["mean"] - state.params["mean"])).max() > 0.1


def test_antithetic_sampling_mirrors_pairs_and_needs_an_even_num():
    pol = policy.GaussianPolicy(SPEC, antithetic=True)
    state = pol.init(jax.random.key(0), np.arange(SPEC.dim, dtype=np.float32))
    psi = pol.ask(jax.random.key(1), state, 6)
    np.testing.assert_allclose(psi[:3] + psi[3:], np.broadcast_to(2 * state.params["mean"], (3, SPEC.dim)), atol=1e-6)
    assert np.all(np.asarray(psi[:3] != psi[3:])[:, MASK > 0])
    np.testing.assert_array_equal(psi[:, MASK == 0], np.broadcast_to(state.params["mean"][MASK == 0], (6, 2)))
    with pytest.raises(ValueError, match=r"antithetic sampling needs an even number of candidates \(num\), got 7"):
        pol.ask(jax.random.key(1), state, 7)
    with pytest.raises(ValueError, match="even number"):
        jax.jit(pol.ask, static_argnums=2)(jax.random.key(1), state, 5)


def test_antithetic_gradient_is_the_symmetric_difference_and_unbiased():
    """With mirrored pairs the mean gradient is (1/K) sum_pairs (R+ - R-) (psi+ - omega) / sigma^2 whatever the
    baseline, unbiased like leave-one-out; at the optimum of a quadratic (R+ = R-) it is 0 where independent
    samples give noise. (Away from it mirrored pairs have half the independent directions: no variance gain.)"""
    spec = params.ParamSpec([params.bernoulli("x", 2)])
    target = jnp.array([3.0, -1.0])
    reward = lambda psi: -jnp.sum((psi - target) ** 2, -1)
    anti = policy.GaussianPolicy(spec, antithetic=True, baseline="batch_mean")
    state = anti.init(jax.random.key(0), jnp.zeros(2))
    psi = anti.ask(jax.random.key(1), state, 8)
    r = np.asarray(reward(psi), np.float64)
    ref = np.sum((r[:4] - r[4:])[:, None] * np.asarray(psi[:4], np.float64), 0) / 8 / 0.05
    np.testing.assert_allclose(anti.reinforce_gradient(state, psi, reward(psi))["mean"], ref, rtol=1e-4)

    def estimates(pol, at=state):
        def one(key):
            x = pol.ask(key, at, 8)
            return pol.reinforce_gradient(at, x, reward(x))["mean"]

        return np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(2), 2000)))

    plain = estimates(policy.GaussianPolicy(spec, baseline="leave_one_out"))
    batch_mean = estimates(policy.GaussianPolicy(spec, baseline="batch_mean"))
    mirrored = estimates(anti)
    analytic = -2 * (0.0 - np.asarray(target))
    # unbiased: mirrored pairs (any baseline) and leave-one-out; the batch mean (which holds R_k) scales by (K-1)/K
    for g, scale in ((plain, 1.0), (mirrored, 1.0), (batch_mean, 7 / 8)):
        assert np.all(np.abs(g.mean(0) - scale * analytic) < 4 * g.std(0) / np.sqrt(len(g))), (g.mean(0), scale)
    optimum = anti.init(jax.random.key(0), target)
    at_plain = estimates(policy.GaussianPolicy(spec, baseline="leave_one_out"), optimum)
    at_mirrored = estimates(anti, optimum)
    assert np.all(at_mirrored.var(0) < 1e-3 * at_plain.var(0)), (at_mirrored.var(0), at_plain.var(0))


def test_tie_std_growth_widens_sigma_on_a_plateau_and_narrows_back():
    """Tied batches grow sigma by the factor up to max_std; untied ones shrink it back to the policy's own sigma;
    ask samples and log_prob scores with the widened sigma; frozen entries stay put."""
    pol = policy.GaussianPolicy(SPEC, variance=0.05, tie_std_growth=2.0, max_std=0.9)
    std0 = np.sqrt(0.05)
    state = pol.init(jax.random.key(0), np.zeros(SPEC.dim, np.float32))
    psi = pol.ask(jax.random.key(1), state, 8)
    expected = [2 * std0, 4 * std0, 0.9, 0.9]
    for want in expected:
        state, m = pol.tell(state, psi, jnp.zeros(8))
        np.testing.assert_allclose(np.exp(pol.sampling_log_std(state))[MASK > 0], want, rtol=1e-5)
        assert float(m["policy_std_mean"]) == pytest.approx(want, rel=1e-5)
    wide = pol.ask(jax.random.key(2), state, 20_000)
    assert np.std(np.asarray(wide[:, 0])) == pytest.approx(0.9, rel=0.03)
    np.testing.assert_array_equal(wide[:, MASK == 0], np.zeros((20_000, 2)))
    ref = stats.multivariate_normal(np.zeros(3), 0.81 * np.eye(3)).logpdf(np.asarray(wide[:5, :5])[:, [0, 1, 2]])
    ref += stats.norm(0, 0.9).logpdf(np.asarray(wide[:5, 3:5])).sum(-1)
    np.testing.assert_allclose(pol.log_prob(state, wide[:5]), ref, rtol=1e-5)
    for want in (0.9 / 2, 0.9 / 4, std0, std0):
        state, _ = pol.tell(state, psi, jnp.arange(8.0))
        np.testing.assert_allclose(np.exp(pol.sampling_log_std(state))[MASK > 0], want, rtol=1e-5)


def numpy_floor(x, floor):
    """The KKT form of the least-KL projection: p' = max(floor, c p), c by bisection."""
    p = np.exp(x - x.max())
    p /= p.sum()
    lo, hi = 0.0, 1.0
    for _ in range(100):
        c = 0.5 * (lo + hi)
        lo, hi = (lo, c) if np.maximum(floor, c * p).sum() > 1 else (c, hi)
    return np.maximum(floor, lo * p)


@pytest.mark.parametrize("floor", [0.01, 0.1, 0.3])
def test_floor_probabilities_matches_numpy(floor):
    spec = params.ParamSpec(
        [
            params.categorical("c", 3),
            params.bernoulli("b", 2),
            params.categorical("f", 3, frozen=True),
            params.gaussian("g", 1),
        ]
    )
    x = (np.random.default_rng(0).normal(size=(200, spec.dim)) * 4).astype(np.float32)
    out = np.asarray(jax.jit(lambda p: spec.floor_probabilities(p, floor))(x))
    probs = np.asarray(spec.distributions(out)["c"]["probs"], np.float64)
    ref = np.stack([numpy_floor(row[:3].astype(np.float64), floor) for row in x])
    np.testing.assert_allclose(probs, ref, atol=2e-6)
    assert probs.min() >= floor * (1 - 1e-5)
    # the categories left above the floor keep their logits; only the floored ones change
    kept = ref > floor + 1e-6
    np.testing.assert_array_equal(out[:, :3][kept], x[:, :3][kept])
    # Bernoulli: the logit clipped to [logit(floor), logit(1 - floor)]
    bound = np.log(floor / (1 - floor))
    np.testing.assert_allclose(out[:, 3:5], np.clip(x[:, 3:5], bound, -bound), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 5:], x[:, 5:])  # frozen and Gaussian blocks untouched
    inside = spec.floor_probabilities(out, floor)  # already above the floor: the identity, bit for bit
    np.testing.assert_array_equal(np.asarray(spec.floor_probabilities(x[:1] * 0, floor)), x[:1] * 0)
    assert np.isfinite(np.asarray(inside)).all()
    np.testing.assert_array_equal(np.asarray(spec.floor_probabilities(x, 0.0)), x)


def test_floor_range_is_checked_per_block():
    spec = params.ParamSpec([params.categorical("c", 5), params.categorical("big", 20, frozen=True)])
    assert spec.check_floor(0.19) == 0.19
    with pytest.raises(ValueError, match=r"floor 0.2 is out of range for block 'c' \(categorical, size 5\)"):
        spec.check_floor(0.2)
    with pytest.raises(ValueError, match="accepted: 0 <= floor < 0.5"):
        params.ParamSpec([params.bernoulli("b")]).check_floor(-0.1)
    with pytest.raises(ValueError, match="out of range for block 'c'"):
        policy.GaussianPolicy(spec, prob_floor=0.25)


def test_prob_floor_keeps_every_probability_through_updates():
    """A reward that pushes one category to certainty: with the floor no probability of the learnable blocks
    goes below it; the frozen block keeps its (tiny) probability."""
    spec = params.ParamSpec(
        [params.categorical("c", 4), params.bernoulli("b"), params.categorical("f", 2, frozen=True)]
    )
    pol = policy.GaussianPolicy(spec, learning_rate=0.5, prob_floor=0.05)
    psi0 = jnp.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -12.0])

    def body(state, key):
        psi = pol.ask(key, state, 8)
        return pol.tell(state, psi, psi[:, 0] - psi[:, 1:4].sum(-1) + psi[:, 4])

    state, _ = jax.lax.scan(body, pol.init(jax.random.key(0), psi0), jax.random.split(jax.random.key(1), 100))
    d = spec.distributions(pol.center(state))
    probs = np.asarray(d["c"]["probs"])
    assert probs[0] > 0.8 and probs.min() >= 0.05 * (1 - 1e-5), probs
    assert probs.min() == pytest.approx(0.05, rel=1e-4)  # pushed down and held at the floor
    assert float(d["b"]["probs"][0]) == pytest.approx(0.95, abs=1e-5)
    np.testing.assert_array_equal(pol.center(state)[5:], psi0[5:])


def test_bad_option_values_name_the_option():
    for kwargs, message in (
        ({"baseline": "median"}, r"unknown baseline 'median'; choose one of \['ema', 'batch_mean', 'leave_one_out'\]"),
        ({"advantages": "zscore"}, "unknown advantages 'zscore'"),
        ({"tie_tolerance": -1.0}, "tie_tolerance must be >= 0"),
        ({"tie_std_growth": 0.5}, r"tie_std_growth must be >= 1 \(1 = off\)"),
        ({"max_std": 0.0}, "max_std must be > 0"),
        ({"prob_floor": 0.5}, "probability floor 0.5 is out of range for block 'b'"),
    ):
        with pytest.raises(ValueError, match=message):
            policy.GaussianPolicy(SPEC, **kwargs)
    pol = policy.GaussianPolicy(SPEC, baseline="leave_one_out")
    state = pol.init(jax.random.key(0), np.zeros(SPEC.dim, np.float32))
    with pytest.raises(ValueError, match="leave_one_out' needs >= 2 candidates, got 1"):
        pol.tell(state, jnp.zeros((1, SPEC.dim)), jnp.zeros(1))


# The null test (issue 13.4), small: car-type-like 5-way and weather-like 4-way categoricals at psi_real-like
# probabilities, a Bernoulli, a frozen block; K = 8, 300 iterations, 4 seeds, rewards N(0, 0.01^2).
NULL_SPEC = params.ParamSpec(
    [
        params.categorical("car_type", 5),
        params.bernoulli("car_presence"),
        params.categorical("weather", 4),
        params.gaussian("jitter", 1, frozen=True),
    ]
)
NULL_START = NULL_SPEC.from_natural(
    {"car_type": [0.40, 0.25, 0.15, 0.12, 0.08], "car_presence": 0.6, "weather": [0.40, 0.30, 0.15, 0.15]}
)


def null_report(**options):
    pol = search.make("lts", NULL_SPEC, **options)
    centers, metrics = diagnostics.trajectories(
        pol, NULL_START, diagnostics.noise_reward(0.01), num_candidates=8, iterations=300, seeds=4
    )
    return diagnostics.drift_report(NULL_SPEC, centers), metrics


@pytest.mark.slow
def test_null_reward_recommended_policy_does_not_drift_or_collapse():
    """Pure noise: the recommended options (Adam 0.02, centred ranks, floor) keep the mean |logit change| well
    below the paper's configuration (Adam 0.2, raw advantages, EMA baseline; 2.7 at 300 iterations in the
    benchmark), and no category of any seed goes below 1%, with the floor and without it."""
    recommended, metrics = null_report(**policy.RECOMMENDED)
    paper, _ = null_report(learning_rate=0.2)
    no_floor, _ = null_report(**{**policy.RECOMMENDED, "prob_floor": 0.0})
    assert recommended["drift"] < 0.4, recommended
    assert paper["drift"] > 4 * recommended["drift"], (paper, recommended)
    for report in (recommended, no_floor):
        assert report["collapsed_seeds"] == 0 and report["min_prob"] > 0.02, report
    assert float(metrics["rewards_tied"].max()) == 0.0  # continuous noise never ties: sigma stays put
    np.testing.assert_allclose(metrics["policy_std_mean"], np.sqrt(0.05), rtol=1e-5)
