"""Renderer R of the traffic simulator: scene description -> image, labels, instances, counts.

Pure JAX, jittable and vmappable; deterministic given the scene dict (texture
noise comes from the scene's ``seed``). Not differentiable in any useful sense.
Entry points: :class:`Renderer` (``render(scenes)`` for a batch, ``render_one``).

Camera: KITTI's colour camera: focal length ``layout.KITTI_FX_OVER_WIDTH * width``
(square pixels), principal point at the image's centre column and at row
``layout.KITTI_CY_OVER_HEIGHT * height`` (a level camera's horizon sits a little
above the middle, as in KITTI), at (CAMERA_X, camera_height, CAMERA_Z) looking down
+z; ``camera_pitch`` (positive: looking down) moves the horizon up by
``focal * tan(pitch)`` pixels. Scenes with the rendering parameters (scene.py,
``rendering_params=True``) add, each only when its field is there: a narrower
field of view as a digital zoom of the KITTI-FOV render about the principal point
(:meth:`Renderer._zoom`; the static column tables depend on the focal length, so
it cannot change per image), a Gaussian blur of the linear image, exposure and
white-balance gains and added noise in the camera stage; at their neutral values
each is an exact identity, so the images are today's bit for bit.

How it stays fast. Every pixel is an analytic ray cast against a small fixed set
of primitives, with static shapes throughout:

- The camera's pitch (|pitch| <= scene.CAMERA_PITCH_BOUND = 0.03 rad) is applied
  as a vertical shift of the principal point (exact to first order), so every ray
  is ``o + t (a_u, b_v, 1)``: its top-down path depends on the image column only,
  and ``t`` is the depth along z. The camera's x and z are fixed (layout.py), so
  which lot, tree or pole a column can meet is STATIC; the per-column work
  (footprint entry/exit, object parameters) is done once per column, and per pixel
  only the height along the ray is tested.
- Cars stand inside their blocks (scene.py's jitter guarantees it), so along any
  ray a car in a lower block is nearer: the visible car is the first block whose
  car the ray hits, without a depth sort. Each block's car is tested only inside a
  static screen tile that bounds it for every allowed camera (about 2.4 car tests
  per pixel at 96x320 instead of 18). Blocks with similar tiles share one
  ``lax.scan`` (``tile_groups``), which keeps the compiled program small.
- The x of a ray is monotone in t and the camera stands on the road, so cars
  (|x| < ROAD_WIDTH / 2) always occlude the roadside objects behind them.
- Shadows (sun shadows of houses, tree crowns, the end row and cars; contact
  shadows under cars) are computed at half resolution and upsampled with a 2x2
  box filter: soft edges at a quarter of the cost.
- XLA:CPU fuses cheap producers into every consumer loop and recomputes them per
  pixel; ``optimization_barrier`` does not stop it. Values with several consumers
  are therefore materialised with :func:`_keep` (see there), colours are planar
  (r, g, b) per-pixel arrays (channel-last stacking vectorises badly), and the
  visible-pixel counts use a scatter on CPU (``lax.platform_dependent``).

Geometry (metres, layout.py's frame): cars are a body box (with a clearance gap
showing the wheels) plus a cabin (a box cut by a sloped windscreen and rear
window), per-type sizes in CAR_SHAPES; houses are boxes with a gable roof; tree
crowns are ellipsoids on a trunk; lamp poles; kerb-raised sidewalks and terrain;
a distant tree line and skyline; the sky. Lighting: sun (Lambert and shadows),
sky light with contact shadows under cars, sky reflections on glass, paint and
wet roads, distance fog, a gamma-2 camera with vignetting and sensor noise, rain
streaks.

Labels (labels.py): road 7 (with markings), sidewalk 8 (with kerbs), building 11
(houses, distant buildings, lamp poles), vegetation 21 (crowns, trunks, the tree
line), terrain 22, sky 23, car 26. ``instance`` is 0 or 1 + the car's block;
``counts[t]`` counts the cars of type t that the visibility rule counts (visibility.py: enough pixels in
the instance map, a large enough share of the car's own projection, and not lost in fog).

Approximations (documented): pitch as a principal-point shift; a column meets at
most 3 lots of houses, 2 trees and 2 houses of the end row (a ray through several
empty lots may miss a house far behind them); kerb faces take the depth of the
road plane behind them; car shadows treat the car as a box of mean cabin height;
house shadows use the eave height plus half the roof and ignore the gaps between
houses; a car pixel takes the sun shadow of the surface behind it; the sun does not
shadow facades from cars.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from simulators.traffic import labels as LB
from simulators.traffic import layout as L
from simulators.traffic import scene as S
from simulators.traffic import visibility as V

# Surface categories of a pixel and their label ids.
(SKY, ROAD, SIDEWALK, KERB, TERRAIN, HOUSE, END_HOUSE, CROWN, TRUNK, POLE, BACK_VEG, BACK_BUILDING, CAR) = range(13)
CATEGORY_LABEL = np.array(
    [LB.SKY, LB.ROAD, LB.SIDEWALK, LB.SIDEWALK, LB.TERRAIN, LB.BUILDING, LB.BUILDING, LB.VEGETATION, LB.VEGETATION,
     LB.BUILDING, LB.VEGETATION, LB.BUILDING, LB.CAR],
    np.uint8,
)  # fmt: skip

# Car shapes per type (layout.CAR_TYPES), in the car's frame: lz forward, lx right, y up;
# origin at the centre of the footprint on the ground. The cabin spans lz in
# [cab_rear_base, cab_front_base] at body_top and [cab_rear_top, cab_front_top] at roof;
# the rear window's glass starts rear_glass of the cabin's height above body_top.
CAR_FIELDS = (
    "half_length", "half_width", "clearance", "body_top", "roof", "cab_rear_base", "cab_rear_top", "cab_front_top",
    "cab_front_base", "cab_inset", "wheel_radius", "wheel_rear", "wheel_front", "rear_glass",
)  # fmt: skip
CAR_SHAPES = np.array(
    [
        [2.30, 0.90, 0.18, 0.80, 1.42, -1.35, -0.85, 0.40, 1.05, 0.10, 0.32, -1.38, 1.38, 0.10],  # sedan: 3 boxes
        [1.95, 0.86, 0.16, 0.82, 1.48, -1.90, -1.62, 0.10, 0.75, 0.08, 0.30, -1.25, 1.25, 0.15],  # hatchback: short
        [2.35, 0.95, 0.28, 1.05, 1.80, -2.30, -2.12, 0.35, 1.00, 0.08, 0.38, -1.45, 1.45, 0.30],  # suv: tall, high
        [2.50, 0.98, 0.20, 0.95, 2.15, -2.50, -2.46, 1.45, 2.15, 0.04, 0.33, -1.65, 1.70, 0.45],  # van: tall box
        [2.60, 0.95, 0.32, 1.05, 1.85, -0.35, -0.30, 0.60, 1.20, 0.08, 0.38, -1.65, 1.60, 0.15],  # pickup: cab, bed
    ],
    np.float32,
)
_F = {name: i for i, name in enumerate(CAR_FIELDS)}
MAX_CAR_HEIGHT = float(CAR_SHAPES[:, _F["roof"]].max())
PICKUP = L.CAR_TYPES.index("pickup")

# Car materials: albedo (linear RGB; row 0 = the car's paint) and gloss (sky reflection).
(PAINT, GLASS, TYRE, RIM, TRIM, TAIL_LIGHT, HEAD_LIGHT, PLATE) = range(8)
CAR_MATERIALS = np.array(
    [[0.0, 0.0, 0.0], [0.010, 0.012, 0.016], [0.008, 0.008, 0.008], [0.18, 0.18, 0.20], [0.012, 0.012, 0.014],
     [0.30, 0.003, 0.003], [0.70, 0.70, 0.62], [0.55, 0.55, 0.48]],
    np.float32,
)  # fmt: skip
CAR_GLOSS = np.array([0.25, 0.55, 0.0, 0.2, 0.05, 0.4, 0.6, 0.0], np.float32)

# Weather table (layout.WEATHERS order). Light is linear RGB; the camera clips and
# applies gamma 1/2 (a square root), so a sky above 1 saturates as in KITTI's images.
#   sun: direct sun; amb: sky light; fog_d: e-folding distance of fog / haze (m); fog: its colour;
#   skyh / skyz: sky at the horizon / zenith; wet: wet road; streaks: rain streaks; clouds: cover.
# Directions the tests check: fog has a lower image contrast than clear; rain's road is darker than
# overcast's (wet asphalt, dimmer light); clear has sun and hard shadows, fog a dim sun, the others none.
WEATHER_FIELDS = ("sun", "amb_r", "amb_g", "amb_b", "fog_d", "fog_r", "fog_g", "fog_b", "skyh_r", "skyh_g", "skyh_b",
                  "skyz_r", "skyz_g", "skyz_b", "wet", "streaks", "clouds", "exposure")  # fmt: skip
WEATHER_TABLE = np.array(
    [
        # clear: strong sun, blue sky overexposed near the horizon, light haze
        [3.0, 0.30, 0.38, 0.55, 900.0, 0.80, 0.88, 0.98, 1.25, 1.35, 1.45, 0.38, 0.66, 1.15, 0.0, 0.0, 0.25, 1.0],
        # overcast: no sun, bright grey sky, soft light
        [0.0, 0.85, 0.88, 0.93, 450.0, 0.86, 0.87, 0.89, 1.30, 1.31, 1.33, 0.92, 0.94, 0.98, 0.0, 0.0, 0.85, 1.0],
        # rain: dark sky, dim light, wet road, streaks, haze
        [0.0, 0.42, 0.44, 0.48, 140.0, 0.44, 0.46, 0.49, 0.62, 0.64, 0.67, 0.38, 0.40, 0.44, 1.0, 1.0, 1.0, 1.0],
        # fog: dim sun through thick fog
        [0.25, 0.95, 0.95, 0.95, 30.0, 0.80, 0.81, 0.82, 0.80, 0.81, 0.82, 0.80, 0.81, 0.82, 0.0, 0.0, 0.0, 1.0],
    ],
    np.float32,
)  # fmt: skip
_W = {name: i for i, name in enumerate(WEATHER_FIELDS)}
SUN_COLOR = (1.0, 0.96, 0.88)

_BIG = 1e9
_EPS = 1e-7


def _lin(c):
    """sRGB-ish display colour -> linear (the camera's gamma is 2: a square root, cheap)."""
    return tuple(float(v) ** 2 for v in c)


# Material albedos (linear RGB).
ASPHALT = _lin([0.36, 0.37, 0.39])
MARKING = _lin([0.78, 0.78, 0.76])
SIDEWALK_A = _lin([0.55, 0.54, 0.52])
KERB_A = _lin([0.62, 0.62, 0.60])
GRASS_A = _lin([0.30, 0.36, 0.20])
SOIL_A = _lin([0.40, 0.34, 0.25])
GLASS_A = _lin([0.10, 0.11, 0.13])
LEAF_A = _lin([0.24, 0.30, 0.16])
LEAF_AUTUMN_A = _lin([0.42, 0.36, 0.17])
TRUNK_A = _lin([0.26, 0.22, 0.18])
POLE_A = _lin([0.42, 0.43, 0.45])
BACK_VEG_A = _lin([0.20, 0.25, 0.15])
BACK_BLD_A = _lin([0.60, 0.58, 0.55])
FRAME_A = _lin([0.80, 0.80, 0.78])


# ----------------------------------------------------------------------------------
# Small pure helpers (planar colours are 3-tuples of arrays)
# ----------------------------------------------------------------------------------
def _keep(tree, ones):
    """Materialises arrays so that XLA computes them once.

    XLA:CPU fuses cheap producers into EVERY consumer loop, so a value used by several
    later computations is recomputed in each (its whole expression tree, per pixel);
    ``optimization_barrier`` does not stop that. It never duplicates an expensive op
    such as a division, so dividing by a runtime array of ones (same shape, not a
    broadcast, or the simplifier turns it into a multiplication) makes the value a
    fusion root that its consumers read from memory. Bools and ints round-trip
    through float32 exactly.
    """

    def one(x):
        x = jnp.asarray(x)
        if x.dtype == jnp.bool_:
            return (jnp.where(x, 1.0, 0.0) / ones) > 0.5
        if jnp.issubdtype(x.dtype, jnp.integer):
            return (x.astype(jnp.float32) / ones).astype(x.dtype)
        return x / ones

    return jax.tree_util.tree_map(one, tree)


def _keep_self(x):
    """_keep for an array on its own: divides by ones made from the array itself (x * 0 + 1;
    XLA does not fold that for floats). Finite inputs only."""
    x = jnp.asarray(x)
    f = jnp.where(x, 1.0, 0.0) if x.dtype == jnp.bool_ else x.astype(jnp.float32)
    return _keep(x, f * 0.0 + 1.0)


def _safe(x):
    """x with magnitudes below _EPS replaced by +-_EPS (for reciprocals)."""
    return jnp.where(jnp.abs(x) < _EPS, jnp.where(x < 0, -_EPS, _EPS), x)


def _np_safe(x):
    return np.where(np.abs(x) < _EPS, np.where(x < 0, -_EPS, _EPS), x).astype(np.float32)


def _hash(ix, iy, seed):
    """Uniform [0, 1) from integer lattice coordinates (int32 arrays) and a uint32 seed."""
    h = (ix.astype(jnp.uint32) * jnp.uint32(0x27D4EB2D)) ^ (iy.astype(jnp.uint32) * jnp.uint32(0x165667B1)) ^ seed
    h = (h ^ (h >> 15)) * jnp.uint32(0x2C1B3C6D)
    h = h ^ (h >> 13)
    return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _value_noise(x, y, seed):
    """Smooth value noise in [0, 1) on the unit lattice."""
    fx, fy = jnp.floor(x), jnp.floor(y)
    ix, iy = fx.astype(jnp.int32), fy.astype(jnp.int32)
    ux, uy = x - fx, y - fy
    ux = ux * ux * (3.0 - 2.0 * ux)
    uy = uy * uy * (3.0 - 2.0 * uy)
    v00 = _hash(ix, iy, seed)
    v10 = _hash(ix + 1, iy, seed)
    v01 = _hash(ix, iy + 1, seed)
    v11 = _hash(ix + 1, iy + 1, seed)
    lo = v00 + (v10 - v00) * ux
    return lo + ((v01 + (v11 - v01) * ux) - lo) * uy


def _band(x, lo, hi, fp):
    """Coverage of [lo, hi] by a pixel footprint [x - fp/2, x + fp/2] (box-filtered, in [0, 1])."""
    return jnp.clip((jnp.minimum(x + 0.5 * fp, hi) - jnp.maximum(x - 0.5 * fp, lo)) / fp, 0.0, 1.0)


def _stripes(x, period, width, fp):
    """Box-filtered coverage of stripes [k period, k period + width) by the footprint around x."""

    def integral(s):
        k = jnp.floor(s / period)
        return k * width + jnp.minimum(s - k * period, width)

    return jnp.clip((integral(x + 0.5 * fp) - integral(x - 0.5 * fp)) / fp, 0.0, 1.0)


def _choose(conds, values, default):
    """Like jnp.select (the first true condition wins) as nested wheres: jnp.select lowers to
    a reduction over stacked arrays, which XLA:CPU runs far slower."""
    out = default
    for c, v in zip(reversed(conds), reversed(values)):
        out = jnp.where(c, v, out)
    return out


def _cwhere(m, x, y):
    return tuple(jnp.where(m, xi, yi) for xi, yi in zip(x, y))


def _cmix(x, y, t):
    return tuple(xi + (yi - xi) * t for xi, yi in zip(x, y))


def _cmul(x, s):
    return tuple(xi * s for xi in x)


def _onehot_rows(idx, table):
    """table[idx] for a small table as a one-hot matmul (XLA keeps dots out of loop fusions)."""
    table = jnp.asarray(table)
    return jax.nn.one_hot(idx, table.shape[0], dtype=table.dtype) @ table


# ----------------------------------------------------------------------------------
# Static view bounds
# ----------------------------------------------------------------------------------
def screen_tiles(height, width, focal, cx, cy, x_half, z_pad, y_range, height_bounds=None,
                 pitch_bound=None) -> list[tuple[int, int, int, int]]:  # fmt: skip
    """Static screen tiles (r0, r1, c0, c1), one per block, bounding the world boxes
    |x| <= x_half, y in y_range, z in [b BLOCK_LENGTH - z_pad, (b + 1) BLOCK_LENGTH + z_pad]
    for every camera the scene model can produce (camera heights in ``height_bounds``, |pitch| <=
    ``pitch_bound``; default scene.CAMERA_HEIGHT_BOUNDS, CAMERA_PITCH_BOUND). Nested: tile[b + 1]
    lies inside tile[b]."""
    h_lo, h_hi = S.CAMERA_HEIGHT_BOUNDS if height_bounds is None else height_bounds
    dv = focal * math.tan(S.CAMERA_PITCH_BOUND if pitch_bound is None else pitch_bound)
    tiles = []
    for b in range(L.MAX_BLOCKS):
        d_lo = b * L.BLOCK_LENGTH - z_pad - L.CAMERA_Z
        d_hi = (b + 1) * L.BLOCK_LENGTH + z_pad - L.CAMERA_Z
        if d_lo <= 0.5:
            tiles.append((0, height, 0, width))
            continue
        us = [cx + focal * (x - L.CAMERA_X) / d for d in (d_lo, d_hi) for x in (-x_half, x_half)]
        vs = [vh - focal * (y - oy) / d for d in (d_lo, d_hi) for y in y_range for oy in (h_lo, h_hi)
              for vh in (cy - dv, cy + dv)]  # fmt: skip
        c0 = max(0, int(math.floor(min(us))) - 1)
        c1 = min(width, int(math.ceil(max(us))) + 1)
        r0 = max(0, int(math.floor(min(vs))) - 1)
        r1 = min(height, int(math.ceil(max(vs))) + 1)
        tiles.append((min(r0, height - 1), max(r0 + 1, r1), min(c0, width - 1), max(c0 + 1, c1)))
    for b in range(L.MAX_BLOCKS - 2, -1, -1):
        r0, r1, c0, c1 = tiles[b]
        q0, q1, p0, p1 = tiles[b + 1]
        tiles[b] = (min(r0, q0), max(r1, q1), min(c0, p0), max(c1, p1))
    return tiles


def tile_groups(tiles, max_groups: int = 4) -> list[tuple[tuple[int, int, int, int], list[int]]]:
    """Splits the blocks into at most ``max_groups`` runs of consecutive blocks, each rendered on
    the tile of its nearest block (which contains the others'), minimising the total tile area
    rendered (dynamic programming). Fewer groups: less compiled code, more work. Returns
    (tile, blocks) pairs, near to far."""
    area = [(t[1] - t[0]) * (t[3] - t[2]) for t in tiles]
    n = len(tiles)
    inf = float("inf")
    # best[g][i]: least cost of covering blocks i.. with g groups
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[n] * (n + 1) for _ in range(max_groups + 1)]
    for g in range(max_groups + 1):
        best[g][n] = 0.0
    for g in range(1, max_groups + 1):
        for i in range(n - 1, -1, -1):
            for j in range(i + 1, n + 1):
                c = area[i] * (j - i) + best[g - 1][j]
                if c < best[g][i]:
                    best[g][i], cut[g][i] = c, j
    groups, i, g = [], 0, max_groups
    while i < n:
        j = cut[g][i]
        groups.append((tiles[i], list(range(i, j))))
        i, g = j, g - 1
    return groups


# ----------------------------------------------------------------------------------
# The renderer
# ----------------------------------------------------------------------------------
class Renderer:
    """Renders scene dicts (scene.py) at a static image size.

    Args:
      height, width: image size in pixels.
      visibility: which cars ``counts`` counts (visibility.VisibilityRule; default: layout's thresholds).
        ``min_visible_pixels`` (the rule's pixel floor) is layout.MIN_VISIBLE_PIXELS scaled with the
        image area relative to
        layout.REFERENCE_SIZE (10 at 96x320, 40 at 192x640).
      materialize: materialise shared intermediate arrays (see :func:`_keep`); the images are
        the same either way. True is much faster with XLA:CPU (measured); False leaves all
        fusion decisions to XLA, which may suit other backends (not measured yet).
      rendering_params: the scenes may carry scene.py's rendering parameters (make_spec(
        learn_rendering=True)): the view culling covers their wider camera range. The stages they
        drive (zoom, blur, exposure and colour gains, added noise) run when a scene has their fields.
    """

    def __init__(self, height: int = 96, width: int = 320, visibility: V.VisibilityRule | None = None,
                 materialize: bool = True, rendering_params: bool = False):  # fmt: skip
        if height < 8 or width < 8:
            raise ValueError(f"image size must be at least 8x8, got {height}x{width}")
        self.height, self.width = H, W = int(height), int(width)
        self.focal = f = L.KITTI_FX_OVER_WIDTH * W
        self.cx = 0.5 * W
        self.cy = L.KITTI_CY_OVER_HEIGHT * H
        self.visibility = V.VisibilityRule() if visibility is None else visibility
        self.min_visible_pixels = self.visibility.pixel_floor(H, W)
        self.materialize = bool(materialize)
        self.rendering_params = bool(rendering_params)
        if self.rendering_params:
            bounds = {"height_bounds": S.RENDERING_CAMERA_HEIGHT_BOUNDS, "pitch_bound": S.RENDERING_CAMERA_PITCH_BOUND}
        else:
            bounds = {}
        self.car_tiles = screen_tiles(H, W, f, self.cx, self.cy, L.ROAD_WIDTH / 2 + 0.1, 0.1,
                                      (0.0, MAX_CAR_HEIGHT + 0.05), **bounds)  # fmt: skip
        shadow_len = MAX_CAR_HEIGHT / math.tan(math.radians(S.SUN_ELEVATION_RANGE[0]))
        self.shadow_tiles = screen_tiles(H, W, f, self.cx, self.cy, L.ROAD_WIDTH / 2 + shadow_len + 0.8,
                                         shadow_len + 0.8, (0.0, L.KERB_HEIGHT), **bounds)  # fmt: skip
        # Each group is one more copy of the loop body in the compiled program: small images
        # (tests, quick runs) favour compile time, large ones throughput.
        groups = 2 if H * W <= 64 * 160 else 4
        self.car_groups = tile_groups(self.car_tiles, groups)
        # Shadows are computed at half resolution (they are smooth; 4x cheaper): half-res
        # pixel (i, j) samples full-res pixel (2i + 1, 2j + 1) (clipped to the image).
        self.half = ((H + 1) // 2, (W + 1) // 2)
        self.half_rows = np.minimum(2 * np.arange(self.half[0]) + 1, H - 1)
        self.half_cols = np.minimum(2 * np.arange(self.half[1]) + 1, W - 1)
        half_tiles = [(r0 // 2, min(self.half[0], (r1 + 1) // 2), c0 // 2, min(self.half[1], (c1 + 1) // 2))
                      for r0, r1, c0, c1 in self.shadow_tiles]  # fmt: skip
        self.shadow_groups = tile_groups(half_tiles, groups)
        self._static_columns()

    def _static_columns(self):
        """Per-column quantities that depend only on the image size and the fixed camera x, z."""
        W = self.width
        a = ((np.arange(W) + 0.5 - self.cx) / self.focal).astype(np.float32)
        self.a = a
        self.sg = np.where(a > 0, 1.0, -1.0).astype(np.float32)  # the roadside a column looks at
        self.side = (a > 0).astype(np.int32)
        aa = np.maximum(np.abs(a), 1e-6).astype(np.float32)
        self.aa = aa
        sox = self.sg * L.CAMERA_X
        bl = L.BLOCK_LENGTH
        # houses beside the road: candidate lots k0, k0+1, k0+2 where k0 is the lot whose front the ray crosses
        x0, depth, gap = L.HOUSE_X0, L.HOUSE_DEPTH, L.HOUSE_GAP / 2
        tx_in = (x0 - sox) / aa
        tx_out = (x0 + depth - sox) / aa
        k0 = np.floor((L.CAMERA_Z + tx_in) / bl).astype(np.int64)
        hc = []
        for j in range(3):
            k = k0 + j
            tz_in = k * bl + gap - L.CAMERA_Z
            tz_out = (k + 1) * bl - gap - L.CAMERA_Z
            t_in = np.maximum(tx_in, tz_in)
            t_out = np.minimum(tx_out, tz_out)
            e = sox + t_in * aa - x0
            hc.append(dict(
                idx=(np.clip(k, 0, L.MAX_BLOCKS - 1) * 2 + self.side).astype(np.int32),
                valid=(k >= 0) & (k < L.MAX_BLOCKS) & (t_in < t_out) & (t_in > 0),
                t_in=t_in.astype(np.float32), t_out=t_out.astype(np.float32),
                facade=tx_in >= tz_in,
                profile=np.clip(1.0 - np.abs(e - depth / 2) / (depth / 2), 0.0, 1.0).astype(np.float32),
                along=np.where(tx_in >= tz_in, L.CAMERA_Z + t_in, np.abs(L.CAMERA_X + t_in * a)).astype(np.float32),
            ))  # fmt: skip
        self.house_cand = hc
        self.house_t_ridge = ((x0 + depth / 2 - sox) / aa).astype(np.float32)
        self.house_slope_b = (L.HOUSE_ROOF_HEIGHT / (depth / 2) * aa).astype(np.float32)
        self.house_a0 = (L.HOUSE_ROOF_HEIGHT / (depth / 2) * (sox - x0)).astype(np.float32)
        # trees: the slot whose trunk plane the ray crosses, and its nearer neighbour
        t_c = (L.TREE_X - sox) / aa
        zc = L.CAMERA_Z + t_c
        kc = np.floor(zc / bl).astype(np.int64)
        kn = np.where(zc - kc * bl < bl / 2, kc - 1, kc + 1)
        self.tree_t = t_c.astype(np.float32)
        self.tree_zc = zc.astype(np.float32)
        self.tree_cand = [
            dict(idx=(np.clip(k, 0, L.MAX_BLOCKS - 1) * 2 + self.side).astype(np.int32),
                 valid=(k >= 0) & (k < L.MAX_BLOCKS))
            for k in (kc, kn)
        ]  # fmt: skip
        # lamp poles: the ray's crossing of the poles' plane
        t_p = (L.POLE_X - sox) / aa
        zp = L.CAMERA_Z + t_p
        kp = np.floor(zp / bl).astype(np.int64)
        self.pole_t = t_p.astype(np.float32)
        self.pole_idx = (np.clip(kp, 0, L.MAX_BLOCKS - 1) * 2 + self.side).astype(np.int32)
        self.pole_col = (kp >= 0) & (kp < L.MAX_BLOCKS) & (np.abs(zp - (kp * bl + 0.6)) < 0.09)
        # backdrop side walls
        self.back_t_side = ((L.BACKDROP_X - sox) / aa).astype(np.float32)
        self.inv_a = (1.0 / _np_safe(a)).astype(np.float32)

    # ----- public ------------------------------------------------------------------
    def render(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Renders a batch of scenes (leading axis num) -> ``{"image": uint8 [num, H, W, 3],
        "label": uint8 [num, H, W], "instance": int32 [num, H, W], "counts": int32 [num, 5]}``."""
        return jax.vmap(self.render_one)(scenes)

    def render_one(self, sc: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Renders ONE scene (no leading axis); same outputs without the leading axis."""
        H, W, f = self.height, self.width, self.focal
        # The scene's arrays come from the sampler's RNG: materialise them, or XLA recomputes
        # the random bits inside every per-pixel loop that reads them.
        sc = jax.tree_util.tree_map(_keep_self, dict(sc)) if self.materialize else dict(sc)
        o_y = sc["camera_height"].astype(jnp.float32)
        g = {
            "o_y": o_y,
            "v_h": self.cy - f * jnp.tan(sc["camera_pitch"].astype(jnp.float32)),
            "zi": sc["road_length"].astype(jnp.float32) * L.BLOCK_LENGTH,
            "typ": sc["intersection"].astype(jnp.int32),
            "sun": sc["sun_dir"].astype(jnp.float32),
            "seed": sc["seed"].astype(jnp.uint32),
        }
        wt = _onehot_rows(sc["weather"], WEATHER_TABLE)
        w = {name: wt[i] for name, i in _W.items()}
        b = (g["v_h"] - (jnp.arange(H, dtype=jnp.float32) + 0.5)) / f
        b = jnp.where(jnp.abs(b) < 1e-6, 1e-6, b)
        rows = {"b": b, "inv_b": 1.0 / b}
        bcol = b[:, None]  # [H, 1]
        acol = jnp.asarray(self.a)[None, :]  # [1, W]
        # runtime arrays of ones for _keep (per pixel, per column, per block); constant ones
        # (which XLA folds away: x / 1 = x) when not materialising
        if self.materialize:
            g["ones"] = (bcol * acol) * 0.0 + 1.0
            g["ones_w"] = jnp.asarray(self.a) * (o_y * 0.0) + 1.0
            g["ones_b"] = sc["car_pos"][:, 0] * 0.0 + 1.0
        else:
            g["ones"] = jnp.ones((H, W), jnp.float32)
            g["ones_w"] = jnp.ones((W,), jnp.float32)
            g["ones_b"] = jnp.ones((L.MAX_BLOCKS,), jnp.float32)
        ones = g["ones"]

        # ---- nearest non-car surface: t, category, and a per-category code ----------------
        gr = self._ground(g, acol, bcol, rows["inv_b"][:, None])
        bk = self._backdrop(sc, g, bcol)
        en = self._end_row(sc, g, bcol)
        hs = self._houses(sc, g, bcol)
        po = self._poles(sc, g, bcol)
        tr = self._trees(sc, g, bcol)
        t = jnp.full((H, W), _BIG, jnp.float32)
        cat = jnp.full((H, W), SKY, jnp.int32)
        code = jnp.zeros((H, W), jnp.int32)
        for layer in (bk, gr, en, hs, po, tr):
            nearer = layer["t"] < t
            t = jnp.where(nearer, layer["t"], t)
            cat = jnp.where(nearer, layer["cat"], cat)
            if "code" in layer:
                code = jnp.where(nearer, layer["code"], code)
        surf = _keep({"t": t, "cat": cat, "code": code}, ones)

        # ---- cars and their shadows: tile loops -----------------------------------------------
        cp = self._car_params(sc, g)
        sh = self._shadows(sc, g, cp, surf["t"], rows["b"])
        car = self._cars(cp, g, rows)
        car_hit = car["code"] >= 0
        fin = _keep({"t": jnp.where(car_hit, car["t"], surf["t"]), "cat": jnp.where(car_hit, CAR, surf["cat"]),
                     "code": jnp.where(car_hit, car["code"], surf["code"])}, ones)  # fmt: skip
        t, cat, code = fin["t"], fin["cat"], fin["code"]
        px = L.CAMERA_X + t * acol
        py = o_y + t * bcol
        pz = L.CAMERA_Z + t

        # ---- materials and light ------------------------------------------------------------
        fields = self._fields(sc, g, w, t, cat, code, px, py, pz, acol)
        ground = cat <= TERRAIN
        is_sky = cat == SKY
        lit = jnp.where(ground, sh["ground"], sh["lit"])
        ao = jnp.where(ground, sh["ao"], jnp.where((cat == HOUSE) | (cat == END_HOUSE),
                                                   jnp.clip(0.55 + 0.3 * py, 0.55, 1.0), 1.0))  # fmt: skip
        ndl, ny = self._ndl(g, cat, code, t, acol, bcol, tr, car)
        # glossy surfaces (glass, car paint, wet road) reflect the sky, most at grazing angles
        fres = fields["gloss"] * (0.15 + 0.6 * jnp.clip(1.0 - 4.0 * jnp.abs(bcol), 0.0, 1.0) ** 3)
        dist = t * jnp.sqrt(1.0 + acol * acol + bcol * bcol)
        fogk = 1.0 - jnp.exp(-dist / w["fog_d"])
        fogk = jnp.where(is_sky, jnp.where(w["fog_d"] < 100.0, 1.0, 0.0), fogk)  # in thick fog the sky is fog
        lk = _keep({
            "amb": ao * (0.62 + 0.38 * ny), "sun": w["sun"] * ndl * lit, "fres": 1.0 - 0.5 * fres,
            "refl": 0.3 * fres * (0.6 + 0.4 * lit), "fog": fogk,
        }, ones)  # fmt: skip
        sky = self._sky(w, g, acol, bcol)
        albedo = self._albedo(sc, g, cat, code, fields, hs, en, tr, car)
        rgb = []
        for ch, name in enumerate("rgb"):
            c = albedo[ch] * (w["amb_" + name] * lk["amb"] + SUN_COLOR[ch] * lk["sun"])
            c = c * lk["fres"] + (0.9 * w["skyh_" + name]) * lk["refl"]
            c = jnp.where(is_sky, sky[ch], c)
            rgb.append(c + (w["fog_" + name] - c) * lk["fog"])
        # Rendering parameters (scene.py; each stage only when the scene has its field): the optics
        # (field of view, blur) act on the linear image, the sensor (exposure, gains, noise) in _camera.
        if "camera_fov" in sc:  # g["zoom"]: the magnification s (focal s f; the horizon at cy + s (v_h - cy))
            rgb, cat, code, g["zoom"] = self._zoom(sc["camera_fov"], rgb, cat, code, ones)
        if "blur_sigma" in sc:
            rgb = self._blur(sc["blur_sigma"], rgb, ones)
        image = self._camera(rgb, w, g["seed"], ones, self._sensor(sc))

        label = _choose([cat == i for i in range(len(CATEGORY_LABEL))], [int(v) for v in CATEGORY_LABEL], 0)
        instance = jnp.where(cat == CAR, (code >> 4) + 1, 0).astype(jnp.int32)
        counts = self._counts(sc, instance, g, w)
        return {"image": image, "label": label.astype(jnp.uint8), "instance": instance, "counts": counts}

    # ----- ground ----------------------------------------------------------------------
    def _region(self, x, z, zi, typ):
        """(road, sidewalk) masks of ground points (x, z); everything else is terrain."""
        hw, sw, rw, srl, br = L.ROAD_WIDTH / 2, L.SIDEWALK_WIDTH, L.ROAD_WIDTH, L.SIDE_ROAD_LENGTH, L.BEND_RADIUS
        ax = jnp.abs(x)
        is_l, is_x = typ == 0, typ == 2
        is_tx = ~is_l
        zr = z - zi
        road = ((ax <= hw) & (zr <= 0)) | (is_tx & (zr >= 0) & (zr <= rw) & (ax <= hw + srl))
        road = road | (is_x & (ax <= hw) & (zr >= 0) & (zr <= rw + srl))
        dxb = x + br
        r = jnp.sqrt(dxb * dxb + zr * zr)
        quad = (dxb >= 0) & (zr >= 0)
        leg = (dxb < 0) & (dxb >= -srl)
        road = road | (is_l & ((quad & (jnp.abs(r - br) <= hw)) | (leg & (jnp.abs(zr - br) <= hw))))
        side = ((ax <= hw + sw) & (zr <= 0)) | (is_tx & (zr >= -sw) & (zr <= rw + sw) & (ax <= hw + srl))
        side = side | (is_x & (ax <= hw + sw) & (zr >= 0) & (zr <= rw + srl))
        side = side | (is_l & ((quad & (jnp.abs(r - br) <= hw + sw)) | (leg & (jnp.abs(zr - br) <= hw + sw))))
        return road, side & ~road

    def _ground(self, g, a, b, inv_b):
        """Road (y = 0) and the kerb-raised sidewalks and terrain: t and category per pixel."""
        o_y = g["o_y"]
        below = b < -1e-5
        t0 = jnp.where(below, -o_y * inv_b, _BIG)  # road plane y = 0
        t1 = jnp.where(below, -(o_y - L.KERB_HEIGHT) * inv_b, _BIG)  # raised plane
        road0, _ = self._region(L.CAMERA_X + t0 * a, L.CAMERA_Z + t0, g["zi"], g["typ"])
        road1, side1 = self._region(L.CAMERA_X + t1 * a, L.CAMERA_Z + t1, g["zi"], g["typ"])
        # the ray meets the raised plane outside the road (top), or passes over the road's edge
        # and meets the kerb's face (road at the raised level, not at the road's)
        cat = jnp.where(~road1, jnp.where(side1, SIDEWALK, TERRAIN), jnp.where(road0, ROAD, KERB))
        out = _keep({"t": jnp.where(below, jnp.where(road1, t0, t1), _BIG), "cat": jnp.where(below, cat, SKY)},
                    g["ones"])  # fmt: skip
        return out

    # ----- houses beside the road -----------------------------------------------------
    def _houses(self, sc, g, b):
        """Houses of the lots: t and code = face (1 facade, 2 side wall, 3 roof) + 4 * candidate."""
        o_y = g["o_y"]
        present = sc["house_present"].reshape(-1)
        height = sc["house_height"].reshape(-1)
        hcol = [jnp.square(c.reshape(-1)) for c in jnp.moveaxis(sc["house_color"], -1, 0)]
        rcol = [jnp.square(c.reshape(-1)) for c in jnp.moveaxis(sc["roof_color"], -1, 0)]
        cols = []
        for cand in self.house_cand:
            idx = jnp.asarray(cand["idx"])
            h = height[idx]
            cols.append({
                "ok": present[idx] & jnp.asarray(cand["valid"]),
                "top_in": h + L.HOUSE_ROOF_HEIGHT * jnp.asarray(cand["profile"]),
                "a_minus_oy": h + jnp.asarray(self.house_a0) - o_y,
                "wall": tuple(c[idx] for c in hcol),
                "roof": tuple(c[idx] for c in rcol),
            })  # fmt: skip
        cols = _keep(cols, g["ones_w"])
        t_ridge = jnp.asarray(self.house_t_ridge)
        inv_den = 1.0 / jnp.where(jnp.abs(b - self.house_slope_b) < 1e-7, -1e-7, b - self.house_slope_b)
        t_best = jnp.full((b.shape[0], self.width), _BIG, jnp.float32)
        code = jnp.zeros(t_best.shape, jnp.int32)
        for j in (2, 1, 0):  # farthest candidate first; nearer hits overwrite
            cand, col = self.house_cand[j], cols[j]
            t_in, t_out = jnp.asarray(cand["t_in"]), jnp.asarray(cand["t_out"])
            y_in = o_y + b * t_in
            wall = col["ok"] & (y_in >= 0) & (y_in <= col["top_in"])
            t_r = col["a_minus_oy"] * inv_den
            roof = col["ok"] & ~wall & (y_in > col["top_in"]) & (t_r >= t_in) & (t_r <= jnp.minimum(t_out, t_ridge))
            # one kept value per candidate: depth, negative on the roof, _BIG on a miss
            tj = _keep(jnp.where(wall, t_in, jnp.where(roof, -t_r, _BIG)), g["ones"])
            hit = tj < _BIG
            t_best = jnp.where(hit, jnp.abs(tj), t_best)
            face = jnp.where(tj < 0, 3, jnp.where(jnp.asarray(cand["facade"]), 1, 2))
            code = jnp.where(hit, face + 4 * j, code)
        out = _keep({"t": t_best, "code": code}, g["ones"])
        out["cat"] = jnp.where(out["t"] < _BIG, HOUSE, SKY)
        out["wall"] = [c["wall"] for c in cols]
        out["roof"] = [c["roof"] for c in cols]
        out["along"] = [jnp.asarray(c["along"]) for c in self.house_cand]
        return out

    # ----- the row of houses across the end of the road ------------------------------------------
    def _end_row(self, sc, g, b):
        """Houses across the end of the road: t and code = face (1 front, 2 side, 3 roof) + 4 * candidate."""
        o_y = g["o_y"]
        depth, gap, roof, wdt = L.HOUSE_DEPTH, L.HOUSE_GAP / 2, L.HOUSE_ROOF_HEIGHT, L.END_HOUSE_WIDTH
        a = jnp.asarray(self.a)
        inv_a = jnp.asarray(self.inv_a)
        half = L.END_HOUSE_COUNT // 2
        ze = g["zi"] + _onehot_rows(g["typ"], np.asarray(L.END_ROW_Z, np.float32)[:, None])[0]
        tz_in = ze - L.CAMERA_Z
        tz_out = tz_in + depth
        t_ridge = tz_in + depth / 2
        j0 = jnp.floor((L.CAMERA_X + tz_in * a) / wdt + 0.5).astype(jnp.int32) + half
        step = jnp.where(a > 0, 1, -1)
        slope = roof / (depth / 2)
        ecol = [jnp.square(c) for c in jnp.moveaxis(sc["end_color"], -1, 0)]
        rpal = np.asarray(S.ROOF_PALETTE, np.float32) ** 2
        cols = []
        for m in (0, 1):
            j = j0 + m * step
            jc = jnp.clip(j, 0, L.END_HOUSE_COUNT - 1)
            h = sc["end_height"][jc]
            xc = (jc - half).astype(jnp.float32) * wdt
            t1 = (xc - wdt / 2 + gap - L.CAMERA_X) * inv_a
            t2 = (xc + wdt / 2 - gap - L.CAMERA_X) * inv_a
            t_in = jnp.maximum(jnp.minimum(t1, t2), tz_in)
            t_out = jnp.minimum(jnp.maximum(t1, t2), tz_out)
            front = tz_in >= jnp.minimum(t1, t2)
            e = L.CAMERA_Z + t_in - ze
            cols.append({
                "ok": sc["end_present"][jc] & (j == jc) & (t_in < t_out),
                "t_in": t_in, "t_out": t_out, "front": front,
                "top_in": h + roof * jnp.clip(1.0 - jnp.abs(e - depth / 2) / (depth / 2), 0.0, 1.0),
                "a_minus_oy": h + slope * (L.CAMERA_Z - ze) - o_y,
                "along": jnp.where(front, L.CAMERA_X + t_in * a, L.CAMERA_Z + t_in),
                "wall": tuple(c[jc] for c in ecol),
                "roof": tuple(jnp.asarray(rpal[:, i])[jc % rpal.shape[0]] for i in range(3)),
            })  # fmt: skip
        cols = _keep(cols, g["ones_w"])
        inv_den = 1.0 / jnp.where(jnp.abs(b - slope) < 1e-7, -1e-7, b - slope)
        t_best = jnp.full((b.shape[0], self.width), _BIG, jnp.float32)
        code = jnp.zeros(t_best.shape, jnp.int32)
        for m in (1, 0):
            col = cols[m]
            y_in = o_y + b * col["t_in"]
            wall = col["ok"] & (y_in >= 0) & (y_in <= col["top_in"])
            t_r = col["a_minus_oy"] * inv_den
            roof = col["ok"] & ~wall & (y_in > col["top_in"]) & (t_r >= col["t_in"])
            roof = roof & (t_r <= jnp.minimum(col["t_out"], t_ridge))
            tj = _keep(jnp.where(wall, col["t_in"], jnp.where(roof, -t_r, _BIG)), g["ones"])
            hit = tj < _BIG
            t_best = jnp.where(hit, jnp.abs(tj), t_best)
            face = jnp.where(tj < 0, 3, jnp.where(col["front"], 1, 2))
            code = jnp.where(hit, face + 4 * m, code)
        out = _keep({"t": t_best, "code": code}, g["ones"])
        out["cat"] = jnp.where(out["t"] < _BIG, END_HOUSE, SKY)
        out["wall"] = [c["wall"] for c in cols]
        out["roof"] = [c["roof"] for c in cols]
        out["along"] = [c["along"] for c in cols]
        return out

    # ----- trees --------------------------------------------------------------------------
    def _trees(self, sc, g, b):
        """Crowns (ellipsoids) and trunks: t and code = candidate (0, 1) or 2 for a trunk."""
        o_y = g["o_y"]
        present = sc["tree_present"].reshape(-1)
        tz = sc["tree_z"].reshape(-1)
        rad = sc["tree_radius"].reshape(-1)
        hgt = sc["tree_height"].reshape(-1)
        sox = self.sg * L.CAMERA_X
        cols = []
        for cand in self.tree_cand:
            idx = jnp.asarray(cand["idx"])
            inv_r = 1.0 / rad[idx]
            inv_ry = inv_r / 1.15
            ox = (sox - L.TREE_X) * inv_r
            oz = (L.CAMERA_Z - tz[idx]) * inv_r
            dx = self.aa * inv_r
            dz = inv_r
            oy = (o_y - hgt[idx]) * inv_ry
            cols.append({
                "ok": present[idx] & jnp.asarray(cand["valid"]),
                "ox": ox, "oz": oz, "dx": dx, "dz": dz, "oy": oy, "inv_ry": inv_ry,
                "Axz": dx * dx + dz * dz, "Bxz": ox * dx + oz * dz, "C": ox * ox + oz * oz + oy * oy - 1.0,
                "autumn": _hash(idx, jnp.full_like(idx, 3), g["seed"]),
            })  # fmt: skip
        cols = _keep(cols, g["ones_w"])
        # the trunk: a thin board in the trunks' plane under the crown of the crossed slot
        idx = jnp.asarray(self.tree_cand[0]["idx"])
        trunk_col = _keep({
            "ok": present[idx] & jnp.asarray(self.tree_cand[0]["valid"])
            & (jnp.abs(jnp.asarray(self.tree_zc) - tz[idx]) < 0.16),
            "top": hgt[idx] - 0.5 * rad[idx],
        }, g["ones_w"])  # fmt: skip
        t_best = jnp.full((b.shape[0], self.width), _BIG, jnp.float32)
        jsel = jnp.zeros(t_best.shape, jnp.int32)
        for j in (1, 0):
            col = cols[j]
            dy = b * col["inv_ry"]
            A = col["Axz"] + dy * dy
            Bq = col["Bxz"] + col["oy"] * dy
            disc = Bq * Bq - A * col["C"]
            tt = (-Bq - jnp.sqrt(jnp.maximum(disc, 0.0))) / A
            tt = _keep(jnp.where(col["ok"] & (disc > 0) & (tt > 0), tt, _BIG), g["ones"])
            hit = tt < t_best
            t_best = jnp.where(hit, tt, t_best)
            jsel = jnp.where(hit, j, jsel)
        t_c = jnp.asarray(self.tree_t)
        y = o_y + b * t_c
        trunk = trunk_col["ok"] & (y >= 0) & (y <= trunk_col["top"]) & (t_c < t_best)
        out = _keep({"t": jnp.where(trunk, t_c, t_best), "code": jnp.where(trunk, 2, jsel)}, g["ones"])
        out["cat"] = jnp.where(out["t"] < _BIG, jnp.where(out["code"] == 2, TRUNK, CROWN), SKY)
        out["cols"] = cols
        return out

    # ----- lamp poles -------------------------------------------------------------------------
    def _poles(self, sc, g, b):
        col = _keep(sc["pole_present"].reshape(-1)[jnp.asarray(self.pole_idx)] & jnp.asarray(self.pole_col),
                    g["ones_w"])  # fmt: skip
        t_p = jnp.asarray(self.pole_t)
        y = g["o_y"] + b * t_p
        hit = col & (y >= L.KERB_HEIGHT) & (y <= L.POLE_HEIGHT)
        return {"t": jnp.where(hit, t_p, _BIG), "cat": jnp.where(hit, POLE, SKY)}

    # ----- distant tree line / skyline --------------------------------------------------------
    def _backdrop(self, sc, g, b):
        seed = g["seed"]
        a = jnp.asarray(self.a)
        t_far = g["zi"] + L.BACKDROP_Z - L.CAMERA_Z
        t_side = jnp.asarray(self.back_t_side)
        on_side = t_side < t_far
        t = jnp.minimum(t_far, t_side)
        s = jnp.where(on_side, L.CAMERA_Z + t + jnp.asarray(self.sg) * 1000.0, L.CAMERA_X + t * a)
        veg_h = (
            8.0
            + 9.0 * _value_noise(s / 9.0, jnp.zeros_like(s), seed)
            + 3.0 * _value_noise(s / 2.5, jnp.ones_like(s), seed)
        )
        seg = jnp.floor(s / 22.0).astype(jnp.int32)
        bld = _hash(seg, jnp.full_like(seg, 7), seed) < 0.35
        bld_h = 11.0 + 14.0 * _hash(seg, jnp.full_like(seg, 11), seed)
        col = _keep({"t": t * jnp.ones_like(s), "s": s, "top": jnp.where(bld, jnp.maximum(bld_h, 0.6 * veg_h), veg_h),
                     "bld_h": jnp.where(bld, bld_h, -1.0), "shade": _hash(seg, jnp.full_like(seg, 5), seed)},
                    g["ones_w"])  # fmt: skip
        y = g["o_y"] + b * col["t"]
        hit = y <= col["top"]
        cat = jnp.where(hit, jnp.where(y <= col["bld_h"], BACK_BUILDING, BACK_VEG), SKY)
        return {"t": jnp.where(hit, col["t"], _BIG), "cat": cat, "s": col["s"], "shade": col["shade"]}

    # ----- cars ----------------------------------------------------------------------------
    def _car_params(self, sc, g):
        """Per-block car scalars [B] (kept)."""
        shp = _onehot_rows(sc["car_type"], CAR_SHAPES)  # [B, F]
        p = {name: shp[:, i] for name, i in _F.items()}
        hd = sc["car_heading"]
        c, s = jnp.cos(hd), jnp.sin(hd)
        cx, cz = sc["car_pos"][:, 0], sc["car_pos"][:, 1]
        rx, rz = L.CAMERA_X - cx, L.CAMERA_Z - cz
        hb, ht = p["body_top"], p["roof"]
        kr = (ht - hb) / jnp.maximum(p["cab_rear_top"] - p["cab_rear_base"], 1e-3)
        kf = (ht - hb) / jnp.maximum(p["cab_front_base"] - p["cab_front_top"], 1e-3)
        lz0 = rx * s + rz * c
        sun = g["sun"]
        sun_y = jnp.maximum(sun[1], 0.05)
        rgb8 = jnp.round(jnp.clip(sc["car_color"], 0.0, 1.0) * 255.0).astype(jnp.int32)
        inv1, inv2 = jax.lax.rsqrt(1.0 + kr * kr), jax.lax.rsqrt(1.0 + kf * kf)
        p.update(
            c=c, s=s, cx=cx, cz=cz, lx0=rx * c - rz * s, lz0=lz0, kr=kr, kf=kf,
            hwc=p["half_width"] - p["cab_inset"],
            n1=g["o_y"] - hb - kr * (lz0 - p["cab_rear_base"]),
            n2=g["o_y"] - hb - kf * (p["cab_front_base"] - lz0),
            # sun . (normal) of the faces whose normal has a y part, in the car's frame
            sun_lx=sun[0] * c - sun[2] * s, sun_lz=sun[0] * s + sun[2] * c, inv1=inv1, inv2=inv2,
            isx=1.0 / _safe((sun[0] * c - sun[2] * s) / sun_y), isz=1.0 / _safe((sun[0] * s + sun[2] * c) / sun_y),
            present=sc["car_present"], pickup=sc["car_type"] == PICKUP,
            paint=rgb8[:, 0] + 256 * rgb8[:, 1] + 65536 * rgb8[:, 2],
        )  # fmt: skip
        return _keep(p, g["ones_b"])

    def _cars(self, p, g, rows):
        """Visible car per pixel (the nearest block wins). Full-image arrays: t; code = 16 * block +
        material (-1: no car); paint (packed 8-bit sRGB); ndl (sun . normal, clipped at 0); ny."""
        fill = {"t": _BIG, "code": -1, "paint": 0, "ndl": 0.0, "ny": 0.0}

        def step(tile, state, k):
            r0, r1, c0, c1 = tile
            pk = {name: v[k] for name, v in p.items()}
            res = self._car_block(k, pk, g, self.a[c0:c1], rows["b"][r0:r1], rows["inv_b"][r0:r1],
                                  g["ones_w"][c0:c1], g["ones"][r0:r1, c0:c1])  # fmt: skip
            hit = res["t"] < _BIG
            return {n: jnp.where(hit, res[n], v) for n, v in state.items()}

        return _keep(self._tile_loop(self.car_groups, fill, step), g["ones"])

    def _tile_loop(self, groups, fill, step_fn, size=None):
        """Runs ``state = step_fn(tile, state, k)`` over the blocks from far to near.

        Blocks are grouped by similar tiles (groups: near to far, each (tile, blocks));
        within a group one ``lax.scan`` runs over its blocks on the group's tile (the
        tile of its nearest block, which contains the others'), which keeps the
        compiled program small. Between groups the state is padded to the larger tile.
        Returns the state over the whole image (``size``, default the image's).
        """
        H, W = size or (self.height, self.width)
        state, prev = None, None
        for tile, blocks in reversed(groups):
            r0, r1, c0, c1 = tile
            if state is None:
                state = {n: jnp.full((r1 - r0, c1 - c0), v, jnp.int32 if isinstance(v, int) else jnp.float32)
                         for n, v in fill.items()}  # fmt: skip
            else:
                q0, q1, p0, p1 = prev
                pad = ((q0 - r0, r1 - q1), (p0 - c0, c1 - p1))
                state = {n: jnp.pad(v, pad, constant_values=fill[n]) for n, v in state.items()}
            ks = jnp.asarray(sorted(blocks, reverse=True), jnp.int32)
            if len(blocks) == 1:
                state = step_fn(tile, state, ks[0])
            else:
                state, _ = jax.lax.scan(lambda st, k, tile=tile: (step_fn(tile, st, k), None), state, ks)
            prev = tile
        q0, q1, p0, p1 = prev
        pad = ((q0, H - q1), (p0, W - p1))
        return {n: jnp.pad(v, pad, constant_values=fill[n]) for n, v in state.items()}

    def _car_block(self, k, p, g, a_np, b, inv_b, ones_w, ones):
        """One block's car over its tile: depth, 16 * k + material, paint, lighting terms."""
        o_y = g["o_y"]
        c, s = p["c"], p["s"]
        hl, hw, clr, hb, ht = p["half_length"], p["half_width"], p["clearance"], p["body_top"], p["roof"]
        rb, rt, ft, fb = p["cab_rear_base"], p["cab_rear_top"], p["cab_front_top"], p["cab_front_base"]
        rw, wr, wf, hwc, kr, kf = p["wheel_radius"], p["wheel_rear"], p["wheel_front"], p["hwc"], p["kr"], p["kf"]
        lx0, lz0 = p["lx0"], p["lz0"]
        a = jnp.asarray(a_np)

        def slab(lo, hi, p0, inv):
            t1, t2 = (lo - p0) * inv, (hi - p0) * inv
            return jnp.minimum(t1, t2), jnp.maximum(t1, t2)

        # per column: the ray in the car's frame and its footprint intervals
        dlx = a * c - s
        dlz = a * s + c
        idlx, idlz = 1.0 / _safe(dlx), 1.0 / _safe(dlz)
        bx_n, bx_f = slab(-hw, hw, lx0, idlx)
        bz_n, bz_f = slab(-hl, hl, lz0, idlz)
        cx_n, cx_f = slab(-hwc, hwc, lx0, idlx)
        cz_n, cz_f = slab(rb, fb, lz0, idlz)
        col = _keep({
            "dlx": dlx, "dlz": dlz, "fb_in": jnp.maximum(bx_n, bz_n), "fb_out": jnp.minimum(bx_f, bz_f),
            "fb_x": bx_n > bz_n, "fc_in": jnp.maximum(cx_n, cz_n), "fc_out": jnp.minimum(cx_f, cz_f),
            "fc_x": cx_n > cz_n, "krd": kr * dlz, "kfd": kf * dlz,
        }, ones_w)  # fmt: skip
        dlx, dlz = col["dlx"][None, :], col["dlz"][None, :]
        fb_in, fb_out, fb_x = col["fb_in"][None, :], col["fb_out"][None, :], col["fb_x"][None, :]
        fc_in, fc_out, fc_x = col["fc_in"][None, :], col["fc_out"][None, :], col["fc_x"][None, :]
        bcol, ib = b[:, None], inv_b[:, None]

        # body: y in [0, hb]; below the clearance a ray only hits a wheel
        ty0 = -o_y * ib
        tyb = (hb - o_y) * ib
        tyr = (ht - o_y) * ib
        eb = jnp.maximum(fb_in, jnp.minimum(ty0, tyb))
        xb = jnp.minimum(fb_out, jnp.maximum(ty0, tyb))
        top_b = jnp.minimum(ty0, tyb) > fb_in
        yh = o_y + bcol * eb
        lzh = lz0 + eb * dlz
        lxh = lx0 + eb * dlx
        dwh = jnp.minimum(jnp.abs(lzh - wr), jnp.abs(lzh - wf))
        in_wheel = dwh * dwh + (yh - rw) * (yh - rw) < rw * rw
        gap = ~top_b & (yh < clr) & ~(fb_x & in_wheel) & ~(~fb_x & (jnp.abs(lxh) > hw - 0.24))
        hit_b = p["present"] & (eb < xb) & (xb > 0) & ~gap

        # cabin: y in [hb, ht], cut by the rear window and windscreen planes
        d1 = bcol - col["krd"][None, :]
        q1 = -p["n1"] / _safe(d1)
        d2 = bcol + col["kfd"][None, :]
        q2 = -p["n2"] / _safe(d2)
        e1 = jnp.where(d1 < 0, q1, -_BIG)
        e2 = jnp.where(d2 < 0, q2, -_BIG)
        yc_n = jnp.minimum(tyb, tyr)
        ec = jnp.maximum(jnp.maximum(fc_in, yc_n), jnp.maximum(e1, e2))
        xc = jnp.minimum(jnp.minimum(fc_out, jnp.maximum(tyb, tyr)),
                         jnp.minimum(jnp.where(d1 > 0, q1, _BIG), jnp.where(d2 > 0, q2, _BIG)))  # fmt: skip
        hit_c = p["present"] & (ec < xc) & (xc > 0)
        use_c = hit_c & (~hit_b | (ec < eb))
        t = jnp.where(use_c, ec, eb)
        # faces: 0 body top, 1 body side, 2 body end, 3 cabin roof, 4 rear window, 5 windscreen,
        # 6 cabin side, 7 cabin end
        face_c = jnp.where(ec == yc_n, 3, jnp.where(ec == e1, 4, jnp.where(ec == e2, 5, jnp.where(fc_x, 6, 7))))
        face = jnp.where(use_c, face_c, jnp.where(top_b, 0, jnp.where(fb_x, 1, 2)))
        # the hit is shared by every output below: materialise it once (see _keep)
        geo = _keep({"t": jnp.where(hit_b | hit_c, t, _BIG), "face": face}, ones)
        t, face = geo["t"], geo["face"]
        hit = t < _BIG
        y = o_y + bcol * t
        lz = lz0 + t * dlz
        alx = jnp.abs(lx0 + t * dlx)
        rear = dlz > 0  # the ray meets the car's rear
        # materials: wheels and rims, trim (sills, bumpers, grille, the pickup's bed), lights,
        # number plates, glass with pillars; the rest is paint
        dw = jnp.minimum(jnp.abs(lz - wr), jnp.abs(lz - wf))
        rr = dw * dw + (y - rw) * (y - rw)
        f1, f2 = face == 1, face == 2
        wheel = f1 & (rr < rw * rw)
        rim = wheel & (rr < (0.55 * rw) ** 2)
        tyre_under = f2 & (y < clr) & (alx > hw - 0.24)
        trim = (f1 & (y < clr + 0.08)) | (f2 & (y < clr + 0.16))
        trim = trim | (f2 & ~rear & (alx < 0.5) & (y > clr + 0.30) & (y < hb - 0.12))
        trim = trim | ((face == 0) & p["pickup"] & (lz < rb - 0.06) & (alx < hw - 0.07) & (lz > 0.07 - hl))
        lights = f2 & (alx > hw - 0.36) & (alx < hw - 0.05) & (y > hb - 0.30) & (y < hb - 0.07)
        plate = f2 & (alx < 0.26) & (y > clr + 0.20) & (y < clr + 0.33)
        profile = jnp.minimum(ht, jnp.minimum(hb + kr * (lz - rb), hb + kf * (fb - lz)))
        side_glass = (face == 6) & (y > hb + 0.06) & (y < profile - 0.06) & (jnp.abs(lz - 0.5 * (rt + ft)) > 0.07)
        end_glass = (face >= 4) & (face != 6) & (alx < hwc - 0.07) & (y < ht - 0.04)
        end_glass = end_glass & (y > hb + jnp.where(face == 5, 0.04, p["rear_glass"] * (ht - hb)))
        mat = _choose(
            [rim, wheel | tyre_under, side_glass | end_glass, lights, plate, trim],
            [RIM, TYRE, GLASS, jnp.where(rear, TAIL_LIGHT, HEAD_LIGHT), PLATE, TRIM],
            PAINT,
        )
        # lighting terms: sun . normal with the normal in the car's frame
        slx = jnp.where(dlx > 0, -p["sun_lx"], p["sun_lx"])
        slz = jnp.where(dlz > 0, -p["sun_lz"], p["sun_lz"])
        sun_y = g["sun"][1]
        ndl = _choose(
            [(face == 0) | (face == 3), f1 | (face == 6), f2 | (face == 7), face == 4],
            [sun_y, slx, slz, (sun_y - kr * p["sun_lz"]) * p["inv1"]],
            (sun_y + kf * p["sun_lz"]) * p["inv2"],
        )
        ny = _choose([(face == 0) | (face == 3), face == 4, face == 5], [1.0, p["inv1"], p["inv2"]], 0.0)
        return {
            "t": t, "code": jnp.where(hit, 16 * k + mat, -1), "paint": jnp.broadcast_to(p["paint"], t.shape),
            "ndl": jnp.maximum(ndl, 0.0), "ny": ny,
        }  # fmt: skip

    def _shadows(self, sc, g, cp, t, b):
        """Sun shadows and contact shadows at half resolution, upsampled (nearest).

        Computed for the non-car surface of each pixel (ground, houses, trees): a car pixel
        takes the sun shadow of the surface behind it, a fair guess for a car standing in a
        house's or a tree's shadow. Returns full-resolution ``lit`` (houses, trees, the end
        row), ``ground`` (lit and not in a car's sun shadow) and ``ao`` (cars' contact shadow).
        """
        H, W = self.height, self.width
        hr, hc = jnp.asarray(self.half_rows), jnp.asarray(self.half_cols)
        th = t[hr][:, hc]
        ah = jnp.asarray(self.a[self.half_cols])[None, :]
        bh = b[hr][:, None]
        gh = dict(g, ones=g["ones"][hr][:, hc])
        px, py, pz = L.CAMERA_X + th * ah, g["o_y"] + th * bh, L.CAMERA_Z + th
        lit = self._sun_shadow(sc, gh, px, py, pz)
        car = self._car_shadows(cp, gh, px, pz)
        half = _keep({"lit": lit, "ground": jnp.minimum(lit, car["shadow"]), "ao": car["ao"]}, gh["ones"])

        def up(x):
            # a 2x2 box filter at half resolution (soft edges), then nearest 2x (broadcasts, no gather)
            x = jnp.pad(x, ((1, 0), (1, 0)), mode="edge")
            x = 0.25 * (x[1:, 1:] + x[:-1, 1:] + x[1:, :-1] + x[:-1, :-1])
            hh, wh = x.shape
            x = jnp.broadcast_to(x[:, None, :, None], (hh, 2, wh, 2)).reshape(2 * hh, 2 * wh)
            return x[:H, :W]

        return {name: up(v) for name, v in half.items()}

    def _car_shadows(self, p, g, gx_full, gz_full):
        """Contact shadow (ao) and sun shadow of the cars at ground points (gx, gz) [h, w] (half res)."""

        def step(tile, state, k):
            r0, r1, c0, c1 = tile
            ux, uz = gx_full[r0:r1, c0:c1] - p["cx"][k], gz_full[r0:r1, c0:c1] - p["cz"][k]
            c, s = p["c"][k], p["s"][k]
            gxl = ux * c - uz * s
            gzl = ux * s + uz * c
            hw, hl = p["half_width"][k], p["half_length"][k]
            d_out = jnp.maximum(jnp.abs(gxl) - hw, jnp.abs(gzl) - hl)
            a_k = jnp.where(p["present"][k], 0.35 + 0.65 * jnp.clip(d_out * (1.0 / 0.7), 0.0, 1.0), 1.0)
            t1, t2 = (-hw - gxl) * p["isx"][k], (hw - gxl) * p["isx"][k]
            t3, t4 = (-hl - gzl) * p["isz"][k], (hl - gzl) * p["isz"][k]
            s_in = jnp.maximum(jnp.maximum(jnp.minimum(t1, t2), jnp.minimum(t3, t4)), p["clearance"][k])
            s_out = jnp.minimum(jnp.minimum(jnp.maximum(t1, t2), jnp.maximum(t3, t4)),
                                0.5 * (p["body_top"][k] + p["roof"][k]))  # fmt: skip
            s_k = jnp.where(p["present"][k] & (s_in < s_out), 0.0, 1.0)
            return {"ao": jnp.minimum(a_k, state["ao"]), "shadow": jnp.minimum(s_k, state["shadow"])}

        return self._tile_loop(self.shadow_groups, {"ao": 1.0, "shadow": 1.0}, step, size=self.half)

    # ----- textures ------------------------------------------------------------------------
    def _fields(self, sc, g, w, t, cat, code, px, py, pz, acol):
        """Kept per-pixel texture fields: every category's albedo is ``base * k + (over - base * k) * m``
        (k: texture, m: overlay such as markings, windows, soil) and its gloss."""
        f = self.focal
        ones = g["ones"]
        seed = g["seed"]
        fpx = t * (1.0 / f)  # lateral size of a pixel at depth t (m)
        fpz = t * t / (g["o_y"] * f)  # along-road size of a pixel on the ground
        wet = w["wet"]
        nz_ = _keep({
            "big": _value_noise(px * 0.35 + pz * 0.05, pz * 0.35 + py * 0.3, seed),
            "small": _value_noise(px * 2.3 + py * 1.7, pz * 2.3 - py * 1.1, seed ^ jnp.uint32(0x9E3779B9)),
        }, ones)  # fmt: skip
        n_big, n_small = nz_["big"], nz_["small"]
        zi, typ = g["zi"], g["typ"]
        ax = jnp.abs(px)
        zr = pz - zi
        is_tx = (typ != 0).astype(jnp.float32)

        # road: asphalt, patches, wheel tracks, markings; wet: darker with puddles
        tracks = 1.0 - 0.08 * _band(jnp.abs(ax - L.LANE_WIDTH / 2), 0.55, 0.95, fpx)
        road_k = (0.86 + 0.28 * n_big) * (0.94 + 0.12 * n_small) * tracks * (1.0 - 0.45 * wet)
        m = _band(px, -0.07, 0.07, fpx) * _stripes(pz, 6.0, 3.0, fpz) * (zr < -5.6)
        m = jnp.maximum(m, _band(ax, 3.20, 3.32, fpx) * (zr < 0))
        m = jnp.maximum(m, is_tx * _band(zr, -5.5, -5.1, fpz) * _band(px, 0.1, 3.3, fpx))
        m = jnp.maximum(m, is_tx * _band(zr, -4.6, -1.2, fpz) * _stripes(px + 20.0, 1.0, 0.5, fpx) * (ax < 3.2))
        m = jnp.maximum(m, is_tx * _band(zr, 3.43, 3.57, fpz) * _stripes(px, 6.0, 3.0, fpx) * (ax > 4.5))
        m = jnp.maximum(m, (typ == 2) * _band(px, -0.07, 0.07, fpx) * _stripes(pz, 6.0, 3.0, fpz) * (zr > 8.0))
        road_m = m * (0.75 + 0.25 * n_small) * (1.0 - 0.4 * wet)
        road_gloss = wet * (0.35 + 0.5 * jnp.clip((n_big - 0.55) * 4.0, 0.0, 1.0))
        # sidewalk paving slabs; terrain: grass and soil
        grout = jnp.maximum(_stripes(px, 0.6, 0.035, fpx), _stripes(pz, 0.6, 0.035, fpz))
        side_k = (0.9 + 0.2 * n_small) * (1.0 - 0.25 * grout) * (0.92 + 0.16 * n_big) * (1.0 - 0.3 * wet)
        terr_m = jnp.clip(n_big * 1.6 - 0.4, 0.0, 1.0)
        terr_k = 0.75 + 0.5 * n_small
        # houses: windows by floor and bay, roof tiles; the coordinate along the wall is the
        # ray's z on walls facing x, its x on walls facing z
        face = code & 3
        is_roof = face == 3
        along = jnp.where(((face == 1) & (cat == HOUSE)) | ((face == 2) & (cat == END_HOUSE)), pz, px)
        fp_al = jnp.where(((face == 1) & (cat == HOUSE)) | ((face == 2) & (cat == END_HOUSE)), fpz * 0.5 + fpx, fpx)
        win = _stripes(along - 0.5, 2.6, 1.3, fp_al) * _stripes(py - 0.9, 3.0, 1.5, fpx) * (py > 0.8)
        wall_k = (0.88 + 0.16 * n_big) * (0.95 + 0.1 * n_small)
        roof_k = 0.8 + 0.25 * n_small
        # trees: leaf clumps; the distant tree line: the same noise at tree scale
        far = cat == BACK_VEG
        clump = _value_noise(jnp.where(far, px * 0.2 + pz * 0.2, px * 2.5 + pz * 1.3), py * jnp.where(far, 0.8, 2.5),
                             seed ^ jnp.uint32(77))  # fmt: skip
        leaf_k = 0.45 + 0.9 * clump * (0.7 + 0.6 * n_small)
        bveg_k = 0.6 + 0.8 * clump
        bbld_k = (0.7 + 0.5 * n_big) * (0.8 + 0.3 * n_small)
        is_house = (cat == HOUSE) | (cat == END_HOUSE)
        conds = [cat == ROAD, cat == SIDEWALK, cat == TERRAIN, is_house, (cat == CROWN), far, cat == BACK_BUILDING]
        return _keep({
            "k": _choose(conds, [road_k, side_k, terr_k, jnp.where(is_roof, roof_k, wall_k), leaf_k, bveg_k,
                                 bbld_k], jnp.where(cat == KERB, 1.0 - 0.3 * wet, 1.0)),
            "m": _choose(conds[:4], [road_m, 0.0, terr_m, jnp.where(is_roof, 0.0, win)], 0.0),
            "gloss": _choose([cat == ROAD, is_house, cat == CAR],
                             [road_gloss, jnp.where(is_roof, 0.0, 0.45 * win),
                              _choose([(code & 15) == i for i in range(len(CAR_GLOSS))],
                                      [float(v) for v in CAR_GLOSS], 0.0)], 0.0),
        }, ones)  # fmt: skip

    def _albedo(self, sc, g, cat, code, fields, hs, en, tr, car):
        """Planar linear albedo (3 channels) from the category, its code and the texture fields."""
        k, m = fields["k"], fields["m"]
        is_house, is_end = cat == HOUSE, cat == END_HOUSE
        face, cand = code & 3, code >> 2
        is_roof = face == 3
        mat = code & 15
        leaf_t = jnp.clip(self._pick(code, [c["autumn"] for c in tr["cols"]]) * 2.0 - 1.0, 0.0, 1.0)
        out = []
        for ch in range(3):
            house = jnp.where(is_roof, self._pick(cand, [c[ch] for c in hs["roof"]]),
                              self._pick(cand, [c[ch] for c in hs["wall"]]))  # fmt: skip
            end = jnp.where(is_roof, self._pick(cand, [c[ch] for c in en["roof"]]),
                            self._pick(cand, [c[ch] for c in en["wall"]]))  # fmt: skip
            paint = ((car["paint"] >> (8 * ch)) & 255).astype(jnp.float32) * (1.0 / 255.0)
            car_a = _choose([mat == i for i in range(1, len(CAR_MATERIALS))],
                            [float(v) for v in CAR_MATERIALS[1:, ch]], paint * paint)  # fmt: skip
            leaf = LEAF_A[ch] + (LEAF_AUTUMN_A[ch] - LEAF_A[ch]) * leaf_t
            base = _choose(
                [cat == ROAD, cat == SIDEWALK, cat == KERB, cat == TERRAIN, is_house, is_end, cat == TRUNK,
                 cat == CROWN, cat == POLE, cat == BACK_VEG, cat == BACK_BUILDING],
                [ASPHALT[ch], SIDEWALK_A[ch], KERB_A[ch], GRASS_A[ch], house, end, TRUNK_A[ch], leaf, POLE_A[ch],
                 BACK_VEG_A[ch], BACK_BLD_A[ch]],
                0.0,
            )  # fmt: skip
            over = _choose([cat == ROAD, cat == TERRAIN], [MARKING[ch], SOIL_A[ch]], GLASS_A[ch])
            bk = base * k
            out.append(jnp.where(cat == CAR, car_a, bk + (over - bk) * m))
        return out

    @staticmethod
    def _pick(j, tables):
        """Per pixel, tables[j[pixel]] (tables: per-candidate per-column arrays [W])."""
        out = tables[-1]
        for i in range(len(tables) - 2, -1, -1):
            out = jnp.where(j == i, tables[i], out)
        return out

    def _ndl(self, g, cat, code, t, acol, bcol, tr, car):
        """(sun . normal clipped at 0, normal's y) per pixel."""
        sun = g["sun"]
        sgn = jnp.where(acol > 0, 1.0, -1.0)
        s_r = L.HOUSE_ROOF_HEIGHT / (L.HOUSE_DEPTH / 2)
        ir = 1.0 / math.sqrt(1.0 + s_r * s_r)
        face = code & 3
        # houses beside the road face it (-sgn x), their side walls -z, roofs slope towards the road;
        # houses across the end face -z, their side walls -sgn x, roofs slope towards the camera
        side_h = cat == HOUSE
        wall_x = (side_h & (face == 1)) | (~side_h & (face == 2))
        roof_n = jnp.where(side_h, (-sgn * sun[0] * s_r + sun[1]) * ir, (sun[1] - s_r * sun[2]) * ir)
        house = jnp.where(face == 3, roof_n, jnp.where(wall_x, -sgn * sun[0], -sun[2]))
        # tree crowns: the ellipsoid's normal at the hit of the chosen candidate; trunks face the road
        cols = tr["cols"]
        pick = lambda name: self._pick(code, [c[name] for c in cols])
        nx = sgn * (pick("ox") + t * pick("dx"))
        nyt = (pick("oy") + t * bcol * pick("inv_ry")) * (1.0 / 1.15)
        nz = pick("oz") + t * pick("dz")
        inv_n = jax.lax.rsqrt(jnp.maximum(nx * nx + nyt * nyt + nz * nz, 1e-8))
        crown = (nx * sun[0] + nyt * sun[1] + nz * sun[2]) * inv_n
        across = -0.6 * sgn * sun[0] - 0.8 * sun[2]  # kerbs, poles, trunks, the backdrop
        is_house = side_h | (cat == END_HOUSE)
        ndl = _choose([cat == CAR, cat <= TERRAIN, is_house, cat == CROWN],
                      [car["ndl"], jnp.where(cat == KERB, across, sun[1]), house, crown], across)  # fmt: skip
        ny = _choose([cat == CAR, cat <= TERRAIN, is_house, cat == CROWN],
                     [car["ny"], jnp.where(cat == KERB, 0.0, 1.0), jnp.where(face == 3, ir, 0.0), nyt * inv_n],
                     0.0)  # fmt: skip
        return jnp.maximum(ndl, 0.0), ny

    # ----- sun shadows of houses and trees ------------------------------------------------------
    def _sun_shadow(self, sc, g, px, py, pz):
        """1 where the sun reaches the point, 0 in the shadow of a house, a tree crown or the end row."""
        sun = g["sun"]
        sgs = jnp.where(sun[0] > 0, 1.0, -1.0)
        side = (sun[0] > 0).astype(jnp.int32)
        inv_sx = 1.0 / jnp.maximum(jnp.abs(sun[0]), 1e-4)
        bl = L.BLOCK_LENGTH
        # lookup tables per block of the sun's side: absent objects get impossible values
        h_tab = jnp.where(sc["house_present"][:, side], sc["house_height"][:, side] + 0.5 * L.HOUSE_ROOF_HEIGHT, -1.0)
        # the trees' table is gathered as rows: one gather instead of three
        tree_tab = jnp.stack(
            [
                sc["tree_z"][:, side],
                sc["tree_height"][:, side],
                jnp.where(sc["tree_present"][:, side], sc["tree_radius"][:, side] ** 2, -1.0),
            ],
            -1,
        )
        he_tab = jnp.where(sc["end_present"], sc["end_height"] + 0.5 * L.HOUSE_ROOF_HEIGHT, -1.0)
        ze = g["zi"] + _onehot_rows(g["typ"], np.asarray(L.END_ROW_Z, np.float32)[:, None])[0]
        h_tab = _keep(h_tab, g["ones_b"])
        tree_tab = _keep_self(tree_tab) if self.materialize else tree_tab
        # houses on the sun's side: follow the sun ray to their front plane
        s = (L.HOUSE_X0 - sgs * px) * inv_sx
        zc = pz + s * sun[2]
        yc = py + s * sun[1]
        k = jnp.clip(jnp.floor(zc * (1.0 / bl)).astype(jnp.int32), -1, L.MAX_BLOCKS)
        h = jnp.where((k >= 0) & (k < L.MAX_BLOCKS), h_tab[jnp.clip(k, 0, L.MAX_BLOCKS - 1)], -1.0)
        # the narrow gaps between neighbouring houses are ignored: they would stripe the street with
        # thin shafts of sun
        lit = ~((s > 0.02) & (yc < h))
        # tree crowns on the sun's side, dappled
        st = (L.TREE_X - sgs * px) * inv_sx
        zt = pz + st * sun[2]
        yt = py + st * sun[1]
        kt = jnp.clip(jnp.floor(zt * (1.0 / bl)).astype(jnp.int32), 0, L.MAX_BLOCKS - 1)
        row = tree_tab[kt]  # [H, W, 3]
        dz = zt - row[..., 0]
        dy = (yt - row[..., 1]) * (1.0 / 1.15)
        dapple = _hash(jnp.floor(zt * 2.0).astype(jnp.int32), jnp.floor(yt * 2.0).astype(jnp.int32), g["seed"])
        lit = lit & ~((st > 0.02) & (dz * dz + dy * dy < row[..., 2] * (0.55 + 0.6 * dapple)))
        # the row across the end of the road, when the sun is ahead
        se = (ze - pz) / jnp.maximum(sun[2], 1e-4)
        xe = px + se * sun[0]
        ye = py + se * sun[1]
        j = jnp.floor(xe * (1.0 / L.END_HOUSE_WIDTH) + 0.5).astype(jnp.int32) + L.END_HOUSE_COUNT // 2
        jc = jnp.clip(j, 0, L.END_HOUSE_COUNT - 1)
        he = jnp.where(j == jc, he_tab[jc], -1.0)
        lit = lit & ~((sun[2] > 0.02) & (se > 0.02) & (ye < he))
        return lit.astype(jnp.float32)

    # ----- sky --------------------------------------------------------------------------
    def _sky(self, w, g, a, b):
        """Planar linear RGB of the sky along slopes a [1, W], b [H, 1]: a gradient, clouds
        (separable noise: one 1-D noise per column times one per row, cheap) and the sun's glow."""
        sun, seed = g["sun"], g["seed"]
        inv_len = jax.lax.rsqrt(1.0 + a * a + b * b)
        tz = jnp.clip(b * inv_len * 2.2, 0.0, 1.0)
        glow = w["sun"] * 0.4 * jnp.clip((a * sun[0] + b * sun[1] + sun[2]) * inv_len, 0.0, 1.0) ** 24
        ca = _value_noise(a * 5.0, jnp.zeros_like(a), seed) + 0.5 * _value_noise(a * 13.0, jnp.ones_like(a), seed)
        cb = _value_noise(b * 9.0, jnp.full_like(b, 2.0), seed) + 0.5 * _value_noise(b * 23.0, jnp.full_like(b, 3.0),
                                                                                      seed)  # fmt: skip
        # computed per column and per row: keep them so that no pixel recomputes them
        ca = _keep(ca, g["ones_w"][None, :])
        cb = _keep(cb, b * 0.0 + 1.0)
        cl = (ca * cb) * (1.0 / 2.25)
        cover = jnp.clip((cl - 0.5 * (1.0 - w["clouds"])) * 3.0, 0.0, 1.0) * 0.8 * (w["clouds"] > 0)
        kept = _keep({"tz": tz, "cover": cover, "glow": glow}, g["ones"])
        out = []
        for ch in "rgb":
            hor, zen = w["skyh_" + ch], w["skyz_" + ch]
            col = hor + (zen - hor) * kept["tz"]
            out.append(col + (0.95 * hor - col) * kept["cover"] + kept["glow"])
        return tuple(out)

    # ----- rendering parameters: field of view, blur, sensor ---------------------------------------
    def _zoom(self, fov_deg, rgb, cat, code, ones):
        """A horizontal field of view ``fov_deg`` <= KITTI's as a digital zoom: the render (KITTI's focal
        length f) magnified by s = tan(fov_kitti / 2) / tan(fov / 2) >= 1 about the principal point
        (cx, cy), i.e. focal s f with the same pitch (the horizon v_h moves to cy + s (v_h - cy)).
        Colours are bilinear, categories and codes (hence labels, instances, counts) nearest. The
        source coordinate of pixel i is i + (i + 0.5 - c) (1 / s - 1), so s = 1 reads every pixel
        itself with weight exactly 1: today's image, bit for bit. Returns (rgb, cat, code, s)."""
        H, W = self.height, self.width
        fov0 = jnp.float32(S.KITTI_HFOV_DEG)
        fov = jnp.clip(fov_deg.astype(jnp.float32), S.MIN_HFOV_DEG, fov0)
        ratio = jnp.tan(jnp.deg2rad(fov0) * 0.5) / jnp.tan(jnp.deg2rad(fov) * 0.5)
        k = jnp.where(fov >= fov0, 0.0, 1.0 / ratio - 1.0)  # 1 / s - 1, exactly 0 at KITTI's FOV

        def axis(n, c):  # source rows (columns) i0, i0 + 1 and weights: 3 bilinear, 2 nearest (0 or 1)
            i = jnp.arange(n, dtype=jnp.float32)
            src = jnp.clip(i + (i + 0.5 - c) * k, 0.0, n - 1.0)
            i0 = jnp.floor(src)
            frac = src - i0
            # Through a dot (x @ I is exact): XLA keeps dots out of loop fusions, so these are computed once,
            # not for every element gathered (the division of _keep does not stop that here).
            t = jnp.stack([i0, jnp.minimum(i0 + 1.0, n - 1.0), frac, jnp.where(frac >= 0.5, 1.0, 0.0)], -1)
            t = t @ jnp.eye(4, dtype=jnp.float32)
            return t[:, 0].astype(jnp.int32), t[:, 1].astype(jnp.int32), t[:, [2, 2, 2, 3, 3]]

        r0, r1, wr = axis(H, self.cy)
        c0, c1, wc = axis(W, self.cx)
        # The five planes pixel-major ([H, W, 5]; ids are exact in float32): XLA:CPU gathers element by element,
        # so a gather of 5-vectors costs about what one of scalars does. Rows first (whole rows), then columns;
        # a weight of 0 or 1 (exact for integers) is a nearest-neighbour pick.
        x = jnp.stack([*_keep(list(rgb), ones), cat.astype(jnp.float32), code.astype(jnp.float32)], -1)
        a, b = x[r0], x[r1]
        x = a + (b - a) * wr[:, None, :]
        a, b = x[:, c0], x[:, c1]
        x = a + (b - a) * wc[None, :, :]
        # ... and materialised, or XLA recomputes the gathers inside every consumer of every plane
        x = _keep([x[..., i] for i in range(5)], ones)
        return x[:3], x[3].astype(jnp.int32), x[4].astype(jnp.int32), 1.0 / (1.0 + k)

    def _blur(self, sigma_px, rgb, ones):
        """Separable Gaussian blur of the linear planes, sigma = ``sigma_px`` pixels at 96 rows (scaled with
        the image height; edges replicated). The static radius covers scene.MAX_BLUR_PX; at sigma 0 the
        weights are exactly (0, ..., 1, ..., 0): today's image, bit for bit."""
        H = self.height
        scale = H / L.REFERENCE_SIZE[0]
        radius = max(1, math.ceil(3.0 * S.MAX_BLUR_PX * scale))
        sigma = jnp.maximum(sigma_px.astype(jnp.float32) * scale, 1e-3)
        taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
        wts = jnp.exp(-0.5 * jnp.square(taps / sigma))  # exp(-5e5) = 0 at sigma 0
        wts = wts / jnp.sum(wts)

        def conv(x, ax):
            n = x.shape[ax]
            pad = [(0, 0), (0, 0)]
            pad[ax] = (radius, radius)
            xp = jnp.pad(x, pad, mode="edge")
            out = None
            for j in range(2 * radius + 1):
                part = jax.lax.slice_in_dim(xp, j, j + n, axis=ax) * wts[j]
                out = part if out is None else out + part
            return out

        # each pass reads every pixel 2 radius + 1 times: materialise its input
        rgb = [conv(x, 0) for x in _keep(list(rgb), ones)]
        return [conv(x, 1) for x in _keep(rgb, ones)]

    def _sensor(self, sc):
        """The sensor's rendering parameters of a scene, None for the absent ones: per-channel linear gains
        (2^exposure times the colour gains) and the added noise's std in levels."""
        gains = None
        if "exposure" in sc or "color_gains" in sc:
            ev = jnp.exp2(sc["exposure"].astype(jnp.float32)) if "exposure" in sc else jnp.float32(1.0)
            cg = sc["color_gains"].astype(jnp.float32) if "color_gains" in sc else jnp.ones(3, jnp.float32)
            gains = [ev * cg[i] for i in range(3)]
        noise = sc["noise_sigma"].astype(jnp.float32) if "noise_sigma" in sc else None
        return {"gains": gains, "noise_sigma": noise}

    # ----- camera: exposure, gamma, rain streaks, noise ------------------------------------------
    def _camera(self, rgb, w, seed, ones, sensor=None):
        H, W = self.height, self.width
        v = jnp.arange(H, dtype=jnp.float32)[:, None]
        u = jnp.arange(W, dtype=jnp.float32)[None, :]
        # rain streaks: thin slanted light lines; their length scales with the image
        scale = H / 96.0
        ui = jnp.broadcast_to(u.astype(jnp.int32), (H, W))
        vi = jnp.broadcast_to(v.astype(jnp.int32), (H, W))
        phase = 7.0 * _hash(ui[:1], jnp.zeros_like(ui[:1]), seed)  # per column
        seg = jnp.floor(v / (9.0 * scale) + phase).astype(jnp.int32)
        streak = (_hash(ui, seg, seed ^ jnp.uint32(99)) < 0.045).astype(jnp.float32) * (0.16 * w["streaks"])
        du = (u + 0.5) / W - 0.5
        dv = (v + 0.5) / H - 0.5
        vig = (1.0 - 0.35 * (du * du + 0.25 * dv * dv)) * w["exposure"]
        noise = (_hash(ui, vi, seed ^ jnp.uint32(1234)) - 0.5) * 5.0
        kept = _keep({"streak": streak * ones, "vig": vig * ones, "noise": noise}, ones)
        gains = sensor["gains"] if sensor else None
        sigma = sensor["noise_sigma"] if sensor else None
        out = []
        for ch, c in enumerate(rgb):
            lin = (c + kept["streak"]) * kept["vig"]
            if gains is not None:  # exposure and white balance: linear gains (x 1.0 is exact)
                lin = lin * gains[ch]
            x = jnp.sqrt(jnp.clip(lin, 0.0, 1.0))
            nz = kept["noise"]
            if sigma is not None:  # added per-channel noise, ~N(0, sigma^2) levels (triangular, unit std)
                salt = jnp.uint32(0x5EED0 + ch)
                n = (_hash(ui, vi, seed ^ salt) + _hash(vi, ui, seed ^ (salt * jnp.uint32(7))) - 1.0) * math.sqrt(6)
                nz = nz + sigma * n
            out.append(jnp.clip(jnp.round(x * 255.0 + nz), 0.0, 255.0))
        # Planar channels first: a stack fused with its producers computes a different channel
        # in every lane of the innermost (size 3) axis, which does not vectorise. XLA does not
        # fuse an expensive producer (the _keep division) into a consumer that reads each of
        # its elements several times, such as this broadcast-and-select interleave.
        r, g, b = (c.astype(jnp.uint8)[..., None] for c in _keep(out, ones))
        lane = jax.lax.broadcasted_iota(jnp.int32, (H, W, 3), 2)
        return jnp.where(lane == 0, r, jnp.where(lane == 1, g, b))

    # ----- counts -------------------------------------------------------------------------
    def _counts(self, sc, instance, g, w):
        """int32 [5]: cars per type that the visibility rule counts (visibility.py)."""

        def scatter(inst):  # XLA:CPU runs a scatter-add fast and a 19-way compare-reduce slowly
            return jnp.bincount(inst.reshape(-1), length=L.MAX_BLOCKS + 1)[1:].astype(jnp.int32)

        def compare(inst):  # GPUs: a fused compare-and-reduce, no atomics on one hot bin
            ids = jnp.arange(1, L.MAX_BLOCKS + 1, dtype=jnp.int32)
            return jnp.sum((inst[..., None] == ids).astype(jnp.int32), axis=(0, 1))

        pix = jax.lax.platform_dependent(instance, cpu=scatter, default=compare)  # [B]
        focal, cx, v_h = self.focal, self.cx, g["v_h"]
        if "zoom" in g:  # the field of view's zoom (_zoom) magnified the projection about the principal point
            s = g["zoom"]
            focal, v_h = s * self.focal, self.cy + s * (v_h - self.cy)
        area = V.projected_box_area(jnp, sc["car_type"], sc["car_pos"], sc["car_heading"], g["o_y"], v_h, focal,
                                    cx, self.height, self.width)  # fmt: skip
        distance = jnp.hypot(sc["car_pos"][:, 0] - L.CAMERA_X, sc["car_pos"][:, 1] - L.CAMERA_Z)
        seen = V.counted(jnp, self.visibility, pix, area, distance, w["fog_d"], self.height, self.width)
        visible = seen & sc["car_present"]
        onehot = sc["car_type"][:, None] == jnp.arange(len(L.CAR_TYPES))[None, :]
        return jnp.sum((visible[:, None] & onehot).astype(jnp.int32), axis=0)
