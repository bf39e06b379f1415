"""CARLA sensor images -> the traffic simulator's label, instance and counts.

Pure NumPy on concrete arrays (the bridge's host side): not jittable.

CARLA camera images arrive as BGRA bytes ``[H, W, 4]`` (``carla.Image.raw_data``).
- semantic segmentation: the semantic tag is in the R channel (index 2);
- instance segmentation: R = semantic tag, G = low byte and B = high byte of a
  16-bit object id. From CARLA 0.9.16 the id of an object that is a CARLA actor
  (our cars and houses) is its actor id (modulo 2**16); CARLA 0.9.13-0.9.15 write
  Unreal's internal object id instead, which the client cannot see, so there the
  renderer matches id segments to cars by projecting the cars' bounding boxes
  (:func:`assign_segments_by_boxes`).

Semantic tags are those of CARLA >= 0.9.14 (``carla.CityObjectLabel``; the test
suite checks every number below against the client's enum).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from simulators.traffic import layout as L

# CARLA (>= 0.9.14) semantic tags.
CARLA_TAGS: dict[str, int] = {
    "unlabeled": 0, "road": 1, "sidewalk": 2, "building": 3, "wall": 4, "fence": 5, "pole": 6,
    "traffic_light": 7, "traffic_sign": 8, "vegetation": 9, "terrain": 10, "sky": 11, "pedestrian": 12,
    "rider": 13, "car": 14, "truck": 15, "bus": 16, "train": 17, "motorcycle": 18, "bicycle": 19,
    "static": 20, "dynamic": 21, "other": 22, "water": 23, "road_line": 24, "ground": 25, "bridge": 26,
    "rail_track": 27, "guard_rail": 28,
}  # fmt: skip
# The same tags under the client's carla.CityObjectLabel member names.
CITY_OBJECT_LABEL_NAMES: dict[str, str] = {
    "unlabeled": "NONE", "road": "Roads", "sidewalk": "Sidewalks", "building": "Buildings", "wall": "Walls",
    "fence": "Fences", "pole": "Poles", "traffic_light": "TrafficLight", "traffic_sign": "TrafficSigns",
    "vegetation": "Vegetation", "terrain": "Terrain", "sky": "Sky", "pedestrian": "Pedestrians",
    "rider": "Rider", "car": "Car", "truck": "Truck", "bus": "Bus", "train": "Train",
    "motorcycle": "Motorcycle", "bicycle": "Bicycle", "static": "Static", "dynamic": "Dynamic",
    "other": "Other", "water": "Water", "road_line": "RoadLines", "ground": "Ground", "bridge": "Bridge",
    "rail_track": "RailTrack", "guard_rail": "GuardRail",
}  # fmt: skip

# Cityscapes label ids the project uses (WORKSPACE.md, "The method"; KITTI's semantics benchmark).
CITYSCAPES: dict[str, int] = {
    "unlabeled": 0, "road": 7, "sidewalk": 8, "building": 11, "vegetation": 21, "terrain": 22, "sky": 23, "car": 26,
}  # fmt: skip

# CARLA tag -> Cityscapes class. Road lines are part of the road surface. Truck and
# bus become car: our five car types include vans and a pickup, which CARLA may
# tag Truck (the Cybertruck, vans in some versions); CARLA's buses never appear in
# our scenes. Everything else (walls, poles, props, ...) is unlabeled (0).
_TAG_TO_CLASS = {
    "road": "road", "road_line": "road", "sidewalk": "sidewalk", "building": "building",
    "vegetation": "vegetation", "terrain": "terrain", "sky": "sky",
    "car": "car", "truck": "car", "bus": "car",
}  # fmt: skip


def _make_lut() -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for tag_name, cls in _TAG_TO_CLASS.items():
        lut[CARLA_TAGS[tag_name]] = CITYSCAPES[cls]
    return lut


# uint8 [256]: CARLA semantic tag -> Cityscapes id. Index it with a tag image.
TAG_TO_CITYSCAPES = _make_lut()
VEHICLE_TAGS = tuple(CARLA_TAGS[t] for t, c in _TAG_TO_CLASS.items() if c == "car")


def min_visible_pixels(height: int, width: int) -> int:
    """The pure-JAX renderer's visibility threshold at this image size.

    layout.MIN_VISIBLE_PIXELS at layout.REFERENCE_SIZE, scaled with the image
    area (simulators/traffic/render.py computes it the same way; a test checks
    that the two agree).
    """
    ref = L.REFERENCE_SIZE[0] * L.REFERENCE_SIZE[1]
    return max(1, round(L.MIN_VISIBLE_PIXELS * height * width / ref))


def _bgra(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.ndim != 3 or raw.shape[-1] != 4 or raw.dtype != np.uint8:
        raise ValueError(f"expected a BGRA uint8 image [H, W, 4], got {raw.dtype} {list(raw.shape)}")
    return raw


def image_to_array(image) -> np.ndarray:
    """uint8 [H, W, 4] BGRA copy of a ``carla.Image``."""
    return np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4).copy()


def rgb_from_bgra(raw: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB from a BGRA camera image."""
    return np.ascontiguousarray(_bgra(raw)[..., 2::-1])


def semantic_tags(raw: np.ndarray) -> np.ndarray:
    """uint8 [H, W] CARLA semantic tags of a semantic- or instance-segmentation image (R channel)."""
    return _bgra(raw)[..., 2].copy()


def instance_ids(raw: np.ndarray) -> np.ndarray:
    """int32 [H, W] 16-bit object ids of an instance-segmentation image (G + 256 * B)."""
    raw = _bgra(raw)
    return raw[..., 1].astype(np.int32) | (raw[..., 0].astype(np.int32) << 8)


def tags_to_cityscapes(tags: np.ndarray) -> np.ndarray:
    """uint8 [H, W] Cityscapes ids from CARLA tags [H, W]."""
    return TAG_TO_CITYSCAPES[np.asarray(tags, np.uint8)]


def lookup_ids(ids: np.ndarray, table: Mapping[int, int], default: int = 0) -> np.ndarray:
    """int32 array like ``ids`` with ``table[id]`` where present, else ``default``."""
    ids = np.asarray(ids, np.int64)
    out = np.full(ids.shape, default, np.int32)
    if not table:
        return out
    keys = np.array(sorted(table), np.int64)
    values = np.array([table[k] for k in keys], np.int32)
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    hit = keys[pos] == ids
    out[hit] = values[pos[hit]]
    return out


def instance_map(
    ids: np.ndarray, tags: np.ndarray, id_to_block: Mapping[int, int], vehicle_tags: Sequence[int] = VEHICLE_TAGS
) -> np.ndarray:
    """int32 [H, W] traffic-simulator instance map: 0 none, else 1 + block.

    Args:
      ids: int32 [H, W] object ids from the instance sensor.
      tags: uint8 [H, W] semantic tags; only vehicle-tagged pixels can be cars, so
        an environment object whose id collides with a car's never counts.
      id_to_block: object id (16-bit) -> block index of the car.
    """
    blocks = lookup_ids(ids, {int(k) & 0xFFFF: int(v) + 1 for k, v in id_to_block.items()})
    return np.where(np.isin(tags, np.asarray(vehicle_tags)), blocks, 0).astype(np.int32)


def visible_counts(
    instance: np.ndarray,
    car_type: Sequence[int],
    car_rendered: Sequence[bool],
    min_pixels: int,
    num_types: int = len(L.CAR_TYPES),
    keep: Sequence[bool] | None = None,
) -> np.ndarray:
    """int32 [num_types]: cars per type with at least ``min_pixels`` visible pixels (and ``keep``).

    Args:
      instance: int32 [H, W], 0 none, else 1 + block.
      car_type: int [MAX_BLOCKS] type of the car in each block.
      car_rendered: bool [MAX_BLOCKS], True where a car was actually spawned.
      keep: bool [MAX_BLOCKS] or None: the rest of the visibility rule (simulators/traffic/visibility.py).
    """
    car_type = np.asarray(car_type)
    pixels = np.bincount(np.asarray(instance).ravel(), minlength=len(car_type) + 1)[1 : len(car_type) + 1]
    visible = (pixels >= min_pixels) & np.asarray(car_rendered, bool)
    if keep is not None:
        visible &= np.asarray(keep, bool)
    return np.bincount(car_type[visible], minlength=num_types)[:num_types].astype(np.int32)


def assign_segments_by_boxes(
    ids: np.ndarray, mask: np.ndarray, boxes: np.ndarray, depths: np.ndarray, min_share: float = 0.5
) -> dict[int, int]:
    """Matches object-id segments to objects by their projected 2-D boxes (CARLA < 0.9.16).

    Each distinct id among the ``mask`` pixels goes to the object whose box holds
    the largest share of the segment's pixels; among equal shares, the smallest box
    (a far car partly hidden by a near one lies inside both boxes, and is the
    smaller), then the nearest. Segments whose best share is below ``min_share``
    (another object, or the background) are left out.

    Args:
      ids: int [H, W] object ids.
      mask: bool [H, W] pixels that may belong to cars (vehicle tags).
      boxes: float [n, 4] (u0, v0, u1, v1) pixel boxes of the n cars (inclusive).
      depths: float [n] distance of each car from the camera (cars behind it: inf).
      min_share: least share of a segment's pixels inside the chosen box.

    Returns:
      {object id: object index}.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    depths = np.asarray(depths, np.float64)
    vs, us = np.nonzero(mask)
    seg = np.asarray(ids)[vs, us]
    out: dict[int, int] = {}
    if len(boxes) == 0 or len(seg) == 0:
        return out
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    for sid in np.unique(seg):
        sel = seg == sid
        u, v = us[sel][:, None], vs[sel][:, None]
        inside = (u >= boxes[:, 0]) & (u <= boxes[:, 2]) & (v >= boxes[:, 1]) & (v <= boxes[:, 3])
        share = inside.mean(axis=0)
        share = np.where(np.isfinite(depths), share, 0.0)
        if share.max() <= 0.0 or share.max() < min_share:
            continue
        best = np.flatnonzero(np.isclose(share, share.max()))
        best = min(best, key=lambda i: (area[i], depths[i]))
        out[int(sid)] = int(best)
    return out


def boxes_from_corners(uv: np.ndarray, depth: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float]:
    """Pixel box (u0, v0, u1, v1) clipped to the image and the nearest depth of one object's projected corners.

    An object with any corner behind the camera gets depth inf (it cannot be matched).
    """
    if np.any(depth <= 0.05):
        return np.array([0.0, 0.0, -1.0, -1.0]), float("inf")
    u0, v0 = np.floor(uv.min(axis=0))
    u1, v1 = np.ceil(uv.max(axis=0))
    box = np.array([max(u0, 0), max(v0, 0), min(u1, width - 1), min(v1, height - 1)], np.float64)
    if box[0] > box[2] or box[1] > box[3]:
        return np.array([0.0, 0.0, -1.0, -1.0]), float("inf")
    return box, float(depth.min())
