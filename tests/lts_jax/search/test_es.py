"""The evosax adapters: the same iterations as evosax's own ask/tell loop, frozen blocks masked out, a state that
does not depend on the population size, tied batches, checkpoints, errors. (Learning on the toy, loop vs scan and
exact resume: test_base.py, with every strategy.)"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from lts_jax import params, search
from lts_jax.run import checkpoint
from lts_jax.search import es

evosax_algorithms = pytest.importorskip("evosax.algorithms")

SPEC = params.ParamSpec([params.bernoulli("a", 2), params.categorical("f", 2, frozen=True), params.gaussian("g", 1)])
LEARNABLE = np.array([0, 1, 4, 5])
PSI0 = jnp.array([0.5, -0.5, 1.0, 2.0, 0.0, 0.0])
TARGET = jnp.array([1.0, -1.0, 0.5, -0.5])


def reward(psi):
    return -jnp.sum((psi[..., LEARNABLE] - TARGET) ** 2, -1)


@struct.dataclass
class _Saved:
    """A run's checkpoint: the strategy's state and the iterations done."""

    search: object
    iteration: jax.Array


def evosax_reference(name, keys, num=8):
    """evosax's own loop on the learnable entries, configured as the adapter documents its defaults."""
    std = np.sqrt(0.05)
    cls = getattr(evosax_algorithms, es.ALGORITHMS[name])
    solution = jnp.zeros(4)
    kwargs = {
        "openes": {"optimizer": optax.adam(0.05), "std_schedule": optax.constant_schedule(std)},
        "snes": {"optimizer": optax.sgd(1.0)},
        "cma_es": {},
        "pgpe": {"optimizer": optax.adam(0.05)},
    }[name]
    algo = cls(population_size=num, solution=solution, **kwargs)
    p = algo.default_params
    if hasattr(p, "std_init"):
        p = p.replace(std_init=jnp.float32(std))

    def body(state, key):
        x, state = algo.ask(key, state, p)
        full = jnp.broadcast_to(PSI0, (num, 6)).at[:, LEARNABLE].set(x)
        state, _ = algo.tell(jax.random.key(0), x, -reward(full), state, p)
        return state, state.mean

    return np.asarray(jax.lax.scan(body, algo.init(jax.random.key(0), PSI0[LEARNABLE], p), keys)[1])


@pytest.mark.parametrize("name", list(es.ALGORITHMS))
def test_adapter_runs_evosax_iterations_exactly(name):
    """The adapter's center after each tell equals evosax's mean in evosax's own loop with the same keys (CMA-ES
    included, whose ask updates the state); the frozen entries keep psi0."""
    keys = jax.random.split(jax.random.key(1), 15)
    strategy = search.make(name, SPEC)

    @jax.jit
    def step(state, key):
        psi = strategy.ask(key, state, 8)
        return strategy.tell(state, psi, reward(psi))

    state = strategy.init(jax.random.key(0), PSI0)
    centers = []
    for key in keys:
        state, _ = step(state, key)
        centers.append(strategy.center(state))
    centers = np.stack(centers)
    np.testing.assert_allclose(centers[:, LEARNABLE], evosax_reference(name, keys), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(centers[:, [2, 3]], np.broadcast_to(PSI0[2:4], (15, 2)))
    psi = strategy.ask(jax.random.key(3), state, 8)
    np.testing.assert_array_equal(psi[:, [2, 3]], np.broadcast_to(PSI0[2:4], (8, 2)))
    assert state.es.mean.shape == (4,)  # the ES lives on the learnable entries only


@pytest.mark.parametrize("name", list(es.ALGORITHMS))
def test_initial_state_does_not_depend_on_the_population_size(name):
    strategy = es.EvolutionStrategy(SPEC, name)
    states = []
    for num in (4, 6, 16):
        algo = strategy._algorithm(num)
        states.append(algo.init(jax.random.key(0), PSI0[LEARNABLE], strategy._params(algo)))
    for other in states[1:]:
        assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(states[0])
        for a, b in zip(jax.tree_util.tree_leaves(other), jax.tree_util.tree_leaves(states[0]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_different_population_sizes_share_one_strategy_object():
    strategy = search.make("snes", SPEC)
    state = strategy.init(jax.random.key(0), PSI0)
    for num in (4, 10):
        psi = strategy.ask(jax.random.key(num), state, num)
        state, _ = jax.jit(strategy.tell)(state, psi, reward(psi))
        assert psi.shape == (num, 6)
    assert np.isfinite(np.asarray(strategy.center(state))).all()


@pytest.mark.parametrize("name", list(es.ALGORITHMS))
def test_tied_rewards_leave_the_state_unchanged(name):
    """A flat batch teaches nothing; evosax's CMA-ES alone would shrink sigma towards 0 on it (NaN after ~700)."""
    strategy = search.make(name, SPEC)
    state = strategy.init(jax.random.key(0), PSI0)

    def body(s, key):
        return strategy.tell(s, strategy.ask(key, s, 8), jnp.full(8, 0.3))

    final, metrics = jax.lax.scan(body, state, jax.random.split(jax.random.key(1), 50))
    np.testing.assert_array_equal(metrics["rewards_tied"], np.ones(50))
    for a, b in zip(jax.tree_util.tree_leaves(final.es), jax.tree_util.tree_leaves(state.es), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    untied = search.make(name, SPEC, tie_tolerance=None)
    moved, _ = untied.tell(state, untied.ask(jax.random.key(1), state, 8), jnp.full(8, 0.3))
    assert np.isfinite(np.asarray(untied.center(moved))).all()


@pytest.mark.parametrize("name", list(es.ALGORITHMS))
def test_checkpointed_state_gives_identical_next_asks(name, tmp_path):
    strategy = search.make(name, SPEC)
    state = strategy.init(jax.random.key(0), PSI0)
    for i in range(3):
        psi = strategy.ask(jax.random.key(i), state, 8)
        state, _ = strategy.tell(state, psi, reward(psi))
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(_Saved(search=state, iteration=jnp.asarray(3)))
        restored, _ = ckpt.restore(_Saved(search=strategy.init(jax.random.key(5), PSI0), iteration=jnp.asarray(0)), 3)
    key = jax.random.key(9)
    np.testing.assert_array_equal(strategy.ask(key, restored.search, 8), strategy.ask(key, state, 8))


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown evolution strategy 'nes'; choose one of \['openes', 'snes'"):
        es.EvolutionStrategy(SPEC, "nes")
    with pytest.raises(ValueError, match=r"cma_es: unknown options \['learning_rate'\]; its options are"):
        es.EvolutionStrategy(SPEC, "cma_es", learning_rate=0.1)
    with pytest.raises(ValueError, match="variance must be > 0"):
        es.EvolutionStrategy(SPEC, "snes", variance=0.0)
    with pytest.raises(ValueError, match=r"unknown es_params \['lr'\]; evosax's Params has \["):
        es.EvolutionStrategy(SPEC, "pgpe", es_params={"lr": 0.1})
    with pytest.raises(ValueError, match="unknown optimizer"):
        es.EvolutionStrategy(SPEC, "openes", optimizer="lbfgs")
    frozen = params.ParamSpec([params.categorical("f", 2, frozen=True)])
    with pytest.raises(ValueError, match="every block of the spec is frozen"):
        es.EvolutionStrategy(frozen, "cma_es")
    state = search.make("pgpe", SPEC).init(jax.random.key(0), PSI0)
    for name in ("pgpe", "openes"):
        with pytest.raises(ValueError, match=rf"{name} needs an even number of candidates \(num\), got 7"):
            search.make(name, SPEC).ask(jax.random.key(0), state, 7)
    plain = search.make("openes", SPEC, antithetic=False)
    psi = plain.ask(jax.random.key(0), plain.init(jax.random.key(0), PSI0), 6)
    assert not np.allclose(psi[:3, LEARNABLE] + psi[3:, LEARNABLE], 2 * PSI0[LEARNABLE])  # not mirrored
    cma = search.make("cma_es", SPEC)
    assert cma.ask(jax.random.key(0), cma.init(jax.random.key(0), PSI0), 7).shape == (7, 6)  # any num
    tuned = search.make("pgpe", SPEC, es_params={"std_lr": 0.3})
    assert float(tuned._params(tuned._algorithm(8)).std_lr) == pytest.approx(0.3)


def test_missing_evosax_is_named_and_the_rest_works(monkeypatch):
    monkeypatch.setitem(sys.modules, "evosax", None)
    monkeypatch.setitem(sys.modules, "evosax.algorithms", None)
    with pytest.raises(ImportError, match=r"need evosax: pip install 'evosax>=0.3.1,<0.4'"):
        search.make("cma_es", SPEC)
    assert search.make("lts", SPEC).init(jax.random.key(0), PSI0).params["mean"].shape == (6,)
