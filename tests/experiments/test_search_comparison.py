"""The search-strategy comparison (issue 17.4): its strategies, the "images to reach" analysis and table on synthetic
curves, a tiny comparison end to end (sub-runs reused, another configuration refused), the quick flagfile."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import search_comparison as cli_module
from experiments.lib import car_count, common, traffic
from experiments.lib import search_comparison as lib
from lts_jax import run, search
from lts_jax.search import policy
from tests.conftest import LinearCountTask
from tests.experiments.conftest import FLAGFILES

TINY = dict(
    num_iterations=2, num_candidates=2, seeds=(0, 1), gmm_dataset_size=20, gmm_eval_repeats=1, gmm_curve_every=1,
    gmm_curve_repeats=1, height=24, width=80, dataset_size=8, val_size=16, test_size=16, test_every=1, final_window=2,
    reach_window=1, mtm_features=(4, 8, 8, 8), mtm_hidden=8, mtm_batch_size=8, render_chunk=16, progress=False,
)  # fmt: skip
TINY_FLAGS = [
    "--num_iterations=2", "--num_candidates=2", "--seeds=0", "--gmm_dataset_size=20", "--gmm_eval_repeats=1",
    "--gmm_curve_every=1", "--gmm_curve_repeats=1", "--problems=gmm", "--noprogress",
]  # fmt: skip


def test_strategies_are_the_paper_policy_the_recommendation_and_the_es():
    cfg = lib.SearchComparisonConfig()
    subs = {s.strategy: s.cfg for s in lib.plan(dataclasses.replace(cfg, seeds=(0,), problems=("car_count",)))}
    assert set(subs) == {"reinforce", "reinforce_vr", "openes", "snes", "cma_es", "pgpe"}
    paper = common.search_options(subs["reinforce"], "lts")
    assert (paper["learning_rate"], paper["advantages"], paper["baseline"], paper["prob_floor"]) == (0.2, "raw", "ema",
                                                                                                     0.0)  # fmt: skip
    assert paper["variance"] == 0.05 and paper["tie_std_growth"] == 1.0  # car_count's own defaults do not leak in
    vr = common.search_options(subs["reinforce_vr"], "lts")
    assert {k: vr[k] for k in policy.RECOMMENDED} == policy.RECOMMENDED
    for name in ("openes", "snes", "cma_es", "pgpe"):
        assert subs[name].search == name
        assert set(common.search_options(subs[name], name)) <= set(search.options(name))
    gmm_cfg = lib.gmm_config(cfg, "reinforce", 3)
    assert (gmm_cfg.seed, gmm_cfg.dataset_size, gmm_cfg.policy_variance, gmm_cfg.init) == (3, 100, 0.05, "random")


def test_images_to_reach():
    images = [100, 200, 300, 400, 500]
    assert lib.images_to_reach(images, [0.5, 0.96, 0.6, 0.97, 0.98], 0.95) == 200  # the first point at the target
    assert lib.images_to_reach(images, [0.5, 0.96, 0.6, 0.97, 0.98], 0.95, window=2) == 500  # a mean of 2 points
    assert lib.images_to_reach(images, [0.5, 0.6, 0.7, 0.8, 0.9], 0.95) is None
    assert lib.images_to_reach(images[:1], [0.97], 0.95, window=3) == 100  # a curve shorter than the window
    # "95% of" a negative reward: within 5% of it
    assert lib.reach_target(-0.8, 0.95) == pytest.approx(-0.84) and lib.reach_target(0.9, 0.95) == pytest.approx(0.855)
    assert lib.images_to_reach(images, [-1.0, -0.9, -0.85, -0.83, -0.8], lib.reach_target(-0.8, 0.95)) == 400


def _run(problem, strategy, seed, rewards, wall, **extra):
    images = [100 * (i + 1) for i in range(len(rewards))]
    curve = {"step": list(range(len(rewards))), "images": images, "wall_s": wall, "reward": rewards}
    if problem == "car_count":
        curve["tv"] = [0.3 - 0.05 * i for i in range(len(rewards))]
    return {"status": "done", "problem": problem, "strategy": strategy, "seed": seed, "iterations": len(rewards),
            "final_reward": rewards[-1], "curve": curve, "cost": {"wall_s": wall[-1], "search_images": images[-1]},
            **extra}  # fmt: skip


def test_analysis_table_and_figures_on_synthetic_curves(tmp_path):
    """Per strategy: images to reach 95% (mean over the seeds that reached it, and how many), final reward mean and
    std over seeds, wall time; failed runs and unreached targets are reported, not hidden."""
    runs = {
        "gmm_reinforce_seed0": _run("gmm", "reinforce", 0, [0.5, 0.9, 0.96, 0.97], [1, 2, 3, 4], reference=1.0),
        "gmm_reinforce_seed1": _run("gmm", "reinforce", 1, [0.5, 0.8, 0.9, 0.95], [1, 2, 3, 5], reference=1.0),
        "gmm_openes_seed0": _run("gmm", "openes", 0, [0.5, 0.6, 0.7, 0.8], [2, 4, 6, 8], reference=1.0),
        "gmm_openes_seed1": {"status": "failed", "error": "boom"},
        lib.REFERENCE_RUN: {"status": "done", "problem": "car_count", "value": -0.8},
        "car_count_reinforce_seed0": _run("car_count", "reinforce", 0, [-1.2, -0.9, -0.83], [1, 2, 3], final_tv=0.2),
        "car_count_reinforce_seed1": _run("car_count", "reinforce", 1, [-1.1, -0.82, -0.81], [1, 2, 3], final_tv=0.1),
    }
    config = {"num_iterations": 4, "num_candidates": 8}
    summary = {"plan": {"problems": ["gmm", "car_count"], "strategies": ["reinforce", "openes"], "seeds": [0, 1],
                        "reach_fraction": 0.95, "reach_window": 1, "config": config}, "runs": runs}  # fmt: skip
    written = lib.finish(summary, tmp_path)
    a = summary["analysis"]
    g = a["gmm"]
    assert g["reference"] == 1.0 and g["target"] == pytest.approx(0.95)
    r = g["strategies"]["reinforce"]
    assert r["images_to_reach"]["per_seed"] == [300.0, 400.0] and r["images_to_reach"]["mean"] == 350.0
    assert r["images_to_reach"]["reached"] == 2 and r["seeds_done"] == 2
    assert r["final_reward"]["mean"] == pytest.approx(0.96) and r["final_reward"]["std"] == pytest.approx(np.std(
        [0.97, 0.95], ddof=1))  # fmt: skip
    assert r["wall_s"]["mean"] == 4.5
    o = g["strategies"]["openes"]
    assert o["seeds_done"] == 1 and o["images_to_reach"]["reached"] == 0 and o["images_to_reach"]["mean"] is None
    c = a["car_count"]
    assert c["reference"] == -0.8 and c["target"] == pytest.approx(-0.84)
    cr = c["strategies"]["reinforce"]
    assert cr["images_to_reach"]["per_seed"] == [300.0, 200.0] and cr["final_tv"]["mean"] == pytest.approx(0.15)
    assert c["strategies"]["openes"]["seeds_done"] == 0
    table = (tmp_path / lib.TABLE_FILE).read_text()
    assert "| REINFORCE (paper) | 350 (2/2 seeds) | 0.960 ± 0.014 | 4.5 ± 0.7 |" in table
    assert "| OpenAI-ES | not reached (0/1 seeds; 400 examples) | 0.800 ± 0.000 |" in table
    assert "| REINFORCE (paper) | 250 (2/2 seeds) | -0.820 ± 0.014 |" in table and "| OpenAI-ES | n/a |" in table
    assert json.loads((tmp_path / lib.RESULTS_FILE).read_text())["analysis"]["gmm"]["target"] == pytest.approx(0.95)
    names = {p.name for p in written}
    assert {"search_comparison_gmm.png", "search_comparison_car_count.png"} <= names
    assert (tmp_path / "search_comparison_car_count.png").stat().st_size > 10_000
    (tmp_path / "search_comparison_gmm.png").unlink()
    lib.redraw(tmp_path)
    assert (tmp_path / "search_comparison_gmm.png").exists()


def tiny_context(base):
    """car_count's context with the linear counting task: the renderer and the step's path, not the CNN."""
    return dataclasses.replace(car_count.make_context(base, traffic.make_simulator(base)), task=LinearCountTask())


@pytest.mark.slow
def test_tiny_comparison_end_to_end(tmp_path):
    cfg = lib.SearchComparisonConfig(strategies=("reinforce", "cma_es"), **TINY)
    lines = []
    s = lib.train_and_evaluate(cfg, tmp_path, make_ctx=tiny_context, log=lines.append)
    expected = {
        f"{p}_{st}_seed{seed}" for p in ("gmm", "car_count") for st in ("reinforce", "cma_es") for seed in (0, 1)
    }
    assert set(s["runs"]) == expected | {lib.REFERENCE_RUN}
    assert all(e["status"] == "done" for e in s["runs"].values()), {n: e.get("error") for n, e in s["runs"].items()}
    for name in expected:
        e = s["runs"][name]
        M = 20 if e["problem"] == "gmm" else 8
        assert e["cost"]["search_images"] == 2 * 2 * M and e["curve"]["images"] == [2 * M, 4 * M]
        assert e["curve"]["wall_s"][1] > e["curve"]["wall_s"][0] > 0
    car = s["runs"]["car_count_reinforce_seed0"]
    assert car["cost"]["sim_s"] > 0 and car["cost"]["train_s"] > 0 and len(car["curve"]["tv"]) == 2
    assert 0 <= car["final_tv"] <= 1 and set(car["tv_to_psi_real"]) >= {"car_type", "weather"}
    a = s["analysis"]
    assert a["gmm"]["reference"] > 0.9 and a["car_count"]["reference"] < 0
    assert set(a["gmm"]["strategies"]) == {"reinforce", "cma_es"}
    assert (tmp_path / "search_comparison_car_count.png").stat().st_size > 10_000
    assert "| CMA-ES |" in (tmp_path / lib.TABLE_FILE).read_text()
    # Re-running reuses every finished sub-run; a plan with fewer seeds reuses what it still holds.
    s2 = lib.train_and_evaluate(dataclasses.replace(cfg, seeds=(1,)), tmp_path, make_ctx=tiny_context, log=lines.append)
    assert all(e.get("reused") for e in s2["runs"].values()) and len(s2["runs"]) == 5
    # Another configuration of the sub-runs is refused before any work, naming the setting.
    with pytest.raises(run.WorkdirError) as err:
        lib.train_and_evaluate(dataclasses.replace(cfg, num_iterations=3), tmp_path, make_ctx=tiny_context)
    assert {d[0] for d in err.value.differences} == {"num_iterations"}


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_gmm_comparison_in_seconds(tmp_path):
    """The smoke test of the fast tier: the GMM half, REINFORCE and an ES, one seed, two iterations."""
    cfg = lib.SearchComparisonConfig(problems=("gmm",), strategies=("reinforce", "snes"), **{**TINY, "seeds": (0,)})
    s = lib.train_and_evaluate(cfg, tmp_path, figures=False, log=lambda _: None)
    assert [e["status"] for e in s["runs"].values()] == ["done"] * 2
    assert set(s["analysis"]["gmm"]["strategies"]) == {"reinforce", "snes"}
    assert "| SNES |" in (tmp_path / lib.TABLE_FILE).read_text()


@pytest.mark.slow
def test_quick_flagfile_tiny(tmp_path, cli):
    flagfile = FLAGFILES / "search_comparison_quick.flags"
    status, err = cli(cli_module.main, f"--flagfile={flagfile}", f"--workdir={tmp_path}", *TINY_FLAGS)
    assert status == 0, err[-3000:]
    summary = json.loads((tmp_path / lib.RESULTS_FILE).read_text())
    assert summary["plan"]["strategies"] == list(lib.STRATEGIES) and summary["plan"]["seeds"] == [0]
    assert (tmp_path / "search_comparison_gmm.png").exists()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--strategies=reinforce,bogus"], "strategies"),
        (["--problems=mnist"], "problems"),
        (["--seeds=1,1"], "seeds"),
        (["--reach_fraction=1.5"], "reach_fraction"),
        (["--num_candidates=3"], "num_candidates"),  # openes and pgpe mirror their samples
        (["--search=snes"], "search"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path, cli, args, flag):
    status, err = cli(cli_module.main, f"--workdir={tmp_path / 'w'}", *args)
    assert status == 2 and f"--{flag}" in err, err[-2000:]
    assert not (tmp_path / "w").exists()  # validated before any work
