"""Search strategies behind one init / ask / tell protocol (the paper's REINFORCE policy and its baselines)."""

from lts_jax.search.baselines import (
    Best,
    FixedSearch,
    RandomParams,
    RandomSearch,
    SearchStrategy,
    reward_metrics,
)
from lts_jax.search.policy import GaussianPolicy, gaussian_log_prob, make_optimizer

__all__ = [
    "Best",
    "FixedSearch",
    "GaussianPolicy",
    "RandomParams",
    "RandomSearch",
    "SearchStrategy",
    "gaussian_log_prob",
    "make_optimizer",
    "reward_metrics",
]
