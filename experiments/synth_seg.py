r"""Paper section 4.4, Figure 6a: learning the traffic simulator for car segmentation on simulated data.

    python -m experiments.synth_seg --flagfile=experiments/flags/synth_seg_quick.flags --workdir=/tmp/synth

Validation and test images are rendered with psi_val, the traffic simulator's "val" preset ("moderately
crowded with cars, unbalanced car types, random intersections and buildings on the side"), each with its
own seed. The reward is the car IoU of a segmentation MTM on the validation images. Two methods, the same
number of iterations, K, M, xi and MTM:

  lts         Algorithm 1 from --init (default: the neutral "default" preset);
  val_params  the paper's reference point: data sets sampled with psi_val itself (a fixed search), whose
              maximum reward over all its MTMs is reported ("report the maximum reward achieved").

For each method the MTM with the best validation reward is kept, evaluated on the test images and saved
(RUN_DIR/<method>/best_params.msgpack). With --pretrain_images every MTM starts from one model pretrained on
neutral-psi images (experiments/seg_common.py), reported as the row "pretrained".

Writes WORKDIR/results.json:
  {"experiment": "synth_seg", "val_car_iou": {method: ...}, "test_car_iou": {...}, "val_mean_iou": {...},
   "test_mean_iou": {...}, "max_reward": {method: best validation reward of the run}, "best_iteration",
   "psi": LTS's learned psi (readable), "psi_raw": [floats], "psi_val": {...}, "simulator": {...},
   "curves": {method: {"reward_mean", "reward_max", "best_reward"}}, "checkpoints", "config", "timing"}
and WORKDIR/figure6a.png (validation car IoU over iterations: LTS against psi_val's data sets).

Exit status: 0 done (or already complete), 1 a non-finite value or a file that could not be written,
2 bad flags or workdir.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import app, flags

import simulators
from experiments import common, seg_common, traffic_common
from lts_jax import lts, run, search
from lts_jax.run import plots
from lts_jax.tasks.segmentation import SegmentationTask

PARTIAL = "results_partial.json"  # the finished methods' tables while the run goes on
NAME = "synth_seg"
PSI_VAL = "val"  # the simulator's preset used as psi_val (PAPER.md: fixed, named, documented)
METHODS = ("lts", "val_params")

METHODS_FLAG = common.METHODS  # of METHODS
VAL_IMAGES = flags.DEFINE_integer("val_images", 64, "Validation images rendered with psi_val.")
TEST_IMAGES = flags.DEFINE_integer("test_images", 64, "Test images rendered with psi_val.")
VAL_IMAGES_SEED = flags.DEFINE_integer("val_images_seed", 1001, "Seed of the validation images.")
TEST_IMAGES_SEED = flags.DEFINE_integer("test_images_seed", 2002, "Seed of the test images.")

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
    """A synth_seg run besides LTSConfig (K, M, xi), the MTM (seg_common.MTMConfig) and the search settings."""

    methods: tuple[str, ...] = METHODS
    val_images: int = 64
    test_images: int = 64
    val_images_seed: int = 1001
    test_images_seed: int = 2002
    seed: int = 0
    num_iterations: int = 10
    init: str = "default"


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
    """Renders the psi_val data, runs every method, writes results.json and figure6a.png; returns the results."""
    t_start = time.perf_counter()
    spec = sim.spec
    H, W = sim.height, sim.width
    K, M, xi, N = lts_cfg.num_candidates, lts_cfg.dataset_size, lts_cfg.mtm_epochs, cfg.num_iterations
    psi_val = spec.preset(PSI_VAL)
    passes = len(cfg.methods) * N * K * M * xi
    pre = 0 if mtm_cfg.init_checkpoint else mtm_cfg.pretrain_images  # pretraining images
    log(
        f"{NAME}: car segmentation on simulated images (paper 4.4, Figure 6a). Methods: {', '.join(cfg.methods)}, "
        f"{N} iterations each."
    )
    log(
        f"  data: {cfg.val_images} val images (the reward) and {cfg.test_images} test images rendered at {H}x{W} "
        f"with psi_val (preset {PSI_VAL!r}: {spec.format(psi_val)})"
    )
    log(f"  MTM: {seg_common.describe_mtm(mtm_cfg, K, M, xi)}")
    log(
        f"  work: {passes + pre * xi:,} image-passes of MTM training; on {jax.devices()[0].platform}. "
        f"Outputs: {workdir}/results.json, figure6a.png; runs in {run_dir}/<method>/"
    )

    key = jax.random.key(cfg.seed)
    k_psi0, k_pre, k_state, k_run = jax.random.split(key, 4)
    sim = sim.select(SegmentationTask.data_keys)
    t0 = time.perf_counter()
    data = {
        "val": sim.sample_dataset(jax.random.key(cfg.val_images_seed), psi_val, cfg.val_images),
        "test": sim.sample_dataset(jax.random.key(cfg.test_images_seed), psi_val, cfg.test_images),
    }
    jax.block_until_ready(data)
    log(f"  rendered the val and test images in {seg_common.fmt_time(time.perf_counter() - t0)} (compilation included)")
    programs = lts.Programs()
    pieces = seg_common.Pieces(seg_common.make_task(mtm_cfg, H, W), xi)
    out = seg_common.Outcome()
    out.timing["data_s"] = time.perf_counter() - t0
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
        if method == "val_params":
            strategy, start_psi = search.FixedSearch(spec), psi_val
        else:
            strategy, start_psi = make_search(method, spec), psi0
        step = seg_common.make_step(step_cfg, sim, task, strategy, programs)
        return step, seg_common.init_state(step_cfg, task, strategy, k_state, start_psi), strategy

    seg_common.run_methods(
        cfg.methods, build, k_run, N, data, pieces, spec, run_dir, run_options=run_options,
        flag_values=flag_values, overwrite=overwrite, outcome=out, partial_path=workdir / PARTIAL, log=log,
    )  # fmt: skip
    out.timing["total_s"] = time.perf_counter() - t_start

    psi_lts = out.psi.get("lts")
    results: dict[str, Any] = {
        "experiment": NAME,
        "methods": list(cfg.methods),
        "iterations": N,
        **seg_common.metric_tables(out.rows),
        "max_reward": {m: r["best_val_reward_logged"] for m, r in out.rows.items() if "best_val_reward_logged" in r},
        "late_mean_reward": seg_common.late_mean_reward(out.curves),
        **(run.psi_export(spec, psi_lts) if psi_lts is not None else {}),
        "psi_val": spec.describe(psi_val),
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
    rows = {
        m: {
            "max_reward": results["max_reward"].get(m),
            "late_val": results.get("late_mean_reward", {}).get(m),
            "val_car_iou": results["val_car_iou"][m],
            "test_car_iou": results["test_car_iou"].get(m),
            "test_mean_iou": results["test_mean_iou"].get(m),
            "best_iter": results["best_iteration"].get(m),
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
    return "Figure 6a (car IoU on images rendered with psi_val)\n" + seg_common.table(rows, columns)


def draw_figures_from_workdir(workdir: str | Path) -> list[Path]:
    """figure6a.png from results.json: LTS's validation car IoU against data sets sampled with psi_val."""
    workdir = Path(workdir)
    r = json.loads((workdir / "results.json").read_text())
    c = r["curves"]
    lines, hlines = {}, {}
    if "lts" in c:
        lines["LTS (mean over K)"] = c["lts"]["reward_mean"]
        lines["LTS (max over K)"] = c["lts"]["reward_max"]
    if "val_params" in c:
        lines["val params (mean over K)"] = c["val_params"]["reward_mean"]
        hlines["val params: max reward"] = r["max_reward"]["val_params"]
    n = len(next(iter(c.values()))["reward_mean"]) if c else 0
    path = plots.reward_curves(
        lines,
        workdir / "figure6a.png",
        hlines=hlines,
        ylabel="car IoU on the validation images",
        title=f"simulated car segmentation ({n} iterations)",
        smooth=5 if n >= 50 else 1,
    )
    return [path]


# ----- flags -> library ------------------------------------------------------------------------------------
def config_from_flags() -> Config:
    return Config(
        methods=tuple(METHODS_FLAG.value),
        val_images=VAL_IMAGES.value,
        test_images=TEST_IMAGES.value,
        val_images_seed=VAL_IMAGES_SEED.value,
        test_images_seed=TEST_IMAGES_SEED.value,
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
    common.check(VAL_IMAGES.value >= 1, "val_images", VAL_IMAGES.value, "an integer >= 1")
    common.check(TEST_IMAGES.value >= 1, "test_images", TEST_IMAGES.value, "an integer >= 1")
    common.check(
        traffic_common.SIMULATOR.value == "traffic", "simulator", traffic_common.SIMULATOR.value, "traffic (for now)"
    )


def main() -> None:
    from simulators.traffic.scene import make_spec

    validate_flags(make_spec(traffic_common.LEARN_INTERSECTION.value))
    traffic_common.setup_compile_cache()
    cfg = config_from_flags()
    lts_cfg = common.lts_config()
    mtm_cfg = seg_common.mtm_config_from_flags()
    workdir = common.prepare_workdir()
    sim = simulators.make(**traffic_common.simulator_options())
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
    print(f"results: {workdir / 'results.json'}  figure: {workdir / 'figure6a.png'}")


if __name__ == "__main__":
    app.run(common.run_main(main))
