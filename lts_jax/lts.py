"""Algorithm 1 of the paper: one policy iteration as one jitted step, and the driver loop.

One iteration, as data (WORKSPACE.md, "Where each concept lives"):

    key --split--> k_ask, k_sim, k_init, k_train, k_amtm
    search_state --ask--> psi [K, dim]
    psi --simulator.sample (vmapped over K)--> data [K, M, ...]
    data --task.train per candidate (strategy from lts_jax.parallel)--> mtm [K]
    mtm --task.evaluate(D_val) per candidate--> reward [K], metrics
    (psi, reward) --tell--> search_state', metrics

With ``retain_mtm`` an accumulated main task model (AMTM) is also fine-tuned on
all K data sets of every iteration and evaluated on D_val (and D_test when
given); as in the paper it is reported, while the search still learns from the
per-iteration MTM rewards. With ``keep_best_mtm`` the state keeps the MTM with
the best validation reward seen so far (for "evaluate the best checkpoint on
the test split").

The driver (:func:`run_loop`) is plain Python around the jitted step: the key
of iteration i is ``fold_in(base_key, i)``, so a run resumed from a saved state
continues exactly.

Several devices (``LTSConfig(num_devices=n)``; hosts too, after
``lts_jax.run.distributed.initialize``): the K candidates' data generation
(``sample`` / ``sample_scenes`` and a host renderer), MTM training and
evaluation are split over a 1-D device mesh (``parallel.candidate_mesh(n)``),
K / n candidates per device; ask, tell, the AMTM and the best MTM run
replicated, and the step's state and metrics come back replicated on every
device (so every process reads them, and a checkpoint holds whole arrays).
Results equal the one-device run within floating-point tolerance; K must be a
multiple of n (refused in ``LTSConfig``). What a program does to run sharded::

    config = lts.LTSConfig(num_candidates=K, ..., num_devices=n)   # n = 1: exactly the one-device programs
    step = lts.make_step(config, sim, task, search)               # or make_split_step
    state = lts.init_state(config, task, search, key, psi0)        # replicated on the mesh
    val = lts.replicate(config, val)                               # once, not in every iteration
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from lts_jax import parallel
from lts_jax.search import SearchStrategy
from lts_jax.simulator import SceneSimulator, Simulator
from lts_jax.tasks import Task


class NonFiniteError(FloatingPointError):
    """A reward, loss or psi became NaN or infinite; the message names the iteration."""


class NotTraceableError(TypeError):
    """The simulator's ``sample`` needed psi's values while the step traced it (NumPy, Python control flow on
    psi, a host library); the message says how to run such code through the host bridge. The JAX error that
    started it is its ``__cause__``."""


# What JAX raises when traced code needs a value: if / bool (ConcretizationTypeError and its
# TracerBoolConversionError), np.asarray (TracerArrayConversionError), int() / indexing (TracerIntegerConversionError).
_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _not_traceable_hint(sample_fn) -> str:
    name = getattr(sample_fn, "__qualname__", repr(sample_fn))
    return (
        f"{name}(key, psi, num) cannot be traced: the step runs it under jax.jit and jax.vmap over the K "
        "candidates, so psi is a tracer there, not an array of numbers, and the code used its value (NumPy on "
        "psi, float(psi[i]), an if on psi, or a call into a host library). Either write it with jax.numpy and "
        "jax.random only (jnp.where instead of if), or run it on the host through the bridge: "
        "lts_jax.host.HostSimulator(spec, sample_fn, outputs) wraps a NumPy/Python simulator (called once per "
        "iteration with all K candidates' seeds and psi), lts_jax.host.host_renderer(render_fn, outputs) a "
        "scene simulator's renderer. Templates: simulators/template.py; the JAX error is the cause below"
    )


@dataclasses.dataclass(frozen=True)
class LTSConfig:
    """Static configuration of one policy iteration.

    Attributes:
      num_candidates: K, psi samples per iteration (>= 1).
      dataset_size: M, examples generated per candidate (>= 1).
      mtm_epochs: xi, epochs of main task model training per iteration (>= 0).
      retain_mtm: also train an accumulated MTM (AMTM) on every iteration's data.
      keep_best_mtm: keep the MTM with the best validation reward in the state.
      train_strategy: how the K trainings run (see lts_jax.parallel).
      eval_strategy: how the K evaluations run.
      common_mtm_init: the K per-iteration MTMs start from the same initial
        weights (common random numbers: reward differences then come from the
        data, not from the initialisation).
      common_sim_key: the K candidates' data sets are sampled with the same
        simulator key, so they differ only through psi (common random numbers
        for the simulator; lowers the variance of the policy gradient).
      common_train_key: the K MTMs train with the same key (minibatch order,
        augmentation), so reward differences come from the data alone.
      num_devices: devices the K candidates are split over (``parallel.candidate_mesh``; with
        several processes, the global count); K must be a multiple of it. 1: one device, the
        programs of a run without sharding.
      candidates_from_amtm: the K per-iteration MTMs fine-tune the AMTM as it stands before the
        iteration (Algorithm 1's "fine-tune the retained model"; needs ``retain_mtm``) instead of
        starting from ``task.init``. Why: a model trained from scratch on M examples for xi epochs may
        learn no more than the label prior, and then every reward measures only how close the
        candidate's label distribution is to the validation set's; the AMTM, trained on every
        iteration's K x M examples, becomes a competent model whose fine-tuned copies show what each
        candidate's data does to it.
    """

    num_candidates: int = 8
    dataset_size: int = 100
    mtm_epochs: int = 1
    retain_mtm: bool = False
    keep_best_mtm: bool = False
    train_strategy: str = "auto"
    eval_strategy: str = "auto"
    common_mtm_init: bool = True
    common_sim_key: bool = False
    common_train_key: bool = False
    num_devices: int = 1
    candidates_from_amtm: bool = False

    def __post_init__(self):
        for name, least in (("num_candidates", 1), ("dataset_size", 1), ("mtm_epochs", 0), ("num_devices", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < least:
                raise ValueError(f"{name} = {value!r} is out of range; accepted: an integer >= {least}")
        parallel.check_divisible(self.num_candidates, self.num_devices)
        if self.candidates_from_amtm and not self.retain_mtm:
            raise ValueError("candidates_from_amtm = True needs retain_mtm = True (the AMTM they fine-tune)")
        for name in ("train_strategy", "eval_strategy"):
            value = getattr(self, name)
            try:
                parallel.resolve(value)
            except ValueError:
                raise ValueError(f"{name} = {value!r} is not one of {parallel.STRATEGIES} or 'map:B'") from None


def _is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_num_iterations(num_iterations: Any) -> int:
    """``num_iterations`` as an int; ValueError naming it unless it is an integer >= 0."""
    if not _is_int(num_iterations) or num_iterations < 0:
        raise ValueError(f"num_iterations = {num_iterations!r} is out of range; accepted: an integer >= 0")
    return int(num_iterations)


def _check_parts(config: Any, simulator: Any, task: Any, search: Any, where: str) -> None:
    """TypeError naming the argument of make_step / make_split_step that is not what it must be (None, or the
    arguments in another order), at build time rather than when the step first runs."""
    parts = (
        ("config", config, isinstance(config, LTSConfig), "an lts.LTSConfig"),
        ("simulator", simulator, hasattr(simulator, "spec") and hasattr(simulator, "sample" if where == "make_step"
         else "sample_scenes"), "a Simulator (spec, sample)" if where == "make_step" else "a SceneSimulator"),
        ("task", task, all(hasattr(task, m) for m in ("init", "train", "evaluate")) and not hasattr(task, "ask"),
         "a Task (init, train, evaluate)"),
        ("search", search, all(hasattr(search, m) for m in ("init", "ask", "tell", "center")),
         "a search strategy (init, ask, tell, center)"),
    )  # fmt: skip
    for name, value, ok, what in parts:
        if not ok:
            raise TypeError(
                f"{where}(config, simulator, task, search): {name} must be {what}, got {type(value).__name__} "
                f"{value!r:.80}"
            )


def step_identity(config: LTSConfig, simulator: Any, task: Any, search: Any) -> dict[str, Any]:
    """What a run's checkpoints record of the objects its step runs, and a resume compares
    (``lts_jax.run.run_search``): the simulator's ``describe()`` (else its class), the task's class and
    data keys, the search's class, name and spec, and the LTSConfig fields that change what an iteration
    computes (not how it runs: strategies and device count may differ on resume)."""

    def described(obj: Any) -> Any:
        describe = getattr(obj, "describe", None)
        if callable(describe):
            try:
                return describe()
            except TypeError:  # a describe(...) that needs arguments is something else
                pass
        return f"{type(obj).__module__}.{type(obj).__qualname__}"

    speed_only = {"train_strategy", "eval_strategy", "num_devices"}
    return {
        "simulator": described(simulator),
        "task": {"class": described(task), "data_keys": list(getattr(task, "data_keys", ()) or ())},
        "search": {"class": described(search), "name": getattr(search, "name", None), "spec": repr(search.spec)},
        "lts": {k: v for k, v in dataclasses.asdict(config).items() if k not in speed_only},
    }


@struct.dataclass
class LTSState:
    """Everything a run carries from one iteration to the next (one pytree)."""

    iteration: jax.Array  # [] int32: iterations completed
    search: Any  # the search strategy's state
    amtm: Any = None  # the accumulated MTM's train state (retain_mtm), else None
    best_mtm: Any = None  # the MTM with the best validation reward (keep_best_mtm), else None
    best_mtm_reward: jax.Array = None  # []
    best_mtm_iteration: jax.Array = None  # [] int32, -1 before any


def mesh_for(config: LTSConfig) -> Mesh | None:
    """The device mesh of ``config.num_devices`` (``parallel.candidate_mesh``), None for one device.
    Raises ValueError naming num_devices when JAX does not see that many devices."""
    return None if config.num_devices == 1 else parallel.candidate_mesh(config.num_devices)


def replicate(config: LTSConfig, tree: Any) -> Any:
    """``tree`` (validation / test data, a state) replicated on the devices of ``config.num_devices``;
    unchanged for one device. Host-level. The steps place their arguments themselves, but data placed
    once here is not copied to the devices again in every iteration."""
    return parallel.replicate(tree, mesh_for(config))


def init_state(
    config: LTSConfig,
    task: Task,
    search: SearchStrategy,
    key: jax.Array,
    psi0: Any,
    *,
    best_fn: Callable[[Any], Any] | None = None,
) -> LTSState:
    """The state before the first iteration. ``psi0`` [dim] is the search's initial point;
    ``best_fn`` as in :func:`make_step` (what ``keep_best_mtm`` keeps of an MTM).

    With ``config.num_devices > 1`` the state is replicated on the mesh: as the template of
    ``run.checkpoint`` restores, it decides the layout a checkpoint is read into, so a checkpoint
    written on any number of devices restores onto this run's."""
    k_search, k_amtm, k_best = jax.random.split(key, 3)
    psi0 = jnp.asarray(search.spec.validate(psi0, what="initial psi"))
    if psi0.ndim != 1:
        raise ValueError(f"initial psi must have shape [{search.spec.dim}], got {list(psi0.shape)}")
    state = LTSState(
        iteration=jnp.zeros((), jnp.int32),
        search=search.init(k_search, psi0),
        amtm=task.init(k_amtm) if config.retain_mtm else None,
        best_mtm=(best_fn or (lambda m: m))(task.init(k_best)) if config.keep_best_mtm else None,
        best_mtm_reward=jnp.array(-jnp.inf, jnp.float32),
        best_mtm_iteration=jnp.array(-1, jnp.int32),
    )
    return replicate(config, state)


def _mean_metrics(prefix: str, metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-candidate scalar metrics [K] -> their mean, under ``prefix``."""
    return {f"{prefix}{k}": jnp.mean(v) for k, v in metrics.items() if jnp.ndim(v) == 1}


class Programs:
    """A cache of compiled pieces shared by the runs of one process (see :func:`make_split_step`).

    ``get(key, build_fn)`` returns the cached value for ``key`` or builds it. Keys hold the objects
    they depend on (simulator, task, search), which hash by identity and stay alive while cached.
    """

    def __init__(self):
        self._cache: dict[Hashable, Any] = {}

    def get(self, key: Hashable, build_fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build_fn()
        return self._cache[key]


class _Phases:
    """The pure phases of one policy iteration, shared by the fused and the split step.

    ``ask(search_state, key) -> psi [K, dim]``; ``sample(key, psi) -> [K, M, ...]`` with ``sample_fn``
    (the simulator's ``sample``, or a two-stage simulator's scene sampler);
    ``learn(state, key, data, val_data) -> (mtms, state', metrics)`` (train K MTMs, validate them,
    AMTM, best MTM); ``tell(search_state, psi, rewards) -> (search_state', metrics)``;
    ``test(mtms, amtm, test_data) -> metrics``. Keys are split as ``k_ask, k_sim, k_init, k_train,
    k_amtm = split(key, 5)`` in every phase, so both assemblies compute the same iteration.
    """

    def __init__(self, config: LTSConfig, sample_fn, task: Task, search: SearchStrategy, best_fn):
        self.config, self.sample_fn, self.task, self.search = config, sample_fn, task, search
        self.best_fn = best_fn or (lambda mtm: mtm)
        self.mesh = mesh_for(config)  # None: one device
        # The task may require a strategy (host tasks: vmap) or prefer one for "auto" (measured per backend).
        self.train_strategy = parallel.strategy_for(task, config.train_strategy, "train")
        self.eval_strategy = parallel.strategy_for(task, config.eval_strategy, "evaluate")

    @staticmethod
    def keys(key):
        return jax.random.split(key, 5)  # k_ask, k_sim, k_init, k_train, k_amtm

    def ask(self, search_state, key):
        return self.search.ask(self.keys(key)[0], search_state, self.config.num_candidates)

    def sample(self, key, psi):
        K, M = self.config.num_candidates, self.config.dataset_size
        k_sim = self.keys(key)[1]
        keys, key_axis = (k_sim, None) if self.config.common_sim_key else (jax.random.split(k_sim, K), 0)

        def sample_all(keys, psi):  # under a mesh: one device's candidates (a host renderer sees only those)
            try:
                return jax.vmap(self.sample_fn, in_axes=(key_axis, 0, None))(keys, psi, M)
            except _TRACER_ERRORS as e:  # psi's value was needed while tracing
                raise NotTraceableError(_not_traceable_hint(self.sample_fn)) from e

        return parallel.over_candidates(sample_all, self.mesh, (key_axis, 0))(keys, psi)

    def evaluate_all(self, mtms, data):
        return parallel.run_candidates(
            self.task.evaluate, self.eval_strategy, mtms, data, in_axes=(0, None), phase="evaluate", mesh=self.mesh
        )

    def learn(self, state: LTSState, key, data, val_data):
        config, task = self.config, self.task
        K, M, xi = config.num_candidates, config.dataset_size, config.mtm_epochs
        _, _, k_init, k_train, k_amtm = self.keys(key)
        init_keys, init_axis = (k_init, None) if config.common_mtm_init else (jax.random.split(k_init, K), 0)
        train_keys, train_axis = (k_train, None) if config.common_train_key else (jax.random.split(k_train, K), 0)
        if config.candidates_from_amtm:  # every candidate fine-tunes the same AMTM (common random numbers)
            mtms = parallel.run_candidates(
                lambda d, start, kt: task.train(start, d, kt, xi),
                self.train_strategy,
                data,
                state.amtm,
                train_keys,
                in_axes=(0, None, train_axis),
                mesh=self.mesh,
            )
        else:
            mtms = parallel.run_candidates(
                lambda d, ki, kt: task.train(task.init(ki), d, kt, xi),
                self.train_strategy,
                data,
                init_keys,
                train_keys,
                in_axes=(0, init_axis, train_axis),
                mesh=self.mesh,
            )
        val = self.evaluate_all(mtms, val_data)
        rewards = val["reward"]
        metrics = {"rewards": rewards, **_mean_metrics("val_", val)}
        metrics.update(_mean_metrics("train_", jax.vmap(task.train_metrics)(mtms)))
        # Cost: the optimiser steps the K MTMs took from their common start (the AMTM or task.init's state).
        start = state.amtm if config.candidates_from_amtm else task.init(k_init)
        steps = jnp.sum(jax.vmap(task.optimizer_steps)(mtms)) - K * task.optimizer_steps(start)
        new = state.replace(iteration=state.iteration + 1)
        if config.retain_mtm:
            # The AMTM sees every candidate's data of this iteration.
            pooled = jax.tree_util.tree_map(lambda x: x.reshape((K * M, *x.shape[2:])), data)
            if self.mesh is not None:  # one AMTM, trained alike on every device
                pooled = jax.lax.with_sharding_constraint(pooled, parallel.replicated_sharding(self.mesh))
            amtm = task.train(state.amtm, pooled, k_amtm, xi)
            metrics.update({f"amtm_val_{k}": v for k, v in task.evaluate(amtm, val_data).items()})
            steps = steps + task.optimizer_steps(amtm) - task.optimizer_steps(state.amtm)
            new = new.replace(amtm=amtm)
        metrics["cost_images"] = jnp.asarray(K * M, jnp.int32)  # examples generated (rendered) this iteration
        metrics["cost_mtm_steps"] = jnp.asarray(steps, jnp.int32)
        if config.keep_best_mtm:
            i = jnp.argmax(rewards)
            better = rewards[i] > state.best_mtm_reward
            candidate = self.best_fn(jax.tree_util.tree_map(lambda x: x[i], mtms))
            new = new.replace(
                best_mtm=jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), candidate, state.best_mtm),
                best_mtm_reward=jnp.where(better, rewards[i], state.best_mtm_reward),
                best_mtm_iteration=jnp.where(better, state.iteration, state.best_mtm_iteration),
            )
            metrics["best_mtm_iteration"] = new.best_mtm_iteration
        return mtms, new, metrics

    def tell(self, search_state, psi, rewards):
        new, metrics = self.search.tell(search_state, psi, rewards)
        return new, {"center": self.search.center(new), **metrics}

    def test(self, mtms, amtm, test_data):
        metrics = _mean_metrics("test_", self.evaluate_all(mtms, test_data))
        if self.config.retain_mtm:
            metrics.update({f"amtm_test_{k}": v for k, v in self.task.evaluate(amtm, test_data).items()})
        return metrics


def _check_dims(search: SearchStrategy, spec) -> None:
    if search.spec.dim != spec.dim:
        raise ValueError(f"the search works on psi of dim {search.spec.dim}, the simulator expects {spec.dim}")


def _assemble(phases: _Phases, ask, sample, render, learn, tell, test):
    """One iteration from the phases (jitted whole by make_step, piece by piece by make_split_step)."""

    def step(state: LTSState, key: jax.Array, val_data, test_data=None):
        psi = ask(state.search, key)
        data = render(sample(key, psi))
        mtms, new, metrics = learn(state, key, data, val_data)
        search_state, search_metrics = tell(state.search, psi, metrics["rewards"])
        metrics = {"rewards": metrics["rewards"], "psi": psi, **search_metrics, **metrics}
        if test_data is not None:
            metrics.update(test(mtms, new.amtm, test_data))
        return new.replace(search=search_state), metrics

    return step


def make_step(
    config: LTSConfig,
    simulator: Simulator,
    task: Task,
    search: SearchStrategy,
    *,
    best_fn: Callable[[Any], Any] | None = None,
) -> Callable[..., tuple[LTSState, dict[str, jax.Array]]]:
    """Returns the jitted ``step(state, key, val_data, test_data=None) -> (state, metrics)``.

    ``simulator.sample`` runs vmapped over the K candidates inside the one jit; for a
    :class:`lts_jax.simulator.SceneSimulator` that is ``render(sample_scenes(...))``, and a host
    renderer (:func:`lts_jax.host.host_renderer`) is called once per iteration with all K x M scenes.

    ``val_data`` / ``test_data`` are the task's evaluation data (dicts of arrays);
    they are arguments, not constants, so large validation sets are not baked
    into the compiled program. Passing ``test_data`` also evaluates the K MTMs
    (and the AMTM) on it; the step compiles once per structure (with and
    without test data). ``best_fn`` maps an MTM's train state to what
    ``keep_best_mtm`` keeps (default: all of it; e.g. ``lambda s: s.params``).

    With ``config.num_devices > 1`` the candidates' phases are split over the devices (module
    docstring); the returned step places its arguments on the mesh (a no-op for arrays already
    there) and returns the state and metrics replicated. One device: the plain jitted step.

    metrics: ``rewards`` [K], ``psi`` [K, dim] (the candidates), ``center`` [dim]
    (the search's current answer after the update), the search's scalars
    (reward_mean, reward_max, best_reward, baseline, ...), ``val_*`` / ``test_*``
    means of the task's metrics over K, ``amtm_val_*`` / ``amtm_test_*``; the iteration's cost:
    ``cost_images`` (K x M examples generated, [] int32) and ``cost_mtm_steps`` (optimiser steps of the K
    MTMs and the AMTM, by ``task.optimizer_steps``; [] int32). The fused step cannot tell its sampling
    time from its training time; :func:`make_split_step` measures both (:class:`PhaseClock`).
    """
    _check_parts(config, simulator, task, search, "make_step")
    _check_dims(search, simulator.spec)
    p = _Phases(config, simulator.sample, task, search, best_fn)
    step = _assemble(p, p.ask, p.sample, lambda data: data, p.learn, p.tell, p.test)
    if p.mesh is None:
        out = jax.jit(step)
    else:
        out = _placing(jax.jit(step, out_shardings=parallel.replicated_sharding(p.mesh)), p.mesh)
    out.identity = step_identity(config, simulator, task, search)  # what run_search's checkpoints record
    return out


def _placing(step, mesh: Mesh):
    """``step`` with its arguments replicated on ``mesh`` first (a no-op for those already there, e.g.
    the state a sharded step returned); the step's state and metrics come back replicated."""

    def placed(state: LTSState, key: jax.Array, val_data, test_data=None):
        state, key, val_data, test_data = parallel.replicate((state, key, val_data, test_data), mesh)
        return step(state, key, val_data, test_data) if test_data is not None else step(state, key, val_data)

    placed.mesh = mesh
    return placed


def make_split_step(
    config: LTSConfig,
    simulator: SceneSimulator,
    task: Task,
    search: SearchStrategy,
    *,
    programs: Programs | None = None,
    best_fn: Callable[[Any], Any] | None = None,
) -> SplitStep:
    """:func:`make_step`'s iteration as separately compiled pieces, cached in ``programs``.

    Why: a large simulator (the traffic renderer: ~25 CPU-seconds to compile) is
    compiled again inside :func:`make_step` for every configuration (M, xi, search,
    with or without test data); a sweep has a dozen. Here the pieces

        ask (per search) -> sample_scenes (per K, M) -> simulator.render_batches (host-level)
          -> learn: train K + validate + AMTM + best MTM (per task, K, M, xi) -> tell -> test

    are compiled once per distinct configuration and shared through ``programs``
    by every run of a process. ``simulator`` is a :class:`lts_jax.simulator.SceneSimulator`,
    the same object :func:`make_step` takes: its ``sample_scenes`` is compiled here and its
    ``render_batches`` renders all K x M scenes of an iteration at once (the default: one
    jitted ``render``, a host renderer running through the bridge; the traffic simulator:
    fixed-size chunks of one compiled renderer). The step has :func:`make_step`'s signature,
    keys and metrics (tested equal); it is not jitted as a whole.

    With ``config.num_devices > 1`` every piece is compiled for the mesh (sample, learn and test
    split over the candidates, ask and tell replicated), and ``render_batches`` is called once per
    local device with that device's K / n x M scenes, committed to it: a jitted renderer runs there
    (compiled once per device, in the first iteration), a host renderer sees only those scenes, and
    each process renders only its own devices' candidates.

    The returned :class:`SplitStep` also measures where an iteration's time goes: its ``clock``
    (:class:`PhaseClock`) holds the seconds of sampling + rendering and of the rest of the last step,
    which :func:`run_loop` logs as ``cost_sim_s`` / ``cost_train_s``. The step blocks until its outputs
    are ready (the driver reads them right away anyway).
    """
    missing = [name for name in ("spec", "sample_scenes", "render_batches") if not hasattr(simulator, name)]
    if missing:
        raise TypeError(f"make_split_step needs a SceneSimulator (lts_jax.simulator); {simulator!r} lacks {missing}")
    _check_parts(config, simulator, task, search, "make_split_step")
    _check_dims(search, simulator.spec)
    programs = programs or Programs()
    c = config
    K, M = c.num_candidates, c.dataset_size
    p = _Phases(config, simulator.sample_scenes, task, search, best_fn)
    mesh = p.mesh
    learn_key = ("learn", task, best_fn, K, M, c.mtm_epochs, p.train_strategy, p.eval_strategy, c.common_mtm_init,
                 c.common_train_key, c.retain_mtm, c.keep_best_mtm, c.candidates_from_amtm, mesh)  # fmt: skip

    def jit(fn, *out):  # under a mesh: out_shardings, "cand" (split over K) or "rep" (replicated) per output
        if mesh is None:
            return jax.jit(fn)
        shardings = {"cand": parallel.candidate_sharding(mesh), "rep": parallel.replicated_sharding(mesh)}
        return jax.jit(fn, out_shardings=tuple(shardings[o] for o in out) if len(out) > 1 else shardings[out[0]])

    ask = programs.get(("ask", search, K, mesh), lambda: jit(p.ask, "rep"))
    sample = programs.get(("sample", simulator, K, M, c.common_sim_key, mesh), lambda: jit(p.sample, "cand"))
    learn = programs.get(learn_key, lambda: jit(p.learn, "cand", "rep", "rep"))
    tell = programs.get(("tell", search, mesh), lambda: jit(p.tell, "rep", "rep"))
    test = programs.get(("test", task, K, p.eval_strategy, c.retain_mtm, mesh), lambda: jit(p.test, "rep"))

    def render_flat(scenes):  # [k, M, ...] -> the simulator's host-level renderer on k x M scenes -> [k, M, ...]
        k = jax.tree_util.tree_leaves(scenes)[0].shape[0]
        flat = jax.tree_util.tree_map(lambda x: x.reshape((k * M, *x.shape[2:])), scenes)
        return jax.tree_util.tree_map(lambda x: x.reshape((k, M, *x.shape[1:])), simulator.render_batches(flat))

    render = render_flat if mesh is None else lambda scenes: _render_per_device(render_flat, scenes, mesh)
    clock = PhaseClock()
    sim_start = [0.0]

    def timed_sample(key, psi):  # the simulator's clock starts when psi is there ...
        jax.block_until_ready(psi)
        sim_start[0] = time.perf_counter()
        return sample(key, psi)

    def timed_render(scenes):  # ... and stops when the rendered data is
        data = jax.block_until_ready(render(scenes))
        clock.sim_s = time.perf_counter() - sim_start[0]
        return data

    inner = _assemble(p, ask, timed_sample, timed_render, learn, tell, test)
    inner = inner if mesh is None else _placing(inner, mesh)

    def step(state: LTSState, key: jax.Array, val_data, test_data=None):
        t0 = time.perf_counter()
        out = jax.block_until_ready(inner(state, key, val_data, test_data))
        clock.train_s = time.perf_counter() - t0 - clock.sim_s
        return out

    out = SplitStep(step, clock, mesh)
    out.identity = step_identity(config, simulator, task, search)  # what run_search's checkpoints record
    return out


class PhaseClock:
    """Where the seconds of a split step's last iteration went (host-level; :func:`make_split_step` fills it).

    ``sim_s``: sampling and rendering, from the candidates' psi being ready to their rendered data being
    ready (the step blocks on both); ``train_s``: the rest of the step (ask, the K MTMs' training and
    validation, AMTM, best MTM, tell, test). :func:`run_loop` logs them as ``cost_sim_s`` / ``cost_train_s``.
    """

    def __init__(self):
        self.sim_s: float | None = None
        self.train_s: float | None = None

    def take(self) -> dict[str, float]:
        """``{"cost_sim_s", "cost_train_s"}`` of the last step ({} before any), cleared for the next one."""
        if self.sim_s is None or self.train_s is None:
            return {}
        out = {"cost_sim_s": float(self.sim_s), "cost_train_s": float(self.train_s)}
        self.sim_s = self.train_s = None
        return out


class SplitStep:
    """The step :func:`make_split_step` returns: ``step(state, key, val_data, test_data=None) -> (state,
    metrics)`` like :func:`make_step`'s, with its :class:`PhaseClock` (``clock``) and device mesh (``mesh``,
    None for one device). Host-level, not jittable: it blocks on the rendered data and on its outputs."""

    def __init__(self, fn: Callable[..., tuple[LTSState, dict]], clock: PhaseClock, mesh: Mesh | None):
        self._fn, self.clock, self.mesh = fn, clock, mesh

    def __call__(self, state: LTSState, key: jax.Array, val_data, test_data=None):
        return self._fn(state, key, val_data, test_data)


def _render_per_device(render_fn, scenes, mesh: Mesh):
    """``render_fn`` once per local device of ``mesh`` on that device's candidates' scenes (committed to
    it, so a jitted renderer runs there and a host renderer sees only them); the outputs, split over the
    mesh like the scenes. Each process renders only its own devices' candidates. Host-level.

    A jitted renderer is compiled once per device (XLA programs are bound to their devices), in the
    first iteration."""
    leaves, tree = jax.tree_util.tree_flatten(scenes)
    sharding = parallel.candidate_sharding(mesh)
    by_device = [{s.device: s.data for s in leaf.addressable_shards} for leaf in leaves]
    devices = [s.device for s in leaves[0].addressable_shards]
    outs = {}
    for d in devices:  # dispatch is asynchronous: the devices render concurrently
        out = render_fn(jax.tree_util.tree_unflatten(tree, [b[d] for b in by_device]))
        outs[d] = jax.tree_util.tree_map(lambda x, d=d: jax.device_put(x, d), out)
    num = leaves[0].shape[0]  # K

    def assemble(*local):  # one output's per-device pieces [K / n, M, ...] -> [K, M, ...] over the mesh
        return jax.make_array_from_single_device_arrays((num, *local[0].shape[1:]), sharding, list(local))

    return jax.tree_util.tree_map(assemble, *[outs[d] for d in devices])


def check_finite(iteration: int, metrics: Mapping[str, Any]) -> None:
    """Raises NonFiniteError naming the iteration and the first non-finite metric."""
    for name, value in metrics.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            if name == "best_reward" and np.all(np.isneginf(arr)):
                continue
            raise NonFiniteError(
                f"iteration {iteration}: non-finite {name} = {arr.tolist() if arr.size < 16 else '...'}; "
                "the run stopped (lower --policy_lr or --mtm_lr, or check the simulator's psi ranges)"
            )


def to_host(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Device metrics -> JSON-ready Python values (floats, lists)."""
    out = {}
    for k, v in jax.device_get(dict(metrics)).items():
        arr = np.asarray(v)
        out[k] = arr.item() if arr.ndim == 0 else arr.tolist()
    return out


Hook = Callable[[int, LTSState, dict[str, Any]], None]


def run_loop(
    step: Callable[..., tuple[LTSState, dict]],
    state: LTSState,
    base_key: jax.Array,
    num_iterations: int,
    val_data: Any,
    *,
    test_data: Any = None,
    test_every: int = 0,
    hooks: Iterable[Hook] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> LTSState:
    """Runs iterations ``state.iteration .. num_iterations - 1``.

    Each iteration uses ``fold_in(base_key, i)``, so resuming from a saved state
    reproduces an uninterrupted run. Test data is evaluated on iterations where
    ``test_every > 0`` and ``i % test_every == 0`` and on the last one. After
    each iteration the host metrics (with ``iteration`` and ``time_s``, the
    iteration's wall time; a :class:`SplitStep`'s ``cost_sim_s`` and
    ``cost_train_s`` too) go to every hook ``hook(i, state, metrics)``;
    ``should_stop()`` is polled between iterations (e.g. set by a signal handler).
    """
    num_iterations = check_num_iterations(num_iterations)
    hooks = list(hooks)
    start = int(state.iteration)
    for i in range(start, num_iterations):
        if should_stop():
            break
        t0 = time.perf_counter()
        with_test = test_data is not None and test_every > 0 and (i % test_every == 0 or i == num_iterations - 1)
        args = (val_data, test_data) if with_test else (val_data,)
        state, metrics = step(state, jax.random.fold_in(base_key, i), *args)
        host = to_host(metrics)
        check_finite(i, host)
        if isinstance(step, SplitStep):
            host.update(step.clock.take())
        host["iteration"] = i
        host["time_s"] = time.perf_counter() - t0
        for hook in hooks:
            hook(i, state, host)
    return state


def summarize_rewards(history: list[dict[str, Any]], key: str = "reward_mean") -> dict[str, float]:
    """first / last / best of a metric over iterations (for results.json)."""
    values = [h[key] for h in history if key in h and h[key] is not None and math.isfinite(h[key])]
    if not values:
        return {}
    return {"first": values[0], "last": values[-1], "best": max(values)}
