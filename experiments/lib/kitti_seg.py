"""Paper section 4.5, Table 1, Figure 6b as functions: learning the traffic simulator for car segmentation on
real images, KITTI or CamVid.

    results = train_and_evaluate(KittiSegConfig(real_data="camvid", height=24, width=80, num_iterations=2), workdir)
    results = evaluate_dir(workdir, other_dir)       # a finished run's best MTMs on another directory

The reward is the car IoU, on REAL validation images (a :class:`seg.RealSource`), of a segmentation MTM trained
on simulated images. The methods of Table 1, each for ``num_iterations`` iterations (same K, M, xi, MTM and
start; experiments.lib.seg runs them):

  lts            Algorithm 1: a Gaussian policy over psi learned by REINFORCE (init: ``init``);
  random_params  a fresh psi per candidate, uniform in the simulator's box; one MTM per psi;
  random_search  greedy local search from ``init`` with the policy's noise, keeping the best psi;
  default_psi    no search: every candidate's data from the simulator's neutral "default" preset;
  real           ONE MTM trained on the real-train split: per iteration xi epochs on M images drawn from it
                 (what one candidate of the other methods gets), continuing across iterations.

Data (``real_data``, lts_jax.data.real.DATASETS; directory ``real_dir``, default the shared copy
$LTS_DATA_DIR/<data set>, ../shared/data/<data set> without it; ``kitti_dir`` is the older name of ``real_dir``
for KITTI). The data set's
description fixes the split, the crop and the mirror; ``height`` x ``width`` is the resolution (KITTI's
aspect, 48x160 / 96x320 / 192x640):
  kitti   KITTI semantics, 1242x375 resized: test = the images of ``test_names`` present (default: the five
          with the benchmark's original labels, 000000_10 .. 000004_10), the rest split by ``split_seed``
          into val (``val_fraction``) and train (the real method's images). On the 25-image shared sample:
          5 test, 10 val, 10 train.
  camvid  CamVid, 480x360 JPEG, a band of KITTI's aspect cropped (rows 113..256) and mirrored (UK traffic
          keeps left): split by whole sequence, val = the 101 frames of val.txt (sequence 0016E5: the
          reward), test = the sequences 0001TP and 0006R0 (163 frames, no drive shared with val). The shared
          copy has no frames of another sequence, so the real method needs ``train_from_val_sequence``: the
          204 train.txt frames of 0016E5, val's own drive, which makes that method's VALIDATION reward (and
          its choice of best model) optimistic; its test score stays clean. ``split_seed``, ``val_fraction``
          and ``test_names`` are KITTI's and do not apply.

Writes WORKDIR/results.json:
  {"experiment": "kitti_seg", "val_car_iou": {method: ...}, "test_car_iou": {...}, "val_mean_iou": {...},
   "test_mean_iou": {...}, "best_iteration": {...}, "late_mean_reward": {...},
   "fresh_val_car_iou" / "fresh_test_car_iou" / ...: {method: ...} (with fresh_images), "fresh": {...},
   "split": {"train": [names], "val": [...], "test": [...]}, "real_data": the data set's description
   (real.RealDataset.describe: crop rows, mirror, the known camera), "real_dir": path,
   "rendering_by_method": {method: the learned camera etc. in physical units (scene.rendering_settings)},
   "psi": LTS's learned psi (readable), "psi_raw": [floats], "psi_by_method": {...}, "simulator": {...},
   "curves": {method: {"reward_mean", "reward_max", "best_reward"}}, "checkpoints": {method: path},
   "config": {...}, "timing": {...}, "cost": {...}}
and WORKDIR/figure6b.png (validation reward curves: LTS, max of random search, max and mean of random
params, default psi, real); the per-method runs go to RUN_DIR/<method>/ (``run_dir``, default the workdir),
the fresh MTMs to RUN_DIR/fresh_<method>/.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib import common, seg
from lts_jax import run
from lts_jax.data import kitti, real
from lts_jax.tasks import segmentation as segmentation_task
from simulators.traffic import layout

NAME = "kitti_seg"
TITLE = "car segmentation on real images (paper 4.5, Table 1)"
METHODS = (*seg.SEARCH_METHODS, "default_psi", "real")
DEFAULT_KITTI_DIR = real.KITTI.default_dir()  # $LTS_DATA_DIR/kitti_semantics
PAPER_TEST_CAR_IOU = {"random_params": 0.480, "random_search": 0.407, "lts": 0.579, "real": 0.778}  # KITTI


@dataclasses.dataclass(frozen=True, kw_only=True)
class KittiSegConfig(seg.SegConfig):
    """A kitti_seg run: the segmentation settings, the real data set, its directory and its split."""

    methods: tuple[str, ...] = METHODS
    real_data: str = "kitti"
    real_dir: str | None = None  # None: the data set's shared copy (kitti_dir for KITTI, the older name)
    kitti_dir: str | None = None
    split_seed: int = 0
    val_fraction: float = 0.5
    test_names: tuple[str, ...] = kitti.ORIGINAL_LABEL_NAMES
    train_from_val_sequence: bool = False


def default_dir(name: str) -> str:
    return DEFAULT_KITTI_DIR if name == "kitti" else real.get(name).default_dir()


def resolve_real_dir(cfg: KittiSegConfig) -> str:
    """The directory of ``cfg.real_data``: ``real_dir`` (or, for KITTI, its alias ``kitti_dir``), else the shared
    copy when it exists. ConfigError naming the settings for an unknown data set, both names given with
    different values, ``kitti_dir`` with another data set, or no directory (saying where to get the data)."""
    common.check(cfg.real_data in real.DATASETS, "real_data", cfg.real_data, " | ".join(real.DATASETS))
    if cfg.kitti_dir and cfg.real_data != "kitti":
        raise common.ConfigError(
            lambda p: (
                f"{p('kitti_dir', cfg.kitti_dir)} names a KITTI directory, but {p('real_data', cfg.real_data)}: "
                f"give the {cfg.real_data} directory as {p('real_dir', 'DIR')}"
            )
        )
    if cfg.kitti_dir and cfg.real_dir and os.path.abspath(cfg.kitti_dir) != os.path.abspath(cfg.real_dir):
        raise common.ConfigError(
            lambda p: (
                f"{p('real_dir', cfg.real_dir)} and {p('kitti_dir', cfg.kitti_dir)} differ: {p('kitti_dir')} is the "
                f"older name of {p('real_dir')} for KITTI; give one"
            )
        )
    value = cfg.real_dir or cfg.kitti_dir
    if value:
        return value
    default = default_dir(cfg.real_data)
    if os.path.isdir(default):
        return default
    ds = real.get(cfg.real_data)
    if cfg.real_data == "kitti":
        raise common.ConfigError(
            lambda p: (
                f"{p('kitti_dir')} is not set (nor {p('real_dir')}) and the default {default} does not exist. This "
                f"experiment needs real KITTI images: download the semantic segmentation data (data_semantics.zip) "
                f"from {kitti.KITTI_URL}, unpack it and pass {p('real_dir', 'DIR')}, DIR holding training/image_2 "
                "and training/semantic."
            )
        )
    raise common.ConfigError(
        lambda p: (
            f"{p('real_dir')} is not set and the default {default} does not exist. This experiment needs real "
            f"{ds.title} images: get {ds.title} from {ds.url} in KITTI's layout (training/image_2, training/semantic, "
            f"val.txt) and pass {p('real_dir', 'DIR')}."
        )
    )


def split_options(cfg: KittiSegConfig) -> dict[str, Any]:
    """The keyword arguments of the data set's ``split`` (lts_jax.data.real) that ``cfg`` sets."""
    if cfg.real_data == "kitti":
        return {"seed": cfg.split_seed, "val_fraction": cfg.val_fraction, "test_names": tuple(cfg.test_names)}
    return {"train_from_val_sequence": cfg.train_from_val_sequence}


def source(cfg: KittiSegConfig) -> seg.RealSource:
    directory = resolve_real_dir(cfg)
    if cfg.train_from_val_sequence and cfg.real_data != "camvid":
        raise common.out_of_range(
            "train_from_val_sequence", True, f"false with real_data={cfg.real_data} (a CamVid setting)"
        )
    if cfg.real_data == "camvid" and "real" in cfg.methods and not cfg.train_from_val_sequence:
        raise common.ConfigError(
            lambda p: (
                f"{p('methods', ','.join(cfg.methods))} with {p('real_data', 'camvid')}: the real method needs "
                f"{p('train_from_val_sequence')} (the shared CamVid has train frames only of val's sequence, 0016E5: "
                f"that method's validation reward is then optimistic), or {p('methods')} without real"
            )
        )
    return seg.RealSource(cfg.real_data, directory, split_options(cfg), train_needed="real" in cfg.methods)


def validate(cfg: KittiSegConfig) -> None:
    """Every setting and the data's split, before any work (ConfigError, kitti.KittiDataError)."""
    EXPERIMENT.validate(cfg)


def train_and_evaluate(cfg: KittiSegConfig, workdir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every method of ``cfg.methods``, writes results.json and figure6b.png; returns the results."""
    return seg.train_and_evaluate(cfg, workdir, EXPERIMENT, log)


def data_title(results: Mapping[str, Any]) -> str:
    """The real data set of a run's results ("KITTI semantics" for runs that predate real_data)."""
    return real.get(results.get("real_data", {}).get("name", "kitti")).title


def summary_table(results: Mapping[str, Any]) -> str:
    """Table 1 as reproduced (beside the paper's test car IoU on KITTI), then the learned cameras."""
    name = results.get("real_data", {}).get("name", "kitti")
    rows = {}
    for m in results["val_car_iou"]:
        rows[m] = {
            "val_car_iou": results["val_car_iou"][m],
            "test_car_iou": results["test_car_iou"].get(m),
            "test_mean_iou": results["test_mean_iou"].get(m),
            "late_val": results.get("late_mean_reward", {}).get(m),
            "fresh_test": results.get("fresh_test_car_iou", {}).get(m),
            "best_iter": results.get("best_iteration", {}).get(m),
            "paper_test": PAPER_TEST_CAR_IOU.get(m) if name == "kitti" else None,
        }
        if "eval_car_iou" in results:
            rows[m]["eval_car_iou"] = results["eval_car_iou"].get(m)
    columns = [
        ("late mean val reward", "late_val"),
        ("val car IoU", "val_car_iou"),
        ("test car IoU", "test_car_iou"),
        ("test mIoU", "test_mean_iou"),
        ("best iter", "best_iter"),
    ]
    if "fresh_test_car_iou" in results:
        columns.insert(4, ("fresh MTM test car IoU", "fresh_test"))
    if "eval_car_iou" in results:
        columns.insert(4, ("eval car IoU", "eval_car_iou"))
    if name == "kitti":
        columns.append(("paper test", "paper_test"))
    n_test = len(results.get("split", {}).get("test", []))
    n_val = len(results.get("split", {}).get("val", []))
    head = (
        f"Table 1: car IoU of each method's best-validation MTM (val: {n_val} {data_title(results)} images = the "
        f"reward; test: {n_test} unseen images); late mean val reward = mean reward of the last 20% of iterations"
    )
    if "fresh" in results:
        head += f"; fresh MTM = fine-tuned on {results['fresh']['images']} images of the method's final psi"
    table = head + "\n" + seg.table(rows, columns)
    cameras = camera_table(results)
    return table + ("\n\n" + cameras if cameras else "")


CAMERA_COLUMNS = (
    ("height m", "camera_height_m"),
    ("pitch deg (down)", "camera_pitch_deg"),
    ("hfov deg", "hfov_deg"),
    ("fx/width", "fx_over_width"),
    ("horizon/H", "horizon_over_height"),
    ("exposure EV", "exposure_ev"),
    ("gain r", "gain_r"),
    ("gain g", "gain_g"),
    ("gain b", "gain_b"),
    ("blur px@96", "blur_px_at_96_rows"),
    ("noise levels", "noise_levels"),
)


def camera_table(results: Mapping[str, Any]) -> str:
    """The learned rendering settings of each method (value, +-spread over images) under the data set's known
    camera; "" when psi has no rendering parameters."""
    learned = {m: r for m, r in results.get("rendering_by_method", {}).items() if r}
    if not learned:
        return ""
    known = results.get("real_data", {}).get("camera", {})
    rows = {f"known ({results.get('real_data', {}).get('name', '?')})": {
        "camera_height_m": known.get("height_m"), "hfov_deg": known.get("hfov_deg"),
        "fx_over_width": known.get("fx_over_width"), "horizon_over_height": known.get("horizon_over_height"),
    }}  # fmt: skip
    c = results.get("config", {})
    aspect = float(c.get("width", 320)) / float(c.get("height", 96))
    for m, settings in learned.items():
        # a level camera's horizon at the principal point (KITTI's row), moved up by focal * tan(pitch)
        pitch = math.radians(settings["camera_pitch_deg"]["value"])
        horizon = layout.KITTI_CY_OVER_HEIGHT - settings["fx_over_width"]["value"] * aspect * math.tan(pitch)
        settings = {**settings, "horizon_over_height": {"value": horizon, "spread": float("nan")}}
        row = {}
        for _, k in CAMERA_COLUMNS:
            v, spread = settings[k]["value"], settings[k]["spread"]
            row[k] = f"{v:.3f}" if not spread or math.isnan(spread) else f"{v:.3f}+-{spread:.2f}"
        rows[m] = row
    head = (
        "Rendering settings: the data set's known camera, then each method's final psi (value at the blocks' "
        "means +- per-image spread; horizon/H: a level horizon's row over the image height, at the mean pitch); "
        "unknown: -. Known camera: " + str(known.get("source", "-"))
    )
    return head + "\n" + seg.table(rows, CAMERA_COLUMNS)


SEED_COLUMNS = (
    ("late mean val reward", "late_mean_reward"),
    ("best-val MTM: val car IoU", "val_car_iou"),
    ("best-val MTM: test car IoU", "test_car_iou"),
    ("fresh MTM: test car IoU", "fresh_test_car_iou"),
)


def seed_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Table 1 over seeds: ``{method: {metric: {"mean", "std" (over seeds, ddof 1), "values"}}}`` for the metrics of
    :data:`SEED_COLUMNS`, from the results.json of several runs (one per seed) of the same flags."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in runs:
        for _, key in SEED_COLUMNS:
            for method, v in r.get(key, {}).items():
                if v is not None:
                    out.setdefault(method, {}).setdefault(key, {"values": []})["values"].append(float(v))
    for metrics in out.values():
        for entry in metrics.values():
            x = np.asarray(entry["values"])
            entry["mean"], entry["std"] = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")
    return out


def seed_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """:func:`seed_summary` as a Markdown table: mean +- std over the seeds, per method."""
    summary = seed_summary(runs)
    lines = ["| method | " + " | ".join(h for h, _ in SEED_COLUMNS) + " |", "|---" * (len(SEED_COLUMNS) + 1) + "|"]
    for method, metrics in summary.items():
        cells = [
            f"{metrics[k]['mean']:.3f} +- {metrics[k]['std']:.3f}" if k in metrics else "" for _, k in SEED_COLUMNS
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----- evaluating an existing run on other images ----------------------------------------------------------
def evaluate_dir(workdir: str | Path, eval_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the best MTMs of the finished run in ``workdir`` on every image of ``eval_dir``, a directory of
    the run's data set (results.json's ``real_data``; KITTI for older runs), cropped and mirrored as its
    description says.

    Reads results.json (model, image size, checkpoints), adds ``eval_car_iou``, ``eval_mean_iou`` and
    ``eval`` ({"dir", "images", "names"}) to it and rewrites it. Raises ConfigError naming the missing file, and
    real.DataError (= kitti.KittiDataError) for unusable images.
    """
    path = Path(workdir) / "results.json"
    if not path.exists():
        raise common.ConfigError(lambda p: f"{p('eval_real_dir')} needs a finished run: {path} does not exist")
    results = json.loads(path.read_text())
    if results.get("experiment") != NAME:
        raise common.ConfigError(f"{path} is not a {NAME} run (experiment: {results.get('experiment')!r})")
    c = results["config"]
    mtm_cfg = seg.MTMConfig.from_results(c)
    H, W = int(c["height"]), int(c["width"])
    ds = real.get(results.get("real_data", {}).get("name", "kitti"))
    pieces = seg.Pieces(seg.make_task(mtm_cfg, H, W), 1)
    data = ds.load(eval_dir, (H, W))
    log(f"{NAME}: evaluating the best MTMs of {workdir} on {len(data['names'])} {ds.title} images of {eval_dir} "
        f"({H}x{W})")  # fmt: skip
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
    results["eval"] = {"dir": os.path.abspath(eval_dir), "data": ds.name, "images": len(data["names"]),
                       "names": list(data["names"])}  # fmt: skip
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
    if "default_psi" in c:
        lines["default psi, no search (mean over K)"] = c["default_psi"]["reward_mean"]
    title = data_title(r)
    if "real" in c:
        lines[f"real {title} train images"] = c["real"]["reward_mean"]
    hlines = {}
    if r["val_car_iou"].get("pretrained") is not None:
        hlines["pretrained start"] = r["val_car_iou"]["pretrained"]
    return seg.reward_figure(workdir, "figure6b.png", lines, hlines, f"car IoU on the {title} validation images",
                             f"Figure 6b: car segmentation on real {title}, the methods' rewards")  # fmt: skip


EXPERIMENT = seg.Experiment(NAME, TITLE, METHODS, source, draw_figures_from_workdir, summary_table)
