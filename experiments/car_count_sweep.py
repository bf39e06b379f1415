r"""Paper section 4.3 and appendices C-E in one process: every car-counting comparison, then the figures.

    python -m experiments.car_count_sweep --scale=quick --workdir=/tmp/cc_sweep
    python -m experiments.car_count_sweep --flagfile=experiments/flags/car_count_sweep.flags \
        --workdir=/tmp/cc_sweep --summary_dir=$OUT                        # paper scale, one GPU

Sub-runs (each a car_count run in WORKDIR/runs/NAME; all with the AMTM unless noted):
  psi_real         fixed search at psi_real: the reference line ("mean reward w/ val params", Fig. 4, 9)
                   and the AMTM "validation params" (Fig. 5a)
  lts_random       LTS from a random psi (seed 0): Fig. 4a/b, 5a, 7, 9
  lts_adversarial  LTS from the simulator's "adversarial" preset (almost no cars, pickups, fog): Fig. 4a/b, 5b
  lts_adversarial_crowded   the same with car presence 0.9 (car_count.INIT_VARIANTS says why): Fig. 4a/b, 5b
  random_params    fresh uniform psi every iteration: Fig. 5a
  final_params     fixed search at lts_random's final psi: Fig. 5a
  lts_seed1, ...   LTS from other random inits and seeds (--num_seeds in all, with lts_random): Fig. 4c, 9
  xi<v>            LTS with xi = v epochs, for --xi_values other than --mtm_epochs: Fig. 5c
  M<v>             LTS with M = v images per candidate (no AMTM), for --m_values other than
                   --dataset_size: Fig. 8
  big/M<v>.json    Fig. 8 (appendix D): the final psi of each M run -> --big_size images -> a fresh CNN
                   trained --big_epochs epochs -> validation and test L1 (and psi_real's own, for scale)

Every sub-run shares one process, one renderer program, one validation and test set and the compiled
training programs that its configuration allows (lts.make_split_step). A failing sub-run is
recorded and the others go on; a sub-run whose results.json exists is reused, so re-running the command
resumes. With --time_budget_s each sub-run gets a share of the remaining time proportional to its planned
work and stops early when its share is spent (never below --min_iterations); the iterations each run
made are recorded.

--summary_dir (default: --workdir) receives the few files to keep: sweep_results.json (every figure's
numbers, final test rewards per method, the targets of issue 5), sweep_table.md (the README table) and
fig4.png fig5.png fig7.png fig8.png fig9.png. ``--redraw`` redraws them from sweep_results.json alone.

Scales (--scale presets; flags given explicitly win): tiny (a test: seconds after compilation),
quick (minutes on 2 CPU cores), paper (7 minutes on one H200, measured; see experiments/flags/car_count_sweep.flags).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

import simulators
from experiments import car_count, common, traffic_common
from lts_jax import lts, run

SCALE = flags.DEFINE_string("scale", "quick", "Preset of sizes: tiny, quick or paper (explicit flags win).")
SUMMARY_DIR = flags.DEFINE_string("summary_dir", None, "Where sweep_results.json, the table and figures go.")
XI_VALUES = flags.DEFINE_list("xi_values", None, "Fig. 5c: MTM epochs per iteration to compare.")
M_VALUES = flags.DEFINE_list("m_values", None, "Fig. 8: images per candidate to compare.")
NUM_SEEDS = flags.DEFINE_integer("num_seeds", None, "Fig. 4c / 9: LTS runs from random inits and seeds.")
BIG_SIZE = flags.DEFINE_integer("big_size", None, "Fig. 8: images rendered with each final psi (paper 40,000).")
BIG_EPOCHS = flags.DEFINE_integer("big_epochs", None, "Fig. 8: epochs of training on them (paper 5).")
TIME_BUDGET_S = flags.DEFINE_float("time_budget_s", None, "Wall-time budget of the sweep in seconds (0: none).")
MIN_ITERATIONS = flags.DEFINE_integer("min_iterations", None, "No sub-run stops for the budget before this.")
ONLY = flags.DEFINE_list("only", None, "Run only these sub-runs (names as above; big for Fig. 8's training).")
REDRAW = flags.DEFINE_bool("redraw", False, "Only redraw the figures and table from sweep_results.json.")

# Per scale: flag -> value, applied where the flag was not given explicitly.
SCALES: dict[str, dict[str, Any]] = {
    # A test: tiny images and networks, a few iterations.
    "tiny": dict(
        height=24, width=80, num_iterations=3, num_candidates=2, dataset_size=8, mtm_epochs=1, val_size=16,
        test_size=16, test_every=1, mtm_features=["4", "8", "8", "8"], mtm_hidden=8, mtm_batch_size=8,
        render_chunk=16, xi_values=["1", "2"], m_values=["4", "8"], num_seeds=2, big_size=32, big_epochs=1,
        time_budget_s=0.0, min_iterations=1, final_window=2, checkpoint_every=0, log_every=0,
    ),
    # About 10 minutes on 2 CPU cores (32x96 images; ~1 s per iteration).
    "quick": dict(
        height=32, width=96, num_iterations=40, num_candidates=8, dataset_size=50, mtm_epochs=3, val_size=200,
        test_size=200, test_every=2, render_chunk=200, xi_values=["1", "3"], m_values=["20", "50"], num_seeds=3,
        big_size=1000, big_epochs=3, time_budget_s=0.0, min_iterations=5, final_window=3, checkpoint_every=0,
        log_every=5,
    ),
    # One GPU: 415 s of wall time in all on an H200 (experiments/flags/car_count_sweep.flags documents it).
    "paper": dict(
        height=96, width=320, num_iterations=300, num_candidates=8, dataset_size=100, mtm_epochs=3, val_size=400,
        test_size=400, test_every=5, render_chunk=400, xi_values=["1", "3", "7", "10"],
        m_values=["20", "50", "100", "200"], num_seeds=3, big_size=40000, big_epochs=5, time_budget_s=470.0,
        min_iterations=30, final_window=5, compute_dtype="bfloat16", checkpoint_every=0, log_every=50,
    ),
}  # fmt: skip

RESULTS_FILE = "sweep_results.json"
TABLE_FILE = "sweep_table.md"


def apply_scale(name: str) -> None:
    """Sets the scale's values on every flag not given explicitly (command line or flagfile)."""
    if name not in SCALES:
        raise common.usage_error(f"--scale={name} is not one of {' | '.join(SCALES)}")
    for flag, value in SCALES[name].items():
        if not flags.FLAGS[flag].present:
            flags.FLAGS[flag].value = value


# ----- the plan ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SubRun:
    """One car_count run of the sweep."""

    name: str
    cfg: car_count.Config
    lts_cfg: lts.LTSConfig
    needs: str | None = None  # a sub-run whose final psi this one starts from (final_params)

    @property
    def work(self) -> float:
        """Planned work in units of one image rendered or trained for one epoch (budget shares)."""
        c = self.lts_cfg
        per_iteration = c.num_candidates * c.dataset_size * (1 + c.mtm_epochs * (1 + c.retain_mtm))
        return per_iteration * self.cfg.num_iterations


@dataclasses.dataclass(frozen=True)
class Plan:
    base: car_count.Config
    lts_base: lts.LTSConfig
    xi_values: tuple[int, ...]
    m_values: tuple[int, ...]
    num_seeds: int
    big_size: int
    big_epochs: int
    time_budget_s: float = 0.0
    min_iterations: int = 1
    only: tuple[str, ...] | None = None

    def subruns(self) -> list[SubRun]:
        """The sub-runs in priority order (what the budget squeezes last comes first)."""
        b, lb = self.base, self.lts_base
        runs = [
            SubRun("psi_real", dataclasses.replace(b, search="fixed", fixed_params="val"), lb),
            SubRun("lts_random", dataclasses.replace(b, search="lts", init="random"), lb),
            SubRun("lts_adversarial", dataclasses.replace(b, search="lts", init="adversarial"), lb),
            SubRun("lts_adversarial_crowded", dataclasses.replace(b, search="lts", init="adversarial_crowded"), lb),
            SubRun("random_params", dataclasses.replace(b, search="random_params", init="random"), lb),
            SubRun(
                "final_params", dataclasses.replace(b, search="fixed", fixed_params="final"), lb, needs="lts_random"
            ),
        ]
        for s in range(1, self.num_seeds):
            runs.append(
                SubRun(f"lts_seed{s}", dataclasses.replace(b, search="lts", init="random", seed=b.seed + s), lb)
            )
        for xi in self.xi_values:
            if xi != lb.mtm_epochs:
                runs.append(
                    SubRun(f"xi{xi}", dataclasses.replace(b, search="lts"), dataclasses.replace(lb, mtm_epochs=xi))
                )
        for m in self.m_values:
            if m != lb.dataset_size:
                lm = dataclasses.replace(lb, dataset_size=m, retain_mtm=False)
                runs.append(SubRun(f"M{m}", dataclasses.replace(b, search="lts"), lm))
        if self.only:
            runs = [r for r in runs if r.name in self.only]
        return runs

    def run_for_m(self, m: int) -> str:
        return "lts_random" if m == self.lts_base.dataset_size else f"M{m}"

    def run_for_xi(self, xi: int) -> str:
        return "lts_random" if xi == self.lts_base.mtm_epochs else f"xi{xi}"

    def big_work(self) -> float:
        return (len(self.m_values) + 1) * self.big_size * (1 + self.big_epochs)


class Budget:
    """Time shares of a wall-time budget: each sub-run gets the remaining time times its share of the
    remaining planned work; ``stopper`` ends a run when its share is spent (not before ``min_iterations``)."""

    def __init__(self, total_s: float, t0: float, min_iterations: int):
        self.total_s, self.t0, self.min_iterations = total_s, t0, min_iterations

    @property
    def enabled(self) -> bool:
        return self.total_s > 0

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.t0) if self.enabled else math.inf

    def stopper(self, work: float, remaining_work: float, workdir: Path) -> Callable[[], bool] | None:
        if not self.enabled:
            return None
        share = self.left() * work / max(remaining_work, work)
        metrics = Path(workdir) / "metrics.jsonl"
        logging.info("budget: %.0f s for %s (%.0f s left)", share, workdir.name, self.left())
        start = []  # the share's clock starts after the first iteration, so compilation does not eat it

        def should_stop() -> bool:
            done = sum(1 for _ in open(metrics)) if metrics.exists() else 0
            if done and not start:
                start.append(time.perf_counter())
            if not start or time.perf_counter() - start[0] < share:
                return False
            return done >= self.min_iterations

        return should_stop


# ----- running -------------------------------------------------------------------------------------------------
def _search_for(kind: str, spec, strategies: dict) -> Any:
    # One strategy object per kind, so runs share its compiled ask/tell programs.
    if kind not in strategies:
        strategies[kind] = common.make_search(kind, spec)
    return strategies[kind]


def run_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """What sweep_results.json keeps of a sub-run (curves for the figures, finals for the table)."""
    keep = (
        "method", "init", "iterations", "stopped_early", "test_reward", "val_reward_curve", "test_reward_curve",
        "amtm_val_reward_curve", "amtm_test_reward_curve", "final_test_reward", "final_val_reward",
        "final_amtm_test_reward", "logits", "psi", "psi_raw", "timing",
    )  # fmt: skip
    out = {k: results[k] for k in keep if k in results}
    c = results.get("config", {})
    out["config"] = {k: c.get(k) for k in ("seed", "num_candidates", "dataset_size", "mtm_epochs", "retain_mtm")}
    return out


def big_data_error(ctx: car_count.Context, psi: np.ndarray, size: int, epochs: int, seed: int) -> dict[str, float]:
    """Appendix D: ``size`` images from ``psi`` -> a fresh CNN trained ``epochs`` epochs -> val / test L1."""
    t0 = time.perf_counter()
    k_data, k_init, k_train = jax.random.split(jax.random.fold_in(jax.random.key(seed), 99), 3)
    data = ctx.sim.sample_dataset(k_data, psi, size)
    train = ctx.programs.get(
        ("big_train", ctx.task, size, epochs), lambda: jax.jit(lambda s, d, k: ctx.task.train(s, d, k, epochs))
    )
    evaluate = ctx.programs.get(("evaluate", ctx.task), lambda: jax.jit(ctx.task.evaluate))
    state = train(ctx.task.init(k_init), data, k_train)
    val, test = evaluate(state, ctx.val), evaluate(state, ctx.test)
    return {
        "val_l1": float(val["l1"]),
        "test_l1": float(test["l1"]),
        "test_l1_per_type": [float(v) for v in np.asarray(test["l1_per_type"])],
        "time_s": time.perf_counter() - t0,
    }


def run_sweep(
    plan: Plan,
    workdir: Path,
    summary_dir: Path,
    make_ctx: Callable[[], car_count.Context],
    *,
    figures: bool = True,
) -> dict[str, Any]:
    """Runs every sub-run (skipping finished ones), the Fig. 8 trainings, then writes the summary and figures.

    ``make_ctx`` builds the shared context (simulator, validation / test sets, task); it is called once.
    Returns the summary (also in summary_dir/sweep_results.json, rewritten after every sub-run).
    """
    t0 = time.perf_counter()
    workdir, summary_dir = Path(workdir), Path(summary_dir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(plan.time_budget_s, t0, plan.min_iterations)
    ctx = make_ctx()
    summary: dict[str, Any] = {
        "experiment": "car_count_sweep",
        "plan": {
            "xi_values": list(plan.xi_values),
            "m_values": list(plan.m_values),
            "num_seeds": plan.num_seeds,
            "big_size": plan.big_size,
            "big_epochs": plan.big_epochs,
            "time_budget_s": plan.time_budget_s,
            "config": {**dataclasses.asdict(plan.base), **dataclasses.asdict(plan.lts_base)},
        },
        "simulator": dict(ctx.sim_info),
        "data_time_s": ctx.data_time_s,
        "device": str(jax.devices()[0].device_kind),
        "runs": {},
        "big": {},
    }
    save = lambda: run.write_json(summary_dir / RESULTS_FILE, summary)  # noqa: E731
    strategies: dict[str, Any] = {}
    subruns = plan.subruns()
    for i, sub in enumerate(subruns):
        rundir = workdir / "runs" / sub.name
        t_run = time.perf_counter()
        entry: dict[str, Any]
        try:
            if (rundir / "results.json").exists():
                results = json.loads((rundir / "results.json").read_text())
                entry = {"status": "done", "reused": True, **run_summary(results)}
            elif sub.needs and summary["runs"].get(sub.needs, {}).get("status") != "done":
                entry = {"status": "skipped", "error": f"needs {sub.needs}, which did not finish"}
            elif budget.left() <= 0:
                entry = {"status": "skipped", "error": f"time budget of {plan.time_budget_s:.0f} s spent"}
            else:
                final_psi = None
                if sub.needs:
                    final_psi = np.asarray(summary["runs"][sub.needs]["psi_raw"], np.float32)
                run.prepare_workdir(rundir, overwrite=True, config=_flag_record(sub))
                remaining = sum(r.work for r in subruns[i:]) + plan.big_work()
                stop = budget.stopper(sub.work, remaining, rundir)
                strategy = _search_for(sub.cfg.search, ctx.sim.spec, strategies)
                results = car_count.train_and_evaluate(
                    sub.cfg,
                    sub.lts_cfg,
                    strategy,
                    rundir,
                    ctx,
                    should_stop=stop,
                    final_psi=final_psi,
                    reference={},  # the psi_real sub-run is the reference of every run
                    figures=False,
                )
                entry = {"status": "done", "reused": False, **run_summary(results)}
        except Exception as e:  # one failing sub-run must not lose the others
            logging.error("sub-run %s failed: %s", sub.name, e)
            entry = {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:],
            }
        entry["wall_s"] = time.perf_counter() - t_run
        summary["runs"][sub.name] = entry
        _log_run(sub.name, entry)
        save()

    if plan.only is None or "big" in plan.only:
        _big_phase(plan, ctx, workdir, summary, save, budget)
    summary["wall_s"] = time.perf_counter() - t0
    finish(summary, summary_dir, figures=figures)
    return summary


def _flag_record(sub: SubRun) -> dict[str, Any]:
    return {**dataclasses.asdict(sub.cfg), **dataclasses.asdict(sub.lts_cfg), "sub_run": sub.name}


def _log_run(name: str, entry: Mapping[str, Any]) -> None:
    if entry["status"] == "done":
        t = entry.get("test_reward", {})
        print(
            f"[sweep] {name}: done ({entry.get('iterations')} it, {entry['wall_s']:.0f} s) test reward {t}", flush=True
        )
    else:
        print(f"[sweep] {name}: {entry['status']}: {entry.get('error')}", flush=True)


def _big_phase(
    plan: Plan, ctx: car_count.Context, workdir: Path, summary: dict, save: Callable[[], None], budget: Budget
) -> None:
    """Fig. 8: every M run's final psi (and psi_real) -> a large data set -> test error."""
    bigdir = workdir / "big"
    bigdir.mkdir(parents=True, exist_ok=True)
    sources = [(f"M{m}", plan.run_for_m(m)) for m in plan.m_values] + [("psi_real", None)]
    for name, source in sources:
        path = bigdir / f"{name}.json"
        try:
            if path.exists():
                summary["big"][name] = json.loads(path.read_text())
                continue
            if budget.left() <= 0:
                summary["big"][name] = {"status": "skipped", "error": "time budget spent"}
                continue
            if source is None:
                psi = ctx.sim.spec.preset(car_count.PSI_REAL)
            elif summary["runs"].get(source, {}).get("status") == "done":
                psi = np.asarray(summary["runs"][source]["psi_raw"], np.float32)
            else:
                summary["big"][name] = {"status": "skipped", "error": f"{source} did not finish"}
                continue
            out = {"status": "done", **big_data_error(ctx, psi, plan.big_size, plan.big_epochs, plan.base.seed)}
            run.write_json(path, out)
        except Exception as e:
            logging.error("Fig. 8 training for %s failed: %s", name, e)
            out = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        summary["big"][name] = out
        print(f"[sweep] big {name}: {out}", flush=True)
        save()


# ----- analysis ------------------------------------------------------------------------------------------------
def _final(entry: Mapping[str, Any] | None, key: str = "final_test_reward") -> float | None:
    if not entry or entry.get("status") != "done":
        return None
    value = entry.get(key)
    return None if value is None else float(value)


def psi_real_reward(summary: Mapping[str, Any]) -> dict[str, float] | None:
    """The reference line: the psi_real run's mean validation and test reward over all its iterations."""
    ref = summary["runs"].get("psi_real")
    if not ref or ref.get("status") != "done":
        return None
    return {"val": float(np.mean(ref["val_reward_curve"])), "test": float(np.mean(ref["test_reward_curve"]["reward"]))}


def analyze(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Final test rewards per method and the targets of issue 5 (None where a run is missing)."""
    runs = summary["runs"]
    ref = psi_real_reward(summary)
    finals = {name: _final(e) for name, e in runs.items()}
    amtm = {name: _final(e, "final_amtm_test_reward") for name, e in runs.items()}
    seeds = [v for k, v in finals.items() if (k == "lts_random" or k.startswith("lts_seed")) and v is not None]
    targets: dict[str, Any] = {}
    if ref and finals.get("lts_random") is not None:
        gap = abs(finals["lts_random"] - ref["test"]) / abs(ref["test"])
        targets["lts_within_5pct_of_psi_real"] = {
            "gap": gap,
            "ok": bool(gap <= 0.05 or finals["lts_random"] > ref["test"]),
        }
    if finals.get("lts_random") is not None and finals.get("random_params") is not None:
        targets["lts_beats_random_params"] = {"ok": finals["lts_random"] > finals["random_params"]}
    for name, target in (
        ("lts_adversarial", "adversarial_converges"),
        ("lts_adversarial_crowded", "adversarial_crowded_converges"),
    ):
        adv = runs.get(name)
        if ref and adv and adv.get("status") == "done" and adv["test_reward_curve"]["reward"]:
            gap = abs(adv["final_test_reward"] - ref["test"]) / abs(ref["test"])
            targets[target] = {
                "first": adv["test_reward_curve"]["reward"][0],
                "final": adv["final_test_reward"],
                "gap": gap,
                "ok": bool(gap <= 0.05 or adv["final_test_reward"] > ref["test"]),
            }
    if len(seeds) >= 2 and ref:
        band = max(seeds) - min(seeds)
        targets["seeds_within_band"] = {"finals": seeds, "band": band, "relative": band / abs(ref["test"]),
                                        "ok": band / abs(ref["test"]) <= 0.05}  # fmt: skip
    return {"psi_real_reward": ref, "final_test_reward": finals, "final_amtm_test_reward": amtm, "targets": targets}


def table_markdown(summary: Mapping[str, Any]) -> str:
    """The README table: our numbers beside the paper's claims."""
    a = summary["analysis"]
    f, am, ref = a["final_test_reward"], a["final_amtm_test_reward"], a["psi_real_reward"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    t = a["targets"]

    def ok(name):
        return "n/a" if name not in t else ("yes" if t[name]["ok"] else "no")

    seeds = ", ".join(fmt(f.get(k)) for k in ["lts_random"] + [k for k in f if k.startswith("lts_seed")])
    xi = ", ".join(f"xi={v}: {fmt(am.get(_run_for(summary, 'xi', v)))}" for v in summary["plan"]["xi_values"])
    big = summary.get("big", {})
    m = ", ".join(f"M={v}: {fmt(big.get(f'M{v}', {}).get('test_l1'))}" for v in summary["plan"]["m_values"])
    rows = [
        ("psi_real reward (MTM, test; the reference line)", fmt(ref and ref["test"]), "the line LTS should reach", ""),
        ("LTS, random init: final MTM test reward", fmt(f.get("lts_random")), "reaches the psi_real reward (Fig. 4)",
         ok("lts_within_5pct_of_psi_real")),
        ("LTS, adversarial init (preset: almost no cars)", fmt(f.get("lts_adversarial")),
         "converges too, more slowly (Fig. 4)", ok("adversarial_converges")),
        ("LTS, adversarial init, crowded (preset with car presence 0.9)", fmt(f.get("lts_adversarial_crowded")),
         "converges too, more slowly (Fig. 4)", ok("adversarial_crowded_converges")),
        ("random params (MTM)", fmt(f.get("random_params")), "LTS beats it", ok("lts_beats_random_params")),
        ("AMTM: LTS / random params / final params / val params",
         " / ".join(fmt(am.get(k)) for k in ("lts_random", "random_params", "final_params", "psi_real")),
         "LTS close to val params, above final and random params (Fig. 5a)", ""),
        ("AMTM, LTS adversarial init (preset / crowded)",
         f"{fmt(am.get('lts_adversarial'))} / {fmt(am.get('lts_adversarial_crowded'))}", "converges (Fig. 5b)", ""),
        ("AMTM over xi", xi, "all of 1, 3, 7, 10 converge (Fig. 5c)", ""),
        ("final psi -> big data set -> test L1, per M", f"{m}; psi_real: {fmt(big.get('psi_real', {}).get('test_l1'))}",
         "M = 20 already suffices (Fig. 8)", ""),
        ("seeds: final MTM test rewards", seeds, "converge alike (Fig. 9)", ok("seeds_within_band")),
    ]  # fmt: skip
    lines = ["| comparison | this reproduction | paper | target met |", "|---|---|---|---|"]
    lines += [f"| {a_} | {b} | {c} | {d} |" for a_, b, c, d in rows]
    iters = {k: v.get("iterations") for k, v in summary["runs"].items()}
    lines += ["", f"Iterations per sub-run: {iters}. Rewards are negative mean L1 count errors (higher is better)."]
    return "\n".join(lines) + "\n"


def _run_for(summary: Mapping[str, Any], what: str, value: int) -> str:
    base = summary["plan"]["config"]
    main = base["mtm_epochs"] if what == "xi" else base["dataset_size"]
    return "lts_random" if int(value) == int(main) else f"{'xi' if what == 'xi' else 'M'}{value}"


def finish(summary: dict[str, Any], summary_dir: Path, *, figures: bool = True) -> list[Path]:
    """Analysis, sweep_results.json, sweep_table.md and the figures."""
    summary["analysis"] = analyze(summary)
    run.write_json(summary_dir / RESULTS_FILE, summary)
    (summary_dir / TABLE_FILE).write_text(table_markdown(summary))
    written = [summary_dir / RESULTS_FILE, summary_dir / TABLE_FILE]
    if figures:
        written += draw_figures(summary, summary_dir)
    return written


# ----- figures -------------------------------------------------------------------------------------------------
def _curve(entry, key):
    c = (entry or {}).get(key)
    if not c:
        return None
    if isinstance(c, dict):
        return np.asarray(c["step"]), np.asarray(c["reward"], np.float64)
    return np.arange(len(c)), np.asarray(c, np.float64)


def _panel(ax, summary, items, key, title, ref_key=None):
    runs = summary["runs"]
    for name, label in items:
        c = _curve(runs.get(name) if runs.get(name, {}).get("status") == "done" else None, key)
        if c is not None and len(c[0]):
            ax.plot(c[0], c[1], label=label, marker="." if len(c[0]) < 25 else None)
    ref = psi_real_reward(summary)
    if ref_key and ref:
        ax.axhline(ref[ref_key], linestyle="--", color="k", label="mean reward w/ val params (psi_real)")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("policy iteration", fontsize=8)
    ax.set_ylabel("reward (negative L1)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def draw_figures(summary: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """fig4.png fig5.png fig7.png fig8.png fig9.png from the summary alone (no run files needed)."""
    from lts_jax.run import plots  # matplotlib with the Agg backend; imported here, only figures need it

    plt = plots.plt

    out_dir = Path(out_dir)
    seeds = [k for k in summary["runs"] if k.startswith("lts_seed")]
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    lts_pair = [("lts_random", "LTS (random init)"), ("lts_adversarial", "LTS (adversarial init)"),
                ("lts_adversarial_crowded", "LTS (adversarial init, crowded)")]  # fmt: skip
    _panel(axes[0], summary, lts_pair, "val_reward_curve", "Fig. 4a: validation reward (MTM)", "val")
    _panel(axes[1], summary, lts_pair, "test_reward_curve", "Fig. 4b: test reward (MTM)", "test")
    inits = [("lts_random", "LTS, random init 1")] + [(s, f"LTS, random init {i + 2}") for i, s in enumerate(seeds)]
    _panel(axes[2], summary, inits, "test_reward_curve", "Fig. 4c: test reward, random inits", "test")
    save(fig, "fig4.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    amtm = [("lts_random", "LTS"), ("random_params", "random policy params"), ("final_params", "final policy params"),
            ("psi_real", "validation params")]  # fmt: skip
    _panel(axes[0], summary, amtm, "amtm_test_reward_curve", "Fig. 5a: AMTM test reward")
    adv = [("lts_adversarial", "LTS (adversarial init)"), ("lts_adversarial_crowded", "LTS (adversarial, crowded)"),
           ("psi_real", "validation params")]  # fmt: skip
    _panel(axes[1], summary, adv, "amtm_test_reward_curve", "Fig. 5b: AMTM, adversarial init")
    xis = [(_run_for(summary, "xi", v), f"xi = {v}") for v in summary["plan"]["xi_values"]]
    _panel(axes[2], summary, xis, "amtm_test_reward_curve", "Fig. 5c: AMTM test reward over xi")
    save(fig, "fig5.png")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    main = summary["runs"].get("lts_random", {})
    logits = main.get("logits") if main.get("status") == "done" else None
    for ax, block, title in (
        (axes[0], "car_type", "Fig. 7a: car-type logits"),
        (axes[1], "weather", "Fig. 7b: weather logits"),
    ):
        if logits:
            for label, values in logits[block].items():
                ax.plot(logits["step"], values, label=label)
        ax.set_title(title + " (LTS, random init)", fontsize=9)
        ax.set_xlabel("policy iteration", fontsize=8)
        ax.set_ylabel("logit (non-normalised)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "fig7.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    big = summary.get("big", {})
    ms = [int(v) for v in summary["plan"]["m_values"]]
    for ax, key, title in (
        (axes[0], "val_l1", "Fig. 8a: validation error"),
        (axes[1], "test_l1", "Fig. 8b: test error"),
    ):
        ys = [big.get(f"M{m}", {}).get(key, np.nan) for m in ms]
        ax.bar([str(m) for m in ms], ys, color="tab:blue")
        if "psi_real" in big and key in big["psi_real"]:
            ax.axhline(big["psi_real"][key], linestyle="--", color="k", label="psi_real's own data")
            ax.legend(fontsize=7)
        ax.set_title(
            f"{title} ({summary['plan']['big_size']} images, {summary['plan']['big_epochs']} epochs)", fontsize=9
        )
        ax.set_xlabel("M: images per candidate per policy iteration", fontsize=8)
        ax.set_ylabel("mean L1 count error", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    save(fig, "fig8.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    seeded = [("lts_random", "seed 1")] + [(s, f"seed {i + 2}") for i, s in enumerate(seeds)]
    _panel(axes[0], summary, seeded, "val_reward_curve", "Fig. 9a: MTM validation reward", "val")
    _panel(axes[1], summary, seeded, "amtm_test_reward_curve", "Fig. 9b: AMTM test reward")
    save(fig, "fig9.png")
    return written


# ----- flags -> library ----------------------------------------------------------------------------------------
def _ints(name: str, values: Sequence[str]) -> tuple[int, ...]:
    ok = bool(values) and all(str(v).strip().isdigit() and int(v) >= 1 for v in values)
    common.check(ok, name, ",".join(map(str, values or [])), "a comma-separated list of integers >= 1")
    return tuple(int(v) for v in values)


def plan_from_flags() -> Plan:
    base = car_count.config_from_flags()
    names = {"big"}
    only = tuple(ONLY.value) if ONLY.value else None
    plan = Plan(
        base=base,
        lts_base=common.lts_config(),
        xi_values=_ints("xi_values", XI_VALUES.value),
        m_values=_ints("m_values", M_VALUES.value),
        num_seeds=NUM_SEEDS.value,
        big_size=BIG_SIZE.value,
        big_epochs=BIG_EPOCHS.value,
        time_budget_s=TIME_BUDGET_S.value,
        min_iterations=MIN_ITERATIONS.value,
        only=only,
    )
    if only:
        known = names | {r.name for r in dataclasses.replace(plan, only=None).subruns()}
        unknown = sorted(set(only) - known)
        common.check(not unknown, "only", ",".join(only), " | ".join(sorted(known)))
    return plan


def main() -> None:
    from simulators.traffic.scene import make_spec

    if not (common.WORKDIR.value or (REDRAW.value and SUMMARY_DIR.value)):
        raise common.usage_error("--workdir is required (a directory for the sub-runs; --redraw: or --summary_dir)")
    summary_dir = Path(SUMMARY_DIR.value or common.WORKDIR.value)
    if REDRAW.value:
        path = summary_dir / RESULTS_FILE
        if not path.exists():
            raise common.usage_error(f"--redraw: {path} does not exist")
        for p in finish(json.loads(path.read_text()), summary_dir):
            print(p)
        return
    apply_scale(SCALE.value)
    car_count.validate_flags(make_spec(traffic_common.LEARN_INTERSECTION.value))
    common.check(NUM_SEEDS.value >= 1, "num_seeds", NUM_SEEDS.value, "an integer >= 1")
    common.check(BIG_SIZE.value >= 1, "big_size", BIG_SIZE.value, "an integer >= 1")
    common.check(BIG_EPOCHS.value >= 1, "big_epochs", BIG_EPOCHS.value, "an integer >= 1")
    common.check(TIME_BUDGET_S.value >= 0, "time_budget_s", TIME_BUDGET_S.value, "seconds >= 0 (0: no budget)")
    common.check(MIN_ITERATIONS.value >= 1, "min_iterations", MIN_ITERATIONS.value, "an integer >= 1")
    common.check(common.SEARCH.value == "lts", "search", common.SEARCH.value, "lts (the sweep runs every search)")
    plan = plan_from_flags()
    traffic_common.setup_compile_cache()
    workdir = Path(common.WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    run.prepare_workdir(workdir, config={**common.shared_flag_values(), "scale": SCALE.value}, ignore={"workdir"})

    def make_ctx():
        return car_count.make_context(plan.base, simulators.make(**traffic_common.simulator_options()))

    summary = run_sweep(plan, workdir, summary_dir, make_ctx)
    print(table_markdown(summary))
    print(f"[sweep] done in {summary['wall_s']:.0f} s; {summary_dir / RESULTS_FILE}", flush=True)
    failed = [k for k, v in summary["runs"].items() if v.get("status") == "failed"]
    if failed:
        print(f"[sweep] failed sub-runs: {failed} (see sweep_results.json); re-run to retry them", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(common.run_main(main))
