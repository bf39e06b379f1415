"""Evolution strategies from evosax behind the library's init / ask / tell / center.

    strategy = EvolutionStrategy(spec, "cma_es")          # or search.make("cma_es", spec)
    state = strategy.init(key, psi0)
    psi = strategy.ask(key, state, num)                    # [num, dim]
    state, metrics = strategy.tell(state, psi, rewards)    # rewards [num], higher is better

Algorithms (:data:`ALGORITHMS`; evosax class, what each option means in :class:`EvolutionStrategy`):

- ``openes``: OpenAI-ES (Salimans et al. 2017), ``Open_ES``: a fixed isotropic sigma, centred-rank fitness, the
  gradient through an optax optimiser; mirrored sampling by default (evosax needs an even num either way).
- ``snes``: separable natural ES (Wierstra et al. 2014), ``SNES``: a diagonal sigma adapted by natural gradient.
- ``cma_es``: CMA-ES (Hansen 2016), ``CMA_ES``: full covariance and step-size adaptation.
- ``pgpe``: PGPE (Sehnke et al. 2010), ``PGPE``: mirrored sampling (num even), diagonal sigma adapted by its own
  gradient, the mean through an optax optimiser.

The strategies search only the learnable entries of psi (the spec's frozen blocks are masked out: they keep
psi0's values and are not dimensions of the ES), minimise -reward (evosax minimises fitness), and track the best
candidate through :class:`lts_jax.search.base.StrategyBase`. The population size is the ``num`` of each
ask/tell (evosax fixes it per algorithm object; one is built, and cached, per ``num``); the state does not
depend on it. States are pytrees (flax struct dataclasses holding evosax's state), so they go through ``jit``,
``lax.scan`` and the orbax checkpoints like the policy's.

evosax (``>=0.3.1,<0.4``, the ``evosax.algorithms`` API) is imported on first use: the rest of the library works
without it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lts_jax.optim import make_optimizer
from lts_jax.params import ParamSpec
from lts_jax.search.base import Best, StrategyBase

EVOSAX_REQUIREMENT = "evosax>=0.3.1,<0.4"

# name -> evosax class name in evosax.algorithms
ALGORITHMS = {"openes": "Open_ES", "snes": "SNES", "cma_es": "CMA_ES", "pgpe": "PGPE"}

# Each algorithm's own options and their defaults (see EvolutionStrategy); every algorithm also takes
# ``variance`` and ``es_params``.
ALGORITHM_OPTIONS: dict[str, dict[str, Any]] = {
    "openes": {"learning_rate": 0.05, "optimizer": "adam", "grad_clip": None, "antithetic": True},
    "snes": {"learning_rate": 1.0, "optimizer": "sgd", "grad_clip": None},
    "cma_es": {},
    "pgpe": {"learning_rate": 0.05, "optimizer": "adam", "grad_clip": None},
}
COMMON_OPTIONS: dict[str, Any] = {"variance": 0.05, "tie_tolerance": 1e-6, "es_params": None}
EVEN = ("openes", "pgpe")  # evosax needs an even population for these (mirrored pairs)

# evosax's tell takes a key; none of the four algorithms uses it (their updates are deterministic).
_KEY_SEED = 0
# A population size for building the initial state; the state's structure and values do not depend on it.
_INIT_POPULATION = 4


def _evosax_algorithms():
    try:
        import evosax.algorithms
    except ImportError as e:
        raise ImportError(
            f"the evolution strategies ({', '.join(ALGORITHMS)}) need evosax: pip install '{EVOSAX_REQUIREMENT}'"
        ) from e
    return evosax.algorithms


def options(name: str) -> dict[str, Any]:
    """The options of algorithm ``name`` (a key of :data:`ALGORITHMS`) and their defaults."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown evolution strategy {name!r}; choose one of {list(ALGORITHMS)}")
    return {**COMMON_OPTIONS, **ALGORITHM_OPTIONS[name]}


@struct.dataclass
class ESState:
    es: Any  # evosax's state over the learnable entries (its ``mean`` is the center there)
    base: jax.Array  # [dim] psi0: the frozen entries keep these values
    best: Best


class EvolutionStrategy(StrategyBase):
    """An evosax evolution strategy over the learnable entries of psi.

    Args:
      spec: the simulator's ParamSpec; at least one block must be learnable.
      algorithm: a key of :data:`ALGORITHMS` (also the strategy's ``name``).
      variance: the initial sigma^2 of the search distribution (each algorithm's ``std_init`` is its square root;
        OpenAI-ES keeps it fixed), > 0. Default 0.05, the LTS policy's.
      learning_rate, optimizer, grad_clip: the optax update of the mean (openes, pgpe: default 0.05, "adam";
        snes: default 1.0, "sgd", the natural-gradient step of the method), see :func:`lts_jax.optim.make_optimizer`.
      antithetic: openes only, mirrored sampling; default True as in evosax (openes and pgpe need an even num).
      tie_tolerance: a batch whose rewards tie (max - min <= this) leaves the ES's state as it was (the
        policy's rule: a batch that cannot rank its candidates teaches nothing; evosax's CMA-ES would shrink
        sigma to 0 and NaN on a flat reward); None: every batch updates. Default 1e-6.
      es_params: overrides of evosax's ``Params`` fields, e.g. ``{"std_lr": 0.2}`` for pgpe or ``{"std_min": 1e-3}``
        for cma_es (applied after ``variance``); default None.

    Raises:
      ValueError: an unknown algorithm or option, an option out of range, an unknown ``es_params`` field, a spec
        with nothing to learn.
      ImportError: evosax is not installed (names the requirement).
    """

    def __init__(self, spec: ParamSpec, algorithm: str, **kwargs):
        accepted = options(algorithm)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"{algorithm}: unknown options {unknown}; its options are {sorted(accepted)}")
        opts = {**accepted, **kwargs}
        super().__init__(spec)
        self.name = algorithm
        self.algorithm = algorithm
        self.options = opts
        if not opts["variance"] > 0:
            raise ValueError(f"{algorithm}: variance must be > 0, got {opts['variance']}")
        self.std_init = math.sqrt(float(opts["variance"]))
        self.index = np.flatnonzero(spec.learnable_mask())  # the learnable entries of psi
        if self.index.size == 0:
            raise ValueError(f"{algorithm}: every block of the spec is frozen; there is nothing to search")
        self.optimizer = None
        if "learning_rate" in opts:
            self.optimizer = make_optimizer(opts["optimizer"], opts["learning_rate"], opts["grad_clip"])
        self.tie_tolerance = opts["tie_tolerance"]
        if self.tie_tolerance is not None and not self.tie_tolerance >= 0:
            raise ValueError(f"{algorithm}: tie_tolerance must be >= 0 or None, got {self.tie_tolerance}")
        self.mirrored = algorithm == "pgpe" or (algorithm == "openes" and bool(opts["antithetic"]))
        self._algorithms: dict[int, Any] = {}
        self.es_params = dict(opts["es_params"] or {})
        fields = {f.name for f in dataclasses.fields(self._algorithm(_INIT_POPULATION).default_params)}
        bad = sorted(set(self.es_params) - fields)
        if bad:
            raise ValueError(f"{algorithm}: unknown es_params {bad}; evosax's Params has {sorted(fields)}")

    # ----- evosax objects ----------------------------------------------------------------------------------
    def _algorithm(self, num: int):
        """The evosax algorithm for population size ``num`` (built once per size)."""
        if num not in self._algorithms:
            if self.algorithm in EVEN and num % 2:
                raise ValueError(f"{self.name} needs an even number of candidates (num), got {num}")
            if num < 2:
                raise ValueError(f"{self.name} needs at least 2 candidates per iteration, got {num}")
            cls = getattr(_evosax_algorithms(), ALGORITHMS[self.algorithm])
            kwargs: dict[str, Any] = {}
            if self.optimizer is not None:
                kwargs["optimizer"] = self.optimizer
            if self.algorithm == "openes":
                import optax

                kwargs["std_schedule"] = optax.constant_schedule(self.std_init)
                kwargs["use_antithetic_sampling"] = self.mirrored
            # The constructor computes arrays that the object keeps: evaluate them now even when the first ask
            # for this size is traced, so that no tracer is cached.
            with jax.ensure_compile_time_eval():
                solution = jnp.zeros((self.index.size,), jnp.float32)
                self._algorithms[num] = cls(population_size=num, solution=solution, **kwargs)
        return self._algorithms[num]

    def _params(self, algo):
        params = algo.default_params
        if "std_init" in {f.name for f in dataclasses.fields(params)}:
            params = params.replace(std_init=jnp.asarray(self.std_init, jnp.float32))
        return params.replace(**self.es_params)

    def _key(self) -> jax.Array:
        return jax.random.key(_KEY_SEED)

    # ----- the protocol ------------------------------------------------------------------------------------
    def _init(self, key: jax.Array, psi0: jax.Array) -> ESState:
        algo = self._algorithm(_INIT_POPULATION)
        es_state = algo.init(key, psi0[self.index], self._params(algo))
        return ESState(es=es_state, base=psi0, best=Best.empty(self.spec.dim))

    def _embed(self, base: jax.Array, x: jax.Array) -> jax.Array:
        """psi [..., dim] from the learnable entries x [..., n]; the frozen entries from base [dim]."""
        psi = jnp.broadcast_to(base, (*x.shape[:-1], self.spec.dim))
        return psi.at[..., self.index].set(x.astype(psi.dtype))

    def ask(self, key: jax.Array, state: ESState, num: int) -> jax.Array:
        """psi [num, dim]: the ES's population on the learnable entries, psi0 on the frozen ones."""
        algo = self._algorithm(num)
        population, _ = algo.ask(key, state.es, self._params(algo))
        return self._embed(state.base, population)

    def _tell(self, state: ESState, psi: jax.Array, rewards: jax.Array):
        num = psi.shape[0]
        algo = self._algorithm(num)
        params = self._params(algo)
        # evosax's ask may update the state (CMA-ES stores the eigendecomposition of C it sampled with) and our
        # ask returns only psi: replay that update here. It does not depend on the key for these algorithms,
        # so it is the state the population was drawn from.
        _, asked = algo.ask(self._key(), state.es, params)
        es_state, _ = algo.tell(self._key(), psi[:, self.index], -rewards, asked, params)
        tied = jnp.asarray(False)
        if self.tie_tolerance is not None:
            tied = jnp.max(rewards) - jnp.min(rewards) <= self.tie_tolerance
            es_state = jax.tree_util.tree_map(lambda old, new: jnp.where(tied, old, new), state.es, es_state)
        metrics = {"es_std_mean": jnp.mean(es_state.std).astype(jnp.float32), "rewards_tied": tied.astype(jnp.float32)}
        return state.replace(es=es_state), metrics

    def center(self, state: ESState) -> jax.Array:
        """The ES's mean [dim] (frozen entries from psi0)."""
        return self._embed(state.base, state.es.mean)
