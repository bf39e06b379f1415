r"""Contact sheet of the traffic simulator: rendered scenes with their label maps.

    python -m experiments.preview --psi=val --out=/tmp/traffic_val.png
    python -m experiments.preview --psi=adversarial --height=192 --width=640 --out=/tmp/adv.png

One row per weather (clear, overcast, rain, fog), one column per intersection type (L, T, X); each cell is
the rendered image with its colour-coded label map beside it (Cityscapes colours) and the visible-car counts
per type underneath. The other parameters come from the preset ``--psi``; weather and intersection are
forced by one-hot logits.
"""

from __future__ import annotations

from experiments import common
from experiments.lib import preview as lib

FLAGS = common.define_flags(
    lib.PreviewConfig,
    {
        "psi": "A preset name of the traffic simulator: val, adversarial, default.",
        "out": "Output PNG.",
        "road_length": "Force this road length (8..18 blocks); default: from --psi.",
    },
)


def main() -> None:
    cfg = common.config_from_flags(lib.PreviewConfig)
    lib.validate(cfg)
    path = lib.write_contact_sheet(cfg)
    print(f"wrote {path}")


if __name__ == "__main__":
    common.main(main)
