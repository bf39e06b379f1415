"""The paper's baselines: a fixed psi, fresh random psi each iteration, greedy local random search.

Each is a :class:`lts_jax.search.base.StrategyBase` (best tracking and reward metrics live there); the
REINFORCE policy is in :mod:`lts_jax.search.policy`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from lts_jax.params import ParamSpec
from lts_jax.search.base import Best, StrategyBase


@struct.dataclass
class FixedState:
    psi: jax.Array  # [dim]
    best: Best


class FixedSearch(StrategyBase):
    """Always proposes the same psi (e.g. the validation set's own parameters)."""

    name = "fixed"

    def _init(self, key: jax.Array, psi0: jax.Array) -> FixedState:
        del key
        return FixedState(psi=psi0, best=Best.empty(self.spec.dim))

    def ask(self, key: jax.Array, state: FixedState, num: int) -> jax.Array:
        del key
        return jnp.broadcast_to(state.psi, (num, self.spec.dim))

    def center(self, state: FixedState) -> jax.Array:
        return state.psi


@struct.dataclass
class RandomState:
    psi0: jax.Array  # [dim]: frozen blocks keep these values
    best: Best


class RandomParams(StrategyBase):
    """Fresh psi every iteration, uniform in the spec's documented box (``spec.box()``).

    Frozen blocks keep their initial values. The answer (:meth:`center`) is the
    best psi seen by validation reward; experiments keep the best MTM too.
    """

    name = "random_params"

    def _init(self, key: jax.Array, psi0: jax.Array) -> RandomState:
        del key
        return RandomState(psi0=psi0, best=Best.empty(self.spec.dim))

    def ask(self, key: jax.Array, state: RandomState, num: int) -> jax.Array:
        return self.spec.random(key, (num,), base=state.psi0)

    def center(self, state: RandomState) -> jax.Array:
        return jnp.where(jnp.isfinite(state.best.reward), state.best.psi, state.psi0)


@struct.dataclass
class RandomSearchState:
    current: jax.Array  # [dim]: the incumbent, best psi so far
    best: Best


class RandomSearch(StrategyBase):
    """Greedy local random search: perturb the incumbent, keep the best.

    Each iteration proposes ``psi_k = incumbent + sqrt(variance) * eps_k`` on the
    learnable blocks (the same exploration noise as the LTS policy) and moves the
    incumbent to the best candidate when it beats the best validation reward seen.
    Unlike :class:`RandomParams` it is an optimiser of psi, but it uses no
    gradient estimate: the baseline the paper calls "random search".
    """

    name = "random_search"

    def __init__(self, spec: ParamSpec, variance: float = 0.05):
        if variance <= 0:
            raise ValueError(f"variance must be > 0, got {variance}")
        super().__init__(spec)
        self.variance = float(variance)

    def _init(self, key: jax.Array, psi0: jax.Array) -> RandomSearchState:
        del key
        return RandomSearchState(current=psi0, best=Best.empty(self.spec.dim))

    def ask(self, key: jax.Array, state: RandomSearchState, num: int) -> jax.Array:
        eps = jax.random.normal(key, (num, self.spec.dim))
        return state.current + (self.variance**0.5) * eps * self.spec.learnable_mask()

    def _tell(self, state: RandomSearchState, psi: jax.Array, rewards: jax.Array):
        # The incumbent is the best psi seen, which the base has just updated.
        return state.replace(current=state.best.psi), {}

    def center(self, state: RandomSearchState) -> jax.Array:
        return state.current
