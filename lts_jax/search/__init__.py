"""Search strategies behind one init / ask / tell protocol: the paper's REINFORCE policy, its baselines and
evolution strategies (evosax), built by name with :func:`make`.

:mod:`lts_jax.search.base` holds the protocol and the base (shape checks, best tracking, reward metrics);
:mod:`lts_jax.search.policy`, :mod:`lts_jax.search.baselines` and :mod:`lts_jax.search.es` the strategies.

    strategy = search.make("cma_es", spec)                         # defaults
    strategy = search.make("lts", spec, **search.policy.RECOMMENDED)
    search.options("pgpe")                                          # {option: default}
"""

from __future__ import annotations

import inspect
from typing import Any

from lts_jax.params import ParamSpec
from lts_jax.search import es
from lts_jax.search.base import Best, SearchStrategy, StrategyBase, reward_metrics
from lts_jax.search.baselines import FixedSearch, RandomParams, RandomSearch
from lts_jax.search.es import EvolutionStrategy
from lts_jax.search.policy import GaussianPolicy, gaussian_log_prob

_CLASSES = {"lts": GaussianPolicy, "fixed": FixedSearch, "random_params": RandomParams, "random_search": RandomSearch}
# Every strategy by name, in the order the documentation lists them.
NAMES: tuple[str, ...] = (*_CLASSES, *es.ALGORITHMS)


def options(name: str) -> dict[str, Any]:
    """The keyword options :func:`make` accepts for strategy ``name``, with their defaults."""
    if name in es.ALGORITHMS:
        return es.options(name)
    if name not in _CLASSES:
        raise ValueError(f"unknown search strategy {name!r}; choose one of {list(NAMES)}")
    params = list(inspect.signature(_CLASSES[name].__init__).parameters.values())[2:]  # after self, spec
    return {p.name: p.default for p in params}


def make(name: str, spec: ParamSpec, **kwargs: Any) -> SearchStrategy:
    """The search strategy ``name`` (one of :data:`NAMES`) over ``spec``, configured by keyword options.

    ``lts``: :class:`GaussianPolicy`; ``fixed``, ``random_params``: no options; ``random_search``: ``variance``;
    ``openes``, ``snes``, ``cma_es``, ``pgpe``: :class:`EvolutionStrategy` (needs evosax). :func:`options` lists a
    strategy's options and defaults.

    Raises:
      ValueError: an unknown name, or an option the strategy does not take (both listed), or a bad value.
    """
    accepted = options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"search strategy {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options are {sorted(accepted) or 'none'}"
        )
    if name in es.ALGORITHMS:
        return EvolutionStrategy(spec, name, **kwargs)
    return _CLASSES[name](spec, **kwargs)


__all__ = [
    "NAMES",
    "Best",
    "EvolutionStrategy",
    "FixedSearch",
    "GaussianPolicy",
    "RandomParams",
    "RandomSearch",
    "SearchStrategy",
    "StrategyBase",
    "gaussian_log_prob",
    "make",
    "options",
    "reward_metrics",
]
