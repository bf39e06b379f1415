"""make_optimizer: names, validation, clipping, and the learning rate held in the optimiser state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lts_jax.optim import OPTIMIZERS, make_optimizer

PARAMS = {"w": jnp.arange(3.0)}
GRADS = {"w": jnp.array([3.0, -4.0, 0.0])}  # global norm 5


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_by_name_equals_optax(name):
    opt, ref = make_optimizer(name, 0.1), OPTIMIZERS[name](0.1)
    got, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
    want, _ = ref.update(GRADS, ref.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(got["w"], want["w"])


def test_grad_clip_scales_to_the_global_norm():
    opt = make_optimizer("sgd", 1.0, grad_clip=1.0)
    updates, _ = opt.update(GRADS, opt.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["w"], [-0.6, 0.8, 0.0], rtol=1e-6)


def test_learning_rate_in_state_shares_one_program():
    """Two rates, one compiled update: the rate is a value of the state, not a constant of the program."""
    slow, fast = (make_optimizer("adam", lr, learning_rate_in_state=True) for lr in (1e-3, 1e-1))
    s_slow, s_fast = slow.init(PARAMS), fast.init(PARAMS)
    assert float(s_fast.hyperparams["learning_rate"]) == pytest.approx(0.1)
    traces = []

    @jax.jit
    def update(state):
        traces.append(1)
        return slow.update(GRADS, state, PARAMS)[0]["w"]

    u_slow, u_fast = update(s_slow), update(s_fast)
    assert len(traces) == 1
    np.testing.assert_allclose(u_fast, 100 * u_slow, rtol=1e-5)
    ref, _ = optax.adam(0.1).update(GRADS, optax.adam(0.1).init(PARAMS), PARAMS)
    np.testing.assert_allclose(u_fast, ref["w"], rtol=1e-4)  # jit and eager round differently


def test_bad_configuration():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose one of"):
        make_optimizer("lbfgs", 0.1)
    with pytest.raises(ValueError, match="learning rate must be > 0, got 0"):
        make_optimizer("adam", 0)
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        make_optimizer("adam", 0.1, grad_clip=-1.0)
