"""The host bridge: one host call per iteration for all K candidates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import params
from lts_jax.simulator import HostSimulator, host_call


def numpy_gaussian_sampler(calls):
    def sample_fn(seeds, psi, num):
        calls.append(psi.shape)
        out = np.stack([np.random.default_rng(int(s)).normal(p[0], 1.0, size=num) for s, p in zip(seeds, psi)])
        return {"x": out.astype(np.float32)}

    return sample_fn


def test_host_simulator_one_call_for_all_k():
    calls = []
    spec = params.ParamSpec([params.bernoulli("m")])
    sim = HostSimulator(spec, numpy_gaussian_sampler(calls), {"x": ((), np.float32)})
    keys = jax.random.split(jax.random.key(0), 5)
    psi = jnp.arange(5.0)[:, None] * 10
    out = jax.jit(jax.vmap(sim.sample, in_axes=(0, 0, None)), static_argnums=2)(keys, psi, 7)
    assert out["x"].shape == (5, 7)
    assert calls == [(5, 1)]  # one host call with all K = 5 candidates
    np.testing.assert_allclose(out["x"].mean(axis=1), np.arange(5) * 10, atol=2.0)
    # unbatched call: B = 1
    single = jax.jit(sim.sample, static_argnums=2)(keys[0], psi[0], 3)
    assert single["x"].shape == (3,) and calls[-1] == (1, 1)


def test_host_call_broadcasts_shared_arguments_and_nests():
    seen = []

    def fn(a, b):
        seen.append((a.shape, b.shape))
        return a.sum(-1) * b[:, 0]

    def g(a, b):
        return host_call(fn, jax.ShapeDtypeStruct((), jnp.float32), a, b)

    a = jnp.ones((2, 3, 4))
    out = jax.jit(jax.vmap(jax.vmap(g, in_axes=(0, None)), in_axes=(0, None)))(a, jnp.array([2.0, 9.0]))
    np.testing.assert_allclose(out, np.full((2, 3), 8.0))
    assert seen == [((6, 4), (6, 2))]


def test_host_call_checks_declared_shapes():
    def fn(a):
        return np.zeros((a.shape[0], 5), np.float32)

    with pytest.raises(Exception, match="expected"):
        jax.block_until_ready(jax.jit(lambda a: host_call(fn, jax.ShapeDtypeStruct((4,), jnp.float32), a))(jnp.ones(2)))
