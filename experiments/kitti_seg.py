r"""Paper section 4.5, Table 1, Figure 6b: learning the traffic simulator for car segmentation on real KITTI.

    python -m experiments.kitti_seg --flagfile=experiments/flags/kitti_seg_quick.flags --workdir=/tmp/kitti

The reward is the car IoU, on REAL KITTI validation images, of a segmentation MTM trained on simulated
images. The methods of Table 1, each for --num_iterations iterations (same K, M, xi, MTM and start):

  lts            Algorithm 1: a Gaussian policy over psi learned by REINFORCE (init: --init);
  random_params  a fresh psi per candidate, uniform in the simulator's box; one MTM per psi;
  random_search  greedy local search from --init with the policy's noise, keeping the best psi;
  real           ONE MTM trained on the real-train split: per iteration xi epochs on M images drawn from it
                 (what one candidate of the other methods gets), continuing across iterations.

For every method the MTM with the best validation reward of the whole run is kept ("we test the epoch
with highest validation reward"), evaluated on the test split and saved (RUN_DIR/<method>/best_params.msgpack).
All MTMs start from one model pretrained on --pretrain_images simulated images (neutral psi; see
experiments/seg_common.py), evaluated as the row "pretrained".

Data: --kitti_dir (default ../shared/data/kitti_semantics when present), KITTI's data_semantics layout.
Split (lts_jax.data.kitti.default_split): test = the images of --test_names present (default: the five
with the benchmark's original labels, 000000_10 .. 000004_10); the rest split by --split_seed into val
(--val_fraction) and train (the real method's images). On the 25-image shared sample: 5 test, 10 val,
10 train.

  --eval_kitti_dir=DIR   with the --workdir of a finished run: evaluate each method's best MTM on EVERY
                         image of another KITTI-layout directory (no training) and add "eval_car_iou",
                         "eval_mean_iou" and "eval" to its results.json.

Writes WORKDIR/results.json:
  {"experiment": "kitti_seg", "val_car_iou": {method: ...}, "test_car_iou": {...}, "val_mean_iou": {...},
   "test_mean_iou": {...}, "best_iteration": {...}, "split": {"train": [names], "val": [...], "test": [...]},
   "psi": LTS's learned psi (readable), "psi_raw": [floats], "psi_by_method": {...}, "simulator": {...},
   "curves": {method: {"reward_mean", "reward_max", "best_reward"}}, "checkpoints": {method: path},
   "config": {...}, "timing": {...}}
and WORKDIR/figure6b.png (validation reward curves: LTS, max of random search, max and mean of random
params, real); the per-method runs go to RUN_DIR/<method>/ (--run_dir, default --workdir).

Exit status: 0 done (or already complete), 1 a non-finite value or a file that could not be written,
2 bad flags, workdir or data (a missing KITTI directory says where to get KITTI).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags

import simulators
from experiments import common, seg_common, traffic_common
from lts_jax import lts, run
from lts_jax.data import kitti
from lts_jax.run import plots
from lts_jax.tasks import segmentation as seg

PARTIAL = "results_partial.json"  # the finished methods' tables while the run goes on
NAME = "kitti_seg"
SIM_METHODS = ("lts", "random_params", "random_search")
METHODS = (*SIM_METHODS, "real")
DEFAULT_KITTI_DIR = "../shared/data/kitti_semantics"

KITTI_DIR = flags.DEFINE_string(
    "kitti_dir", None, f"KITTI semantics directory (training/image_2, training/semantic); default {DEFAULT_KITTI_DIR}."
)
METHODS_FLAG = common.METHODS  # of METHODS
SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "Seed of the val/train split of the non-test images.")
VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.5, "Fraction of the non-test images in the val split.")
TEST_NAMES = flags.DEFINE_list(
    "test_names", list(kitti.ORIGINAL_LABEL_NAMES), "Images (file stems) of the test split, where present."
)
EVAL_KITTI_DIR = flags.DEFINE_string(
    "eval_kitti_dir", None, "Evaluate the best MTMs of the finished run in --workdir on every image of this directory."
)

common.set_defaults(
    methods=list(METHODS),
    mtm_lr=3e-4,
    num_iterations=10,
    num_candidates=4,
    dataset_size=16,
    mtm_epochs=2,
    init="default",
    policy_lr=0.1,
    policy_variance=0.1,
    common_sim_key=True,
    log_every=5,
)


@dataclasses.dataclass(frozen=True)
class Config:
    """A kitti_seg run besides LTSConfig (K, M, xi), the MTM (seg_common.MTMConfig) and the search settings."""

    methods: tuple[str, ...] = METHODS
    kitti_dir: str = DEFAULT_KITTI_DIR
    split_seed: int = 0
    val_fraction: float = 0.5
    test_names: tuple[str, ...] = kitti.ORIGINAL_LABEL_NAMES
    seed: int = 0
    num_iterations: int = 10
    init: str = "default"


# ----- data ------------------------------------------------------------------------------------------------
def resolve_kitti_dir(value: str | None) -> str:
    """The KITTI directory to use; a usage error (exit 2) saying where to get KITTI when there is none."""
    if value:
        return value
    if os.path.isdir(DEFAULT_KITTI_DIR):
        return DEFAULT_KITTI_DIR
    raise common.usage_error(
        f"--kitti_dir is not set and the default {DEFAULT_KITTI_DIR} does not exist. This experiment needs real "
        f"KITTI images: download the semantic segmentation data (data_semantics.zip) from {kitti.KITTI_URL}, "
        "unpack it and pass --kitti_dir=DIR, DIR holding training/image_2 and training/semantic."
    )


def load_data(cfg: Config, height: int, width: int) -> dict[str, dict]:
    """{"train", "val", "test"} of the KITTI directory, resized to the MTM's input (KittiDataError on bad data)."""
    split = kitti.default_split(cfg.kitti_dir, seed=cfg.split_seed, val_fraction=cfg.val_fraction,
                                test_names=cfg.test_names)  # fmt: skip
    if "real" in cfg.methods and not split["train"]:
        raise kitti.KittiDataError(f"{cfg.kitti_dir}: the train split is empty; lower --val_fraction")
    if not split["val"]:
        raise kitti.KittiDataError(f"{cfg.kitti_dir}: the val split is empty; raise --val_fraction")
    return {part: kitti.load_kitti(cfg.kitti_dir, (height, width), names) for part, names in split.items() if names}


# ----- the run ---------------------------------------------------------------------------------------------
def train_and_evaluate(
    cfg: Config,
    lts_cfg: lts.LTSConfig,
    mtm_cfg: seg_common.MTMConfig,
    make_search: Callable[[str, Any], Any],
    sim: Any,
    workdir: Path,
    run_dir: Path,
    *,
    run_options: Mapping[str, Any],
    flag_values: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    common_train_key: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every method of ``cfg.methods``, writes results.json and figure6b.png; returns the results."""
    t_start = time.perf_counter()
    spec = sim.spec
    H, W = sim.height, sim.width
    K, M, xi, N = lts_cfg.num_candidates, lts_cfg.dataset_size, lts_cfg.mtm_epochs, cfg.num_iterations
    data = load_data(cfg, H, W)
    split = {part: list(d["names"]) for part, d in data.items()}
    sims = [m for m in cfg.methods if m in SIM_METHODS]
    passes = len(sims) * N * K * M * xi + ("real" in cfg.methods) * N * M * xi
    pre = 0 if mtm_cfg.init_checkpoint else mtm_cfg.pretrain_images  # pretraining images
    log(
        f"{NAME}: car segmentation on real KITTI (paper 4.5, Table 1). Methods: {', '.join(cfg.methods)}, "
        f"{N} iterations each."
    )
    log(
        f"  data: {cfg.kitti_dir}: {len(split['val'])} val images (the reward), {len(split.get('test', []))} test, "
        f"{len(split.get('train', []))} real-train; resized to {H}x{W}."
    )
    log(f"  MTM: {seg_common.describe_mtm(mtm_cfg, K, M, xi)}")
    log(
        f"  work: {passes + pre * xi:,} image-passes of MTM training; on {jax.devices()[0].platform}. "
        f"Outputs: {workdir}/results.json, figure6b.png; runs in {run_dir}/<method>/"
    )

    key = jax.random.key(cfg.seed)
    k_psi0, k_pre, k_state, k_run, k_real = jax.random.split(key, 5)
    sim = sim.select(seg.SegmentationTask.data_keys)
    programs = lts.Programs()
    pieces = seg_common.Pieces(seg_common.make_task(mtm_cfg, H, W), xi)
    out = seg_common.Outcome()
    init_path = seg_common.starting_point(
        mtm_cfg, pieces, sim, spec, M, k_pre, run_dir, overwrite=overwrite, outcome=out, work=passes, log=log
    )
    task = seg_common.make_task(mtm_cfg, H, W, init_checkpoint=init_path)
    if init_path:
        start = "init_checkpoint" if mtm_cfg.init_checkpoint else "pretrained"
        out.rows[start] = seg_common.evaluate_splits(pieces, task.init(jax.random.key(0)).params, data)

    psi0 = np.asarray(spec.initial(cfg.init, k_psi0), np.float32)

    step_cfg = dataclasses.replace(lts_cfg, keep_best_mtm=True, common_train_key=common_train_key)

    def build(method: str):
        if method == "real":
            return seg_common.make_real_step(pieces, data["train"], M), seg_common.init_real_state(task, k_real), None
        strategy = make_search(method, spec)
        step = seg_common.make_step(step_cfg, sim, task, strategy, programs)
        return step, seg_common.init_state(step_cfg, task, strategy, k_state, psi0), strategy

    seg_common.run_methods(
        cfg.methods, build, k_run, N, data, pieces, spec, run_dir, run_options=run_options,
        flag_values=flag_values, overwrite=overwrite, outcome=out, partial_path=workdir / PARTIAL, log=log,
    )  # fmt: skip
    out.timing["total_s"] = time.perf_counter() - t_start

    headline = next((m for m in SIM_METHODS if m in out.psi), None)
    results: dict[str, Any] = {
        "experiment": NAME,
        "methods": list(cfg.methods),
        "iterations": N,
        **seg_common.metric_tables(out.rows),
        "late_mean_reward": seg_common.late_mean_reward(out.curves),
        "split": split,
        "kitti_dir": os.path.abspath(cfg.kitti_dir),
        **(run.psi_export(spec, out.psi[headline]) if headline else {}),
        "psi_method": headline,
        "psi_by_method": {m: spec.describe(p) for m, p in out.psi.items()},
        "psi_raw_by_method": {m: np.asarray(p).tolist() for m, p in out.psi.items()},
        "psi_init": spec.describe(psi0),
        "simulator": sim.describe(),
        "curves": out.curves,
        "checkpoints": out.checkpoints,
        "config": {
            **dataclasses.asdict(cfg),
            **dataclasses.asdict(lts_cfg),
            **{f"mtm_{k}": v for k, v in dataclasses.asdict(mtm_cfg).items()},
            "height": H,
            "width": W,
        },
        "timing": out.timing,
        "device": str(jax.devices()[0].device_kind),
    }
    run.write_json(workdir / "results.json", results)
    (workdir / PARTIAL).unlink(missing_ok=True)
    draw_figures_from_workdir(workdir)
    log(summary_table(results))
    return results


def summary_table(results: Mapping[str, Any]) -> str:
    """Table 1 as reproduced, beside the paper's test car IoU."""
    paper = {"random_params": 0.480, "random_search": 0.407, "lts": 0.579, "real": 0.778}
    rows = {}
    for m in results["val_car_iou"]:
        rows[m] = {
            "val_car_iou": results["val_car_iou"][m],
            "test_car_iou": results["test_car_iou"].get(m),
            "test_mean_iou": results["test_mean_iou"].get(m),
            "late_val": results.get("late_mean_reward", {}).get(m),
            "best_iter": results.get("best_iteration", {}).get(m),
            "paper_test": paper.get(m),
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
    return head + "\n" + seg_common.table(rows, columns)


# ----- evaluating an existing run on other images ----------------------------------------------------------
def evaluate_dir(workdir: str | Path, eval_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates the best MTMs of the finished run in ``workdir`` on every image of ``eval_dir``.

    Reads results.json (model, image size, checkpoints), adds ``eval_car_iou``, ``eval_mean_iou`` and
    ``eval`` ({"dir", "images"}) to it and rewrites it. Raises ValueError naming the missing file.
    """
    path = Path(workdir) / "results.json"
    if not path.exists():
        raise ValueError(f"--eval_kitti_dir needs a finished run: {path} does not exist")
    results = json.loads(path.read_text())
    if results.get("experiment") != NAME:
        raise ValueError(f"{path} is not a {NAME} run (experiment: {results.get('experiment')!r})")
    c = results["config"]
    fields = dataclasses.fields(seg_common.MTMConfig)
    mtm_cfg = seg_common.MTMConfig(**{f.name: c.get(f"mtm_{f.name}", f.default) for f in fields})
    H, W = int(c["height"]), int(c["width"])
    pieces = seg_common.Pieces(seg_common.make_task(mtm_cfg, H, W), 1)
    data = kitti.load_kitti(eval_dir, (H, W))
    log(f"{NAME}: evaluating the best MTMs of {workdir} on {len(data['names'])} images of {eval_dir} ({H}x{W})")
    like = pieces.task.param_shapes()
    car, miou = {}, {}
    for method, ckpt in results["checkpoints"].items():
        # The recorded (absolute) path; else the default layout, for a workdir that was moved or copied.
        candidates = [Path(ckpt), Path(workdir) / method / seg_common.BEST_PARAMS]
        ckpt_path = next((c for c in candidates if c.is_file()), None)
        if ckpt_path is None:
            raise ValueError(
                f"the best MTM of {method} is missing: neither {candidates[0]} nor {candidates[1]} exists "
                "(was --run_dir removed?)"
            )
        m = pieces.metrics(seg.load_params(ckpt_path, like), data)
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
    n = len(next(iter(c.values()))["reward_mean"]) if c else 0
    path = plots.reward_curves(
        lines,
        workdir / "figure6b.png",
        hlines=hlines,
        ylabel="car IoU on the KITTI validation images",
        title=f"KITTI car segmentation: reward curves ({n} iterations)",
        smooth=5 if n >= 50 else 1,
    )
    return [path]


# ----- flags -> library ------------------------------------------------------------------------------------
def config_from_flags(kitti_dir: str) -> Config:
    return Config(
        methods=tuple(METHODS_FLAG.value),
        kitti_dir=kitti_dir,
        split_seed=SPLIT_SEED.value,
        val_fraction=VAL_FRACTION.value,
        test_names=tuple(TEST_NAMES.value),
        seed=common.SEED.value,
        num_iterations=common.NUM_ITERATIONS.value,
        init=common.INIT.value,
    )


def validate_flags(spec) -> None:
    seg_common.validate_flags(spec)
    bad = [m for m in METHODS_FLAG.value if m not in METHODS]
    if bad or not METHODS_FLAG.value or len(set(METHODS_FLAG.value)) != len(METHODS_FLAG.value):
        raise common.usage_error(
            f"--methods={','.join(METHODS_FLAG.value)}: give distinct methods of {', '.join(METHODS)}"
        )
    common.check(0.0 < VAL_FRACTION.value <= 1.0, "val_fraction", VAL_FRACTION.value, "a float in (0, 1]")
    common.check(
        traffic_common.SIMULATOR.value == "traffic", "simulator", traffic_common.SIMULATOR.value, "traffic (for now)"
    )


def main() -> None:
    from simulators.traffic.scene import make_spec

    if EVAL_KITTI_DIR.value:
        if not common.WORKDIR.value:
            raise common.usage_error("--eval_kitti_dir needs --workdir (a finished kitti_seg run)")
        try:
            evaluate_dir(common.WORKDIR.value, EVAL_KITTI_DIR.value)
        except (ValueError, kitti.KittiDataError) as e:
            raise common.usage_error(str(e)) from e
        return
    validate_flags(make_spec(traffic_common.LEARN_INTERSECTION.value))
    kitti_dir = resolve_kitti_dir(KITTI_DIR.value)
    cfg = config_from_flags(kitti_dir)
    try:  # bad data is a configuration problem: say so before any work
        kitti.default_split(kitti_dir, seed=cfg.split_seed, val_fraction=cfg.val_fraction, test_names=cfg.test_names)
    except kitti.KittiDataError as e:
        raise common.usage_error(str(e)) from e
    traffic_common.setup_compile_cache()
    lts_cfg = common.lts_config()
    mtm_cfg = seg_common.mtm_config_from_flags()
    workdir = common.prepare_workdir()
    sim = simulators.make(**traffic_common.simulator_options())
    try:
        train_and_evaluate(
            cfg,
            lts_cfg,
            mtm_cfg,
            common.make_search,
            sim,
            workdir,
            seg_common.run_dir(workdir),
            run_options=common.run_options(),
            flag_values=common.shared_flag_values(),
            overwrite=common.OVERWRITE.value,
            common_train_key=seg_common.COMMON_TRAIN_KEY.value,
        )
    except kitti.KittiDataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {workdir / 'results.json'}  figure: {workdir / 'figure6b.png'}")


if __name__ == "__main__":
    app.run(common.run_main(main))
