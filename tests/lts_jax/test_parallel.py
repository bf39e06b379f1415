"""The candidate executor: every strategy computes what ``loop`` computes, compiles once, and honours tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import parallel
from lts_jax.tasks import TaskBase
from lts_jax.tasks.counting import CountingTask

K, M, H, W = 4, 12, 8, 8
# bf16 tolerance. Strategies differ only in how the backend accumulates inside the matrix products
# (batched vs separate GEMMs), which in bf16 can flip the sign of tiny gradient entries. Adam moves a
# parameter by at most ~lr per step, so after 6 steps two runs can differ by up to 2 * lr * 6 = 1.2e-2 in a
# parameter; the validation L1 is held to 2%. On the CPU backend they agree to 1e-7.
BF16_PARAM_ATOL = 2 * 1e-3 * 6
BF16_REWARD_RTOL = 2e-2
# XLA's CPU backend optimisations only cost compile time here (semantics are unchanged); tests stay fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _setup(compute_dtype):
    task = CountingTask(H, W, batch_size=4, eval_batch_size=5, features=(4, 8), hidden=8, compute_dtype=compute_dtype)
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.integers(0, 256, (K, M, H, W, 3), dtype=np.uint8)),
        "counts": jnp.asarray(rng.integers(0, 4, (K, M, 5), dtype=np.int32)),
    }
    val = {
        "image": jnp.asarray(rng.integers(0, 256, (7, H, W, 3), dtype=np.uint8)),
        "counts": jnp.asarray(rng.integers(0, 4, (7, 5), dtype=np.int32)),
    }
    return task, data, val


class CountingTraces(TaskBase):
    """Wraps a task's train so that every trace is counted (a jit cache hit does not trace)."""

    def __init__(self, task):
        self.task, self.traces = task, 0

    def init(self, key):
        return self.task.init(key)

    def train(self, state, data, key, epochs):
        self.traces += 1
        return self.task.train(state, data, key, epochs)

    def evaluate(self, state, data):
        return self.task.evaluate(state, data)


def _run(compute_dtype, strategies):
    """Per strategy: (trained states, rewards), after checking that a second iteration does not re-trace."""
    task, data, val = _setup(compute_dtype)
    out = {}
    for strategy in strategies:
        counted = CountingTraces(task)

        @jax.jit(compiler_options=FAST_COMPILE)
        def iteration(key, data, val, counted=counted, strategy=strategy):
            init_key, train_key = jax.random.split(key)
            states = counted.init(init_key)  # common initialisation, shared by the K candidates
            keys = jax.random.split(train_key, K)
            states = parallel.train_candidates(counted, states, data, keys, 2, strategy, shared_states=True)
            return states, parallel.evaluate_candidates(counted, states, val, strategy)["reward"]

        out[strategy] = iteration(jax.random.key(0), data, val)
        traces = counted.traces
        assert traces == (K if strategy == "loop" else 1), (strategy, traces)
        # A second policy iteration: new key, new data; no new trace, no new compilation.
        iteration(jax.random.key(1), jax.tree_util.tree_map(lambda x: x[::-1], data), val)
        assert counted.traces == traces, strategy
        assert iteration._cache_size() == 1, strategy
    return out


@pytest.mark.slow
def test_strategies_match_loop_float32():
    out = _run("float32", ["loop", "vmap", "map", "map:2"])
    ref_states, ref_rewards = out["loop"]
    assert int(ref_states.step[0]) == 2 * 3  # 2 epochs of 3 steps
    for strategy, (states, rewards) in out.items():
        np.testing.assert_allclose(rewards, ref_rewards, rtol=1e-5, err_msg=strategy)
        for a, b in zip(
            jax.tree_util.tree_leaves(states.params), jax.tree_util.tree_leaves(ref_states.params), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=strategy)
    # The K candidates saw different data, so they differ.
    assert not np.allclose(ref_rewards[0], ref_rewards[1])


@pytest.mark.slow
def test_strategies_match_loop_bfloat16():
    out = _run("bfloat16", ["loop", "vmap"])
    (s_loop, r_loop), (s_vmap, r_vmap) = out["loop"], out["vmap"]
    np.testing.assert_allclose(r_vmap, r_loop, rtol=BF16_REWARD_RTOL)
    for a, b in zip(jax.tree_util.tree_leaves(s_vmap.params), jax.tree_util.tree_leaves(s_loop.params), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=BF16_PARAM_ATOL)


def test_run_candidates_shared_arguments_and_pytrees():
    xs = {"a": jnp.arange(6.0).reshape(3, 2), "b": jnp.arange(3)}
    shared = jnp.array([10.0, 20.0])

    def fn(x, s):
        return {"sum": x["a"] + s, "b": x["b"] * 2}

    ref = parallel.run_candidates(fn, "loop", xs, shared, in_axes=(0, None))
    for strategy in ("vmap", "map", "map:2"):
        got = jax.jit(lambda x, s, strategy=strategy: parallel.run_candidates(fn, strategy, x, s, in_axes=(0, None)))(
            xs, shared
        )
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key])
    np.testing.assert_array_equal(ref["sum"], np.arange(6.0).reshape(3, 2) + [10.0, 20.0])


def test_run_candidates_validates():
    with pytest.raises(ValueError, match="disagree"):
        parallel.run_candidates(lambda a, b: a + b, "vmap", jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="in_axes"):
        parallel.run_candidates(lambda a: a, "vmap", jnp.ones(3), in_axes=(0, 0))
    with pytest.raises(ValueError, match="unknown executor strategy"):
        parallel.run_candidates(lambda a: a, "pmap", jnp.ones(3))
    for bad in ("map:0", "map:x", "vmap:2"):
        with pytest.raises(ValueError):
            parallel.resolve(bad)


def test_resolve():
    for backend in ("cpu", "gpu", "cuda", "tpu"):
        for phase in parallel.PHASES:
            assert parallel.resolve("auto", backend, phase=phase) in ("vmap", "map", "loop")
    assert parallel.resolve("auto", "cuda") == parallel.AUTO["gpu"]["train"]
    assert parallel.resolve("loop", "gpu") == "loop"
    assert parallel.resolve("auto", "gpu", preferred="map") == "map"
    assert parallel.resolve("vmap", "gpu", preferred="map") == "vmap"  # an explicit choice wins over a preference
    assert parallel.resolve("auto") == parallel.resolve("auto", jax.default_backend())


class _Declares(TaskBase):
    def __init__(self, **attrs):
        self.__dict__.update(attrs)


def test_task_declarations():
    host = _Declares(required_strategy="vmap")
    assert parallel.strategy_for(host, "loop", "train") == "vmap"  # required beats an explicit choice
    assert parallel.strategy_for(host, "auto", "evaluate") == "vmap"
    picky = _Declares(preferred_strategy={"train": "map"})
    assert parallel.strategy_for(picky, "auto", "train") == "map"
    assert parallel.strategy_for(picky, "loop", "train") == "loop"
    assert parallel.strategy_for(picky, "auto", "evaluate", backend="cpu") == parallel.AUTO["cpu"]["evaluate"]
    assert parallel.strategy_for(TaskBase(), "auto", "train", backend="gpu") == parallel.AUTO["gpu"]["train"]
    convs = _Declares(preferred_strategy={"gpu": {"train": "loop"}, "cpu": "map"})
    assert parallel.strategy_for(convs, "auto", "train", backend="cuda") == "loop"
    assert parallel.strategy_for(convs, "auto", "evaluate", backend="gpu") == parallel.AUTO["gpu"]["evaluate"]
    assert parallel.strategy_for(convs, "auto", "evaluate", backend="cpu") == "map"
    assert parallel.strategy_for(convs, "auto", "train", backend="tpu") == parallel.AUTO["tpu"]["train"]


def test_required_vmap_reaches_the_function_once():
    """A host-backed task sees all K candidates in one call: its train is traced once even if loop is asked."""
    calls = []

    class HostLike(TaskBase):
        required_strategy = "vmap"

        def train(self, state, data, key, epochs):
            calls.append(jnp.shape(state))
            return state + data.sum()

    out = jax.jit(lambda s, d, k: parallel.train_candidates(HostLike(), s, d, k, 1, "loop"))(
        jnp.zeros(3), jnp.ones((3, 2)), jax.random.split(jax.random.key(0), 3)
    )
    assert len(calls) == 1
    np.testing.assert_array_equal(out, [2.0, 2.0, 2.0])
