r"""Paper section 4.4, Figure 6a: learning the traffic simulator for car segmentation on simulated data.

    python -m experiments.synth_seg --flagfile=experiments/flags/synth_seg_quick.flags --workdir=/tmp/synth

Validation and test images are rendered with psi_val (the traffic simulator's "val" preset); the reward is
the car IoU of a segmentation MTM on the validation images. Methods (--methods): lts (Algorithm 1 from
--init) and val_params (data sets sampled with psi_val itself; its maximum reward is the paper's reference
point). experiments/lib/synth_seg.py and experiments/lib/seg.py do the work and document the outputs:
WORKDIR/results.json, WORKDIR/figure6a.png, the per-method runs in RUN_DIR/<method>/ (--run_dir, default
--workdir).

Exit status: 0 done (or already complete), 1 a non-finite value, a file that could not be written, or a
method that failed (the others finished; re-run to retry it), 2 bad flags or workdir.
"""

from __future__ import annotations

from experiments import common
from experiments.lib import synth_seg as lib

HELP = {
    "methods": f"Methods to run: {', '.join(lib.METHODS)}.",
    "mtm_lr": "Learning rate of the MTMs: the K candidates (fine-tuning) and the real method.",
    "val_images": "Validation images rendered with psi_val.",
    "test_images": "Test images rendered with psi_val.",
    "val_images_seed": "Seed of the validation images.",
    "test_images_seed": "Seed of the test images.",
    "learn_rendering": "Rendering parameters in psi: all, or a comma list of the blocks (simulators/traffic/scene.py).",
    "fresh_images": "After the search: a fresh MTM fine-tuned on this many images of each method's final psi (0 none).",
}
FLAGS = common.define_flags(lib.SynthSegConfig, HELP)


def main() -> None:
    workdir = common.workdir()
    cfg = common.config_from_flags(lib.SynthSegConfig)
    lib.validate(cfg)  # before any work: exit 2 naming the flag
    lib.train_and_evaluate(cfg, workdir)
    print(f"results: {workdir / 'results.json'}  figure: {workdir / 'figure6a.png'}")


if __name__ == "__main__":
    common.main(main)
