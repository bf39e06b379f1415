"""How a search strategy behaves on synthetic rewards: many seeds of one strategy as one jitted program.

    centers, metrics = trajectories(strategy, psi0, noise_reward(), num_candidates=8, iterations=1000, seeds=10)
    drift_report(strategy.spec, centers, at=(300, 1000))

The null test (a search must not turn noise into drift, issue 13): with a reward that carries no signal,
every movement of the center is drift. ``benchmarks/search_null_drift.py`` compares configurations with it;
the tests hold the recommended one to a bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.params import ParamSpec
from lts_jax.search.base import SearchStrategy

# reward_fn(key, psi [K, dim]) -> rewards [K]
RewardFn = Callable[[jax.Array, jax.Array], jax.Array]


def noise_reward(std: float = 1.0, mean: float = 0.0) -> RewardFn:
    """Rewards ``mean + std * N(0, 1)``, independent of psi: no signal."""
    return lambda key, psi: mean + std * jax.random.normal(key, psi.shape[:1])


def trajectories(
    strategy: SearchStrategy,
    psi0,
    reward_fn: RewardFn,
    *,
    num_candidates: int,
    iterations: int,
    seeds: int,
    key: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs ``seeds`` independent searches from psi0 [dim] (vmapped over seeds, a lax.scan over iterations).

    Seed s uses ``fold_in(key, s)`` (default ``key(0)``): the init key, then per iteration an ask key and a
    reward key. Returns ``centers`` [seeds, iterations + 1, dim] (the start, then the center after each tell)
    and the tell metrics, each [seeds, iterations].
    """
    psi0 = jnp.asarray(psi0, jnp.float32)
    key = jax.random.key(0) if key is None else key

    def one(seed_key):
        k_init, k_run = jax.random.split(seed_key)

        def body(state, k):
            k_ask, k_reward = jax.random.split(k)
            psi = strategy.ask(k_ask, state, num_candidates)
            state, metrics = strategy.tell(state, psi, reward_fn(k_reward, psi))
            return state, (strategy.center(state), metrics)

        state = strategy.init(k_init, psi0)
        _, (centers, metrics) = jax.lax.scan(body, state, jax.random.split(k_run, iterations))
        return jnp.concatenate([strategy.center(state)[None], centers]), metrics

    seed_keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(seeds))
    return jax.jit(jax.vmap(one))(seed_keys)


def drift_report(
    spec: ParamSpec, centers, *, at: Sequence[int] = (), collapse: float = 0.01
) -> dict[str, float | int | dict]:
    """How far the centers [seeds, T + 1, dim] moved from their start, over the learnable categorical/Bernoulli blocks.

    Host-side (NumPy). Logits of a categorical are centred per block (softmax is shift invariant), a Bernoulli's
    are taken as they are. Returns:
      ``drift``: mean |logit_T - logit_0| over seeds and entries, at the end; ``drift_at``: {t: the same at t};
      ``tv_max``: the largest total-variation distance of a block's distribution from its start, mean over seeds
        (at the end); ``min_prob``: the least probability of any category at any iteration, over all seeds;
      ``collapsed_seeds``: seeds in which some category fell below ``collapse`` at some iteration (by more than
        float32 rounding);
      ``min_prob_per_block``: {block: least probability over iterations and seeds}.
    """
    centers = np.asarray(centers, np.float64)
    blocks = [b for b in spec.blocks if not b.frozen and b.kind != "gaussian"]
    if not blocks:
        raise ValueError("drift_report: the spec has no learnable categorical or Bernoulli block")
    logits, probs = [], []
    for b in blocks:
        x = centers[..., spec.slices[b.name]]
        if b.kind == "categorical":
            z = x - x.max(-1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
            logits.append(x - x.mean(-1, keepdims=True))
        else:
            p = 1.0 / (1.0 + np.exp(-x))
            logits.append(x)
            p = np.concatenate([p, 1.0 - p], -1)
        probs.append(p)
    x = np.concatenate(logits, -1)  # [seeds, T + 1, entries]
    moved = np.abs(x - x[:, :1])
    tv = np.stack([0.5 * np.abs(p[:, -1] - p[:, 0]).sum(-1) for p in probs], -1)  # [seeds, blocks]
    seed_min = np.min(np.stack([p.min(axis=(1, 2)) for p in probs], -1), -1)  # [seeds]
    return {
        "drift": float(moved[:, -1].mean()),
        "drift_at": {int(t): float(moved[:, t].mean()) for t in at},
        "tv_max": float(tv.max(-1).mean()),
        "min_prob": float(seed_min.min()),
        # a floor of exactly ``collapse`` holds only to float32 rounding
        "collapsed_seeds": int((seed_min < collapse * (1 - 1e-4)).sum()),
        "min_prob_per_block": {b.name: float(p.min()) for b, p in zip(blocks, probs)},
    }
