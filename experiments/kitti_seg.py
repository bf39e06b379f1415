r"""Paper section 4.5, Table 1, Figure 6b: learning the traffic simulator for car segmentation on real images.

    python -m experiments.kitti_seg --flagfile=experiments/flags/kitti_seg_quick.flags --workdir=/tmp/kitti
    python -m experiments.kitti_seg --flagfile=experiments/flags/camvid_seg_quick.flags --workdir=/tmp/camvid

The reward is the car IoU, on REAL validation images (--real_data=kitti|camvid), of a segmentation MTM trained
on simulated images. Methods (--methods, Table 1): lts, random_params, random_search, default_psi (no search:
the neutral preset's data), real (one MTM trained on the real-train split with the budget of one candidate).
Every MTM starts from one model pretrained on --pretrain_images simulated images (the row "pretrained").
experiments/lib/kitti_seg.py and experiments/lib/seg.py do the work and document the outputs:
WORKDIR/results.json, WORKDIR/figure6b.png, the per-method runs in RUN_DIR/<method>/ (--run_dir, default
--workdir).

Data: --real_data (kitti | camvid) in --real_dir (default $LTS_DATA_DIR/kitti_semantics or
$LTS_DATA_DIR/camvid, $LTS_DATA_DIR defaulting to ../shared/data; --kitti_dir is the older name of --real_dir
for KITTI), in KITTI's layout; the data set's description (lts_jax/data/real.py) fixes the split, crop and
mirror: KITTI test = --test_names, the rest split by --split_seed into val (--val_fraction) and train; CamVid
by whole sequence, val = val.txt (101 frames), test = sequences 0001TP and 0006R0, and
--train_from_val_sequence for the real method (its train frames share val's drive: an optimistic validation
reward).

  --eval_real_dir=DIR    with the --workdir of a finished run: evaluate each method's best MTM on EVERY
                         image of another directory of the run's data set (no training) and add "eval_car_iou",
                         "eval_mean_iou" and "eval" to its results.json (--eval_kitti_dir: the older name).

Long runs: the same command with the same --workdir resumes from the last checkpoint (SIGTERM saves one
and exits 143), e.g. `timeout 540 python -m experiments.kitti_seg ...` repeated until it exits 0.

Exit status: 0 done (or already complete), 1 a non-finite value, a file that could not be written, or a
method that failed (the others finished; re-run to retry it), 2 bad flags, workdir or data (a missing data
directory says where to get the data), 130/143 stopped by SIGINT/SIGTERM (re-run to resume).
"""

from __future__ import annotations

from absl import flags

from experiments import common
from experiments.lib import kitti_seg as lib
from lts_jax.data import real
from simulators.traffic.scene import RENDERING_BLOCKS

HELP = {
    "methods": f"Methods to run: {', '.join(lib.METHODS)}.",
    "mtm_lr": "Learning rate of the MTMs: the K candidates (fine-tuning) and the real method.",
    "real_data": f"The real data set: {' | '.join(real.DATASETS)} (lts_jax/data/real.py: split, crop, camera).",
    "real_dir": "Directory of --real_data in KITTI's layout; default its copy under $LTS_DATA_DIR (../shared/data).",
    "kitti_dir": f"The older name of --real_dir with --real_data=kitti (default {lib.DEFAULT_KITTI_DIR}).",
    "split_seed": "KITTI: seed of the val/train split of the non-test images.",
    "val_fraction": "KITTI: fraction of the non-test images in the val split.",
    "test_names": "KITTI: images (file stems) of the test split, where present.",
    "train_from_val_sequence": (
        "CamVid: the real method trains on val's sequence 0016E5 (train.txt's frames; the only train frames of "
        "the shared copy): its validation reward is optimistic, its test score clean."
    ),
    "learn_rendering": f"Rendering parameters in psi: all, or a comma list of {', '.join(RENDERING_BLOCKS)}.",
    "fresh_images": "After the search: a fresh MTM fine-tuned on this many images of each method's final psi (0 none).",
}
FLAGS = common.define_flags(lib.KittiSegConfig, HELP)
EVAL_REAL_DIR = flags.DEFINE_string(
    "eval_real_dir", None, "Evaluate the best MTMs of the finished run in --workdir on every image of this directory."
)
EVAL_KITTI_DIR = flags.DEFINE_string("eval_kitti_dir", None, "The older name of --eval_real_dir.")


def eval_dir() -> str | None:
    """--eval_real_dir or its alias --eval_kitti_dir; a usage error when both are given and differ."""
    new, old = EVAL_REAL_DIR.value, EVAL_KITTI_DIR.value
    if new and old and new != old:
        raise common.usage_error(f"--eval_real_dir={new} and --eval_kitti_dir={old} differ (one setting); give one")
    return new or old


def main() -> None:
    workdir = common.workdir()
    try:  # bad data is a configuration problem: say so before any work
        directory = eval_dir()
        if directory:
            lib.evaluate_dir(workdir, directory)
            return
        cfg = common.config_from_flags(lib.KittiSegConfig)
        lib.validate(cfg)
        lib.train_and_evaluate(cfg, workdir)
    except real.DataError as e:
        raise common.usage_error(str(e)) from e
    print(f"results: {workdir / 'results.json'}  figure: {workdir / 'figure6b.png'}")


if __name__ == "__main__":
    common.main(main)
