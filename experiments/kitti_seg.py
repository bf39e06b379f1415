r"""Paper section 4.5, Table 1, Figure 6b: learning the traffic simulator for car segmentation on real KITTI.

    python -m experiments.kitti_seg --flagfile=experiments/flags/kitti_seg_quick.flags --workdir=/tmp/kitti

The reward is the car IoU, on REAL KITTI validation images, of a segmentation MTM trained on simulated
images. Methods (--methods, Table 1): lts, random_params, random_search, real (one MTM trained on the
real-train split with the budget of one candidate). Every MTM starts from one model pretrained on
--pretrain_images simulated images (the row "pretrained"). experiments/lib/kitti_seg.py and
experiments/lib/seg.py do the work and document the outputs: WORKDIR/results.json, WORKDIR/figure6b.png,
the per-method runs in RUN_DIR/<method>/ (--run_dir, default --workdir).

Data: --kitti_dir (default ../shared/data/kitti_semantics when present), KITTI's data_semantics layout,
split into test (--test_names present), val (--val_fraction of the rest, by --split_seed) and train.

  --eval_kitti_dir=DIR   with the --workdir of a finished run: evaluate each method's best MTM on EVERY
                         image of another KITTI-layout directory (no training) and add "eval_car_iou",
                         "eval_mean_iou" and "eval" to its results.json.

Exit status: 0 done (or already complete), 1 a non-finite value, a file that could not be written, or a
method that failed (the others finished; re-run to retry it), 2 bad flags, workdir or data (a missing KITTI
directory says where to get KITTI).
"""

from __future__ import annotations

from absl import app, flags

from experiments import common
from experiments.lib import kitti_seg as lib
from lts_jax.data import kitti

HELP = {
    "methods": f"Methods to run: {', '.join(lib.METHODS)}.",
    "mtm_lr": "Learning rate of the MTMs: the K candidates (fine-tuning) and the real method.",
    "kitti_dir": (f"KITTI semantics directory (training/image_2, training/semantic); default {lib.DEFAULT_KITTI_DIR}."),
    "split_seed": "Seed of the val/train split of the non-test images.",
    "val_fraction": "Fraction of the non-test images in the val split.",
    "test_names": "Images (file stems) of the test split, where present.",
}
FLAGS = common.define_flags(lib.KittiSegConfig, HELP)
EVAL_KITTI_DIR = flags.DEFINE_string(
    "eval_kitti_dir", None, "Evaluate the best MTMs of the finished run in --workdir on every image of this directory."
)


def main() -> None:
    workdir = common.workdir()
    try:  # bad data is a configuration problem: say so before any work
        if EVAL_KITTI_DIR.value:
            lib.evaluate_dir(workdir, EVAL_KITTI_DIR.value)
            return
        cfg = common.config_from_flags(lib.KittiSegConfig)
        lib.validate(cfg)
        lib.train_and_evaluate(cfg, workdir)
    except kitti.KittiDataError as e:
        raise common.usage_error(str(e)) from e
    print(f"results: {workdir / 'results.json'}  figure: {workdir / 'figure6b.png'}")


if __name__ == "__main__":
    app.run(common.run_main(main))
