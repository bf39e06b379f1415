r"""Redraw every figure of a run from its files (``python -m experiments.plot --workdir=DIR``).

    written = redraw(workdir)

Generic figures, from DIR/metrics.jsonl (any run, finished or not):
  rewards.png  search rewards (mean, max, best, baseline) and evaluation metrics over iterations;
  params.png   the evolution of the learned psi per block (paper Figure 7): category and Bernoulli
               probabilities, Gaussian means with a one-standard-deviation band;
  cost.png     the rewards against the examples generated so far and the wall time so far.

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


def redraw(workdir: str | Path) -> list[Path]:
    """Redraws the generic and the experiment's figures of ``workdir``; returns the files written."""
    workdir = Path(workdir)
    if not (workdir / "metrics.jsonl").exists():
        raise PlotError(f"{workdir / 'metrics.jsonl'} does not exist; is --workdir a run's directory?")
    history = run.read_metrics(workdir)
    if not history:
        raise PlotError(f"{workdir / 'metrics.jsonl'} holds no iterations yet")
    written = plots.run_figures(history, workdir)
    fn = experiment_figures_fn(workdir)
    if fn is not None:
        written += [Path(p) for p in (fn(workdir) or [])]
    return written
