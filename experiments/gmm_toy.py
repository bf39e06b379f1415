r"""Paper section 4.1 / Table 2 / Figure 2: learning a 2-D Gaussian-mixture simulator.

    python -m experiments.gmm_toy --flagfile=experiments/flags/gmm_toy_quick.flags --workdir=/tmp/gmm

The real distribution p has 3 Gaussians per class; the simulator q has ``--num_gaussians`` per class whose
means and variances are learned so that an RBF-SVM trained on q's samples is accurate on p's validation
set. Writes results.json (test accuracy of LTS and of training on p's own parameters), metrics.jsonl,
figure2.png (decision boundaries) and reward.png (experiments/lib/gmm_toy.py does the work).
"""

from __future__ import annotations

from experiments import common
from experiments.lib import gmm_toy as lib

FLAGS = common.define_flags(
    lib.GmmToyConfig,
    {
        "num_gaussians": "Gaussians per class in the simulator q (Table 2: 1 or 2).",
        "svm_c": "C of the RBF SVM.",
        "eval_repeats": (
            "Final test accuracy: mean over this many training sets drawn from the learned q (and from p)."
        ),
    },
)


def main() -> None:
    workdir = common.workdir()
    cfg = common.config_from_flags(lib.GmmToyConfig)
    lib.validate(cfg)  # before any work: exit 2 naming the flag
    results = lib.train_and_evaluate(cfg, workdir)
    print(lib.report(results, workdir))  # the rounded results and where the files are


if __name__ == "__main__":
    common.main(main)
