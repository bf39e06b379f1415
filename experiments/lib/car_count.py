"""Paper section 4.3, appendices C-E as functions: learning the traffic simulator for a car-counting CNN.

    results = train_and_evaluate(CarCountConfig(height=24, width=80, num_iterations=3), workdir)

A CNN (lts_jax.tasks.counting) counts the cars of each of 5 types in traffic images; its loss and metric
are the L1 distance between predicted and true counts averaged over types; the reward is the negative
validation L1. Validation and test sets are rendered with the fixed psi_real (the traffic simulator's "val"
preset: moderately crowded, unbalanced car types, uniform intersections and road lengths, houses on the
side, mostly fair weather) with their own seeds. The search learns psi so that MTMs trained on M simulated
images for xi epochs count well on the validation set.

``search``: lts (REINFORCE, Algorithm 1), fixed (``fixed_params``: val = psi_real, final = the psi_raw of
another run's results.json given by ``final_from``, init = the ``init`` point), random_params, random_search.
``init``: random, zeros, a preset of the simulator (val, adversarial, default) or adversarial_crowded (the
adversarial preset with a crowded road; INIT_VARIANTS says why); every learnable probability of the initial
point is floored at ``init_min_prob``. ``retain_mtm`` also trains and reports the accumulated MTM (AMTM, Fig. 5).

Writes, besides the run files of run.run_search (metrics.jsonl with the learned logits in
"params", checkpoints, TensorBoard events, rewards.png, params.png):
  results.json   {"experiment": "car_count", "test_reward": {method: final test reward, "psi_real": ...},
                  "val_reward_curve", "test_reward_curve", "amtm_*_reward_curve", "logits", "psi", "psi_raw",
                  "psi_real_reward", "simulator", "config", "cost" (common.cost), "timing"}
  car_count.png  validation and test reward over iterations, AMTM, and the psi_real reward as a line
  psi_real/      the reference run (``reference_iterations`` iterations of the fixed search at psi_real, the
                 same M and xi): its mean reward is "the reward of training on psi_real"

"Final test reward" = the mean test reward of the last ``final_window`` test evaluations (the MTMs of the
last iterations, mean over the K candidates).

The sweep (car_count_sweep) runs many searches over one :class:`Context` (simulator, validation and test
data, compiled programs) with :func:`search_and_report`; :func:`train_and_evaluate` is one such run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from experiments.lib import common, traffic
from lts_jax import lts, run, search
from lts_jax.models.counting import HEADS
from lts_jax.run import plots, progress
from lts_jax.tasks.counting import COMPUTE_DTYPES, LOSSES, CountingTask
from simulators.carla import find_no_server_error

NAME = "car_count"
PSI_REAL = "val"  # the simulator's preset used as psi_real (WORKSPACE.md, "The method": fixed, named, documented)
FIXED_PARAMS = ("val", "final", "init")
# Initial points defined here on top of the simulator's presets: (preset, natural values replacing its blocks).
# "adversarial_crowded": the "adversarial" preset (shortest road, one car type: pickups, one weather: fog, few
# houses) with a crowded road (car presence 0.9) instead of almost no cars. Why: with almost no cars every MTM
# predicts about zero cars, the rewards of nearby psi are equal and LTS stays on that plateau (seen on CPU);
# many cars of the wrong type are just as poor a start (reward -1.2 against psi_real's -0.77) but learnable.
INIT_VARIANTS = {"adversarial_crowded": ("adversarial", {"car_presence": 0.9})}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CarCountConfig(traffic.TrafficConfig):
    """A car_count run: the shared and traffic settings (with this experiment's defaults) and its own."""

    fixed_params: str = "val"
    final_from: str | None = None
    init_min_prob: float = 0.02
    val_size: int = 200
    test_size: int = 200
    val_seed: int = 1001
    test_seed: int = 2002
    test_every: int = 10
    reference_iterations: int | None = None  # None: as many as the search (needed with candidates_from_amtm)
    final_window: int = 5
    # The counting CNN's optimiser as benchmarks/counting_signal.py measured it (Adam 1e-3, batch 32: the CNN
    # learns to count). The H200 sweep of 2026-12-01 ran with the earlier 3e-3 / 16 and its MTMs and AMTMs
    # stayed at the constant predictors' level (experiments/results/car_count_sweep_h200/).
    mtm_lr: float = 1e-3
    mtm_batch_size: int = 32
    mtm_features: tuple[int, ...] = (16, 32, 64, 128)
    mtm_hidden: int = 128
    mtm_context: int = 2
    mtm_position: bool = True
    mtm_head: str = "pooled"
    mtm_norm: bool = False
    mtm_loss: str = "l1"
    compute_dtype: str = "float32"
    # shared settings, this experiment's defaults (issue 13: the candidates fine-tune the AMTM, whose copies
    # count, where MTMs trained from scratch on M = 100 images learn only the count prior; the search runs
    # with the null-drift benchmark's recommendation, search.policy.RECOMMENDED)
    num_iterations: int = 200
    mtm_epochs: int = 3
    retain_mtm: bool = True
    candidates_from_amtm: bool = True
    common_sim_key: bool = True
    policy_lr: float = 0.02
    policy_advantages: str = "centered_rank"
    policy_tie_std_growth: float = 1.5
    policy_prob_floor: float = 0.01

    @property
    def method(self) -> str:
        """The name of what this run measures, e.g. "lts", "random_params", "fixed_val"."""
        return f"fixed_{self.fixed_params}" if self.search == "fixed" else self.search


class SimulatorUnavailable(run.SimulatorUnavailable):
    """Every CARLA server failed; the message names the hosts (the command exits 3)."""


def validate(cfg: CarCountConfig) -> None:
    """Every setting, before any work (ConfigError naming the first bad one)."""
    common.validate_search(cfg)
    traffic.validate_traffic(cfg)
    spec = traffic.spec_of(cfg)
    common.validate_init(cfg, init_names(spec))
    common.check(cfg.fixed_params in FIXED_PARAMS, "fixed_params", cfg.fixed_params, " | ".join(FIXED_PARAMS))
    if cfg.search == "fixed" and cfg.fixed_params == "final":
        if not cfg.final_from:
            raise common.ConfigError(
                lambda p: f"{p('final_from')} is required with {p('search', 'fixed')} {p('fixed_params', 'final')}"
            )
        read_final_psi(cfg.final_from, spec)
    common.check(0 <= cfg.init_min_prob < 0.05, "init_min_prob", cfg.init_min_prob, "a float in [0, 0.05)")
    common.check(cfg.val_size >= 1, "val_size", cfg.val_size, "an integer >= 1")
    common.check(cfg.test_size >= 1, "test_size", cfg.test_size, "an integer >= 1")
    common.check(cfg.test_every >= 0, "test_every", cfg.test_every, "an integer >= 0")
    ref = cfg.reference_iterations
    common.check(ref is None or ref >= 0, "reference_iterations", ref, "an integer >= 0, or unset (as the search)")
    common.check(cfg.final_window >= 1, "final_window", cfg.final_window, "an integer >= 1")
    common.check(cfg.mtm_lr > 0, "mtm_lr", cfg.mtm_lr, "a float > 0")
    common.check(cfg.mtm_batch_size >= 1, "mtm_batch_size", cfg.mtm_batch_size, "an integer >= 1")
    ok = len(cfg.mtm_features) >= 1 and min(cfg.mtm_features) >= 1
    shown = ",".join(map(str, cfg.mtm_features))
    common.check(ok, "mtm_features", shown, "a comma-separated list of integers >= 1")
    common.check(cfg.mtm_hidden >= 1, "mtm_hidden", cfg.mtm_hidden, "an integer >= 1")
    common.check(cfg.mtm_context >= 0, "mtm_context", cfg.mtm_context, "an integer >= 0")
    common.check(cfg.mtm_loss in LOSSES, "mtm_loss", cfg.mtm_loss, " | ".join(LOSSES))
    common.check(cfg.mtm_head in HEADS, "mtm_head", cfg.mtm_head, " | ".join(HEADS))
    dtypes = " | ".join(sorted(COMPUTE_DTYPES))
    common.check(cfg.compute_dtype in COMPUTE_DTYPES, "compute_dtype", cfg.compute_dtype, dtypes)


# ----- the pieces ----------------------------------------------------------------------------------------------
def make_task(cfg: CarCountConfig, height: int, width: int) -> CountingTask:
    return CountingTask(
        height,
        width,
        batch_size=cfg.mtm_batch_size,
        learning_rate=cfg.mtm_lr,
        features=cfg.mtm_features,
        hidden=cfg.mtm_hidden,
        context=cfg.mtm_context,
        position=cfg.mtm_position,
        head=cfg.mtm_head,
        norm=cfg.mtm_norm,
        loss=cfg.mtm_loss,
        compute_dtype=cfg.compute_dtype,
    )


@dataclasses.dataclass
class Context:
    """What runs of one process share: simulator (rendering the task's data_keys), task, compiled programs,
    validation and test data, the simulator's description (results.json's "simulator")."""

    sim: Any
    task: Any
    programs: lts.Programs
    val: dict
    test: dict
    sim_info: dict
    data_time_s: float = 0.0
    constants: dict = dataclasses.field(default_factory=dict)  # constant_predictors(val, test)


def make_context(cfg: CarCountConfig, sim: Any) -> Context:
    """Renders the validation and test sets (psi_real, their own seeds) and builds the task.

    ``sim``: a traffic scene simulator (``simulators.make("traffic" | "carla", ...)``); only the task's
    data_keys are rendered. A CARLA pool without servers raises SimulatorUnavailable.
    """
    t0 = time.perf_counter()
    sim = sim.select(CountingTask.data_keys)
    psi_real = sim.spec.preset(PSI_REAL)
    what = (f"rendering the validation and test sets ({cfg.val_size} + {cfg.test_size} images at "
            f"{sim.height}x{sim.width} with psi_real; the renderer compiles first)")  # fmt: skip
    try:
        with progress.phase(NAME, what):
            val = sim.sample_dataset(jax.random.key(cfg.val_seed), psi_real, cfg.val_size)
            test = sim.sample_dataset(jax.random.key(cfg.test_seed), psi_real, cfg.test_size)
            jax.block_until_ready((val, test))
    except Exception as e:
        _raise_if_unavailable(e, sim, "the validation and test sets were not rendered")
        raise
    task = make_task(cfg, sim.height, sim.width)
    constants = constant_predictors(np.asarray(val["counts"]), np.asarray(test["counts"]))
    return Context(sim, task, lts.Programs(), val, test, sim.describe(), time.perf_counter() - t0, constants)


def constant_predictors(val_counts: np.ndarray, test_counts: np.ndarray) -> dict[str, dict[str, float]]:
    """Rewards (negative mean L1) of predictors that ignore the image, on the validation and test sets:
    ``val_median`` predicts each type's median validation count for every image (the best constant for L1
    that the validation set reveals), ``zero`` predicts no car. A trained MTM that comes near them has
    learned the count prior, not to count."""
    median = np.median(val_counts, axis=0)
    return {
        "val_median": {"val": -float(np.abs(val_counts - median).mean()),
                       "test": -float(np.abs(test_counts - median).mean())},
        "zero": {"val": -float(np.abs(val_counts).mean()), "test": -float(np.abs(test_counts).mean())},
    }  # fmt: skip


def tv_to_psi_real(spec, psi) -> dict[str, float]:
    """Total-variation distance 0.5 sum |p - p_real| of each learnable categorical block of ``psi`` to psi_real's."""
    mine, real = spec.distributions(np.asarray(psi, np.float64)), spec.distributions(spec.preset(PSI_REAL))
    out = {}
    for b in spec.blocks:
        if b.kind == "categorical" and not b.frozen:
            out[b.name] = 0.5 * float(
                np.abs(np.asarray(mine[b.name]["probs"]) - np.asarray(real[b.name]["probs"])).sum()
            )
    return out


def _raise_if_unavailable(e: Exception, sim: Any, state: str) -> None:
    """Raises SimulatorUnavailable (naming the hosts, then ``state``) when ``e``, raised directly or through the
    host bridge, says that every CARLA server is gone."""
    err = find_no_server_error(e, sim)
    if err is not None:
        raise SimulatorUnavailable(f"{err}; {state}") from e


def read_final_psi(workdir: str | Path, spec) -> np.ndarray:
    """psi_raw of a finished run's results.json; ConfigError naming ``final_from`` and the file when it is
    missing or unusable."""
    path = Path(workdir) / "results.json"

    def problem(what: str) -> common.ConfigError:
        return common.ConfigError(lambda p: f"{p('final_from')}: {path} {what}")

    try:
        results = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise problem("does not exist (is the run finished?)") from e
    except json.JSONDecodeError as e:
        raise problem(f"is not valid JSON ({e.msg})") from e
    if "psi_raw" not in results:
        raise problem("has no psi_raw")
    try:
        return spec.validate(np.asarray(results["psi_raw"], np.float32), what=f"psi_raw of {path}")
    except ValueError as e:
        reason = str(e)  # ``e`` is unbound after the except clause; the message is composed later
        raise common.ConfigError(lambda p: f"{p('final_from')}: {reason}") from e


def initial_point(cfg: CarCountConfig, spec, key: jax.Array, final_psi: np.ndarray | None = None) -> np.ndarray:
    """The search's psi0: psi_real, a run's final psi, or the ``init`` point."""
    if cfg.search == "fixed" and cfg.fixed_params == "val":
        return spec.preset(PSI_REAL)
    if cfg.search == "fixed" and cfg.fixed_params == "final":
        return final_psi if final_psi is not None else read_final_psi(cfg.final_from, spec)
    if cfg.init in INIT_VARIANTS:
        preset, values = INIT_VARIANTS[cfg.init]
        psi = spec.from_natural(values, base=spec.preset(preset))
        return traffic.floor_probabilities(spec, psi, cfg.init_min_prob)
    return traffic.initial_psi(spec, cfg.init, key, cfg.init_min_prob)


def init_names(spec) -> list[str]:
    """What ``init`` accepts: zeros, random, the simulator's presets and INIT_VARIANTS."""
    return [*common.init_names(spec), *INIT_VARIANTS]


def _curve(history: Sequence[Mapping], key: str) -> dict[str, list]:
    rows = [h for h in history if h.get(key) is not None]
    return {"step": [int(h["step"]) for h in rows], "reward": [float(h[key]) for h in rows]}


def _final(curve: Mapping[str, list], window: int) -> float | None:
    values = curve["reward"][-max(1, window) :]
    return float(np.mean(values)) if values else None


def summarize(history: Sequence[Mapping], spec, window: int) -> dict[str, Any]:
    """Curves and final values of a run's metrics rows (JSON-ready)."""
    out: dict[str, Any] = {
        "val_reward_curve": [float(h["reward_mean"]) for h in history],
        "test_reward_curve": _curve(history, "test_reward"),
    }
    out["final_test_reward"] = _final(out["test_reward_curve"], window)
    out["final_val_reward"] = _final({"reward": out["val_reward_curve"]}, window)
    if any("amtm_val_reward" in h for h in history):
        out["amtm_val_reward_curve"] = _curve(history, "amtm_val_reward")
        out["amtm_test_reward_curve"] = _curve(history, "amtm_test_reward")
        out["final_amtm_test_reward"] = _final(out["amtm_test_reward_curve"], window)
    # Figure 7: the learned (non-normalised) logits of car type and weather over iterations.
    logits: dict[str, Any] = {"step": [int(h["step"]) for h in history]}
    for block in ("car_type", "weather"):
        labels = spec[block].labels
        logits[block] = {lab: [float(h["params"][block]["logits"][lab]) for h in history] for lab in labels}
    out["logits"] = logits
    if history and "center" in history[-1]:
        out["tv_to_psi_real"] = tv_to_psi_real(spec, history[-1]["center"])
    return out


# ----- one search ----------------------------------------------------------------------------------------------
def run_search(
    cfg: CarCountConfig,
    strategy: Any,
    psi0: np.ndarray,
    workdir: Path,
    ctx: Context,
    key: jax.Array,
    *,
    num_iterations: int,
    test_every: int,
    should_stop: Callable[[], bool] | None = None,
    figures: bool = True,
) -> tuple[list[dict], bool]:
    """Runs the search in ``workdir``; returns (history: the metrics rows, stopped_early).

    ``should_stop`` (a time budget) ends the run early; that is not an error here. A CARLA pool without
    servers raises SimulatorUnavailable (run_search has checkpointed the last good iteration).
    """
    lts_cfg = lts_config(cfg, strategy)
    k_state, k_run = jax.random.split(key)
    step = lts.make_split_step(lts_cfg, ctx.sim, ctx.task, strategy, programs=ctx.programs)
    state = lts.init_state(lts_cfg, ctx.task, strategy, k_state, psi0)
    try:
        _, history = run.run_search(
            step,
            state,
            k_run,
            num_iterations,
            ctx.val,
            workdir=workdir,
            spec=ctx.sim.spec,
            test_data=ctx.test,
            test_every=test_every,
            should_stop=should_stop,
            figures=figures,
            **common.run_options(cfg),
        )
        return history, False
    except run.Interrupted as e:
        if e.signum is not None:
            raise
        return run.read_metrics(workdir), True
    except Exception as e:
        _raise_if_unavailable(e, ctx.sim, f"the last good iteration is checkpointed in {workdir}")
        raise


def lts_config(cfg: CarCountConfig, strategy: Any) -> lts.LTSConfig:
    """The LTSConfig a search runs with. A fixed psi (psi_real's reference, final params) would make the K
    candidates train on K copies of one data set under the shared simulator and training keys, so their
    mean and max over K would mean nothing: there they get distinct keys (issue 13.5)."""
    if isinstance(strategy, search.FixedSearch):
        return common.lts_config(cfg, common_sim_key=False, common_train_key=False, common_mtm_init=False)
    return common.lts_config(cfg)


def reference_length(cfg: CarCountConfig) -> int:
    """Iterations of the psi_real reference: ``reference_iterations``, or (unset) as many as the search."""
    return cfg.num_iterations if cfg.reference_iterations is None else cfg.reference_iterations


def reference_value(reference: Mapping[str, Any], cfg: CarCountConfig) -> float:
    """The psi_real test reward a final test reward compares with: its last ``final_window`` iterations when
    the candidates fine-tune the AMTM (both keep improving with the iterations), else its mean."""
    if cfg.candidates_from_amtm and "final_test" in reference:
        return float(reference["final_test"])
    return float(reference["test"])


def reference_signature(cfg: CarCountConfig, sim_info: Mapping[str, Any]) -> dict[str, Any]:
    """What the psi_real reward depends on; a stored reference is reused only when this matches."""
    keep = ("seed", "val_size", "test_size", "val_seed", "test_seed", "mtm_lr", "mtm_batch_size", "mtm_features",
            "mtm_hidden", "mtm_context", "mtm_position", "mtm_head", "mtm_norm", "mtm_loss", "compute_dtype",
            "num_candidates", "dataset_size", "mtm_epochs", "retain_mtm", "candidates_from_amtm", "final_window",
            "test_every")  # fmt: skip
    out = {k: getattr(cfg, k) for k in keep}
    out["reference_iterations"] = reference_length(cfg)
    out["simulator"] = dict(sim_info)
    return json.loads(json.dumps(out))  # as it reads back from JSON (tuples -> lists)


def reference_reward(cfg: CarCountConfig, ctx: Context, workdir: Path) -> dict[str, Any]:
    """The reward of training on psi_real under the same K, M and xi: a fixed search at psi_real.

    Runs :func:`reference_length` iterations in ``workdir`` (test every iteration) and returns the mean
    validation and test rewards over them (the paper's "mean reward w/ val params") and over the last
    ``final_window`` iterations ("final_val", "final_test": what a search's final reward compares with when
    the candidates fine-tune the AMTM, which keeps learning). Its K candidates get distinct simulator and
    training keys (:func:`lts_config`). A finished reference in ``workdir`` with the same settings is reused.
    """
    done = workdir / "results.json"
    signature = reference_signature(cfg, ctx.sim_info)
    if done.exists():
        stored = json.loads(done.read_text())
        if stored.get("signature") == signature:
            progress.say(f"{NAME}: psi_real reference: reusing the finished run in {workdir}")
            return stored["psi_real_reward"]
    run.prepare_workdir(workdir, overwrite=True)
    strategy = search.FixedSearch(ctx.sim.spec)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
    psi = ctx.sim.spec.preset(PSI_REAL)
    what = (f"psi_real reference: {reference_length(cfg)} iterations of MTMs trained on psi_real's own data (the "
            f"reward LTS should reach) -> {workdir}")  # fmt: skip
    with progress.phase(NAME, what):
        history, _ = run_search(
            dataclasses.replace(cfg, log_every=0), strategy, psi, workdir, ctx, key,
            num_iterations=reference_length(cfg), test_every=1, figures=False,
        )  # fmt: skip
    last = history[-max(1, cfg.final_window) :]
    out = {
        "val": float(np.mean([h["reward_mean"] for h in history])),
        "test": float(np.mean([h["test_reward"] for h in history])),
        "final_val": float(np.mean([h["reward_mean"] for h in last])),
        "final_test": float(np.mean([h["test_reward"] for h in last])),
        "iterations": len(history),
    }
    run.write_json(done, {"experiment": "car_count_psi_real", "psi_real_reward": out, "signature": signature})
    return out


def search_and_report(
    cfg: CarCountConfig,
    workdir: Path,
    ctx: Context,
    strategy: Any,
    *,
    should_stop: Callable[[], bool] | None = None,
    final_psi: np.ndarray | None = None,
    reference: Mapping[str, Any] | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """One car_count search in a prepared ``workdir`` over the shared ``ctx``: the search, the psi_real
    reference, results.json and car_count.png; returns the results.

    ``reference`` (a psi_real reward computed elsewhere, e.g. by the sweep) skips the reference run;
    ``final_psi`` is the start of ``fixed_params="final"`` (default: read from ``final_from``).
    """
    t0 = time.perf_counter()
    spec = ctx.sim.spec
    key = jax.random.key(cfg.seed)
    k_init, k_run = jax.random.split(key)
    psi0 = initial_point(cfg, spec, k_init, final_psi)
    lts_cfg = lts_config(cfg, strategy)
    logging.info("car_count: %s, %s, method=%s, init=%s", spec, lts_cfg, cfg.method, spec.format(psi0))
    progress.say(
        f"{NAME}: searching ({cfg.method}, init {cfg.init}): {cfg.num_iterations} iterations of K = "
        f"{lts_cfg.num_candidates} candidates x M = {lts_cfg.dataset_size} images x xi = {lts_cfg.mtm_epochs} "
        f"epochs -> {workdir}"
    )
    history, stopped = run_search(
        cfg,
        strategy,
        psi0,
        workdir,
        ctx,
        k_run,
        num_iterations=cfg.num_iterations,
        test_every=cfg.test_every,
        should_stop=should_stop,
        figures=figures,
    )
    search_time = time.perf_counter() - t0
    if not history:
        raise RuntimeError(f"{workdir}: the run stopped before its first iteration")
    if reference is None and reference_length(cfg) > 0:
        reference = reference_reward(cfg, ctx, workdir / "psi_real")
    center = np.asarray(history[-1]["center"], np.float32)
    summary = summarize(history, spec, cfg.final_window)
    test_reward = {cfg.method: summary["final_test_reward"]}
    if "final_amtm_test_reward" in summary:
        test_reward[f"{cfg.method}_amtm"] = summary["final_amtm_test_reward"]
    if reference:
        test_reward["psi_real"] = reference_value(reference, cfg)
    times = [h["time_s"] for h in history]
    results = {
        "experiment": NAME,
        "method": cfg.method,
        "search": cfg.search,
        "init": cfg.init,
        "iterations": len(history),
        "stopped_early": stopped,
        "test_reward": test_reward,
        "psi_real_reward": dict(reference) if reference else None,
        "constant_predictors": ctx.constants,
        **summary,
        **run.psi_export(spec, center),
        "psi_init": spec.describe(np.asarray(psi0, np.float32)),
        "psi_real": spec.describe(spec.preset(PSI_REAL)),
        "simulator": dict(ctx.sim_info),
        "config": {**dataclasses.asdict(cfg), **dataclasses.asdict(lts_cfg)},
        "cost": common.cost(history, eval_images=cfg.val_size + cfg.test_size),
        "timing": {
            "search_s": search_time,
            "first_iteration_s": times[0],
            "iteration_s_median": float(np.median(times[1:] if len(times) > 1 else times)),
            "total_s": time.perf_counter() - t0,
        },
    }
    run.write_json(workdir / "results.json", results)
    if figures:
        with progress.phase(NAME, "drawing the figures"):
            draw_figures_from_workdir(workdir)
    logging.info("car_count %s: test reward %s", cfg.method, test_reward)
    return results


def train_and_evaluate(cfg: CarCountConfig, workdir: str | Path) -> dict[str, Any]:
    """One car_count run in ``workdir`` (resumable): validation, the workdir check, the simulator, the
    validation and test sets, the search and its report; returns the results.

    Raises ConfigError (before any work), SimulatorUnavailable (every CARLA server failed; the last good
    iteration is checkpointed), and what ``run.prepare_workdir`` / ``run.run_search`` raise.
    """
    validate(cfg)
    workdir = common.prepare_workdir(cfg, workdir, also_ignore=traffic.SPEED_ONLY)
    sim = traffic.make_simulator(cfg)
    ctx = make_context(cfg, sim)
    return search_and_report(cfg, workdir, ctx, common.search_strategy(cfg, sim.spec))


def report(results: Mapping[str, Any], workdir: str | Path) -> str:
    """The closing lines of a run: its final rewards beside psi_real's and the constant predictors', rounded,
    and where the results and figures are."""
    method, test, ref = results["method"], results["test_reward"], results.get("psi_real_reward") or {}
    final = results.get("config", {}).get("candidates_from_amtm") and "final_test" in ref
    rows = {f"{method} (MTMs, mean over K)": {"test": test.get(method), "val": results.get("final_val_reward")}}
    if f"{method}_amtm" in test:
        rows[f"{method}: AMTM"] = {"test": test[f"{method}_amtm"]}
    if ref:
        rows["psi_real (MTMs trained on its data)"] = {"test": test.get("psi_real"),
                                                        "val": ref["final_val" if final else "val"]}  # fmt: skip
    names = {"val_median": "constant: the validation median", "zero": "constant: zero cars"}
    for name, const in (results.get("constant_predictors") or {}).items():
        rows[names.get(name, f"constant: {name}")] = {"test": const["test"], "val": const["val"]}
    window = results.get("config", {}).get("final_window", 1)
    table = progress.format_table(rows, [("test reward", "test"), ("val reward", "val")], first="")
    workdir = Path(workdir)
    figures = [workdir / f for f in ("car_count.png", "rewards.png", "params.png", "cost.png")]
    where = {"results": workdir / "results.json", "figures": [f for f in figures if f.exists()],
             "psi_real reference": workdir / "psi_real" if ref else None}  # fmt: skip
    head = (f"{NAME}: {results['iterations']} iterations. Reward = -(mean L1 count error over 5 car types), higher "
            f"is better; MTM rewards: mean of the last {window} evaluations.")  # fmt: skip
    return f"{head}\n{table}\n{progress.outputs(where)}"


# ----- figures -------------------------------------------------------------------------------------------------
def draw_figures_from_workdir(workdir: str | Path) -> list[Path]:
    """car_count.png from a finished run's results.json, and params.png again with psi_real's values as target
    lines (the registry entry of ``python -m experiments.plot``)."""
    workdir = Path(workdir)
    r = json.loads((workdir / "results.json").read_text())
    curves, steps = {"MTM val reward (mean over K)": r["val_reward_curve"]}, {}
    for name, key in (("MTM test reward", "test_reward_curve"), ("AMTM test reward", "amtm_test_reward_curve")):
        if r.get(key) and r[key]["step"]:
            curves[name], steps[name] = r[key]["reward"], r[key]["step"]
    ref = r.get("psi_real_reward") or {}
    hlines = {}
    if ref:
        final = r.get("config", {}).get("candidates_from_amtm") and "final_test" in ref
        hlines = {"psi_real: val reward": ref["final_val" if final else "val"],
                  "psi_real: test reward": ref["final_test" if final else "test"]}  # fmt: skip
    const = r.get("constant_predictors") or {}
    if const:
        hlines["constant: validation median (test)"] = const["val_median"]["test"]
        hlines["constant: zero cars (test)"] = const["zero"]["test"]
    path = plots.reward_curves(
        curves,
        workdir / "car_count.png",
        steps=steps,
        hlines=hlines,
        ylabel="reward = -(mean L1 count error)",
        title=f"car counting: {r['method']} from init {r['init']}, {r['iterations']} iterations (higher is better)",
    )
    written = [path]
    history = run.read_metrics(workdir)
    if history and r.get("psi_real"):
        params = plots.params_figure(history, workdir / "params.png", targets=r["psi_real"], target_label="psi_real")
        written += [params] if params else []
    return written
