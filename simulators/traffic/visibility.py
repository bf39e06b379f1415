"""What counts as a visible car: the one rule the pure-JAX renderer and the CARLA backend share.

A car of the scene is counted (``counts[t]`` of its type t) when all three hold:

1. enough of it shows: at least ``min_pixels`` of its pixels are in the instance map, at 96x320
   (:data:`simulators.traffic.layout.REFERENCE_SIZE`; scaled with the image area at other sizes);
2. it is not mostly hidden: those pixels are at least ``min_share`` of the bounding box of its own
   unoccluded projection (:func:`projected_box_area`), so a sliver of a car behind a nearer one or at
   the image border does not count;
3. the air lets it be seen: the fog / haze transmittance exp(-distance / fog distance) of the weather at
   the car's distance is at least ``min_transmittance`` (in fog, cars beyond ~36 m are nearly invisible and
   do not count; clear weather leaves every car within the scene).

Why (issue 13, measured with benchmarks/counting_signal.py on an H200, 40,000 psi_real images): with the
earlier rule (10 pixels, occlusion only) a third of the counted cars covered at most 20 pixels, fog-hidden
cars counted, and no counting CNN learned more than the count prior (each type's median count) from the
images. Under this rule (1.84 counted cars per image at psi_real instead of 4.13) the same CNNs do: see
benchmarks/README.md, "Counting signal".

The functions take an array module (``numpy`` or ``jax.numpy``) so both renderers use the same code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from simulators.traffic import layout as L

# Car body boxes per type (layout.CAR_TYPES order): half length, half width, roof height (metres). The
# renderer's CAR_SHAPES hold the same numbers with the cabin details (render.py checks they agree).
CAR_BOXES = np.array(
    [[2.30, 0.90, 1.42], [1.95, 0.86, 1.48], [2.35, 0.95, 1.80], [2.50, 0.98, 2.15], [2.60, 0.95, 1.85]],
    np.float32,
)


FOG_DISTANCE = np.asarray(L.FOG_DISTANCE, np.float32)  # per weather, metres


@dataclasses.dataclass(frozen=True)
class VisibilityRule:
    """The three thresholds (module docstring). ``min_pixels`` is at the reference size 96x320."""

    min_pixels: float = L.MIN_VISIBLE_PIXELS
    min_share: float = L.MIN_VISIBLE_SHARE
    min_transmittance: float = L.MIN_FOG_TRANSMITTANCE

    def __post_init__(self):
        if not (self.min_pixels >= 1 and math.isfinite(self.min_pixels)):
            raise ValueError(f"min_pixels must be a finite number >= 1, got {self.min_pixels}")
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"min_share must be in [0, 1], got {self.min_share}")
        if not 0.0 <= self.min_transmittance <= 1.0:
            raise ValueError(f"min_transmittance must be in [0, 1], got {self.min_transmittance}")

    def pixel_floor(self, height: int, width: int) -> int:
        """``min_pixels`` at this image size (area-scaled, at least 1)."""
        ref = L.REFERENCE_SIZE[0] * L.REFERENCE_SIZE[1]
        return max(1, round(self.min_pixels * height * width / ref))

    def describe(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def projected_box_area(xp: Any, car_type, car_pos, car_heading, camera_height, horizon_row, focal, cx, height, width):
    """Pixels of the image-clipped 2-D bounding box of each car's unoccluded body box.

    car_type: int [..., B]; car_pos: [..., B, 2] world (x, z); car_heading: [..., B] radians;
    camera_height, horizon_row: [...] (metres; the image row of the horizon, with the pitch);
    focal (pixels), cx (column of the principal point), height, width: the image. Returns [..., B].
    The camera stands at layout.CAMERA_X, CAMERA_Z looking down +z (as in both renderers).
    """
    boxes = xp.asarray(CAR_BOXES)[car_type]  # [..., B, 3]
    hl, hw, roof = boxes[..., 0], boxes[..., 1], boxes[..., 2]
    c, s = xp.cos(car_heading), xp.sin(car_heading)
    x0, z0 = car_pos[..., 0], car_pos[..., 1]
    cam_h = xp.asarray(camera_height)[..., None]
    v_h = xp.asarray(horizon_row)[..., None]
    us, vs = [], []
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            x = x0 + c * sx * hw + s * sz * hl
            d = xp.maximum(z0 - s * sx * hw + c * sz * hl - L.CAMERA_Z, 0.5)
            u = cx + focal * (x - L.CAMERA_X) / d
            for y in (0.0, 1.0):
                us.append(u)
                vs.append(v_h - focal * (y * roof - cam_h) / d)
    us, vs = xp.stack(us), xp.stack(vs)
    du = xp.clip(xp.max(us, axis=0), 0, width) - xp.clip(xp.min(us, axis=0), 0, width)
    dv = xp.clip(xp.max(vs, axis=0), 0, height) - xp.clip(xp.min(vs, axis=0), 0, height)
    return xp.maximum(du, 0.0) * xp.maximum(dv, 0.0)


def counted(xp: Any, rule: VisibilityRule, pixels, box_area, distance, fog_distance, height: int, width: int):
    """bool [..., B]: which cars the rule counts. pixels: visible pixels [..., B]; box_area: from
    :func:`projected_box_area`; distance: metres from the camera [..., B]; fog_distance: the weather's
    e-folding distance [...] (or broadcastable)."""
    transmittance = xp.exp(-distance / xp.asarray(fog_distance)[..., None])
    return (
        (pixels >= rule.pixel_floor(height, width))
        & (pixels >= rule.min_share * xp.maximum(box_area, 1.0))
        & (transmittance >= rule.min_transmittance)
    )


def make_rule(visibility: VisibilityRule | dict | None, min_visible_pixels: int | None, height: int, width: int):
    """The rule of a simulator's options: ``visibility`` (a rule, its fields as a dict, or None: the default),
    or, from an older run's description, ``min_visible_pixels`` (the rule before issue 13: that many pixels at
    this image size, no share, no fog)."""
    if min_visible_pixels is not None:
        if visibility is not None:
            raise ValueError("give visibility or min_visible_pixels (an older run's rule), not both")
        ref = L.REFERENCE_SIZE[0] * L.REFERENCE_SIZE[1]
        return VisibilityRule(min_pixels=min_visible_pixels * ref / (height * width), min_share=0.0,
                              min_transmittance=0.0)  # fmt: skip
    if visibility is None:
        return VisibilityRule()
    if isinstance(visibility, VisibilityRule):
        return visibility
    unknown = set(visibility) - {f.name for f in dataclasses.fields(VisibilityRule)}
    if unknown:
        raise ValueError(f"unknown visibility settings {sorted(unknown)}; accepted: min_pixels, min_share, "
                         "min_transmittance")  # fmt: skip
    return VisibilityRule(**visibility)
