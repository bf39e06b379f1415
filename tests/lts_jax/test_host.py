"""The host bridge: one host call per iteration for all K candidates (and all K x M scenes of a host renderer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import lts, params
from lts_jax.host import HostSimulator, host_call, host_renderer
from lts_jax.search import policy
from lts_jax.simulator import Field, SceneSimulator, SceneSimulatorBase, Simulator
from simulators import gmm


def numpy_gaussian_sampler(calls):
    def sample_fn(seeds, psi, num):
        calls.append(psi.shape)
        out = np.stack([np.random.default_rng(int(s)).normal(p[0], 1.0, size=num) for s, p in zip(seeds, psi)])
        return {"x": out.astype(np.float32)}

    return sample_fn


def test_host_simulator_one_call_for_all_k():
    calls = []
    spec = params.ParamSpec([params.bernoulli("m")])
    sim = HostSimulator(spec, numpy_gaussian_sampler(calls), {"x": Field((), np.float32)})
    assert isinstance(sim, Simulator)
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


class HostRenderedGMM(SceneSimulatorBase):
    """The GMM toy in two stages: its points are the 'scenes' (pure JAX); a NumPy 'renderer' on the host moves
    them and also returns an output nobody declared (dropped by the bridge)."""

    def __init__(self):
        self.gmm = gmm.GMMSimulator(1)
        self.spec = self.gmm.spec
        self.outputs = {"x": Field((2,), np.float32), "y": Field((), np.int32)}
        self.calls = []  # scenes per host call
        self.render = host_renderer(self.render_host, self.outputs)

    def sample_scenes(self, key, psi, num):
        return self.gmm.sample(key, psi, num)

    def render_host(self, scenes):
        self.calls.append(scenes["x"].shape)
        return {"x": 0.5 * scenes["x"] + 1.0, "y": scenes["y"], "undeclared": scenes["y"] * 2}


@pytest.mark.slow
def test_host_renderer_one_call_for_all_scenes_in_both_steps(logistic_task):
    """make_step (one jit, the renderer through pure_callback) and make_split_step (compiled scene sampler,
    then render_batches) run the same host-rendered simulator: equal metrics, one host call per iteration
    with all K x M scenes in candidate-major order."""
    sim = HostRenderedGMM()
    assert isinstance(sim, SceneSimulator)
    K, M = 3, 4
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=K, dataset_size=M, mtm_epochs=2, retain_mtm=True)
    val = jax.tree_util.tree_map(jnp.asarray, gmm.sample_real(1, 32))
    fused = lts.make_step(config, sim, logistic_task, pol)
    split = lts.make_split_step(config, sim, logistic_task, pol)
    s_f = s_s = lts.init_state(config, logistic_task, pol, jax.random.key(0), sim.spec.zeros())
    for i in range(2):
        key = jax.random.fold_in(jax.random.key(1), i)
        s_f, m_f = jax.block_until_ready(fused(s_f, key, val))
        assert sim.calls == [(K * M, 2)] * (2 * i + 1)
        s_s, m_s = jax.block_until_ready(split(s_s, key, val))
        assert sim.calls == [(K * M, 2)] * (2 * i + 2)
        assert set(m_f) == set(m_s)
        for k in m_f:
            np.testing.assert_allclose(np.asarray(m_f[k]), np.asarray(m_s[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    # What the host rendered belongs to each candidate's own scenes.
    keys = jax.random.split(jax.random.key(2), K)
    psi = jnp.stack([sim.spec.zeros() + i for i in range(K)])
    out = jax.jit(jax.vmap(lambda k, p: sim.sample(k, p, M)))(keys, psi)
    scenes = jax.jit(jax.vmap(lambda k, p: sim.sample_scenes(k, p, M)))(keys, psi)
    assert set(out) == {"x", "y"}
    np.testing.assert_allclose(out["x"], 0.5 * np.asarray(scenes["x"]) + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out["y"], scenes["y"])


def test_host_renderer_checks_the_declared_outputs():
    outputs = {"x": Field((3,), np.float32)}
    wrong = host_renderer(lambda scenes: {"x": np.zeros((len(scenes["s"]), 4), np.float32)}, outputs)
    with pytest.raises(Exception, match="'x'.*declared"):
        jax.block_until_ready(jax.jit(wrong)({"s": jnp.zeros((2,))}))
    missing = host_renderer(lambda scenes: {}, outputs)
    with pytest.raises(Exception, match="nothing for 'x'"):
        jax.block_until_ready(jax.jit(missing)({"s": jnp.zeros((2,))}))
