r"""Paper Table 2 over seeds: LTS test accuracy with 1 and 2 Gaussians per class, and p's own parameters.

    python -m experiments.gmm_table2 --workdir=/tmp/gmm_table2 --seeds=0,1,2,3,4

Runs experiments.gmm_toy's paper-scale configuration (300 iterations, K = 8,
M = 250) for every (num_gaussians, seed) into WORKDIR/n{N}_seed{S}/, then writes
WORKDIR/table2.md; WORKDIR/table2.json (mean, min, max over seeds, and each
sub-run's status) is rewritten after every sub-run. About 20 s per run on 2 CPU
cores.

Re-running the command reuses the finished sub-runs whose configuration matches
and resumes an interrupted one. A sub-run with another configuration (e.g.
another --num_iterations) is refused before any work, listing the differing
settings (exit 2); --overwrite starts every sub-run over. Nothing else in
WORKDIR is touched. A failing sub-run is recorded and the others go on; the
command then exits 1.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from experiments import common, gmm_toy
from lts_jax import lts, run
from lts_jax.search import policy
from simulators import gmm

SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds of the runs.")
GAUSSIANS = flags.DEFINE_list("gaussians", ["1", "2"], "Gaussians per class of q (Table 2's rows).")

PAPER = {"1": 0.670, "2": 0.996, "val_params": 0.995}
POLICY = {"variance": 0.05, "learning_rate": 0.2, "baseline_decay": 0.9}  # GaussianPolicy of every sub-run
TABLE_JSON, TABLE_MD = "table2.json", "table2.md"


def sub_run_name(num_gaussians: int, seed: int) -> str:
    return f"n{num_gaussians}_seed{seed}"


def sub_run_config(cfg: gmm_toy.Config, lts_cfg: lts.LTSConfig) -> dict[str, Any]:
    """Everything a sub-run's result depends on (what MultiRun compares before reusing it)."""
    return {**dataclasses.asdict(cfg), **dataclasses.asdict(lts_cfg), "policy": POLICY}


def run_one(path: Path, cfg: gmm_toy.Config, lts_cfg: lts.LTSConfig) -> dict[str, Any]:
    """One sub-run in ``path`` (gmm_toy.train_and_evaluate, resumable); returns what the table needs."""
    if (path / "results.json").exists():
        # Finished, but stopped before the multi-run recorded it; MultiRun has checked its configuration.
        results = json.loads((path / "results.json").read_text())
    else:
        search = policy.GaussianPolicy(gmm.make_spec(cfg.num_gaussians), **POLICY)
        results = gmm_toy.train_and_evaluate(cfg, lts_cfg, search, path)
    return {"test_accuracy": results["test_accuracy"], "iterations": results["iterations"]}


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


def run_table(
    workdir: str | Path,
    gaussians: Sequence[int],
    seeds: Sequence[int],
    num_iterations: int,
    lts_cfg: lts.LTSConfig,
    *,
    overwrite: bool = False,
    checkpoint_every: int = run.DEFAULT_CHECKPOINT_EVERY,
    keep_checkpoints: int = run.DEFAULT_KEEP_CHECKPOINTS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or reuses) every sub-run and writes table2.json and table2.md in ``workdir``; returns the table.

    Raises:
      WorkdirError: a sub-run directory holds another configuration (``differences``) and not
        ``overwrite``; raised before any sub-run starts.
      SubRunsFailed: some sub-runs failed (after the others ran and the table of those was written).
    """
    # No configuration given: whatever run the workdir holds is neither checked nor touched.
    workdir = run.prepare_workdir(workdir)
    plan = {
        sub_run_name(n, seed): gmm_toy.Config(
            num_gaussians=n,
            num_iterations=num_iterations,
            seed=seed,
            progress=False,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
        )
        for n in gaussians
        for seed in seeds
    }
    multi = run.MultiRun(
        workdir,
        workdir / TABLE_JSON,
        overwrite=overwrite,
        ignore=common.RUN_MANAGEMENT_FLAGS,
        summary_fn=lambda entries: table(entries, gaussians, seeds),
    )
    for name, cfg in plan.items():  # refuse a mismatch before any work
        multi.check(name, sub_run_config(cfg, lts_cfg))
    for name, cfg in plan.items():
        entry = multi.run(name, sub_run_config(cfg, lts_cfg), functools.partial(run_one, cfg=cfg, lts_cfg=lts_cfg))
        if entry["status"] == "done":
            acc, reused = entry["result"]["test_accuracy"]["lts"], " (reused)" if entry["reused"] else ""
            log(f"n={cfg.num_gaussians} seed={cfg.seed}: test accuracy {acc:.4f}{reused}")
        else:
            log(f"n={cfg.num_gaussians} seed={cfg.seed}: {entry['status']}: {entry['error']}")
    summary = multi.summary()
    (workdir / TABLE_MD).write_text(table_markdown(summary))
    log(table_markdown(summary))
    multi.raise_failures()
    return summary


def main() -> None:
    if not common.WORKDIR.value:
        raise common.usage_error("--workdir is required")
    lts_cfg = common.lts_config(num_candidates=8, dataset_size=250, common_sim_key=True)
    run_table(
        common.WORKDIR.value,
        [int(n) for n in GAUSSIANS.value],
        [int(s) for s in SEEDS.value],
        common.NUM_ITERATIONS.value,
        lts_cfg,
        overwrite=common.OVERWRITE.value,
        checkpoint_every=common.CHECKPOINT_EVERY.value,
        keep_checkpoints=common.KEEP_CHECKPOINTS.value,
    )


if __name__ == "__main__":
    common.set_defaults(num_iterations=300)
    app.run(common.run_main(main))
