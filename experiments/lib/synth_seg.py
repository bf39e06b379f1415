"""Paper section 4.4, Figure 6a as a function: learning the traffic simulator for car segmentation on simulated data.

    results = train_and_evaluate(SynthSegConfig(height=24, width=80, num_iterations=2), workdir)

Validation and test images are rendered with psi_val, the traffic simulator's "val" preset ("moderately
crowded with cars, unbalanced car types, random intersections and buildings on the side"), each with its
own seed (a :class:`seg.SimulatedSource`). The reward is the car IoU of a segmentation MTM on the validation
images. Two methods, the same number of iterations, K, M, xi and MTM (experiments.lib.seg runs them):

  lts         Algorithm 1 from ``init`` (default: the neutral "default" preset);
  val_params  the paper's reference point: data sets sampled with psi_val itself (a fixed search), whose
              maximum reward over all its MTMs is reported ("report the maximum reward achieved").

Writes WORKDIR/results.json:
  {"experiment": "synth_seg", "val_car_iou": {method: ...}, "test_car_iou": {...}, "val_mean_iou": {...},
   "test_mean_iou": {...}, "max_reward": {method: best validation reward of the run}, "best_iteration",
   "psi": LTS's learned psi (readable), "psi_raw": [floats], "psi_val": {...}, "simulator": {...},
   "curves": {method: {"reward_mean", "reward_max", "best_reward"}}, "checkpoints", "config", "timing",
   with ``fresh_images``: "fresh_val_car_iou", "fresh_test_car_iou", ... {method: ...} (seg.fresh_models), with
   ``learn_rendering``: "rendering_by_method" (the learned camera etc. in physical units)}
and WORKDIR/figure6a.png (validation car IoU over iterations: LTS against psi_val's data sets).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from experiments.lib import seg
from lts_jax import run

NAME = "synth_seg"
TITLE = "car segmentation on simulated images (paper 4.4, Figure 6a)"
PSI_VAL = "val"  # the simulator's preset used as psi_val (WORKSPACE.md, "The method": fixed, named, documented)
METHODS = ("lts", "val_params")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthSegConfig(seg.SegConfig):
    """A synth_seg run: the segmentation settings and the psi_val images."""

    methods: tuple[str, ...] = METHODS
    val_images: int = 64
    test_images: int = 64
    val_images_seed: int = 1001
    test_images_seed: int = 2002


def source(cfg: SynthSegConfig) -> seg.SimulatedSource:
    return seg.SimulatedSource(PSI_VAL, cfg.val_images, cfg.test_images, cfg.val_images_seed, cfg.test_images_seed)


def validate(cfg: SynthSegConfig) -> None:
    """Every setting, before any work (ConfigError naming the first bad one)."""
    EXPERIMENT.validate(cfg)


def train_and_evaluate(cfg: SynthSegConfig, workdir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Renders the psi_val data, runs every method, writes results.json and figure6a.png; returns the results."""
    return seg.train_and_evaluate(cfg, workdir, EXPERIMENT, log)


def summary_table(results: Mapping[str, Any]) -> str:
    rows = {
        m: {
            "max_reward": results["max_reward"].get(m),
            "late_val": results.get("late_mean_reward", {}).get(m),
            "val_car_iou": results["val_car_iou"][m],
            "test_car_iou": results["test_car_iou"].get(m),
            "test_mean_iou": results["test_mean_iou"].get(m),
            "best_iter": results["best_iteration"].get(m),
            "fresh_test": results.get("fresh_test_car_iou", {}).get(m),
        }
        for m in results["val_car_iou"]
    }
    columns = [
        ("max val reward", "max_reward"),
        ("late mean val reward", "late_val"),
        ("best val car IoU", "val_car_iou"),
        ("test car IoU", "test_car_iou"),
        ("test mIoU", "test_mean_iou"),
        ("best iter", "best_iter"),
    ]
    if "fresh_test_car_iou" in results:  # --fresh_images: a model of each method's final psi, selected by nothing
        columns.insert(5, ("fresh MTM test car IoU", "fresh_test"))
    return "Figure 6a (car IoU on images rendered with psi_val)\n" + seg.table(rows, columns)


def draw_figures_from_workdir(workdir: str | Path) -> list[Path]:
    """figure6a.png from results.json: LTS's validation car IoU against data sets sampled with psi_val; and LTS's
    params.png again, with psi_val's values as target lines."""
    workdir = Path(workdir)
    r = json.loads((workdir / "results.json").read_text())
    c = r["curves"]
    lines, hlines = {}, {}
    if "lts" in c:
        lines["LTS (mean over K)"] = c["lts"]["reward_mean"]
        lines["LTS (max over K)"] = c["lts"]["reward_max"]
    if "val_params" in c:
        lines["psi_val's data (mean over K)"] = c["val_params"]["reward_mean"]
        hlines["psi_val's data: max reward"] = r["max_reward"]["val_params"]
    if r["val_car_iou"].get("pretrained") is not None:
        hlines["pretrained start"] = r["val_car_iou"]["pretrained"]
    written = seg.reward_figure(workdir, "figure6a.png", lines, hlines, "car IoU on the validation images",
                                "Figure 6a: car segmentation on images rendered with psi_val")  # fmt: skip
    lts_dir = Path(r.get("checkpoints", {}).get("lts", "")).parent
    if "lts" in c and r.get("psi_val") and (lts_dir / "metrics.jsonl").exists():
        from lts_jax.run import plots  # matplotlib: only the figures need it

        history = run.read_metrics(lts_dir)
        params = plots.params_figure(history, lts_dir / "params.png", targets=r["psi_val"], target_label="psi_val")
        written += [params] if params else []
    return written


EXPERIMENT = seg.Experiment(NAME, TITLE, METHODS, source, draw_figures_from_workdir, summary_table)
