r"""Paper Table 2 over seeds: LTS test accuracy with 1 and 2 Gaussians per class, and p's own parameters.

    python -m experiments.gmm_table2 --workdir=/tmp/gmm_table2 --seeds=0,1,2,3,4

Runs experiments.gmm_toy's paper-scale configuration (300 iterations, K = 8, M = 250) for every
(num_gaussians, seed) into WORKDIR/n{N}_seed{S}/, then writes WORKDIR/table2.md; WORKDIR/table2.json (mean,
min, max over seeds, and each sub-run's status) is rewritten after every sub-run. About 20 s per run on 2
CPU cores (experiments/lib/gmm_table2.py does the work).

Re-running the command reuses the finished sub-runs whose configuration matches and resumes an interrupted
one. A sub-run with another configuration (e.g. another --num_iterations) is refused before any work,
listing the differing settings (exit 2); --overwrite starts every sub-run over. Nothing else in WORKDIR is
touched. A failing sub-run is recorded and the others go on; the command then exits 1.
"""

from __future__ import annotations

from experiments import common
from experiments.lib import gmm_table2 as lib

FLAGS = common.define_flags(
    lib.Table2Config,
    {"seeds": "Seeds of the runs.", "gaussians": "Gaussians per class of q (Table 2's rows)."},
)


def main() -> None:
    workdir = common.workdir()
    cfg = common.config_from_flags(lib.Table2Config)
    lib.validate(cfg)
    lib.train_and_evaluate(cfg, workdir)


if __name__ == "__main__":
    common.main(main)
