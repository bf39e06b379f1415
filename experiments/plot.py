r"""Redraw every figure of a run from its files.

    python -m experiments.plot --workdir=DIR

Generic figures from DIR/metrics.jsonl (rewards.png, params.png, cost.png) and, for a finished run, the experiment's
own (results.json's "experiment" -> experiments/lib/NAME.py's ``draw_figures_from_workdir``; see
experiments/lib/plot.py). Prints the files written.

Exit status: 0 done, 2 the workdir holds no metrics (the message names the path).
"""

from __future__ import annotations

import sys

from experiments import common
from experiments.lib import plot as lib


def main() -> None:
    try:
        written = lib.redraw(common.workdir())
    except (lib.PlotError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)


if __name__ == "__main__":
    common.main(main)
