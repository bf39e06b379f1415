"""Paper section 4.5, Table 1, Figure 6b as functions: learning the traffic simulator for car segmentation on
real KITTI.

    results = train_and_evaluate(KittiSegConfig(kitti_dir=DIR, height=24, width=80, num_iterations=2), workdir)
    results = evaluate_dir(workdir, other_dir)       # a finished run's best MTMs on another directory

The reward is the car IoU, on REAL KITTI validation images (a :class:`seg.KittiSource`), of a segmentation MTM
trained on simulated images. The methods of Table 1, each for ``num_iterations`` iterations (same K, M, xi,
MTM and start; experiments.lib.seg runs them):

  lts            Algorithm 1: a Gaussian policy over psi learned by REINFORCE (init: ``init``);
  random_params  a fresh psi per candidate, uniform in the simulator's box; one MTM per psi;
  random_search  greedy local search from ``init`` with the policy's noise, keeping the best psi;
  real           ONE MTM trained on the real-train split: per iteration xi epochs on M images drawn from it
                 (what one candidate of the other methods gets), continuing across iterations.

Data: ``kitti_dir`` (default ../shared/data/kitti_semantics when present), KITTI's data_semantics layout.
Split (lts_jax.data.kitti.default_split): test = the images of ``test_names`` present (default: the five
with the benchmark's original labels, 000000_10 .. 000004_10); the rest split by ``split_seed`` into val
(``val_fraction``) and train (the real method's images). On the 25-image shared sample: 5 test, 10 val,
10 train.

Writes WORKDIR/results.json:
  {"experiment": "kitti_seg", "val_car_iou": {method: ...}, "test_car_iou": {...}, "val_mean_iou": {...},
   "test_mean_iou": {...}, "best_iteration": {...}, "split": {"train": [names], "val": [...], "test": [...]},
   "psi": LTS's learned psi (readable), "psi_raw": [floats], "psi_by_method": {...}, "simulator": {...},
   "curves": {method: {"reward_mean", "reward_max", "best_reward"}}, "checkpoints": {method: path},
   "config": {...}, "timing": {...}}
and WORKDIR/figure6b.png (validation reward curves: LTS, max of random search, max and mean of random
params, real); the per-method runs go to RUN_DIR/<method>/ (``run_dir``, default the workdir).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from experiments.lib import common, seg
from lts_jax import run
from lts_jax.data import kitti
from lts_jax.tasks import segmentation as segmentation_task

NAME = "kitti_seg"
TITLE = "car segmentation on real KITTI (paper 4.5, Table 1)"
METHODS = (*seg.SEARCH_METHODS, "real")
DEFAULT_KITTI_DIR = "../shared/data/kitti_semantics"
PAPER_TEST_CAR_IOU = {"random_params": 0.480, "random_search": 0.407, "lts": 0.579, "real": 0.778}


@dataclasses.dataclass(frozen=True, kw_only=True)
class KittiSegConfig(seg.SegConfig):
    """A kitti_seg run: the segmentation settings and the KITTI directory and split."""

    methods: tuple[str, ...] = METHODS
    kitti_dir: str | None = None  # None: DEFAULT_KITTI_DIR when it exists
    split_seed: int = 0
    val_fraction: float = 0.5
    test_names: tuple[str, ...] = kitti.ORIGINAL_LABEL_NAMES


def resolve_kitti_dir(value: str | None) -> str:
    """The KITTI directory to use; ConfigError saying where to get KITTI when there is none."""
    if value:
        return value
    if os.path.isdir(DEFAULT_KITTI_DIR):
        return DEFAULT_KITTI_DIR
    raise common.ConfigError(
        lambda p: (
            f"{p('kitti_dir')} is not set and the default {DEFAULT_KITTI_DIR} does not exist. This experiment needs "
            f"real KITTI images: download the semantic segmentation data (data_semantics.zip) from "
            f"{kitti.KITTI_URL}, unpack it and pass {p('kitti_dir', 'DIR')}, DIR holding training/image_2 and "
            "training/semantic."
        )
    )


def source(cfg: KittiSegConfig) -> seg.KittiSource:
    return seg.KittiSource(
        resolve_kitti_dir(cfg.kitti_dir),
        split_seed=cfg.split_seed,
        val_fraction=cfg.val_fraction,
        test_names=cfg.test_names,
        train_needed="real" in cfg.methods,
    )


def validate(cfg: KittiSegConfig) -> None:
    """Every setting and the data's split, before any work (ConfigError, kitti.KittiDataError)."""
    EXPERIMENT.validate(cfg)


def train_and_evaluate(cfg: KittiSegConfig, workdir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every method of ``cfg.methods``, writes results.json and figure6b.png; returns the results."""
    return seg.train_and_evaluate(cfg, workdir, EXPERIMENT, log)


def summary_table(results: Mapping[str, Any]) -> str:
    """Table 1 as reproduced, beside the paper's test car IoU."""
    rows = {}
    for m in results["val_car_iou"]:
        rows[m] = {
            "val_car_iou": results["val_car_iou"][m],
            "test_car_iou": results["test_car_iou"].get(m),
            "test_mean_iou": results["test_mean_iou"].get(m),
            "late_val": results.get("late_mean_reward", {}).get(m),
            "best_iter": results.get("best_iteration", {}).get(m),
            "paper_test": PAPER_TEST_CAR_IOU.get(m),
        }
        if "eval_car_iou" in results:
            rows[m]["eval_car_iou"] = results["eval_car_iou"].get(m)
    columns = [
        ("late mean val reward", "late_val"),
        ("val car IoU", "val_car_iou"),
        ("test car IoU", "test_car_iou"),
        ("test mIoU", "test_mean_iou"),
        ("best iter", "best_iter"),
        ("paper test", "paper_test"),
    ]
    if "eval_car_iou" in results:
        columns.insert(4, ("eval car IoU", "eval_car_iou"))
    n_test = len(results.get("split", {}).get("test", []))
    n_val = len(results.get("split", {}).get("val", []))
    head = (
        f"Table 1: car IoU of each method's best-validation MTM (val: {n_val} KITTI images = the reward; test: "
        f"{n_test} unseen images); late mean val reward = mean reward of the last 20% of iterations"
    )
    return head + "\n" + seg.table(rows, columns)


# ----- evaluating an existing run on other images ----------------------------------------------------------
def evaluate_dir(workdir: str | Path, eval_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the best MTMs of the finished run in ``workdir`` on every image of ``eval_dir``.

    Reads results.json (model, image size, checkpoints), adds ``eval_car_iou``, ``eval_mean_iou`` and
    ``eval`` ({"dir", "images"}) to it and rewrites it. Raises ConfigError naming the missing file, and
    kitti.KittiDataError for unusable images.
    """
    path = Path(workdir) / "results.json"
    if not path.exists():
        raise common.ConfigError(lambda p: f"{p('eval_kitti_dir')} needs a finished run: {path} does not exist")
    results = json.loads(path.read_text())
    if results.get("experiment") != NAME:
        raise common.ConfigError(f"{path} is not a {NAME} run (experiment: {results.get('experiment')!r})")
    c = results["config"]
    mtm_cfg = seg.MTMConfig.from_results(c)
    H, W = int(c["height"]), int(c["width"])
    pieces = seg.Pieces(seg.make_task(mtm_cfg, H, W), 1)
    data = kitti.load_kitti(eval_dir, (H, W))
    log(f"{NAME}: evaluating the best MTMs of {workdir} on {len(data['names'])} images of {eval_dir} ({H}x{W})")
    like = pieces.task.param_shapes()
    car, miou = {}, {}
    for method, ckpt in results["checkpoints"].items():
        # The recorded (absolute) path; else the default layout, for a workdir that was moved or copied.
        candidates = [Path(ckpt), Path(workdir) / method / seg.BEST_PARAMS]
        ckpt_path = next((c for c in candidates if c.is_file()), None)
        if ckpt_path is None:
            raise common.ConfigError(
                f"the best MTM of {method} is missing: neither {candidates[0]} nor {candidates[1]} exists "
                "(was the run directory removed?)"
            )
        m = pieces.metrics(segmentation_task.load_params(ckpt_path, like), data)
        car[method], miou[method] = m["car_iou"], m["mean_iou"]
    results["eval_car_iou"], results["eval_mean_iou"] = car, miou
    results["eval"] = {"dir": os.path.abspath(eval_dir), "images": len(data["names"]), "names": list(data["names"])}
    run.write_json(path, results)
    log(summary_table(results))
    return results


# ----- figures ---------------------------------------------------------------------------------------------
def draw_figures_from_workdir(workdir: str | Path) -> list[Path]:
    """figure6b.png from results.json: reward curves on the real validation set (paper Figure 6b)."""
    workdir = Path(workdir)
    r = json.loads((workdir / "results.json").read_text())
    c = r["curves"]
    lines = {}
    if "lts" in c:
        lines["LTS (mean over K)"] = c["lts"]["reward_mean"]
    if "random_search" in c:
        lines["random search (max over K)"] = c["random_search"]["reward_max"]
    if "random_params" in c:
        lines["random params (max over K)"] = c["random_params"]["reward_max"]
        lines["random params (mean over K)"] = c["random_params"]["reward_mean"]
    if "real" in c:
        lines["real KITTI train images"] = c["real"]["reward_mean"]
    hlines = {}
    if r["val_car_iou"].get("pretrained") is not None:
        hlines["pretrained start"] = r["val_car_iou"]["pretrained"]
    return seg.reward_figure(workdir, "figure6b.png", lines, hlines, "car IoU on the KITTI validation images",
                             "Figure 6b: car segmentation on real KITTI, the methods' rewards")  # fmt: skip


EXPERIMENT = seg.Experiment(NAME, TITLE, METHODS, source, draw_figures_from_workdir, summary_table)
