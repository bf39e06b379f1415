r"""Redraw every figure of a run from its files (``python -m experiments.plot --workdir=DIR``).

    written = redraw(workdir)

Generic figures, from DIR/metrics.jsonl (any run, finished or not):
  rewards.png  search rewards (mean, max, best, baseline) and evaluation metrics over iterations;
  params.png   the evolution of the learned psi per block (paper Figure 7): category and Bernoulli
               probabilities, Gaussian means with a one-standard-deviation band;
  cost.png     the rewards against the examples generated so far and the wall time so far.

A workdir of several runs (``run.MultiRun``: the segmentation experiments' RUN_DIR/<method>/, the sweep's
runs/NAME/) has no metrics.jsonl of its own: the generic figures of each sub-run (a directory with a
``subrun.json`` record and a metrics.jsonl, under the workdir or results.json's ``config.run_dir``, up to two
levels down) are redrawn in its directory.

Experiment-specific figures, for a finished run: results.json's "experiment"
field names a module ``experiments.lib.<experiment>``; if it defines
``draw_figures_from_workdir(workdir) -> list[Path]`` that is called (gmm_toy:
figure2.png and reward.png). That function is the registry entry: an
experiment opts in by defining it, reading only the workdir's files, and
calling it at the end of its own run so both paths draw the same figures.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from lts_jax import run
from lts_jax.run import plots
from lts_jax.run.multirun import RECORD_FILE

HOOK = "draw_figures_from_workdir"


class PlotError(RuntimeError):
    """The workdir cannot be plotted; the message names the path."""


def experiment_figures_fn(workdir: Path):
    """The registered redraw function of the run's experiment, or None (no results.json, or none registered)."""
    results_path = workdir / "results.json"
    if not results_path.exists():
        return None
    try:
        name = json.loads(results_path.read_text()).get("experiment")
    except json.JSONDecodeError as e:
        raise PlotError(f"{results_path} is not valid JSON ({e.msg})") from e
    # Only plain module names: results.json must not make us import arbitrary code paths.
    if not isinstance(name, str) or not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"experiments.lib.{name}")
    except ModuleNotFoundError:
        return None
    return getattr(module, HOOK, None)


def _results(workdir: Path) -> dict | None:
    path = workdir / "results.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PlotError(f"{path} is not valid JSON ({e.msg})") from e


def subrun_dirs(workdir: Path) -> list[Path]:
    """The sub-runs of a multi-run workdir that logged iterations: directories holding ``subrun.json`` and
    metrics.jsonl, one or two levels under ``workdir`` or under results.json's ``config.run_dir``."""
    roots = [workdir]
    run_dir = ((_results(workdir) or {}).get("config") or {}).get("run_dir")
    if run_dir and Path(run_dir).resolve() != workdir.resolve():
        roots.append(Path(run_dir))
    found = []
    for root in roots:
        for pattern in (f"*/{RECORD_FILE}", f"*/*/{RECORD_FILE}"):
            found += [r.parent for r in sorted(root.glob(pattern)) if (r.parent / "metrics.jsonl").exists()]
    return list(dict.fromkeys(found))


def redraw(workdir: str | Path) -> list[Path]:
    """Redraws the generic figures of ``workdir`` (or of its sub-runs) and the experiment's own; returns the
    files written. Raises PlotError when the directory holds no run."""
    workdir = Path(workdir)
    has_metrics = (workdir / "metrics.jsonl").exists()
    subruns = [] if has_metrics else subrun_dirs(workdir)
    fn = experiment_figures_fn(workdir)
    if not has_metrics and not subruns and fn is None:
        raise PlotError(
            f"{workdir / 'metrics.jsonl'} does not exist and {workdir} holds no sub-runs nor a finished run's "
            "results.json; is --workdir a run's directory?"
        )
    written: list[Path] = []
    for directory in [workdir] if has_metrics else subruns:
        history = run.read_metrics(directory)
        if not history and has_metrics:
            raise PlotError(f"{directory / 'metrics.jsonl'} holds no iterations yet")
        written += plots.run_figures(history, directory) if history else []
    if fn is not None:
        written += [Path(p) for p in (fn(workdir) or [])]
    return written
