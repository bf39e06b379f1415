r"""Paper section 4.3 and appendices C-E in one process: every car-counting comparison, then the figures.

    python -m experiments.car_count_sweep --scale=quick --workdir=/tmp/cc_sweep
    python -m experiments.car_count_sweep --flagfile=experiments/flags/car_count_sweep.flags \
        --workdir=/tmp/cc_sweep --summary_dir=$OUT                        # paper scale, one GPU
    python -m experiments.car_count_sweep --redraw --summary_dir=DIR     # the table and figures again

Each comparison is a car_count sub-run in WORKDIR/runs/NAME (experiments/lib/car_count_sweep.py lists them
and does the work): finished sub-runs are reused when their configuration matches (another one is refused,
listing the flags, unless --overwrite), an unfinished one resumes, a failing one is recorded and the others
go on (exit 1 at the end). --time_budget_s shares a wall-time budget among the sub-runs (never fewer than
--min_iterations iterations each). --summary_dir (default: --workdir) receives sweep_results.json (rewritten
after every sub-run), sweep_table.md and fig4/5/7/8/9.png; --redraw redraws them from sweep_results.json.

Scales (--scale presets; flags given explicitly win): tiny (a test: seconds after compilation), quick (the
flags' defaults: minutes on 2 CPU cores), paper (7 minutes on one H200, measured; see
experiments/flags/car_count_sweep.flags).
"""

from __future__ import annotations

from absl import flags

from experiments import car_count, common
from experiments.lib import car_count_sweep as lib

FLAGS = common.define_flags(
    lib.SweepConfig,
    {
        **car_count.HELP,
        "scale": "Preset of sizes: tiny, quick or paper (flags given explicitly win).",
        "summary_dir": "Where sweep_results.json, the table and figures go (default: --workdir).",
        "xi_values": "Fig. 5c: MTM epochs per iteration to compare.",
        "m_values": "Fig. 8: images per candidate to compare.",
        "num_seeds": "Fig. 4c / 9: LTS runs from random inits and seeds.",
        "big_size": "Fig. 8: images rendered with each final psi (paper 40,000).",
        "big_epochs": "Fig. 8: epochs of training on them (paper 5).",
        "time_budget_s": "Wall-time budget of the sweep in seconds (0: none).",
        "min_iterations": "No sub-run stops for the budget before this.",
        "only": "Run only these sub-runs (names as in the docstring; big for Fig. 8's training).",
    },
)
REDRAW = flags.DEFINE_bool("redraw", False, "Only redraw the figures and table from sweep_results.json.")


def main() -> None:
    if REDRAW.value:
        summary_dir = common.config_from_flags(lib.SweepConfig).summary_dir or common.WORKDIR.value
        if not summary_dir:
            raise common.usage_error("--redraw needs --summary_dir (or --workdir): where sweep_results.json is")
        for path in lib.redraw(summary_dir):
            print(path)
        return
    workdir = common.workdir()
    scale = common.config_from_flags(lib.SweepConfig).scale
    cfg = common.config_from_flags(lib.SweepConfig, base=lib.scaled(scale))
    lib.validate(cfg)
    lib.train_and_evaluate(cfg, workdir)


if __name__ == "__main__":
    common.main(main)
