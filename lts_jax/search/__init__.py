"""Search strategies behind one init / ask / tell protocol (the paper's REINFORCE policy and its baselines).

:mod:`lts_jax.search.base` holds the protocol and the base (shape checks, best tracking, reward metrics);
:mod:`lts_jax.search.baselines` and :mod:`lts_jax.search.policy` the strategies.
"""

from lts_jax.search.base import Best, SearchStrategy, StrategyBase, reward_metrics
from lts_jax.search.baselines import FixedSearch, RandomParams, RandomSearch
from lts_jax.search.policy import GaussianPolicy, gaussian_log_prob

__all__ = [
    "Best",
    "FixedSearch",
    "GaussianPolicy",
    "RandomParams",
    "RandomSearch",
    "SearchStrategy",
    "StrategyBase",
    "gaussian_log_prob",
    "reward_metrics",
]
