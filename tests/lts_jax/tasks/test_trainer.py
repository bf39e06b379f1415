"""The shared minibatch-scan trainer: even batching, the shuffled schedule, epochs against a NumPy re-implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lts_jax.tasks import trainer
from lts_jax.tasks.trainer import TrainState


@pytest.mark.parametrize("num, expected", [(100, (4, 25)), (20, (1, 20)), (64, (2, 32)), (101, (4, 26)), (1, (1, 1))])
def test_batching(num, expected):
    assert trainer.batching(num, 32) == expected


def test_batching_rejects_empty():
    with pytest.raises(ValueError, match="num >= 1"):
        trainer.batching(0, 32)


def test_schedule_visits_every_example_once_per_epoch():
    idx, weights = trainer.schedule(jax.random.key(0), 10, 3, 4)  # 3 steps of 4 slots (2 padded) per epoch
    assert idx.shape == weights.shape == (9, 4) and idx.dtype == jnp.int32 and weights.dtype == jnp.float32
    for epoch in range(3):
        i = np.asarray(idx[3 * epoch : 3 * epoch + 3]).ravel()
        w = np.asarray(weights[3 * epoch : 3 * epoch + 3]).ravel()
        assert sorted(i[w > 0]) == list(range(10))
        assert w.sum() == 10
    assert not np.array_equal(idx[:3], idx[3:6])  # reshuffled each epoch


def _regression(num=10, dim=3, seed=0):
    """(x [num, dim], y [num]) as NumPy float32."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num, dim)).astype(np.float32), rng.normal(size=num).astype(np.float32)


def _loss(params, x, y, w):
    """Weighted mean squared error of a linear model; w [B] (0 drops a padded example)."""
    return jnp.sum(w * (x @ params["w"] - y) ** 2) / jnp.maximum(jnp.sum(w), 1.0)


def test_train_epochs_equals_numpy_sgd():
    """SGD on a linear model through the trainer equals the same steps in NumPy over only the real examples of each
    batch: padding takes no part, the step counter counts, train_loss is the last epoch's mean step loss."""
    x, y = _regression()
    lr, epochs, bs = 0.1, 3, 4
    opt = optax.sgd(lr)
    state = TrainState.create({"w": jnp.zeros(3)}, opt)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    step_fn = lambda st, i, w: trainer.gradient_step(opt, _loss, st, xj[i], yj[i], w)  # noqa: E731
    key = jax.random.key(7)
    out = jax.jit(lambda s: trainer.train_epochs(step_fn, s, key, 10, epochs, bs))(state)

    idx, weights = map(np.asarray, trainer.schedule(key, 10, epochs, bs))
    w, losses = np.zeros(3, np.float64), []
    for i, m in zip(idx, weights, strict=True):
        xb, yb = x[i[m > 0]], y[i[m > 0]]
        err = xb @ w - yb
        losses.append(np.mean(err**2))
        w = w - lr * 2 * xb.T @ err / len(yb)
    np.testing.assert_allclose(np.asarray(out.params["w"]), w, rtol=1e-5, atol=1e-6)
    assert int(out.step) == epochs * 3
    np.testing.assert_allclose(float(out.train_loss), np.mean(losses[-3:]), rtol=1e-5)


def test_epochs_zero_negative_and_unroll():
    x, y = map(jnp.asarray, _regression())
    opt = optax.adam(1e-2)
    state = TrainState.create({"w": jnp.ones(3)}, opt)
    assert int(state.step) == 0 and np.isnan(float(state.train_loss))
    step_fn = lambda st, i, w: trainer.gradient_step(opt, _loss, st, x[i], y[i], w)  # noqa: E731
    key = jax.random.key(1)
    assert trainer.train_epochs(step_fn, state, key, 10, 0, 4) is state
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        trainer.train_epochs(step_fn, state, key, 10, -1, 4)
    once = trainer.train_epochs(step_fn, state, key, 10, 2, 4)
    unrolled = trainer.train_epochs(step_fn, state, key, 10, 2, 4, unroll=3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, once, unrolled)


def test_step_keys_are_one_per_step_and_leave_the_schedule_its_own_key():
    """With ``step_keys`` the key splits into (schedule, steps): each step gets split(k_steps, n)[j]."""
    num, epochs, bs = 6, 2, 4  # 2 steps of 3 per epoch
    n = epochs * 2

    def step_fn(st, i, w, k):
        j = st.step
        params = {"u": st.params["u"].at[j].set(jax.random.uniform(k)), "idx": st.params["idx"].at[j].set(i)}
        return st.replace(params=params, step=j + 1), jnp.sum(w)

    state = TrainState(
        params={"u": jnp.zeros(n), "idx": jnp.zeros((n, 3), jnp.int32)},
        opt_state=(),
        step=jnp.zeros((), jnp.int32),
        train_loss=jnp.zeros(()),
    )
    key = jax.random.key(3)
    out = jax.jit(lambda s: trainer.train_epochs(step_fn, s, key, num, epochs, bs, step_keys=True))(state)
    k_schedule, k_steps = jax.random.split(key)
    expected_u = jax.vmap(jax.random.uniform)(jax.random.split(k_steps, n))
    np.testing.assert_array_equal(out.params["u"], expected_u)
    np.testing.assert_array_equal(out.params["idx"], trainer.schedule(k_schedule, num, epochs, bs)[0])
    assert float(out.train_loss) == 3.0  # mean of the last epoch's step "losses" (weights summed per step)
