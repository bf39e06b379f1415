"""Paper section 4.3 and appendices C-E in one process: every car-counting comparison, then the figures.

    summary = train_and_evaluate(scaled("tiny"), workdir)

Sub-runs (each a car_count search in WORKDIR/runs/NAME, all with the AMTM unless noted; ``run.MultiRun``):
  psi_real         fixed search at psi_real: the reference line ("mean reward w/ val params", Fig. 4, 9)
                   and the AMTM "validation params" (Fig. 5a)
  lts_random       LTS from a random psi (seed 0): Fig. 4a/b, 5a, 7, 9
  lts_adversarial  LTS from the simulator's "adversarial" preset (almost no cars, pickups, fog): Fig. 4a/b, 5b
  lts_adversarial_crowded   the same with car presence 0.9 (car_count.INIT_VARIANTS says why): Fig. 4a/b, 5b
  random_params    fresh uniform psi every iteration: Fig. 5a
  final_params     fixed search at lts_random's final psi: Fig. 5a
  lts_seed1, ...   LTS from other random inits and seeds (``num_seeds`` in all, with lts_random): Fig. 4c, 9
  xi<v>            LTS with xi = v epochs, for ``xi_values`` other than ``mtm_epochs``: Fig. 5c
  M<v>             LTS with M = v images per candidate (no AMTM), for ``m_values`` other than
                   ``dataset_size``: Fig. 8
  big/M<v>/        Fig. 8 (appendix D): the final psi of each M run -> ``big_size`` images -> a fresh CNN
                   trained ``big_epochs`` epochs -> validation and test L1 (and psi_real's own, for scale)

Every sub-run shares one process, one renderer program, one validation and test set and the compiled
training programs that its configuration allows (lts.make_split_step). A finished sub-run is reused when
its configuration matches (another one is refused before any work, listing the settings, unless
``overwrite``); an unfinished one resumes; a failing one is recorded and the others go on (SubRunsFailed at
the end). A Fig. 8 training whose source psi or settings changed is redone. With ``time_budget_s`` each
sub-run gets a share of the remaining time proportional to its planned work and stops early when its share
is spent (never below ``min_iterations``); the iterations each run made are recorded.

``summary_dir`` (default: the workdir) receives the few files to keep: sweep_results.json (every figure's
numbers, rewritten after every sub-run; final test rewards per method, the targets of issue 5),
sweep_table.md (the README table) and fig4.png fig5.png fig7.png fig8.png fig9.png. :func:`redraw` redraws
them from sweep_results.json alone.

Scales (:data:`SCALES`, :func:`scaled`): tiny (a test: seconds after compilation), quick (the class
defaults: minutes on 2 CPU cores), paper (7 minutes on one H200, measured; experiments/flags/car_count_sweep.flags).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from experiments.lib import car_count, common, traffic
from lts_jax import run

RESULTS_FILE = "sweep_results.json"
TABLE_FILE = "sweep_table.md"
SUB_RUN_IGNORE = common.RUN_MANAGEMENT | traffic.SPEED_ONLY


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig(car_count.CarCountConfig):
    """The sweep: car_count's settings (the base of every sub-run) at the quick scale, and the plan."""

    scale: str = "quick"
    summary_dir: str | None = None
    xi_values: tuple[int, ...] = (1, 3)
    m_values: tuple[int, ...] = (20, 50)
    num_seeds: int = 3
    big_size: int = 1000
    big_epochs: int = 3
    time_budget_s: float = 0.0
    min_iterations: int = 5
    only: tuple[str, ...] = ()
    # car_count's settings at the quick scale: about 10 minutes on 2 CPU cores (32x96 images; ~1 s per iteration)
    height: int = 32
    width: int = 96
    num_iterations: int = 40
    dataset_size: int = 50
    test_every: int = 2
    render_chunk: int = 200
    final_window: int = 3
    checkpoint_every: int = 0
    log_every: int = 5


# Per scale: the settings that differ from SweepConfig's defaults (the quick scale).
SCALES: dict[str, dict[str, Any]] = {
    # A test: tiny images and networks, a few iterations.
    "tiny": dict(
        height=24, width=80, num_iterations=3, num_candidates=2, dataset_size=8, mtm_epochs=1, val_size=16,
        test_size=16, test_every=1, mtm_features=(4, 8, 8, 8), mtm_hidden=8, mtm_context=0, mtm_position=False,
        mtm_batch_size=8, render_chunk=16,
        xi_values=(1, 2), m_values=(4, 8), num_seeds=2, big_size=32, big_epochs=1, min_iterations=1,
        final_window=2, log_every=0,
    ),
    "quick": {},
    # One GPU: 415 s of wall time in all on an H200 (experiments/flags/car_count_sweep.flags documents it).
    "paper": dict(
        height=96, width=320, num_iterations=300, dataset_size=100, val_size=400, test_size=400, test_every=5,
        render_chunk=400, xi_values=(1, 3, 7, 10), m_values=(20, 50, 100, 200), big_size=40000, big_epochs=5,
        time_budget_s=470.0, min_iterations=30, final_window=5, compute_dtype="bfloat16", log_every=50,
    ),
}  # fmt: skip


def scaled(scale: str, **overrides: Any) -> SweepConfig:
    """SweepConfig at ``scale`` (tiny, quick, paper), then ``overrides``."""
    common.check(scale in SCALES, "scale", scale, " | ".join(SCALES))
    return SweepConfig(**{**SCALES[scale], "scale": scale, **overrides})


# ----- the plan ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SubRun:
    """One car_count search of the sweep."""

    name: str
    cfg: car_count.CarCountConfig
    needs: str | None = None  # a sub-run whose final psi this one starts from (final_params)

    @property
    def work(self) -> float:
        """Planned work in units of one image rendered or trained for one epoch (budget shares)."""
        c = self.cfg
        per_iteration = c.num_candidates * c.dataset_size * (1 + c.mtm_epochs * (1 + c.retain_mtm))
        return per_iteration * c.num_iterations


def base_config(cfg: SweepConfig) -> car_count.CarCountConfig:
    """The car_count settings of the sweep: the base of every sub-run."""
    return common.fields_of(car_count.CarCountConfig, cfg)


def plan(cfg: SweepConfig, only: tuple[str, ...] | None = None) -> list[SubRun]:
    """The sub-runs in priority order (what the budget squeezes last comes first); ``only`` (default
    ``cfg.only``; empty: all) keeps the named ones."""
    b = base_config(cfg)
    r = dataclasses.replace
    runs = [
        SubRun("psi_real", r(b, search="fixed", fixed_params="val")),
        SubRun("lts_random", r(b, search="lts", init="random")),
        SubRun("lts_adversarial", r(b, search="lts", init="adversarial")),
        SubRun("lts_adversarial_crowded", r(b, search="lts", init="adversarial_crowded")),
        SubRun("random_params", r(b, search="random_params", init="random")),
        SubRun("final_params", r(b, search="fixed", fixed_params="final"), needs="lts_random"),
    ]
    seeds = range(1, cfg.num_seeds)
    runs += [SubRun(f"lts_seed{s}", r(b, search="lts", init="random", seed=b.seed + s)) for s in seeds]
    runs += [SubRun(f"xi{xi}", r(b, search="lts", mtm_epochs=xi)) for xi in cfg.xi_values if xi != b.mtm_epochs]
    runs += [SubRun(f"M{m}", r(b, search="lts", dataset_size=m)) for m in cfg.m_values if m != b.dataset_size]
    only = cfg.only if only is None else only
    return [s for s in runs if s.name in only] if only else runs


def run_for_m(cfg: SweepConfig, m: int) -> str:
    return "lts_random" if m == cfg.dataset_size else f"M{m}"


def big_work(cfg: SweepConfig) -> float:
    return (len(cfg.m_values) + 1) * cfg.big_size * (1 + cfg.big_epochs)


def validate(cfg: SweepConfig) -> None:
    """Every setting, before any work (ConfigError naming the first bad one)."""
    common.check(cfg.scale in SCALES, "scale", cfg.scale, " | ".join(SCALES))
    car_count.validate(cfg)
    common.check(cfg.search == "lts", "search", cfg.search, "lts (the sweep runs every search)")
    for name in ("xi_values", "m_values"):
        values = getattr(cfg, name)
        ok = len(values) >= 1 and min(values) >= 1
        common.check(ok, name, ",".join(map(str, values)), "a comma-separated list of integers >= 1")
    common.check(cfg.num_seeds >= 1, "num_seeds", cfg.num_seeds, "an integer >= 1")
    common.check(cfg.big_size >= 1, "big_size", cfg.big_size, "an integer >= 1")
    common.check(cfg.big_epochs >= 1, "big_epochs", cfg.big_epochs, "an integer >= 1")
    common.check(cfg.time_budget_s >= 0, "time_budget_s", cfg.time_budget_s, "seconds >= 0 (0: no budget)")
    common.check(cfg.min_iterations >= 1, "min_iterations", cfg.min_iterations, "an integer >= 1")
    known = {"big"} | {s.name for s in plan(cfg, only=())}
    unknown = sorted(set(cfg.only) - known)
    common.check(not unknown, "only", ",".join(cfg.only), " | ".join(sorted(known)))


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
def run_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """What sweep_results.json keeps of a sub-run (curves for the figures, finals for the table)."""
    keep = (
        "method", "init", "iterations", "stopped_early", "test_reward", "val_reward_curve", "test_reward_curve",
        "amtm_val_reward_curve", "amtm_test_reward_curve", "final_test_reward", "final_val_reward",
        "final_amtm_test_reward", "logits", "psi", "psi_raw", "timing", "constant_predictors", "tv_to_psi_real",
        "psi_real_reward", "cost",
    )  # fmt: skip
    out = {k: results[k] for k in keep if k in results}
    c = results.get("config", {})
    keys = ("seed", "num_candidates", "dataset_size", "mtm_epochs", "retain_mtm", "candidates_from_amtm")
    out["config"] = {k: c.get(k) for k in keys}
    return out


def big_data_error(ctx: car_count.Context, psi: np.ndarray, size: int, epochs: int, seed: int) -> dict[str, Any]:
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


def entry_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A MultiRun entry as sweep_results.json writes it: the status and the result's fields side by side."""
    out = {k: v for k, v in entry.items() if k not in ("result", "reason")}
    if "reason" in entry:
        out["error"] = entry["reason"]
    return {**out, **(entry.get("result") or {})}


def _log_run(name: str, entry: Mapping[str, Any], log: Callable[[str], None]) -> None:
    e = entry_summary(entry)
    if e["status"] == "done":
        reused = ", reused" if e.get("reused") else ""
        log(f"[sweep] {name}: done ({e.get('iterations')} it, {e['wall_s']:.0f} s{reused}) test reward "
            f"{e.get('test_reward', {})}")  # fmt: skip
    else:
        log(f"[sweep] {name}: {e['status']}: {e.get('error')}")


def train_and_evaluate(
    cfg: SweepConfig,
    workdir: str | Path,
    *,
    figures: bool = True,
    make_ctx: Callable[[car_count.CarCountConfig], car_count.Context] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every sub-run (reusing finished ones), the Fig. 8 trainings, then writes the summary and figures.

    ``make_ctx(base config)`` builds the shared context (default: the configured simulator and
    car_count.make_context); it is called once. Returns the summary (also in summary_dir/sweep_results.json,
    rewritten after every sub-run).

    Raises ConfigError (before any work), WorkdirError (a finished sub-run with another configuration,
    before any work), SubRunsFailed (after the summary and figures of what finished).
    """
    t0 = time.perf_counter()
    validate(cfg)
    base = base_config(cfg)
    workdir = common.prepare_workdir(cfg, workdir)
    summary_dir = Path(cfg.summary_dir or workdir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    subruns = plan(cfg)
    header: dict[str, Any] = {
        "experiment": "car_count_sweep",
        "plan": {
            "xi_values": list(cfg.xi_values),
            "m_values": list(cfg.m_values),
            "num_seeds": cfg.num_seeds,
            "big_size": cfg.big_size,
            "big_epochs": cfg.big_epochs,
            "time_budget_s": cfg.time_budget_s,
            "config": {**dataclasses.asdict(base), **dataclasses.asdict(common.lts_config(base))},
        },
    }

    def summary(_=None) -> dict[str, Any]:
        return {
            **header,
            "runs": {n: entry_summary(e) for n, e in runs.entries.items()},
            "big": {n: entry_summary(e) for n, e in big.entries.items()},
        }

    path = summary_dir / RESULTS_FILE
    runs = run.MultiRun(workdir / "runs", path, overwrite=cfg.overwrite, ignore=SUB_RUN_IGNORE, summary_fn=summary)
    # A Fig. 8 training depends on its source run's psi (in its configuration): redone when that changed.
    big = run.MultiRun(workdir / "big", path, on_mismatch="rerun", overwrite=cfg.overwrite, ignore=SUB_RUN_IGNORE,
                       summary_fn=summary)  # fmt: skip
    configs = {s.name: common.record(s.cfg, needs=s.needs) for s in subruns}
    for s in subruns:  # refuse a mismatch before any work
        runs.check(s.name, configs[s.name])

    budget = Budget(cfg.time_budget_s, t0, cfg.min_iterations)
    ctx = (make_ctx or (lambda b: car_count.make_context(b, traffic.make_simulator(b))))(base)
    header.update(simulator=dict(ctx.sim_info), data_time_s=ctx.data_time_s, device=str(jax.devices()[0].device_kind))
    strategies: dict[str, Any] = {}  # one strategy object per kind, so runs share its compiled ask/tell programs

    for i, sub in enumerate(subruns):
        needs_done = not sub.needs or runs.entries.get(sub.needs, {}).get("status") == "done"
        if runs.check(sub.name, configs[sub.name]) != "reuse":
            if not needs_done:
                _log_run(sub.name, runs.skip(sub.name, f"needs {sub.needs}, which did not finish"), log)
                continue
            if budget.left() <= 0:
                _log_run(sub.name, runs.skip(sub.name, f"time budget of {cfg.time_budget_s:.0f} s spent"), log)
                continue
        remaining = sum(r.work for r in subruns[i:]) + big_work(cfg)

        def fn(rundir: Path, sub=sub, remaining=remaining) -> dict[str, Any]:
            if (rundir / "results.json").exists():  # finished, but stopped before MultiRun recorded it
                return run_summary(json.loads((rundir / "results.json").read_text()))
            run.prepare_workdir(rundir, config=configs[sub.name], ignore=SUB_RUN_IGNORE)
            final_psi = None
            if sub.needs:
                final_psi = np.asarray(runs.entries[sub.needs]["result"]["psi_raw"], np.float32)
            kind = sub.cfg.search
            strategies.setdefault(kind, common.search_strategy(sub.cfg, ctx.sim.spec))
            results = car_count.search_and_report(
                sub.cfg,
                rundir,
                ctx,
                strategies[kind],
                should_stop=budget.stopper(sub.work, remaining, rundir),
                final_psi=final_psi,
                reference={},  # the psi_real sub-run is the reference of every run
                figures=False,
            )
            return run_summary(results)

        _log_run(sub.name, runs.run(sub.name, configs[sub.name], fn), log)

    if not cfg.only or "big" in cfg.only:
        _big_phase(cfg, base, ctx, runs, big, budget, log)
    out = summary()
    out["wall_s"] = time.perf_counter() - t0
    finish(out, summary_dir, figures=figures)
    log(table_markdown(out))
    log(f"[sweep] done in {out['wall_s']:.0f} s; {path}")
    runs.raise_failures()
    big.raise_failures()
    return out


def _big_phase(cfg, base, ctx, runs, big, budget, log) -> None:
    """Fig. 8: every M run's final psi (and psi_real) -> a large data set -> test error."""
    sources = [(f"M{m}", run_for_m(cfg, m)) for m in cfg.m_values] + [("psi_real", None)]
    for name, source in sources:
        if source is None:
            psi = ctx.sim.spec.preset(car_count.PSI_REAL)
        elif runs.entries.get(source, {}).get("status") == "done":
            psi = np.asarray(runs.entries[source]["result"]["psi_raw"], np.float32)
        else:
            big.skip(name, f"{source} did not finish")
            continue
        config = common.record(base, source=source, psi_raw=psi.tolist(), big_size=cfg.big_size,
                               big_epochs=cfg.big_epochs)  # fmt: skip
        if big.check(name, config) != "reuse" and budget.left() <= 0:
            big.skip(name, "time budget spent")
            continue

        def fn(_, psi=psi) -> dict[str, Any]:
            return big_data_error(ctx, psi, cfg.big_size, cfg.big_epochs, base.seed)

        entry = big.run(name, config, fn)
        log(f"[sweep] big {name}: {entry_summary(entry)}")


# ----- analysis ------------------------------------------------------------------------------------------------
def _final(entry: Mapping[str, Any] | None, key: str = "final_test_reward") -> float | None:
    if not entry or entry.get("status") != "done":
        return None
    value = entry.get(key)
    return None if value is None else float(value)


def psi_real_reward(summary: Mapping[str, Any]) -> dict[str, float] | None:
    """The reference line: the psi_real run's validation and test reward, its mean over all iterations, or,
    when the candidates fine-tune the AMTM (every run keeps improving with the iterations), its final value
    (the mean of its last final_window evaluations, as every run's final reward)."""
    ref = summary["runs"].get("psi_real")
    if not ref or ref.get("status") != "done":
        return None
    if (ref.get("config") or {}).get("candidates_from_amtm"):
        return {"val": float(ref["final_val_reward"]), "test": float(ref["final_test_reward"])}
    return {"val": float(np.mean(ref["val_reward_curve"])), "test": float(np.mean(ref["test_reward_curve"]["reward"]))}


def constant_rewards(summary: Mapping[str, Any]) -> dict[str, dict[str, float]] | None:
    """The rewards of the predictors that ignore the image (car_count.constant_predictors; one per sweep: every
    sub-run shares the validation and test sets)."""
    for e in summary["runs"].values():
        if e.get("status") == "done" and e.get("constant_predictors"):
            return e["constant_predictors"]
    return None


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
    main = runs.get("lts_random") or {}
    tv = main.get("tv_to_psi_real") if main.get("status") == "done" else None
    if tv:
        fig7 = {k: v for k, v in tv.items() if k in ("car_type", "weather")}  # the blocks of Fig. 7
        targets["categoricals_near_psi_real"] = {"tv": fig7, "ok": bool(fig7 and max(fig7.values()) <= 0.15)}
    const = constant_rewards(summary)
    if const and finals.get("lts_random") is not None:
        targets["lts_beats_constant_predictors"] = {
            "ok": bool(finals["lts_random"] > max(const["val_median"]["test"], const["zero"]["test"]))
        }
    return {"psi_real_reward": ref, "final_test_reward": finals, "final_amtm_test_reward": amtm, "targets": targets,
            "constant_predictors": const, "tv_to_psi_real": tv}  # fmt: skip


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
    const = a.get("constant_predictors")
    if const:
        rows.insert(
            1,
            (
                "constant predictors (no image): validation median / zero cars, test",
                f"{fmt(const['val_median']['test'])} / {fmt(const['zero']['test'])}",
                "the rewards a model that learned only the count prior gets",
                ok("lts_beats_constant_predictors"),
            ),
        )
    tv = a.get("tv_to_psi_real")
    if tv:
        rows.append(("LTS's final car types / weather: total-variation distance to psi_real",
                     " / ".join(f"{k} {v:.3f}" for k, v in tv.items()), "approach psi_real's (Fig. 7; target <= 0.15)",
                     ok("categoricals_near_psi_real")))  # fmt: skip
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
    return common.write_summary(summary, summary_dir, results_file=RESULTS_FILE, table_file=TABLE_FILE,
                                analyze_fn=analyze, table_fn=table_markdown,
                                figures_fn=draw_figures if figures else None)  # fmt: skip


def redraw(summary_dir: str | Path) -> list[Path]:
    """The table and figures again from summary_dir/sweep_results.json alone (ConfigError naming
    ``summary_dir`` when it is missing)."""
    path = Path(summary_dir) / RESULTS_FILE
    if not path.exists():
        raise common.ConfigError(lambda p: f"{p('redraw', True)}: {path} does not exist")
    return finish(json.loads(path.read_text()), Path(summary_dir))


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
        ax.axhline(ref[ref_key], linestyle="--", color="k", label="reward w/ val params (psi_real)")
    const = constant_rewards(summary)
    if const:  # the AMTM panels are test rewards
        part = ref_key or "test"
        ax.axhline(const["val_median"][part], linestyle=":", color="tab:red",
                   label=f"constant: validation median ({part})")  # fmt: skip
        ax.axhline(const["zero"][part], linestyle=":", color="tab:gray", label=f"constant: zero cars ({part})")
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
        tv = (main.get("tv_to_psi_real") or {}).get(block) if logits else None
        note = f"; TV to psi_real at the end {tv:.3f}" if tv is not None else ""
        ax.set_title(title + " (LTS, random init)" + note, fontsize=9)
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
