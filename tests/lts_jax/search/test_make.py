"""search.make: every strategy by name, its options and defaults, errors that name what is wrong."""

import jax
import jax.numpy as jnp
import pytest

from lts_jax import params, search

SPEC = params.ParamSpec([params.bernoulli("a", 2), params.categorical("c", 3)])


@pytest.mark.parametrize("name", search.NAMES)
def test_every_name_builds_a_working_strategy(name):
    strategy = search.make(name, SPEC)
    assert strategy.name == name and strategy.spec is SPEC
    state = strategy.init(jax.random.key(0), jnp.zeros(SPEC.dim))
    psi = strategy.ask(jax.random.key(1), state, 4)
    state, metrics = strategy.tell(state, psi, -jnp.sum(psi**2, -1))
    assert strategy.center(state).shape == (SPEC.dim,) and "best_reward" in metrics


def test_names_and_options():
    assert search.NAMES == ("lts", "fixed", "random_params", "random_search", "openes", "snes", "cma_es", "pgpe")
    assert search.options("fixed") == {} and search.options("random_params") == {}
    assert search.options("random_search") == {"variance": 0.05}
    lts = search.options("lts")
    assert lts["learning_rate"] == 0.05 and lts["advantages"] == "raw" and lts["baseline"] == "ema"
    assert set(search.policy.RECOMMENDED) <= set(lts)
    assert search.options("cma_es") == {"variance": 0.05, "tie_tolerance": 1e-6, "es_params": None}
    assert search.options("openes")["antithetic"] is True
    policy = search.make("lts", SPEC, **search.policy.RECOMMENDED)
    assert policy.advantages == "centered_rank" and policy.prob_floor == 0.01
    assert search.make("random_search", SPEC, variance=0.2).variance == 0.2


def test_unknown_names_and_options_are_named():
    with pytest.raises(ValueError, match=r"unknown search strategy 'reinforce'; choose one of \['lts', 'fixed'"):
        search.make("reinforce", SPEC)
    with pytest.raises(ValueError, match=r"search strategy 'fixed' takes no option 'variance'; its options are none"):
        search.make("fixed", SPEC, variance=0.1)
    with pytest.raises(ValueError, match=r"'lts' takes no option 'lr', 'sigma'; its options are \['advantages'"):
        search.make("lts", SPEC, lr=0.1, sigma=1.0)
    with pytest.raises(ValueError, match=r"'snes' takes no option 'antithetic'"):
        search.make("snes", SPEC, antithetic=True)
    with pytest.raises(ValueError, match="policy variance must be > 0"):
        search.make("lts", SPEC, variance=0.0)
