"""Figures of a run, drawn with matplotlib's Agg backend (no display needed).

Every function takes plain data (lists, NumPy arrays) and a path, so figures can
be redrawn from a workdir's files long after the run.
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
