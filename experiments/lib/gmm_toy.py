"""Paper section 4.1 / Table 2 / Figure 2 as a function: learning a 2-D Gaussian-mixture simulator.

    results = train_and_evaluate(GmmToyConfig(num_iterations=5), workdir)

The real distribution p has 3 Gaussians per class; the simulator q has ``num_gaussians`` per class whose
means and variances are learned so that an RBF-SVM trained on q's samples is accurate on p's validation
set. Writes results.json (test accuracy of the search's answer and of training on p's own parameters),
metrics.jsonl, figure2.png (decision boundaries) and reward.png.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments.lib import common
from lts_jax import lts, run
from lts_jax.run import plots, progress
from lts_jax.tasks.svm import SVMTask, fit_svc
from simulators import gmm

NAME = "gmm_toy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class GmmToyConfig(common.SearchConfig):
    """A gmm_toy run: the shared search settings (with this experiment's defaults) and its own."""

    num_gaussians: int = 2
    val_size: int = 500
    test_size: int = 1000
    val_seed: int = 1001
    test_seed: int = 2002
    svm_c: float = 1.0
    eval_repeats: int = 5
    # shared settings, this experiment's defaults
    num_iterations: int = 300
    dataset_size: int = 250
    init: str = "zeros"
    policy_lr: float = 0.2
    policy_variance: float = 0.2
    common_sim_key: bool = True
    log_every: int = 50


def validate(cfg: GmmToyConfig) -> None:
    """Every setting, before any work (ConfigError naming the first bad one)."""
    common.validate_search(cfg)
    common.check(cfg.num_gaussians >= 1, "num_gaussians", cfg.num_gaussians, "an integer >= 1")
    common.check(cfg.val_size >= 2, "val_size", cfg.val_size, "an integer >= 2")
    common.check(cfg.test_size >= 2, "test_size", cfg.test_size, "an integer >= 2")
    common.check(cfg.svm_c > 0, "svm_c", cfg.svm_c, "a float > 0")
    common.check(cfg.eval_repeats >= 1, "eval_repeats", cfg.eval_repeats, "an integer >= 1")
    common.check(cfg.dataset_size >= 2, "dataset_size", cfg.dataset_size, "an integer >= 2")
    common.check(not cfg.retain_mtm, "retain_mtm", cfg.retain_mtm,
                 "false (the SVM is fitted afresh on each data set: there is no model to accumulate)")  # fmt: skip
    common.validate_init(cfg, common.init_names(gmm.make_spec(cfg.num_gaussians)))


def test_accuracy(sample_fn, psi, num: int, test: dict, seed: int, repeats: int, C: float) -> float:
    """Mean test accuracy of SVMs trained on ``repeats`` data sets of size ``num`` from ``psi``."""
    accs = []
    for r in range(repeats):
        tr = jax.tree_util.tree_map(np.asarray, sample_fn(jax.random.key(seed + r), jnp.asarray(psi), num))
        clf = fit_svc(tr["x"], tr["y"], C)
        accs.append(float(np.mean(clf.predict(test["x"]) == test["y"])))
    return float(np.mean(accs))


def train_and_evaluate(
    cfg: GmmToyConfig,
    workdir: str | Path,
    *,
    should_stop: Callable[[], bool] | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Runs the search in ``workdir`` (resumable) and writes results.json and the figures; returns the results.

    ``should_stop`` (polled between iterations: a time budget) ends the search early, which is not an error:
    the results are those of the iterations run (``"stopped_early": true``). ``figures=False`` draws none.

    Raises ConfigError (a bad setting, before any work), and what ``run.prepare_workdir`` and
    ``run.run_search`` raise (RunComplete for a finished run, WorkdirError, Interrupted by a signal, ...).
    """
    validate(cfg)
    workdir = common.prepare_workdir(cfg, workdir)
    sim = gmm.GMMSimulator(cfg.num_gaussians)
    spec = sim.spec
    val = gmm.sample_real(cfg.val_seed, cfg.val_size)
    test = gmm.sample_real(cfg.test_seed, cfg.test_size)
    lts_cfg = common.lts_config(cfg)
    task = SVMTask(lts_cfg.dataset_size, C=cfg.svm_c)
    search = common.search_strategy(cfg, spec)

    key = jax.random.key(cfg.seed)
    k_init, k_state, k_run = jax.random.split(key, 3)
    psi0 = spec.initial(cfg.init, k_init)
    M = lts_cfg.dataset_size
    step = lts.make_step(lts_cfg, sim, task, search)
    state = lts.init_state(lts_cfg, task, search, k_state, psi0)
    logging.info("gmm_toy: %s, %s, search=%s, init=%s", spec, lts_cfg, cfg.search, cfg.init)
    progress.say(
        f"{NAME}: searching ({cfg.search}, init {cfg.init}, {cfg.num_gaussians} Gaussian(s) per class): "
        f"{cfg.num_iterations} iterations of K = {lts_cfg.num_candidates} x M = {M} points -> {workdir}"
    )
    stopped = False
    try:
        state, history = run.run_search(
            step, state, k_run, cfg.num_iterations, val, workdir=workdir, spec=spec, should_stop=should_stop,
            figures=figures, **common.run_options(cfg),
        )  # fmt: skip
        center = np.asarray(search.center(state.search))
    except run.Interrupted as e:
        if e.signum is not None:
            raise
        stopped, history = True, run.read_metrics(workdir)
        if not history:
            raise RuntimeError(f"{workdir}: the run stopped before its first iteration") from e
        center = np.asarray(history[-1]["center"], np.float32)  # the search's answer after its last iteration

    sample = jax.jit(sim.sample, static_argnums=2)
    real_sim, psi_real = gmm.real_simulator()
    real_sample = jax.jit(real_sim.sample, static_argnums=2)
    what = f"test accuracy: SVMs on {cfg.eval_repeats} data sets of the learned q and of p, {cfg.test_size} test points"
    with progress.phase(NAME, what):
        acc = {
            cfg.search: test_accuracy(sample, center, M, test, 7000, cfg.eval_repeats, cfg.svm_c),
            "val_params": test_accuracy(real_sample, psi_real, M, test, 8000, cfg.eval_repeats, cfg.svm_c),
        }
    results = {
        "experiment": NAME,
        "simulator": sim.describe(),
        "num_gaussians": cfg.num_gaussians,
        "iterations": len(history),
        "stopped_early": stopped,
        "search": cfg.search,
        "test_accuracy": acc,
        "val_reward": lts.summarize_rewards(history),
        "cost": common.cost(history, eval_images=cfg.val_size + cfg.test_size),
        "psi": spec.describe(center),
        "psi_raw": center.tolist(),
        "config": {**dataclasses.asdict(cfg), **dataclasses.asdict(lts_cfg)},
    }
    run.write_json(workdir / "results.json", results)
    if figures:
        with progress.phase(NAME, "drawing the figures"):
            draw_figures_from_workdir(workdir)
    logging.info("test accuracy: %s", acc)
    return results


def report(results: dict[str, Any], workdir: str | Path) -> str:
    """The closing lines of a run: test accuracies and the search's validation reward, rounded, and where the
    results and figures are."""
    search, acc, val = results["search"], results["test_accuracy"], results.get("val_reward") or {}
    rows = {f"{search} (the learned q)": {"test": acc.get(search), "first": val.get("first"), "last": val.get("last"),
                                          "best": val.get("best")},
            "val params (p itself)": {"test": acc.get("val_params")}}  # fmt: skip
    columns = [("test accuracy", "test"), ("val reward: first", "first"), ("last", "last"), ("best", "best")]
    workdir = Path(workdir)
    figures = [workdir / f for f in ("figure2.png", "reward.png", "rewards.png", "params.png", "cost.png")]
    where = {"results": workdir / "results.json", "figures": [f for f in figures if f.exists()]}
    head = f"{NAME}: {results['iterations']} iterations, {results['num_gaussians']} Gaussian(s) per class in q"
    return f"{head}\n{progress.format_table(rows, columns)}\n{progress.outputs(where)}"


def draw_figures_from_workdir(workdir: str | Path) -> list[Path]:
    """Redraws figure2.png and reward.png from a finished run's files (results.json, metrics.jsonl).

    The figure registry of ``python -m experiments.plot`` calls this for results.json's "experiment" == "gmm_toy".
    """
    workdir = Path(workdir)
    c = json.loads((workdir / "results.json").read_text())["config"]
    sim = gmm.GMMSimulator(c["num_gaussians"])
    val = gmm.sample_real(c["val_seed"], c["val_size"])
    test = gmm.sample_real(c["test_seed"], c["test_size"])
    _, psi_real = gmm.real_simulator()
    history = run.read_metrics(workdir)
    draw_figures(workdir, sim, history, val, test, c["dataset_size"], c["svm_c"], psi_real)
    return [workdir / "figure2.png", workdir / "reward.png"]


def draw_figures(workdir: Path, sim, history, val, test, M: int, C: float, psi_real) -> None:
    """figure2.png (paper Figure 2) and reward.png from the run's history."""
    sample = jax.jit(sim.sample, static_argnums=2)
    real_sim = gmm.GMMSimulator(3)

    def fitted(sample_fn, psi, seed):
        tr = jax.tree_util.tree_map(np.asarray, sample_fn(jax.random.key(seed), jnp.asarray(psi, jnp.float32), M))
        return fit_svc(tr["x"], tr["y"], C), tr

    def accuracy(clf, data) -> float:
        return float(np.mean(clf.predict(data["x"]) == data["y"]))

    n = len(history)
    picks = sorted({0, n // 10, n - 1})
    g = sim.num_gaussians
    components = f"{g} Gaussian{'s' if g > 1 else ''} per class"
    test_points = (test["x"], test["y"])
    panels = []
    for i in picks:
        clf, _ = fitted(sample, history[i]["center"], 9000 + i)
        panels.append({"title": f"SVM trained on q at iteration {i}", "predict_fn": clf.predict,
                       "points": test_points, "accuracy": accuracy(clf, test)})  # fmt: skip
    clf_p, _ = fitted(jax.jit(real_sim.sample, static_argnums=2), psi_real, 9100)
    clf_q, data_q = fitted(sample, history[-1]["center"], 9200)
    panels += [
        {"title": "SVM trained on p (val params)", "predict_fn": clf_p.predict, "points": test_points,
         "accuracy": accuracy(clf_p, test)},
        {"title": "SVM trained on the learned q", "predict_fn": clf_q.predict, "points": test_points,
         "accuracy": accuracy(clf_q, test)},
        {"title": f"{M} samples from the learned q", "points": (data_q["x"], data_q["y"])},
    ]  # fmt: skip
    plots.decision_boundary_panels(
        panels,
        workdir / "figure2.png",
        title=f"Figure 2: RBF-SVM decision boundaries over p's {len(test['y'])} test points; q: {components}",
    )
    plots.reward_curves(
        {
            "mean over the K candidates": [h["reward_mean"] for h in history],
            "best so far": [h["best_reward"] for h in history],
        },
        workdir / "reward.png",
        hlines={"SVM trained on p's own samples": accuracy(clf_p, val)},
        ylabel="validation accuracy (the reward)",
        title=f"gmm_toy: the search's reward; q: {components}",
    )
