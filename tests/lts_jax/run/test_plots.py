"""The figures as a reader sees them: reference lines inside the axes, one metric per axis, the ParamSpec's names
in the legends, targets drawn, many categories readable, Figure 2's labels, legend and accuracies."""

from __future__ import annotations

import numpy as np
import pytest

from lts_jax import params as P
from lts_jax.run import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn during a test, captured just before they are saved (``drawn`` is a list of figures)."""
    figures = []
    save = plots._save

    def capture(fig, path):
        figures.append(fig)
        fig.canvas.draw()  # layout and limits as saved
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return figures


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_reference_lines_lie_inside_the_axes(tmp_path, drawn):
    # psi_real's line is the highest value of all: it used to sit on the axes' border
    plots.reward_curves({"val": [-0.9, -0.8, -0.7]}, tmp_path / "r.png", hlines={"psi_real": -0.6, "zero": -1.2})
    ax = drawn[0].axes[0]
    lo, hi = ax.get_ylim()
    assert lo < -1.2 and -0.6 < hi and min(hi + 0.6, -1.2 - lo) > 0.02 * (hi - lo)
    assert "psi_real (-0.6)" in legend_texts(ax) and (tmp_path / "r.png").stat().st_size > 0


def history_rows(n=6):
    rows = []
    for i in range(n):
        r = -1.0 + 0.05 * i
        row = {"step": i, "reward_mean": r, "reward_max": r + 0.1, "best_reward": r + 0.1, "baseline": r,
               "val_reward": r, "val_l1": -r, "val_accuracy": r, "amtm_val_reward": r + 0.02, "amtm_val_l1": -r - 0.02,
               "train_loss": 0.5 - 0.01 * i}  # fmt: skip
        if i % 5 == 0 or i == n - 1:
            row.update(test_reward=r - 0.01, test_l1=0.99 - 0.05 * i)
        rows.append(row)
    return rows


def test_rewards_and_l1_errors_are_on_separate_labelled_axes(tmp_path, drawn):
    groups = plots.evaluation_groups(history_rows())
    # val_reward and val_accuracy repeat reward_mean: left out; rewards apart from L1 errors and losses
    assert groups == {"reward": ["test_reward", "amtm_val_reward"], "l1": ["val_l1", "test_l1", "amtm_val_l1"],
                      "loss": ["train_loss"]}  # fmt: skip
    plots.reward_figure(history_rows(), tmp_path / "rewards.png")
    axes = [ax for ax in drawn[0].axes if ax.get_visible() and ax.lines]
    assert [ax.get_ylabel() for ax in axes] == ["validation reward", "reward", "L1 count error (lower is better)",
                                                "loss (lower is better)"]  # fmt: skip
    assert "AMTM, validation" in legend_texts(axes[1]) and "MTMs, test (mean over K)" in legend_texts(axes[2])
    colors = {ax.get_ylabel(): {t: line.get_color() for t, line in zip(legend_texts(ax), ax.lines)} for ax in axes}
    assert colors["reward"]["AMTM, validation"] == colors["L1 count error (lower is better)"]["AMTM, validation"]


SPEC = P.ParamSpec([
    P.bernoulli("presence"),
    P.categorical("kind", labels=["a", "b", "c"]),
    P.categorical("length", labels=[str(n) for n in range(8, 19)]),
    P.gaussian("pos", 2, labels=["x", "y"]),
    P.gaussian("spread"),
])  # fmt: skip


def test_params_use_block_names_targets_and_a_heat_map_for_many_values(tmp_path, drawn):
    rng = np.random.default_rng(0)
    rows = [{"step": i, "params": SPEC.describe(rng.normal(size=SPEC.dim).astype(np.float32))} for i in range(5)]
    target = SPEC.describe(SPEC.from_natural({"presence": 0.6, "kind": [0.5, 0.3, 0.2]}))
    plots.params_figure(rows, tmp_path / "params.png", targets=target, target_label="psi_real")
    by_title = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_title()}
    assert legend_texts(by_title["presence (bernoulli)"]) == ["p(presence)", "psi_real (0.60)"]
    assert legend_texts(by_title["kind (categorical)"]) == ["a", "b", "c", "psi_real (dashed)"]
    assert legend_texts(by_title["pos (gaussian)"]) == ["pos.x", "pos.y", "psi_real (dashed)"]  # not mean[0]
    assert legend_texts(by_title["spread (gaussian)"])[0] == "spread"
    dashed = [line.get_ydata() for line in by_title["kind (categorical)"].lines if line.get_linestyle() == "--"]
    assert np.allclose(sorted(y[0] for y in dashed if len(y)), [0.2, 0.3, 0.5], atol=1e-4)  # the targets' values
    heat = by_title["length (categorical)"]  # 11 values: a heat map with the values as its rows
    assert heat.images and [t.get_text() for t in heat.get_yticklabels()] == [str(n) for n in range(8, 19)]
    strips = [
        ax for ax in heat.child_axes if ax.images and [t.get_text() for t in ax.get_xticklabels()] == ["psi_real"]
    ]
    assert len(strips) == 1 and np.allclose(strips[0].images[0].get_array(), 1 / 11, atol=1e-4)  # psi_real's values


def test_decision_panels_have_axis_labels_a_class_legend_and_accuracies(tmp_path, drawn):
    x = np.random.default_rng(0).normal(size=(40, 2))
    y = (x[:, 0] > 0).astype(int)
    panels = [{"title": "trained on q", "predict_fn": lambda g: (g[:, 0] > 0).astype(int), "points": (x, y),
               "accuracy": 0.95}, {"title": "samples", "points": (x, y)}]  # fmt: skip
    plots.decision_boundary_panels(panels, tmp_path / "f2.png", ncols=2, resolution=20)
    first = drawn[0].axes[0]
    assert first.get_title() == "trained on q\ntest accuracy 0.950"
    assert (first.get_xlabel(), first.get_ylabel()) == ("x1", "x2")
    texts = [t.get_text() for legend in drawn[0].legends for t in legend.get_texts()]
    assert texts[:2] == ["class 0 (points)", "class 1 (points)"] and "decision boundary" in texts
