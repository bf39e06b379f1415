r"""Paper section 4.1 / Table 2 / Figure 2: learning a 2-D Gaussian-mixture simulator.

    python -m experiments.gmm_toy --flagfile=experiments/flags/gmm_toy_quick.flags --workdir=/tmp/gmm

The real distribution p has 3 Gaussians per class; the simulator q has
``--num_gaussians`` per class whose means and variances are learned so that an
RBF-SVM trained on q's samples is accurate on p's validation set. Writes
results.json (test accuracy of LTS and of training on p's own parameters),
metrics.jsonl, figure2.png (decision boundaries) and reward.png.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from experiments import common
from lts_jax import lts, run
from lts_jax.run import plots
from lts_jax.tasks.svm import SVMTask, fit_svc
from simulators import gmm

NUM_GAUSSIANS = flags.DEFINE_integer("num_gaussians", 2, "Gaussians per class in the simulator q (Table 2: 1 or 2).")
VAL_SIZE, TEST_SIZE, VAL_SEED, TEST_SEED = common.VAL_SIZE, common.TEST_SIZE, common.VAL_SEED, common.TEST_SEED
SVM_C = flags.DEFINE_float("svm_c", 1.0, "C of the RBF SVM.")
EVAL_REPEATS = flags.DEFINE_integer(
    "eval_repeats", 5, "Final test accuracy: mean over this many training sets drawn from the learned q (and from p)."
)

common.set_defaults(
    val_size=500,
    test_size=1000,
    num_iterations=300,
    num_candidates=8,
    dataset_size=250,
    mtm_epochs=1,
    init="zeros",
    policy_lr=0.2,
    policy_variance=0.2,
    common_sim_key=True,
    log_every=50,
)


@dataclasses.dataclass(frozen=True)
class Config:
    num_gaussians: int = 2
    num_iterations: int = 300
    search: str = "lts"
    init: str = "random"
    seed: int = 0
    val_size: int = 500
    test_size: int = 1000
    val_seed: int = 1001
    test_seed: int = 2002
    svm_c: float = 1.0
    eval_repeats: int = 5
    progress: bool = True
    log_every: int = 50
    checkpoint_every: int = run.DEFAULT_CHECKPOINT_EVERY
    keep_checkpoints: int = run.DEFAULT_KEEP_CHECKPOINTS


def test_accuracy(sample_fn, psi, num: int, test: dict, seed: int, repeats: int, C: float) -> float:
    """Mean test accuracy of SVMs trained on ``repeats`` data sets of size ``num`` from ``psi``."""
    accs = []
    for r in range(repeats):
        tr = jax.tree_util.tree_map(np.asarray, sample_fn(jax.random.key(seed + r), jnp.asarray(psi), num))
        clf = fit_svc(tr["x"], tr["y"], C)
        accs.append(float(np.mean(clf.predict(test["x"]) == test["y"])))
    return float(np.mean(accs))


def train_and_evaluate(cfg: Config, lts_cfg: lts.LTSConfig, search, workdir: Path) -> dict:
    """Runs the search and writes results.json and figures; returns the results."""
    sim = gmm.GMMSimulator(cfg.num_gaussians)
    spec = sim.spec
    val = gmm.sample_real(cfg.val_seed, cfg.val_size)
    test = gmm.sample_real(cfg.test_seed, cfg.test_size)
    task = SVMTask(lts_cfg.dataset_size, C=cfg.svm_c)

    key = jax.random.key(cfg.seed)
    k_init, k_state, k_run = jax.random.split(key, 3)
    psi0 = spec.initial(cfg.init, k_init)
    step = lts.make_step(lts_cfg, sim, task, search)
    state = lts.init_state(lts_cfg, task, search, k_state, psi0)
    logging.info("gmm_toy: %s, %s, search=%s, init=%s", spec, lts_cfg, cfg.search, cfg.init)
    state, history = run.run_search(
        step,
        state,
        k_run,
        cfg.num_iterations,
        val,
        workdir=workdir,
        spec=spec,
        progress=cfg.progress,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
    )

    sample = jax.jit(sim.sample, static_argnums=2)
    center = np.asarray(search.center(state.search))
    real_sim, psi_real = gmm.real_simulator()
    real_sample = jax.jit(real_sim.sample, static_argnums=2)
    M = lts_cfg.dataset_size
    acc = {
        cfg.search: test_accuracy(sample, center, M, test, 7000, cfg.eval_repeats, cfg.svm_c),
        "val_params": test_accuracy(real_sample, psi_real, M, test, 8000, cfg.eval_repeats, cfg.svm_c),
    }
    results = {
        "experiment": "gmm_toy",
        "simulator": sim.describe(),
        "num_gaussians": cfg.num_gaussians,
        "iterations": int(state.iteration),
        "search": cfg.search,
        "test_accuracy": acc,
        "val_reward": lts.summarize_rewards(history),
        "psi": spec.describe(center),
        "psi_raw": center.tolist(),
        "config": {**dataclasses.asdict(cfg), **dataclasses.asdict(lts_cfg)},
    }
    run.write_json(workdir / "results.json", results)
    draw_figures_from_workdir(workdir)
    logging.info("test accuracy: %s", acc)
    return results


def draw_figures_from_workdir(workdir: Path) -> list[Path]:
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

    n = len(history)
    picks = sorted({0, n // 10, n - 1})
    panels = []
    for i in picks:
        clf, _ = fitted(sample, history[i]["center"], 9000 + i)
        panels.append({"title": f"q at iteration {i}", "predict_fn": clf.predict, "points": (test["x"], test["y"])})
    clf_p, _ = fitted(jax.jit(real_sim.sample, static_argnums=2), psi_real, 9100)
    clf_q, data_q = fitted(sample, history[-1]["center"], 9200)
    panels += [
        {"title": "trained on p (val params)", "predict_fn": clf_p.predict, "points": (test["x"], test["y"])},
        {"title": "trained on learned q", "predict_fn": clf_q.predict, "points": (test["x"], test["y"])},
        {"title": "samples from learned q", "points": (data_q["x"], data_q["y"])},
    ]
    plots.decision_boundary_panels(panels, workdir / "figure2.png")
    plots.reward_curves(
        {
            "mean reward (val accuracy)": [h["reward_mean"] for h in history],
            "best": [h["best_reward"] for h in history],
        },
        workdir / "reward.png",
        ylabel="validation accuracy",
        title="gmm_toy",
    )


def main() -> None:
    common.validate_shared()
    common.check(NUM_GAUSSIANS.value >= 1, "num_gaussians", NUM_GAUSSIANS.value, "an integer >= 1")
    common.check(VAL_SIZE.value >= 2, "val_size", VAL_SIZE.value, "an integer >= 2")
    common.check(TEST_SIZE.value >= 2, "test_size", TEST_SIZE.value, "an integer >= 2")
    common.check(SVM_C.value > 0, "svm_c", SVM_C.value, "a float > 0")
    common.check(EVAL_REPEATS.value >= 1, "eval_repeats", EVAL_REPEATS.value, "an integer >= 1")
    common.check(common.DATASET_SIZE.value >= 2, "dataset_size", common.DATASET_SIZE.value, "an integer >= 2")
    spec = gmm.make_spec(NUM_GAUSSIANS.value)
    common.validate_init(spec)
    cfg = Config(
        num_gaussians=NUM_GAUSSIANS.value,
        num_iterations=common.NUM_ITERATIONS.value,
        search=common.SEARCH.value,
        init=common.INIT.value,
        seed=common.SEED.value,
        val_size=VAL_SIZE.value,
        test_size=TEST_SIZE.value,
        val_seed=VAL_SEED.value,
        test_seed=TEST_SEED.value,
        svm_c=SVM_C.value,
        eval_repeats=EVAL_REPEATS.value,
        progress=common.PROGRESS.value,
        log_every=common.LOG_EVERY.value,
        checkpoint_every=common.CHECKPOINT_EVERY.value,
        keep_checkpoints=common.KEEP_CHECKPOINTS.value,
    )
    lts_cfg = common.lts_config()
    search = common.make_search(cfg.search, spec)
    # Checks the flags against a run already in the workdir: resume, extend, "already complete", or exit 2.
    workdir = common.prepare_workdir()
    results = train_and_evaluate(cfg, lts_cfg, search, workdir)
    print(f"test accuracy: {results['test_accuracy']}  results: {workdir / 'results.json'}")


if __name__ == "__main__":
    app.run(common.run_main(main))
