"""Search strategies behind one init / ask / tell protocol.

A search strategy proposes simulator parameters and learns from their rewards:

    state = strategy.init(key, psi0)               # psi0: [dim], the initial point
    psi = strategy.ask(key, state, num)            # psi: [num, dim]
    state, metrics = strategy.tell(state, psi, rewards)   # rewards: [num]
    strategy.center(state)                         # [dim]: the strategy's current answer

All methods are pure and jittable; static configuration lives on the strategy
object. Every state tracks the best candidate seen (``best_psi``,
``best_reward``), so "keep the best by validation reward" is uniform across
strategies.

This module holds the paper's baselines; the REINFORCE policy is in
:mod:`lts_jax.search.policy`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from lts_jax.params import ParamSpec


class SearchStrategy(Protocol):
    spec: ParamSpec

    def init(self, key: jax.Array, psi0: jax.Array) -> Any: ...

    def ask(self, key: jax.Array, state: Any, num: int) -> jax.Array: ...

    def tell(self, state: Any, psi: jax.Array, rewards: jax.Array) -> tuple[Any, dict[str, jax.Array]]: ...

    def center(self, state: Any) -> jax.Array: ...


@struct.dataclass
class Best:
    """The best candidate seen so far."""

    psi: jax.Array  # [dim]
    reward: jax.Array  # [] (-inf before the first tell)

    @classmethod
    def empty(cls, dim: int) -> Best:
        return cls(psi=jnp.zeros((dim,), jnp.float32), reward=jnp.array(-jnp.inf, jnp.float32))

    def update(self, psi: jax.Array, rewards: jax.Array) -> Best:
        i = jnp.argmax(rewards)
        better = rewards[i] > self.reward
        return Best(
            psi=jnp.where(better, psi[i], self.psi),
            reward=jnp.where(better, rewards[i], self.reward),
        )


def reward_metrics(rewards: jax.Array, best: Best) -> dict[str, jax.Array]:
    return {
        "reward_mean": jnp.mean(rewards),
        "reward_max": jnp.max(rewards),
        "reward_min": jnp.min(rewards),
        "reward_std": jnp.std(rewards),
        "best_reward": best.reward,
    }


@struct.dataclass
class FixedState:
    psi: jax.Array  # [dim]
    best: Best


class FixedSearch:
    """Always proposes the same psi (e.g. the validation set's own parameters)."""

    name = "fixed"

    def __init__(self, spec: ParamSpec):
        self.spec = spec

    def init(self, key: jax.Array, psi0: jax.Array) -> FixedState:
        del key
        return FixedState(psi=jnp.asarray(psi0, jnp.float32), best=Best.empty(self.spec.dim))

    def ask(self, key: jax.Array, state: FixedState, num: int) -> jax.Array:
        del key
        return jnp.broadcast_to(state.psi, (num, self.spec.dim))

    def tell(self, state: FixedState, psi: jax.Array, rewards: jax.Array):
        best = state.best.update(psi, rewards)
        return state.replace(best=best), reward_metrics(rewards, best)

    def center(self, state: FixedState) -> jax.Array:
        return state.psi


@struct.dataclass
class RandomState:
    psi0: jax.Array  # [dim]: frozen blocks keep these values
    best: Best


class RandomParams:
    """Fresh psi every iteration, uniform in the spec's documented box (``spec.box()``).

    Frozen blocks keep their initial values. The answer (:meth:`center`) is the
    best psi seen by validation reward; experiments keep the best MTM too.
    """

    name = "random_params"

    def __init__(self, spec: ParamSpec):
        self.spec = spec

    def init(self, key: jax.Array, psi0: jax.Array) -> RandomState:
        del key
        return RandomState(psi0=jnp.asarray(psi0, jnp.float32), best=Best.empty(self.spec.dim))

    def ask(self, key: jax.Array, state: RandomState, num: int) -> jax.Array:
        return self.spec.random(key, (num,), base=state.psi0)

    def tell(self, state: RandomState, psi: jax.Array, rewards: jax.Array):
        best = state.best.update(psi, rewards)
        return state.replace(best=best), reward_metrics(rewards, best)

    def center(self, state: RandomState) -> jax.Array:
        return jnp.where(jnp.isfinite(state.best.reward), state.best.psi, state.psi0)


@struct.dataclass
class RandomSearchState:
    current: jax.Array  # [dim]: the incumbent, best psi so far
    best: Best


class RandomSearch:
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
        self.spec = spec
        self.variance = float(variance)

    def init(self, key: jax.Array, psi0: jax.Array) -> RandomSearchState:
        del key
        return RandomSearchState(current=jnp.asarray(psi0, jnp.float32), best=Best.empty(self.spec.dim))

    def ask(self, key: jax.Array, state: RandomSearchState, num: int) -> jax.Array:
        eps = jax.random.normal(key, (num, self.spec.dim))
        return state.current + (self.variance**0.5) * eps * self.spec.learnable_mask()

    def tell(self, state: RandomSearchState, psi: jax.Array, rewards: jax.Array):
        best = state.best.update(psi, rewards)
        return RandomSearchState(current=best.psi, best=best), reward_metrics(rewards, best)

    def center(self, state: RandomSearchState) -> jax.Array:
        return state.current
