r"""Render a data set with a run's learned simulator parameters, in KITTI's layout.

    python -m experiments.generate --workdir=RUN --num=40000 --out=DIR [--chunk_size=256] [--seed=0]

Reads RUN/results.json (the learned "psi_raw" and the "simulator") and writes DIR/image_2/NNNNNN_10.png,
DIR/semantic/NNNNNN_10.png, DIR/counts.jsonl and DIR/generate.json (a Gaussian-mixture run: DIR/points.csv);
resumable by chunk; an output directory holding something else is refused unless --overwrite.
experiments/lib/generate.py does the work and documents the layout.

Exit status: 0 done or already complete; 2 bad flags, a run without usable results.json, or an output
directory that would be overwritten; 1 a file could not be written.
"""

from __future__ import annotations

import json
import sys

from experiments import common
from experiments.lib import generate as lib
from lts_jax import run

FLAGS = common.define_flags(
    lib.GenerateConfig,
    {
        "out": "Output directory (KITTI layout: image_2/, semantic/, counts.jsonl).",
        "num": "Number of examples to render.",
        "chunk_size": "Examples rendered per chunk (the unit of resuming).",
        "seed": "Seed of the rendered examples.",
        "height": "Image height when results.json does not record it.",
        "width": "Image width when results.json does not record it.",
        "overwrite": "Remove an existing output in --out and render again.",
        "progress": "Show progress (live on a terminal, a line per chunk otherwise).",
    },
)


def main() -> None:
    if not common.WORKDIR.value:
        raise common.usage_error("--workdir is required (the run's directory)")
    cfg = common.config_from_flags(lib.GenerateConfig)
    for name, what in (("out", "the output directory"), ("num", "examples")):
        if getattr(cfg, name) is None:
            raise common.usage_error(f"--{name} is required ({what})")
    try:
        summary = lib.generate(cfg, common.WORKDIR.value)
    except lib.AlreadyComplete as e:
        print(f"already complete: {e}", file=sys.stderr)
        return
    except lib.GenerateError as e:
        print(f"error: {common.user_message(e)}", file=sys.stderr)
        sys.exit(2)
    except (OSError, run.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary))


if __name__ == "__main__":
    common.main(main)
