"""The search protocol and the base every strategy builds on.

A search strategy proposes simulator parameters and learns from their rewards:

    state = strategy.init(key, psi0)                      # psi0: [dim], the initial point
    psi = strategy.ask(key, state, num)                   # psi: [num, dim]
    state, metrics = strategy.tell(state, psi, rewards)   # rewards: [num]
    strategy.center(state)                                # [dim]: the strategy's current answer

All methods are pure and jittable (``num`` is static); static configuration lives on the strategy object.
Every state carries a ``best: Best`` field, the best candidate seen by reward, so "keep the best by
validation reward" is uniform across strategies.

:class:`StrategyBase` implements ``init`` and ``tell`` once, the way evosax's ``Strategy.init`` / ``tell``
wrap ``_init`` / ``_tell``: it checks shapes, casts, tracks the best and computes the reward metrics, and
calls the strategy's own hooks for the rest.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from lts_jax.params import ParamSpec


class SearchStrategy(Protocol):
    """What :mod:`lts_jax.lts` and the experiments call; :class:`StrategyBase` implements it."""

    name: str  # the method's name in logs and results ("lts", "random_search", ...)
    spec: ParamSpec

    def init(self, key: jax.Array, psi0: jax.Array) -> Any: ...

    def ask(self, key: jax.Array, state: Any, num: int) -> jax.Array: ...

    def tell(self, state: Any, psi: jax.Array, rewards: jax.Array) -> tuple[Any, dict[str, jax.Array]]: ...

    def center(self, state: Any) -> jax.Array: ...


@struct.dataclass
class Best:
    """The best candidate seen so far."""

    psi: jax.Array  # [dim]
    reward: jax.Array  # [] float32 (-inf before the first tell)

    @classmethod
    def empty(cls, dim: int) -> Best:
        return cls(psi=jnp.zeros((dim,), jnp.float32), reward=jnp.array(-jnp.inf, jnp.float32))

    def update(self, psi: jax.Array, rewards: jax.Array) -> Best:
        """The best of ``self`` and the candidates psi [num, dim] with rewards [num]; ties keep the incumbent."""
        i = jnp.argmax(rewards)
        better = rewards[i] > self.reward
        return Best(
            psi=jnp.where(better, psi[i], self.psi),
            reward=jnp.where(better, rewards[i], self.reward),
        )


def reward_metrics(rewards: jax.Array, best: Best) -> dict[str, jax.Array]:
    """The metrics every strategy reports: statistics of rewards [num] and the best reward so far."""
    return {
        "reward_mean": jnp.mean(rewards),
        "reward_max": jnp.max(rewards),
        "reward_min": jnp.min(rewards),
        "reward_std": jnp.std(rewards),
        "best_reward": best.reward,
    }


class StrategyBase:
    """init / tell done once for every strategy; subclasses write ``_init``, ``ask``, ``_tell``, ``center``.

    Hooks:
      ``_init(key, psi0) -> state``: psi0 is float32 [dim]; the state is a struct dataclass with a
        ``best: Best`` field (start it as ``Best.empty(self.spec.dim)``).
      ``_tell(state, psi, rewards) -> (state, metrics)``: the strategy's own update (default: none).
        psi is [num, dim], rewards float32 [num]; ``state.best`` already includes this batch, keep it in
        the returned state. ``metrics`` are the strategy's own entries, added after :func:`reward_metrics`.
    """

    name: str = "search"

    def __init__(self, spec: ParamSpec):
        self.spec = spec

    def init(self, key: jax.Array, psi0: jax.Array) -> Any:
        """The initial state from psi0 [dim]."""
        psi0 = jnp.asarray(psi0, jnp.float32)
        if psi0.shape != (self.spec.dim,):
            raise ValueError(f"{self.name}.init: psi0 must be [{self.spec.dim}] (spec.dim), got {list(psi0.shape)}")
        return self._init(key, psi0)

    def tell(self, state: Any, psi: jax.Array, rewards: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        """Learns from candidates psi [num, dim] and their rewards [num] (higher is better).

        Returns the new state and a dict of scalar metrics: :func:`reward_metrics`, then the strategy's own.
        Shapes are checked when traced (ValueError naming the argument).
        """
        psi, rewards = self.check_tell(psi, rewards)
        state = state.replace(best=state.best.update(psi, rewards))
        state, own = self._tell(state, psi, rewards)
        return state, {**reward_metrics(rewards, state.best), **own}

    def check_tell(self, psi: jax.Array, rewards: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(psi, rewards) as arrays, rewards float32 (so the state's dtypes stay fixed, e.g. across a scan).

        Raises ValueError unless psi is [num, spec.dim] with num >= 1 and rewards is [num].
        """
        psi, rewards = jnp.asarray(psi), jnp.asarray(rewards, jnp.float32)
        dim = self.spec.dim
        if psi.ndim != 2 or psi.shape[1] != dim:
            raise ValueError(f"{self.name}.tell: psi must be [num, {dim}] (spec.dim = {dim}), got {list(psi.shape)}")
        if psi.shape[0] < 1:
            raise ValueError(f"{self.name}.tell: psi holds no candidates (shape {list(psi.shape)})")
        if rewards.shape != (psi.shape[0],):
            raise ValueError(
                f"{self.name}.tell: rewards must be [{psi.shape[0]}], one per row of psi, got {list(rewards.shape)}"
            )
        return psi, rewards

    def _init(self, key: jax.Array, psi0: jax.Array) -> Any:
        raise NotImplementedError

    def _tell(self, state: Any, psi: jax.Array, rewards: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        # Default: nothing to learn beyond the best (the fixed and random-parameter baselines).
        del psi, rewards
        return state, {}
