"""A contact sheet of the traffic simulator as a function (``python -m experiments.preview``).

    path = write_contact_sheet(PreviewConfig(psi="val", out="/tmp/traffic_val.png"))

One row per weather, one column per intersection type; each cell is a rendered image with its colour-coded
label map and the visible-car counts per type (simulators.traffic.preview.contact_sheet draws it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.lib import common

PRESETS = ("val", "adversarial", "default")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreviewConfig:
    psi: str = "val"
    out: str = "traffic_preview.png"
    height: int = 96
    width: int = 320
    seed: int = 0
    road_length: int | None = None  # None: from psi


def validate(cfg: PreviewConfig) -> None:
    common.check(cfg.psi in PRESETS, "psi", cfg.psi, " | ".join(PRESETS))
    rl = cfg.road_length
    common.check(rl is None or 8 <= rl <= 18, "road_length", rl, "8..18")
    common.check(cfg.height >= 8, "height", cfg.height, ">= 8")
    common.check(cfg.width >= 8, "width", cfg.width, ">= 8")


def write_contact_sheet(cfg: PreviewConfig) -> Path:
    """Renders the sheet of the preset ``cfg.psi`` and saves it as ``cfg.out`` (PNG); returns the path."""
    from PIL import Image

    from simulators.traffic import TrafficSimulator
    from simulators.traffic.preview import contact_sheet

    validate(cfg)
    sim = TrafficSimulator(cfg.height, cfg.width)
    sheet = contact_sheet(sim, sim.preset(cfg.psi), seed=cfg.seed, road_length=cfg.road_length)
    Image.fromarray(sheet).save(cfg.out)
    return Path(cfg.out)
