"""The Gaussian policy pi_omega = N(omega, sigma^2 I) learned by REINFORCE.

Paper equation 4 with an exponential-moving-average baseline:

    A_k   = R_k - b
    grad  = (1/K) sum_k grad_omega log pi_omega(psi_k) * A_k      (ascended)
    b    <- decay * b + (1 - decay) * mean_k R_k                   (after the update)

The first ``tell`` initialises b to the mean reward of its batch, so the first
advantages are centred rather than the raw rewards.

The update goes through optax (Adam by default). sigma^2 is fixed at 0.05 as in
the paper unless ``learn_variance`` is set, in which case log sigma is learned by
the same estimator. Frozen blocks of the spec are never perturbed or updated.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lts_jax.optim import make_optimizer
from lts_jax.params import ParamSpec
from lts_jax.search.base import Best, StrategyBase


@struct.dataclass
class PolicyState:
    params: dict  # {"mean": [dim], "log_std": [dim]}
    opt_state: optax.OptState
    baseline: jax.Array  # []
    num_tells: jax.Array  # [] int32
    best: Best


def gaussian_log_prob(psi: jax.Array, mean: jax.Array, log_std: jax.Array, mask: jax.Array) -> jax.Array:
    """log N(psi; mean, diag(exp(log_std)^2)) over the entries where ``mask`` is 1.

    psi: [..., dim]; mean, log_std, mask: [dim]. Returns [...].
    """
    z = (psi - mean) * jnp.exp(-log_std)
    per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)
    return jnp.sum(per_dim * mask, axis=-1)


class GaussianPolicy(StrategyBase):
    """REINFORCE over a diagonal Gaussian policy (init / ask / tell).

    Args:
      spec: the simulator's ParamSpec (frozen blocks are masked out).
      variance: sigma^2 of the policy (initial value if ``learn_variance``).
      learn_variance: also learn log sigma (per dimension).
      learning_rate, optimizer, grad_clip: the optax update of omega (:func:`lts_jax.optim.make_optimizer`).
      baseline_decay: EMA decay of the reward baseline, in [0, 1).
    """

    name = "lts"

    def __init__(
        self,
        spec: ParamSpec,
        *,
        variance: float = 0.05,
        learn_variance: bool = False,
        learning_rate: float = 0.05,
        optimizer: str = "adam",
        grad_clip: float | None = None,
        baseline_decay: float = 0.9,
    ):
        if not variance > 0:
            raise ValueError(f"policy variance must be > 0, got {variance}")
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        super().__init__(spec)
        self.variance = float(variance)
        self.learn_variance = bool(learn_variance)
        self.baseline_decay = float(baseline_decay)
        self.optimizer = make_optimizer(optimizer, learning_rate, grad_clip)
        self.mask = jnp.asarray(spec.learnable_mask())

    def _trainable(self, params: dict) -> dict:
        return params if self.learn_variance else {"mean": params["mean"]}

    def _init(self, key: jax.Array, psi0: jax.Array) -> PolicyState:
        del key
        mean = psi0
        log_std = jnp.full((self.spec.dim,), 0.5 * math.log(self.variance), jnp.float32)
        params = {"mean": mean, "log_std": log_std}
        return PolicyState(
            params=params,
            opt_state=self.optimizer.init(self._trainable(params)),
            baseline=jnp.zeros((), jnp.float32),
            num_tells=jnp.zeros((), jnp.int32),
            best=Best.empty(self.spec.dim),
        )

    def ask(self, key: jax.Array, state: PolicyState, num: int) -> jax.Array:
        eps = jax.random.normal(key, (num, self.spec.dim))
        std = jnp.exp(state.params["log_std"])
        return state.params["mean"] + std * eps * self.mask

    def log_prob(self, state: PolicyState, psi: jax.Array) -> jax.Array:
        """log pi(psi) over the learnable entries; psi: [..., dim] -> [...]."""
        return gaussian_log_prob(psi, state.params["mean"], state.params["log_std"], self.mask)

    def _tell(self, state: PolicyState, psi: jax.Array, rewards: jax.Array):
        batch_mean = jnp.mean(rewards)
        baseline = jnp.where(state.num_tells == 0, batch_mean, state.baseline)
        advantages = jax.lax.stop_gradient(rewards - baseline)

        def surrogate(trainable):
            params = {**state.params, **trainable}
            logp = gaussian_log_prob(psi, params["mean"], params["log_std"], self.mask)
            # optax minimises; REINFORCE ascends E[A log pi].
            return -jnp.mean(logp * advantages)

        trainable = self._trainable(state.params)
        grads = jax.grad(surrogate)(trainable)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, trainable)
        new_params = {**state.params, **optax.apply_updates(trainable, updates)}
        new_baseline = self.baseline_decay * baseline + (1.0 - self.baseline_decay) * batch_mean
        metrics = {
            "baseline": baseline,
            "advantage_abs_mean": jnp.mean(jnp.abs(advantages)),
            "grad_norm": jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads))),
            "policy_std_mean": jnp.sum(jnp.exp(new_params["log_std"]) * self.mask) / jnp.maximum(self.mask.sum(), 1),
        }
        new_state = state.replace(
            params=new_params, opt_state=opt_state, baseline=new_baseline, num_tells=state.num_tells + 1
        )
        return new_state, metrics

    def center(self, state: PolicyState) -> jax.Array:
        return state.params["mean"]

    def reinforce_gradient(self, state: PolicyState, psi: jax.Array, rewards: jax.Array) -> jax.Array:
        """The REINFORCE estimate of d E[R] / d omega (ascent direction), [dim]; for tests and analysis."""
        advantages = rewards - jnp.where(state.num_tells == 0, jnp.mean(rewards), state.baseline)
        mean, log_std = state.params["mean"], state.params["log_std"]
        score = (psi - mean) * jnp.exp(-2.0 * log_std) * self.mask
        return jnp.mean(score * advantages[:, None], axis=0)
