r"""Issue 17.4: every search strategy on the GMM toy and on car counting, several seeds, reward against its cost.

    python -m experiments.search_comparison --flagfile=experiments/flags/search_comparison_quick.flags \
        --workdir=/tmp/sc_quick
    python -m experiments.search_comparison --flagfile=experiments/flags/search_comparison.flags \
        --workdir=/tmp/sc --summary_dir=$OUT                                          # paper scale

Strategies (--strategies): reinforce (the paper's REINFORCE), reinforce_vr (REINFORCE with
search.policy.RECOMMENDED's variance reduction), openes, snes, cma_es, pgpe (evosax). Problems (--problems):
gmm (test accuracy against examples generated; reference: val params) and car_count (MTM test reward and TV
distance of psi to psi_real against images rendered; reference: the psi_real run), each for every seed of
--seeds. Each run is a sub-run in WORKDIR/runs/NAME (experiments/lib/search_comparison.py lists them and does
the work): finished sub-runs are reused when their configuration matches (another one is refused, listing the
flags, unless --overwrite), an unfinished one resumes, a failing one is recorded and the others go on (exit 1
at the end). --time_budget_s shares a wall-time budget equally among the sub-runs left (never fewer than
--min_iterations iterations each). --summary_dir (default: --workdir) receives search_comparison.json
(rewritten after every sub-run), search_comparison.md (the table: images to reach --reach_fraction of the
reference, final reward mean +- std over seeds, wall time) and search_comparison_gmm.png,
search_comparison_car_count.png. The car runs take car_count's flags (--height, --dataset_size, --mtm_epochs,
...); the GMM runs --gmm_dataset_size and the shared --num_iterations --num_candidates --policy_variance.
"""

from __future__ import annotations

from experiments import car_count, common
from experiments.lib import search_comparison as lib

FLAGS = common.define_flags(
    lib.SearchComparisonConfig,
    {
        **car_count.HELP,
        "problems": "Problems to compare the strategies on: gmm, car_count.",
        "strategies": "Strategies to compare: reinforce, reinforce_vr, openes, snes, cma_es, pgpe.",
        "seeds": "Seeds: each strategy runs once per seed on each problem.",
        "summary_dir": "Where the summary JSON, the table and the figures go (default: --workdir).",
        "time_budget_s": "Wall-time budget of the whole comparison in seconds (0: none).",
        "min_iterations": "No sub-run stops for the budget before this.",
        "reach_fraction": "The table's target: this fraction of the reference reward (0.95: 95%).",
        "reach_window": "Consecutive evaluations whose mean must reach the target.",
        "run_figures": "Also draw each sub-run's own figures (rewards, params, cost; car_count.png, figure2.png).",
        "gmm_num_gaussians": "GMM runs: Gaussians per class in the simulator q.",
        "gmm_dataset_size": "GMM runs: M, examples per candidate per iteration.",
        "gmm_eval_repeats": "GMM runs: SVMs averaged into the final test accuracy.",
        "gmm_curve_every": "GMM runs: evaluate the test accuracy of the search's answer every N iterations.",
        "gmm_curve_repeats": "GMM runs: SVMs averaged into each point of that curve.",
    },
)


def main() -> None:
    workdir = common.workdir()
    cfg = common.config_from_flags(lib.SearchComparisonConfig)
    lib.validate(cfg)  # before any work: exit 2 naming the flag
    lib.train_and_evaluate(cfg, workdir)


if __name__ == "__main__":
    common.main(main)
