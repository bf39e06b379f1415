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
from matplotlib.ticker import MaxNLocator  # noqa: E402

CLASS_COLORS = ("tab:blue", "tab:orange")
# Legends with more entries than this go outside the axes, on the right, so they never hide a curve.
LEGEND_INSIDE = 4


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # "tight": a legend outside the axes stays in the file
    plt.close(fig)
    return path


def _legend(ax, fontsize: float = 8) -> None:
    """The axes' legend: inside ("best") when short, outside on the right when long; none when empty."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) > LEGEND_INSIDE:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=fontsize, loc="best")


def _iterations_axis(ax, fontsize: float | None = None) -> None:
    """The x-axis of a curve over policy iterations: labelled, whole-number ticks (no "0.5" on a short run)."""
    ax.set_xlabel("policy iteration", fontsize=fontsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _fit_ylim(ax, values: Sequence[float], pad: float = 0.06) -> None:
    """Sets the y-limits so that every value (the curves' and the reference lines') lies inside the axes,
    with a margin of ``pad`` of the range on both sides (a reference line never sits on the border)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not v.size:
        return
    lo, hi = float(v.min()), float(v.max())
    margin = pad * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
    ax.set_ylim(lo - margin, hi + margin)


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
    """Reward over policy iterations, one line per named curve, and reference lines (``hlines``: {label:
    value}, dashed, their value in the legend), all inside the axes. Curves given at a few ``steps`` only
    (evaluated every few iterations) get markers. ``smooth`` > 1: a running mean over that many points."""
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    shown: list[float] = []
    for name, values in curves.items():
        y = np.asarray(values, np.float64)
        x = np.asarray(steps[name]) if steps and name in steps else np.arange(len(y))
        sparse = steps is not None and name in steps and len(x) < 0.5 * max(len(v) for v in curves.values())
        if smooth > 1 and len(y) >= smooth:
            kernel = np.ones(smooth) / smooth
            y = np.convolve(y, kernel, mode="valid")
            x = x[smooth - 1 :]
            name = f"{name}, running mean of {smooth}"
        ax.plot(x, y, label=name, marker="o" if sparse else None, markersize=3)
        shown += y.tolist()
    for i, (name, value) in enumerate((hlines or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1.2, color=f"C{len(curves) + i}", label=f"{name} ({value:.3g})")
        shown.append(value)
    _fit_ylim(ax, shown)
    _iterations_axis(ax)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def decision_boundary_panels(
    panels: Sequence[dict],
    path: str | Path,
    *,
    extent: tuple[float, float, float, float] = (-8.0, 8.0, -8.0, 8.0),
    resolution: int = 150,
    ncols: int = 3,
    class_names: Sequence[str] = ("class 0", "class 1"),
    axis_labels: tuple[str, str] = ("x1", "x2"),
    title: str = "",
) -> Path:
    """2-D binary classifiers' decision regions with points overlaid, one legend for the classes.

    Each panel is a dict with ``title``, optional ``predict_fn`` (grid points [N, 2] -> labels [N]; shaded
    regions), optional ``points`` (x [N, 2], y [N]) and optional ``accuracy`` (shown in the title).
    """
    nrows = -(-len(panels) // ncols)
    # constrained layout: tight_layout cannot place two-line titles between equal-aspect panels
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.9 * nrows + 0.6), squeeze=False, layout="constrained"
    )
    xs = np.linspace(extent[0], extent[1], resolution)
    ys = np.linspace(extent[2], extent[3], resolution)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    for ax, panel in zip(axes.ravel(), panels):
        predict_fn: Callable | None = panel.get("predict_fn")
        if predict_fn is not None:
            z = np.asarray(predict_fn(grid)).reshape(gx.shape)
            ax.contourf(gx, gy, z, levels=[-0.5, 0.5, 1.5], colors=CLASS_COLORS, alpha=0.25)
            ax.contour(gx, gy, z, levels=[0.5], colors="k", linewidths=0.6)
        if panel.get("points") is not None:
            x, y = panel["points"]
            for c in (0, 1):
                sel = np.asarray(y) == c
                ax.scatter(x[sel, 0], x[sel, 1], s=3, color=CLASS_COLORS[c], alpha=0.6)
        text = panel.get("title", "")
        if panel.get("accuracy") is not None:
            text += f"\ntest accuracy {panel['accuracy']:.3f}"
        ax.set_title(text, fontsize=9)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.set_xlabel(axis_labels[0], fontsize=8)
        ax.set_ylabel(axis_labels[1], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], marker="o", linestyle="", color=CLASS_COLORS[c], label=f"{class_names[c]} (points)")
               for c in (0, 1)]  # fmt: skip
    handles += [Patch(color=CLASS_COLORS[c], alpha=0.25, label=f"predicted {class_names[c]}") for c in (0, 1)]
    handles.append(Line2D([], [], color="k", linewidth=0.6, label="decision boundary"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# ----- generic figures of any run, from its metrics.jsonl rows --------------------------------------------------
REWARD_KEYS = ("reward_mean", "reward_max", "best_reward", "baseline")
REWARD_LABELS = {"reward_mean": "mean over the K candidates", "reward_max": "max over K",
                 "best_reward": "best so far", "baseline": "REINFORCE baseline"}  # fmt: skip
# Evaluation columns: prefix -> how the legend names it, in the order of the legends; each has one colour in
# every panel.
EVAL_PREFIXES = {
    "val_": "MTMs, validation (mean over K)",
    "test_": "MTMs, test (mean over K)",
    "amtm_val_": "AMTM, validation",
    "amtm_test_": "AMTM, test",
    "train_": "MTMs, training (mean over K)",
}
EVAL_COLORS = dict(zip(EVAL_PREFIXES, ("C0", "C1", "C2", "C3", "C7")))
# Metric (the column without its prefix) -> the y-axis label of its panel.
METRIC_LABELS = {
    "reward": "reward",
    "l1": "L1 count error (lower is better)",
    "loss": "loss (lower is better)",
    "accuracy": "accuracy",
    "car_iou": "car IoU",
    "mean_iou": "mean IoU",
}


def _column(history: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows holding a finite number under ``key``."""
    steps, values = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            steps.append(row.get("step", i))
            values.append(float(v))
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def _split_eval(key: str) -> tuple[str, str] | None:
    """(prefix, metric) of an evaluation column (``test_l1`` -> ("test_", "l1")), or None."""
    for prefix in EVAL_PREFIXES:
        if key.startswith(prefix) and len(key) > len(prefix):
            return prefix, key[len(prefix) :]
    return None


def _same_column(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    return len(a[0]) == len(b[0]) and np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], rtol=1e-6, atol=1e-9)


def evaluation_groups(history: Sequence[Mapping]) -> dict[str, list[str]]:
    """The evaluation columns of a run by metric, one panel each in rewards.png: ``{"reward": ["test_reward",
    "amtm_val_reward", ...], "l1": ["val_l1", ...], ...}`` (rewards first, columns in EVAL_PREFIXES's order). A
    column equal to a search reward or to an earlier column is left out (``val_reward`` is ``reward_mean``)."""
    drawn = [_column(history, k) for k in REWARD_KEYS]
    candidates = sorted({k for row in history for k, v in row.items()
                         if _split_eval(k) and isinstance(v, int | float) and not isinstance(v, bool)})  # fmt: skip
    candidates.sort(key=lambda k: (_split_eval(k)[1] != "reward", list(EVAL_PREFIXES).index(_split_eval(k)[0])))
    groups: dict[str, list[str]] = {}
    for k in candidates:
        col = _column(history, k)
        if not len(col[0]) or any(_same_column(col, other) for other in drawn):
            continue
        drawn.append(col)
        groups.setdefault(_split_eval(k)[1], []).append(k)
    return groups


def reward_figure(history: Sequence[Mapping], path: str | Path, *, title: str = "") -> Path | None:
    """rewards.png: the search's rewards over iterations (mean and max over K, best so far, baseline) in the
    first panel, then one panel per evaluation metric the run logged (``val_*``, ``test_*``, ``amtm_*``,
    ``train_*``; :func:`evaluation_groups`), each on its own labelled axis: rewards apart from L1 errors,
    losses, IoUs; the same colour for the same evaluation in every panel."""
    keys = [k for k in REWARD_KEYS if len(_column(history, k)[0])]
    if not keys:
        return None
    groups = evaluation_groups(history)
    drawn = {k: _column(history, k) for k in [*keys, *(c for cols in groups.values() for c in cols)]}
    n = 1 + len(groups)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.8 * nrows), squeeze=False)
    ax = axes[0, 0]
    for k in keys:
        x, y = drawn[k]
        ax.plot(x, y, label=REWARD_LABELS[k], linestyle="--" if k == "baseline" else "-")
    _iterations_axis(ax)
    ax.set_ylabel("validation reward")
    ax.set_title(title or "the search's rewards (validation)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    for ax, (metric, columns) in zip(axes.ravel()[1:], groups.items()):
        for k in columns:
            x, y = drawn[k]
            prefix = _split_eval(k)[0]
            ax.plot(x, y, marker="o" if len(x) < 0.5 * len(history) else None, markersize=3,
                    label=EVAL_PREFIXES[prefix], color=EVAL_COLORS[prefix])  # fmt: skip
        _iterations_axis(ax)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")))
        ax.set_title(METRIC_LABELS.get(metric, metric.replace("_", " ")).split(" (")[0], fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return _save(fig, path)


# A categorical block with more values than this is drawn as a heat map (lines would be a tangle).
MAX_CATEGORY_LINES = 6


def _entry_labels(name: str, desc: Mapping) -> list[str]:
    """Legend labels of a Gaussian block's dimensions: ``block.label`` (the ParamSpec's labels, which
    ``describe`` records), else the block's name alone (one dimension) or ``block[i]``."""
    size = len(desc.get("mean", []))
    labels = desc.get("labels")
    if labels and len(labels) == size:
        return [f"{name}.{lab}" for lab in labels]
    return [name] if size == 1 else [f"{name}[{i}]" for i in range(size)]


def params_figure(
    history: Sequence[Mapping],
    path: str | Path,
    *,
    targets: Mapping[str, Mapping] | None = None,
    target_label: str = "target",
    include_frozen: bool = False,
) -> Path | None:
    """params.png: the evolution of the learned psi (paper Figure 7), one panel per block.

    Bernoulli blocks: their probability; categorical blocks: the probability of each value (lines, or a heat map
    for more than MAX_CATEGORY_LINES values); Gaussian blocks: each mean with a +- one standard deviation band.
    Read from the rows' ``params`` column (ParamSpec.describe of the search's centre). ``targets``: a psi in the
    same form (``spec.describe(psi_real)``), drawn as dashed lines (``target_label`` in the legend) or, beside a
    heat map, as a strip. Frozen blocks are left out unless ``include_frozen``.
    """
    rows = [(row.get("step", i), row["params"]) for i, row in enumerate(history) if row.get("params")]
    if not rows:
        return None
    blocks = [name for name, desc in rows[-1][1].items() if include_frozen or not desc.get("frozen")]
    if not blocks:
        return None
    targets = targets or {}
    steps = np.asarray([s for s, _ in rows])
    ncols = min(3, len(blocks))
    nrows = -(-len(blocks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.4 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), blocks):
        descs = [p.get(name, {}) for _, p in rows]
        last, target = rows[-1][1][name], targets.get(name)
        heatmap = False
        if "prob" in last:
            line = ax.plot(steps, [d.get("prob", np.nan) for d in descs], label=f"p({name})")[0]
            if target and "prob" in target:
                ax.axhline(target["prob"], color=line.get_color(), linestyle="--", linewidth=1,
                           label=f"{target_label} ({target['prob']:.2f})")  # fmt: skip
            ax.set_ylim(-0.02, 1.02)
            ax.set_ylabel("probability", fontsize=8)
        elif "probs" in last:
            labels = list(last["probs"])
            probs = np.asarray([[d.get("probs", {}).get(lab, np.nan) for lab in labels] for d in descs], np.float64)
            tprobs = [target["probs"].get(lab) for lab in labels] if target and "probs" in target else None
            heatmap = len(labels) > MAX_CATEGORY_LINES
            if heatmap:
                _category_heatmap(fig, ax, steps, probs, labels, tprobs, target_label)
            else:
                for j, lab in enumerate(labels):
                    line = ax.plot(steps, probs[:, j], label=str(lab))[0]
                    if tprobs is not None and tprobs[j] is not None:
                        ax.axhline(tprobs[j], color=line.get_color(), linestyle="--", linewidth=1)
                if tprobs is not None:
                    ax.plot([], [], color="0.4", linestyle="--", linewidth=1, label=f"{target_label} (dashed)")
                ax.set_ylim(-0.02, 1.02)
                ax.set_ylabel("probability", fontsize=8)
        else:
            means = np.asarray([d.get("mean", [np.nan] * len(last["mean"])) for d in descs], np.float64)
            var = np.asarray([d.get("variance", [np.nan] * len(last["variance"])) for d in descs], np.float64)
            tmeans = target.get("mean") if target else None
            shown = []
            for j, label in enumerate(_entry_labels(name, last)):
                line = ax.plot(steps, means[:, j], label=label)[0]
                sd = np.sqrt(var[:, j])
                ax.fill_between(steps, means[:, j] - sd, means[:, j] + sd, color=line.get_color(), alpha=0.15)
                shown += means[:, j].tolist()
                if tmeans is not None and j < len(tmeans):
                    ax.axhline(tmeans[j], color=line.get_color(), linestyle="--", linewidth=1)
                    shown.append(tmeans[j])
            if tmeans is not None:
                ax.plot([], [], color="0.4", linestyle="--", linewidth=1, label=f"{target_label} (dashed)")
            # The means set the scale; a wide band (a broad component) runs off the axes rather than flatten them.
            _fit_ylim(ax, shown, pad=0.25)
            ax.set_ylabel("mean (band: +- 1 sd)", fontsize=8)
        ax.set_title(f"{name} ({last.get('kind', '?')})", fontsize=9)
        _iterations_axis(ax, fontsize=8)
        ax.tick_params(labelsize=7)
        if not heatmap:
            ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    for ax in axes.ravel()[len(blocks) :]:
        ax.axis("off")
    return _save(fig, path)


def _category_heatmap(fig, ax, steps, probs, labels, target, target_label) -> None:
    """A categorical block with many values: probability [iterations, values] as a heat map, values on the
    y-axis, and the target's probabilities as a strip on the right (same colour scale)."""
    vmax = float(np.nanmax([np.nanmax(probs), *(t for t in (target or []) if t is not None)]))
    x0, x1 = (steps[0] - 0.5, steps[-1] + 0.5) if len(steps) else (0, 1)
    im = ax.imshow(probs.T, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis", vmin=0.0,
                   vmax=vmax, extent=(x0, x1, -0.5, len(labels) - 0.5))  # fmt: skip
    ax.set_yticks(range(len(labels)), [str(lab) for lab in labels], fontsize=6)
    ax.grid(False)
    if target is not None:
        strip = ax.inset_axes((1.02, 0.0, 0.06, 1.0))
        column = np.asarray([[np.nan if t is None else t] for t in target], np.float64)
        strip.imshow(column, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=vmax,
                     extent=(0, 1, -0.5, len(labels) - 0.5))  # fmt: skip
        strip.set_xticks([0.5], [target_label], fontsize=6, rotation=90)
        strip.set_yticks([])
        bar_at = (1.11, 0.0, 0.04, 1.0)
    else:
        bar_at = (1.02, 0.0, 0.04, 1.0)
    bar = fig.colorbar(im, cax=ax.inset_axes(bar_at))
    bar.ax.tick_params(labelsize=6)
    bar.set_label("probability", fontsize=7)


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


def run_figures(
    history: Sequence[Mapping],
    out_dir: str | Path,
    *,
    targets: Mapping[str, Mapping] | None = None,
    target_label: str = "target",
) -> list[Path]:
    """The generic figures of any run (rewards.png, params.png and, with the cost columns, cost.png) into
    ``out_dir``; returns the paths written. ``targets``, ``target_label``: as :func:`params_figure` (e.g.
    psi_real's ``spec.describe`` and "psi_real")."""
    out_dir = Path(out_dir)
    written = [
        reward_figure(history, out_dir / "rewards.png"),
        params_figure(history, out_dir / "params.png", targets=targets, target_label=target_label),
        cost_figure(history, out_dir / "cost.png"),
    ]
    return [p for p in written if p is not None]
