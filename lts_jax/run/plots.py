"""Figures of a run, drawn with matplotlib's Agg backend (no display needed).

Every function takes plain data (lists, NumPy arrays) and a path, so figures can
be redrawn from a workdir's files long after the run. :func:`run_figures` draws
the generic figures of any run from its metrics.jsonl rows (rewards.png,
params.png, cost.png); ``python -m experiments.plot`` redraws them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CLASS_COLORS = ("tab:blue", "tab:orange")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_curves(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    steps: Mapping[str, Sequence[int]] | None = None,
    hlines: Mapping[str, float] | None = None,
    ylabel: str = "reward",
    title: str = "",
    smooth: int = 1,
) -> Path:
    """Reward over policy iterations, one line per named curve, optional reference lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, values in curves.items():
        y = np.asarray(values, np.float64)
        x = np.asarray(steps[name]) if steps and name in steps else np.arange(len(y))
        if smooth > 1 and len(y) >= smooth:
            kernel = np.ones(smooth) / smooth
            y = np.convolve(y, kernel, mode="valid")
            x = x[smooth - 1 :]
        ax.plot(x, y, label=name)
    for i, (name, value) in enumerate((hlines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{len(curves) + i}", label=name)
    ax.set_xlabel("policy iteration")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def decision_boundary_panels(
    panels: Sequence[dict],
    path: str | Path,
    *,
    extent: tuple[float, float, float, float] = (-8.0, 8.0, -8.0, 8.0),
    resolution: int = 150,
    ncols: int = 3,
) -> Path:
    """2-D binary classifiers' decision regions with points overlaid.

    Each panel is a dict with ``title``, optional ``predict_fn`` (grid points
    [N, 2] -> labels [N]; shaded regions) and optional ``points`` (x [N, 2], y [N]).
    """
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.5 * nrows), squeeze=False)
    xs = np.linspace(extent[0], extent[1], resolution)
    ys = np.linspace(extent[2], extent[3], resolution)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    for ax, panel in zip(axes.ravel(), panels):
        predict_fn: Callable | None = panel.get("predict_fn")
        if predict_fn is not None:
            z = np.asarray(predict_fn(grid)).reshape(gx.shape)
            ax.contourf(gx, gy, z, levels=[-0.5, 0.5, 1.5], colors=CLASS_COLORS, alpha=0.25)
        if panel.get("points") is not None:
            x, y = panel["points"]
            for c in (0, 1):
                sel = np.asarray(y) == c
                ax.scatter(x[sel, 0], x[sel, 1], s=3, color=CLASS_COLORS[c], alpha=0.6)
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    return _save(fig, path)


# ----- generic figures of any run, from its metrics.jsonl rows --------------------------------------------------
REWARD_KEYS = ("reward_mean", "reward_max", "best_reward", "baseline")


def _column(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows holding a finite number under ``key``."""
    steps, values = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            steps.append(row.get("step", i))
            values.append(float(v))
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def reward_figure(history: Sequence[Mapping], path: str | Path, *, title: str = "") -> Path | None:
    """rewards.png: the search's rewards over iterations (mean and max over K, best so far, baseline) in one
    panel, and every evaluation metric the run logged (``val_*``, ``test_*``, ``amtm_*``) in a second."""
    keys = [k for k in REWARD_KEYS if len(_column(history, k)[0])]
    if not keys:
        return None
    evals = sorted(
        {
            k
            for row in history
            for k, v in row.items()
            if k.startswith(("val_", "test_", "amtm_")) and isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    ncols = 2 if evals else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.0), squeeze=False)
    ax = axes[0, 0]
    for k in keys:
        x, y = _column(history, k)
        ax.plot(x, y, label=k, linestyle="--" if k == "baseline" else "-")
    ax.set_xlabel("policy iteration")
    ax.set_ylabel("reward")
    ax.set_title(title or "search rewards")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if evals:
        ax = axes[0, 1]
        for k in evals:
            x, y = _column(history, k)
            ax.plot(x, y, marker="." if len(x) < 30 else None, label=k)
        ax.set_xlabel("policy iteration")
        ax.set_title("evaluation metrics")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def params_figure(history: Sequence[Mapping], path: str | Path, *, include_frozen: bool = False) -> Path | None:
    """params.png: the evolution of the learned psi (paper Figure 7), one panel per block.

    Categorical blocks: the probability of each category; Bernoulli blocks:
    their probabilities; Gaussian blocks: each mean with a +- one standard
    deviation band. Read from the rows' ``params`` column (ParamSpec.describe of
    the search's centre). Frozen blocks are left out unless ``include_frozen``.
    """
    rows = [(row.get("step", i), row["params"]) for i, row in enumerate(history) if row.get("params")]
    if not rows:
        return None
    blocks = [name for name, desc in rows[-1][1].items() if include_frozen or not desc.get("frozen")]
    if not blocks:
        return None
    steps = np.asarray([s for s, _ in rows])
    ncols = min(3, len(blocks))
    nrows = -(-len(blocks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), blocks):
        descs = [p.get(name, {}) for _, p in rows]
        last = rows[-1][1][name]
        if "prob" in last:
            ax.plot(steps, [d.get("prob", np.nan) for d in descs], label="p")
            ax.set_ylim(0, 1)
        elif "probs" in last:
            labels = list(last["probs"])
            # More categories than the default cycle's 10 colours: an ordered colour map keeps them apart.
            colors = plt.cm.viridis(np.linspace(0, 0.95, len(labels))) if len(labels) > 10 else [None] * len(labels)
            for label, color in zip(labels, colors):
                ax.plot(steps, [d.get("probs", {}).get(label, np.nan) for d in descs], label=str(label), color=color)
            ax.set_ylim(0, 1)
        else:
            means = np.asarray([d.get("mean", [np.nan] * len(last["mean"])) for d in descs], np.float64)
            var = np.asarray([d.get("variance", [np.nan] * len(last["variance"])) for d in descs], np.float64)
            for j in range(means.shape[1]):
                line = ax.plot(steps, means[:, j], label=f"mean[{j}]")[0]
                sd = np.sqrt(var[:, j])
                ax.fill_between(steps, means[:, j] - sd, means[:, j] + sd, color=line.get_color(), alpha=0.15)
        ax.set_title(f"{name} ({last.get('kind', '?')})", fontsize=9)
        ax.set_xlabel("policy iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) <= 12:
            ax.legend(fontsize=6)
    for ax in axes.ravel()[len(blocks) :]:
        ax.axis("off")
    return _save(fig, path)


# The rewards drawn against the cost: the search's (every iteration) and the test rewards (where evaluated).
COST_REWARD_KEYS = ("reward_mean", "best_reward", "test_reward", "amtm_test_reward")


def _pairs(history: Sequence[Mapping], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the rows holding finite numbers under both keys."""
    xs, ys = [], []
    for row in history:
        x, y = row.get(x_key), row.get(y_key)
        if all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in (x, y)):
            xs.append(float(x))
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def cost_figure(history: Sequence[Mapping], path: str | Path, *, title: str = "") -> Path | None:
    """cost.png: the run's rewards against what they cost, the examples generated so far
    (``cost_images_total``) and the wall time so far (``cost_wall_s_total``, compilation included); None
    when the rows carry no cost columns (a run logged before they existed)."""
    panels = [("cost_images_total", "examples generated (images rendered) so far"),
              ("cost_wall_s_total", "wall time so far (s)")]  # fmt: skip
    panels = [(k, label) for k, label in panels if len(_column(history, k)[0])]
    keys = [k for k in COST_REWARD_KEYS if len(_column(history, k)[0])]
    if not panels or not keys:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.0), squeeze=False)
    for ax, (x_key, label) in zip(axes[0], panels):
        for y_key in keys:
            x, y = _pairs(history, x_key, y_key)
            marker = "." if y_key.startswith(("test_", "amtm_test_")) else None  # evaluated every few iterations
            ax.plot(x, y, label=y_key, marker=marker, linestyle="--" if y_key == "best_reward" else "-")
        ax.set_xlabel(label)
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    last = history[-1]
    spent = [f"{last['cost_images_total']:,} examples" if "cost_images_total" in last else None,
             f"{last['cost_mtm_steps_total']:,} MTM steps" if "cost_mtm_steps_total" in last else None,
             f"{last['cost_wall_s_total']:.0f} s" if "cost_wall_s_total" in last else None]  # fmt: skip
    fig.suptitle(title or f"reward against cost ({', '.join(s for s in spent if s)} in all)", fontsize=10)
    return _save(fig, path)


def run_figures(history: Sequence[Mapping], out_dir: str | Path) -> list[Path]:
    """The generic figures of any run (rewards.png, params.png and, with the cost columns, cost.png) into
    ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    written = [
        reward_figure(history, out_dir / "rewards.png"),
        params_figure(history, out_dir / "params.png"),
        cost_figure(history, out_dir / "cost.png"),
    ]
    return [p for p in written if p is not None]
