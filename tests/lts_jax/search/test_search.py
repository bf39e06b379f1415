"""Baselines behind init / ask / tell."""

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax import params, search


def spec():
    return params.ParamSpec([params.bernoulli("a", 2, box=(-2.0, 2.0)), params.categorical("f", 2, frozen=True)])


def test_fixed_always_proposes_its_point():
    s = search.FixedSearch(spec())
    psi0 = jnp.array([0.5, -0.5, 1.0, 2.0])
    st = s.init(jax.random.key(0), psi0)
    psi = s.ask(jax.random.key(1), st, 3)
    np.testing.assert_array_equal(psi, np.broadcast_to(psi0, (3, 4)))
    st, m = s.tell(st, psi, jnp.array([0.1, 0.3, 0.2]))
    assert float(m["best_reward"]) == np.float32(0.3)
    np.testing.assert_array_equal(s.center(st), psi0)


def test_random_params_in_box_and_keeps_best():
    s = search.RandomParams(spec())
    psi0 = jnp.array([0.0, 0.0, 1.0, 2.0])
    st = s.init(jax.random.key(0), psi0)
    psi = s.ask(jax.random.key(1), st, 100)
    assert np.all(np.abs(psi[:, :2]) <= 2.0)
    np.testing.assert_array_equal(psi[:, 2:], np.broadcast_to(psi0[2:], (100, 2)))
    assert len({tuple(np.asarray(p)) for p in psi}) == 100  # fresh every candidate
    rewards = -jnp.sum(psi[:, :2] ** 2, -1)
    st, m = s.tell(st, psi, rewards)
    np.testing.assert_array_equal(s.center(st), psi[jnp.argmax(rewards)])
    # a worse batch does not replace the best
    st2, _ = s.tell(st, psi, rewards - 100)
    np.testing.assert_array_equal(s.center(st2), s.center(st))


def test_random_search_climbs():
    sp = params.ParamSpec([params.bernoulli("a", 2)])
    s = search.RandomSearch(sp, variance=0.05)
    st = s.init(jax.random.key(0), jnp.zeros(2))
    target = jnp.array([1.0, -1.0])
    for i in range(60):
        psi = s.ask(jax.random.fold_in(jax.random.key(1), i), st, 8)
        st, m = s.tell(st, psi, -jnp.sum((psi - target) ** 2, -1))
    assert float(jnp.sum((s.center(st) - target) ** 2)) < 0.1
    assert float(m["best_reward"]) > -0.1
