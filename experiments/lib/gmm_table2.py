"""Paper Table 2 over seeds as a function: gmm_toy's paper-scale runs for every (num_gaussians, seed).

    summary = train_and_evaluate(Table2Config(seeds=(0, 1), num_iterations=50), workdir)

Each sub-run is a gmm_toy run (300 iterations, K = 8, M = 250, random init, sigma^2 = 0.05, Adam lr 0.2)
in WORKDIR/n{N}_seed{S}/ through ``run.MultiRun``: WORKDIR/table2.json (mean, min, max over seeds, and each
sub-run's status) is rewritten after every sub-run, WORKDIR/table2.md at the end. Re-running reuses the
finished sub-runs whose configuration matches and resumes an interrupted one; another configuration is
refused before any work (WorkdirError listing the settings) unless ``overwrite``, which starts every sub-run
over. Nothing else in WORKDIR is touched. A failing sub-run is recorded and the others go on
(SubRunsFailed at the end).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib import common, gmm_toy
from lts_jax import run

PAPER = {"1": 0.670, "2": 0.996, "val_params": 0.995}
TABLE_JSON, TABLE_MD = "table2.json", "table2.md"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Table2Config(common.RunConfig):
    """Table 2's rows and seeds; the sub-runs' sizes (the paper's: 300 iterations, K = 8, M = 250)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    gaussians: tuple[int, ...] = (1, 2)
    num_iterations: int = 300
    num_candidates: int = 8
    dataset_size: int = 250


def validate(cfg: Table2Config) -> None:
    common.check(len(cfg.seeds) >= 1, "seeds", ",".join(map(str, cfg.seeds)), "a comma-separated list of seeds")
    ok = len(cfg.gaussians) >= 1 and min(cfg.gaussians) >= 1
    common.check(ok, "gaussians", ",".join(map(str, cfg.gaussians)), "a comma-separated list of integers >= 1")
    common.validate_run(cfg)
    for n in cfg.gaussians:  # the sub-runs' settings (num_iterations, num_candidates, ...), before any work
        gmm_toy.validate(sub_run_config(cfg, n, cfg.seeds[0]))


def sub_run_name(num_gaussians: int, seed: int) -> str:
    return f"n{num_gaussians}_seed{seed}"


def sub_run_config(cfg: Table2Config, num_gaussians: int, seed: int) -> gmm_toy.GmmToyConfig:
    """The gmm_toy configuration of one cell: the paper's policy (sigma^2 = 0.05, Adam lr 0.2), random init."""
    return gmm_toy.GmmToyConfig(
        num_gaussians=num_gaussians,
        seed=seed,
        num_iterations=cfg.num_iterations,
        num_candidates=cfg.num_candidates,
        dataset_size=cfg.dataset_size,
        init="random",
        policy_variance=0.05,
        policy_lr=0.2,
        baseline_decay=0.9,
        progress=False,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
    )


def run_one(path: Path, cfg: gmm_toy.GmmToyConfig) -> dict[str, Any]:
    """One sub-run in ``path`` (gmm_toy.train_and_evaluate, resumable); returns what the table needs."""
    if (path / "results.json").exists():
        # Finished, but stopped before the multi-run recorded it; MultiRun has checked its configuration.
        results = json.loads((path / "results.json").read_text())
    else:
        results = gmm_toy.train_and_evaluate(cfg, path)
    return {"test_accuracy": results["test_accuracy"], "iterations": results["iterations"], "cost": results.get("cost")}


def table(entries: Mapping[str, Mapping[str, Any]], gaussians: Sequence[int], seeds: Sequence[int]) -> dict[str, Any]:
    """table2.json from the sub-runs so far: per row the per-seed accuracies (None: not done), mean, min, max."""
    rows, val_params = {}, []
    for n in gaussians:
        per_seed = []
        for seed in seeds:
            entry = entries.get(sub_run_name(n, seed))
            done = entry is not None and entry["status"] == "done"
            per_seed.append(entry["result"]["test_accuracy"]["lts"] if done else None)
            if done:
                val_params.append(entry["result"]["test_accuracy"]["val_params"])
        accs = [a for a in per_seed if a is not None]
        rows[str(n)] = {
            "per_seed": per_seed,
            "mean": float(np.mean(accs)) if accs else None,
            "min": min(accs, default=None),
            "max": max(accs, default=None),
        }
    return {
        "experiment": "gmm_table2",
        "seeds": list(seeds),
        "lts_test_accuracy": rows,
        "val_params_test_accuracy": float(np.mean(val_params)) if val_params else None,
        "paper": PAPER,
        "cost": common.cost_of_runs(
            {name: e["result"].get("cost") for name, e in entries.items() if e["status"] == "done"}
        ),
        "runs": {name: {k: v for k, v in e.items() if k not in ("result", "traceback")} for name, e in entries.items()},
    }


def table_markdown(summary: Mapping[str, Any]) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        "| Gaussians per class | paper | ours: mean over seeds | ours: min / max |",
        "|---|---|---|---|",
    ]
    for n, row in summary["lts_test_accuracy"].items():
        paper = fmt(PAPER.get(n))
        lines.append(f"| {n} | {paper} | {fmt(row['mean'])} | {fmt(row['min'])} / {fmt(row['max'])} |")
    lines.append(
        f"| val params (p itself) | {PAPER['val_params']:.3f} | {fmt(summary['val_params_test_accuracy'])} | |"
    )
    return "\n".join(lines) + "\n"


def train_and_evaluate(cfg: Table2Config, workdir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or reuses) every sub-run and writes table2.json and table2.md in ``workdir``; returns the table.

    Raises:
      ConfigError: a bad setting (before any work).
      WorkdirError: a sub-run directory holds another configuration (``differences``) and not
        ``overwrite``; raised before any sub-run starts.
      SubRunsFailed: some sub-runs failed (after the others ran and the table of those was written).
    """
    validate(cfg)
    # No configuration given: whatever run the workdir holds is neither checked nor touched.
    workdir = run.prepare_workdir(workdir)
    plan = {sub_run_name(n, s): sub_run_config(cfg, n, s) for n in cfg.gaussians for s in cfg.seeds}
    multi = run.MultiRun(
        workdir,
        workdir / TABLE_JSON,
        overwrite=cfg.overwrite,
        ignore=common.RUN_MANAGEMENT,
        summary_fn=lambda entries: table(entries, cfg.gaussians, cfg.seeds),
    )
    for name, sub in plan.items():  # refuse a mismatch before any work
        multi.check(name, common.record(sub))
    for name, sub in plan.items():
        entry = multi.run(name, common.record(sub), functools.partial(run_one, cfg=sub))
        if entry["status"] == "done":
            acc, reused = entry["result"]["test_accuracy"]["lts"], " (reused)" if entry["reused"] else ""
            log(f"n={sub.num_gaussians} seed={sub.seed}: test accuracy {acc:.4f}{reused}")
        else:
            log(f"n={sub.num_gaussians} seed={sub.seed}: {entry['status']}: {entry['error']}")
    summary = multi.summary()
    (workdir / TABLE_MD).write_text(table_markdown(summary))
    log(table_markdown(summary))
    multi.raise_failures()
    return summary
