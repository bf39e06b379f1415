"""Scene model S(rho | psi) and rendering settings P(phi | psi) of the traffic simulator.

The parameters psi (a :class:`lts_jax.params.ParamSpec`, see :func:`make_spec`)
become a *scene description*: a dict of plain arrays that fully determines the
image, so the pure-JAX renderer (``render.py``) and a host renderer (the CARLA
backend, ``simulators/carla``) draw the very same scene. Sampling is ancestral and
pure JAX (jittable, vmappable over (key, psi)).

World frame (``layout.py``): metres, x right, y up, z forward along the road;
ground y = 0; the straight road is |x| <= ROAD_WIDTH / 2 from z = 0 to the
intersection at z_I = road_length * BLOCK_LENGTH; block b spans
z in [b * BLOCK_LENGTH, (b + 1) * BLOCK_LENGTH].

Scene dict (every entry has a leading axis ``num``; B = layout.MAX_BLOCKS = 18,
E = layout.END_HOUSE_COUNT = 13; "side" 0 is left (x < 0), 1 right (x > 0)):

  Contract shared with the CARLA backend
  - ``road_length``   int32 []        blocks to the intersection, 8..18.
  - ``intersection``  int32 []        0 L (left bend), 1 T, 2 X (layout.INTERSECTIONS).
  - ``car_present``   bool [B]        one car slot per block; False for b >= road_length.
  - ``car_type``      int32 [B]       0..4, layout.CAR_TYPES (sampled for every slot).
  - ``car_lane``      int32 [B]       0 right lane heading +z, 1 oncoming lane heading -z (uniform).
  - ``car_pos``       float32 [B, 2]  world (x, z) of the car's centre on the ground:
                                      x = lane centre (+-LANE_WIDTH / 2) + U(-CAR_X_JITTER, CAR_X_JITTER),
                                      z = (b + 0.5) * BLOCK_LENGTH + U(-CAR_Z_JITTER, CAR_Z_JITTER).
                                      The jitters keep every car inside its lane and its block, so cars
                                      in lower blocks are always nearer the camera.
  - ``car_heading``   float32 [B]     radians about +y, 0 = facing +z, positive turns towards +x:
                                      0 (lane 0) or pi (lane 1) + U(-CAR_HEADING_JITTER, CAR_HEADING_JITTER).
  - ``car_color``     float32 [B, 3]  body colour, sRGB in [0, 1]: a colour of the type's palette
                                      (CAR_PALETTES) plus ``car_color_spread`` jitter.
  - ``house_present`` bool [B, 2]     a house on the lot of block b, side s; False for b >= road_length.
  - ``house_height``  float32 [B, 2]  eave height (walls), uniform in layout.HOUSE_HEIGHT_RANGE; the
                                      gable roof adds layout.HOUSE_ROOF_HEIGHT (see layout.py for extents).
  - ``weather``       int32 []        0 clear, 1 overcast, 2 rain, 3 fog (layout.WEATHERS).
  - ``camera_height`` float32 []      metres; layout.CAMERA_HEIGHT + jitter (``camera_jitter``)
                                      + the ``camera`` block's offset (rendering parameters).
  - ``camera_pitch``  float32 []      radians, positive looks DOWN; 0 + jitter (``camera_jitter``)
                                      + the ``camera`` block's offset.
  - ``sun_dir``       float32 [3]     unit vector from the scene towards the sun (``sun``).

  Rendering parameters (only with make_spec(learn_rendering=True); a renderer that finds them absent
  draws today's camera; the CARLA backend maps them as far as its API allows, simulators/carla/convert.py)
  - ``camera_fov``    float32 []      horizontal field of view, degrees: KITTI_HFOV_DEG (81.43) or narrower.
  - ``exposure``      float32 []      exposure in stops (the linear image is multiplied by 2^exposure).
  - ``color_gains``   float32 [3]     linear RGB channel gains of the white balance (1, 1, 1 neutral).
  - ``blur_sigma``    float32 []      Gaussian optical blur, sigma in pixels at 96 rows (0 none).
  - ``noise_sigma``   float32 []      added per-channel sensor noise, std in 8-bit levels (0 none).

  Extras drawn by the pure-JAX renderer (a host renderer may ignore them)
  - ``house_color``     float32 [B, 2, 3]  facade colour, sRGB.
  - ``roof_color``      float32 [B, 2, 3]  roof colour, sRGB.
  - ``tree_present``    bool [B, 2]        a tree at |x| = layout.TREE_X (probability TREE_PROB_NO_HOUSE
                                           on an empty lot, TREE_PROB_WITH_HOUSE in front of a house).
  - ``tree_z``          float32 [B, 2]     z of the trunk: (b + 0.5) * BLOCK_LENGTH + U(-1.5, 1.5).
  - ``tree_radius``     float32 [B, 2]     crown radius, layout.TREE_RADIUS_RANGE (crown 1.15x taller).
  - ``tree_height``     float32 [B, 2]     height of the crown's centre, layout.TREE_CROWN_HEIGHT_RANGE.
  - ``pole_present``    bool [B, 2]        a lamp pole at |x| = layout.POLE_X, z = b * BLOCK_LENGTH + 0.6.
  - ``end_present``     bool [E]           houses across the end of the road (layout.END_HOUSE_*),
                                           Bernoulli(house probability); never in the X's gap.
  - ``end_height``      float32 [E]        their eave heights.
  - ``end_color``       float32 [E, 3]     their facade colours.
  - ``seed``            uint32 []          texture seed (noise patterns, skyline profile), 24 bits.

Blocks at index >= road_length have no car, house, tree or pole.

Randomness: one draw of random bits per call; every scene variable has its own slot of
them, so with the same key, changing one block of psi changes only the variables drawn
from that block (e.g. forcing the weather leaves the geometry as it was). The rendering
parameters draw from a second stream (``fold_in(key, RENDERING_STREAM)``), so adding them
changes no other variable.

Rendering parameters: P(phi | psi) of the paper's G = R(S(rho), P(phi)), blocks of psi with
make_spec(learn_rendering=True), so that LTS can match the camera of a real data set. Each is a
Gaussian block over a value x in documented units; per image x = mean + spread * z (z ~ N(0, 1)),
clipped to the block's range, where spread = sqrt(max(variance - 1, 0)): the neutral variance 1
(psi = 0) gives every image the mean's setting, a learned log-variance above 0 spreads the images
(domain randomisation), and zero means render today's images bit for bit (tested).

  block          x range   setting (today's at x = 0)                               renderer
  camera.height  [-3, 3]   camera height 1.65 + 0.2 x m: 1.05 .. 2.25 m              exact (ray origin)
  camera.pitch   [-3, 3]   pitch 0.015 x rad (+-2.6 deg), positive looks down        principal-point shift
  field_of_view  [0, 3]    horizontal FOV 81.43 - 8 x deg: 81.43 .. 57.43 deg        digital zoom
  exposure       [-3, 3]   0.5 x stops: the linear image times 2^(0.5 x)             exact
  color_balance  [-3, 3]^2 temperature t: red 2^(0.1 t), blue 2^(-0.1 t);            exact (linear gains)
                           tint u: green 2^(0.1 u) (+-23% at the ends)
  blur           [0, 3]    Gaussian blur sigma 0.4 x px at 96 rows (scaled with H)    separable, linear light
  noise          [0, 3]    added noise, std 2 x levels of 255 per channel            on top of today's +-2.5

(camera_jitter's small per-image jitter, +-0.15 m and +-0.03 rad, stays on top of the camera block;
one-sided blocks have no effect below 0; the random-parameter box of these blocks' means is their
x range, of their log-variances RENDERING_LOG_VAR_BOX.) The renderer (render.py) sees a wider camera
range through static bounds (RENDERING_CAMERA_HEIGHT_BOUNDS, RENDERING_CAMERA_PITCH_BOUND), and a field
of view narrower than KITTI's as a crop of the KITTI-FOV render resampled to the image size (labels by
nearest neighbour): a narrower view is sharper in a real camera, a little softer here (at most 1.57x
magnification). :func:`rendering_settings` turns a psi into these physical values for reports.

Known camera geometry of the real data sets (lts_jax.data.real.DATASETS[...].camera), to report the
learned camera next to:
  - KITTI: camera 1.65 m above the road (Geiger, Lenz, Stiller, Urtasun, "Vision meets Robotics: The
    KITTI Dataset", IJRR 2013, the recording platform's sensor setup); focal length 721.5 px at 1242 px
    width (81.43 deg horizontal FOV) and principal point row 172.9 of 375 (KITTI's rectified colour
    camera calibration, P_rect_02). Today's camera IS this camera (layout.py), at zero pitch.
  - CamVid: a camera inside a driving car (Brostow, Fauqueur, Cipolla, "Semantic object classes in
    video", Pattern Recognition Letters 2009; Brostow et al., ECCV 2008), 30 Hz at 960x720. The
    authors calibrated its intrinsics and computed per-frame poses, but these are not in the shared
    copy: its height above the road, pitch and focal length are NOT known here. What the images show:
    the car's bonnet at the bottom of sequence 0001TP (a camera behind the windscreen, so presumably
    lower than KITTI's roof rig; not measured), and a level-camera horizon near the frame's middle
    (about row 180 of 360), which the loader's crop puts at KITTI's principal-point row. CamVid is
    mirrored by the loader (UK traffic keeps left; this simulator drives on the right).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax import params as P
from simulators.traffic import layout as L

B = L.MAX_BLOCKS
E = L.END_HOUSE_COUNT

# Car placement jitter (uniform half-widths).
CAR_X_JITTER = 0.45  # metres across the lane
CAR_Z_JITTER = 0.3  # metres along the road; with the longest car (5.2 m) every car stays in its block
CAR_HEADING_JITTER = 0.05  # radians

# Rendering blocks are Gaussians in documented units; samples are clipped to
# +-CLIP_UNITS so the renderer's static bounds (view culling) always hold.
CLIP_UNITS = 3.0
CAMERA_HEIGHT_UNIT = 0.05  # metres per unit of camera_jitter[height]
CAMERA_PITCH_UNIT = 0.01  # radians per unit of camera_jitter[pitch]
SUN_AZIMUTH_BASE, SUN_AZIMUTH_UNIT = 120.0, 50.0  # degrees; azimuth 0 = ahead (+z), 90 = right (+x)
SUN_ELEVATION_BASE, SUN_ELEVATION_UNIT = 45.0, 10.0  # degrees
SUN_ELEVATION_RANGE = (25.0, 75.0)  # clipped (bounds shadow lengths)
CAR_COLOR_UNIT = 0.05  # sRGB offset per unit of car_color_spread, per channel

# Rendering parameters of psi (make_spec(learn_rendering=True); see RENDERING_BLOCKS and the module
# docstring). Per image, a block's value in units is x = mean + spread * z, z ~ N(0, 1), clipped to the
# block's range; the spread is sqrt(max(variance - 1, 0)), so the neutral psi (variance 1) gives every
# image the mean's setting and zero means give today's camera exactly.
CAMERA_OFFSET_HEIGHT_UNIT = 0.2  # metres per unit of camera[height]: 1.65 + [-0.6, 0.6] m
CAMERA_OFFSET_PITCH_UNIT = 0.015  # radians per unit of camera[pitch] (0.86 deg), positive looks down
KITTI_HFOV_DEG = float(np.float32(np.degrees(2.0 * np.arctan(0.5 / L.KITTI_FX_OVER_WIDTH))))  # 81.43 deg
FOV_UNIT_DEG = 8.0  # degrees of horizontal field of view per unit of field_of_view: 81.43 .. 57.43 deg
EXPOSURE_UNIT_EV = 0.5  # stops (log2 of the linear exposure) per unit of exposure: [-1.5, 1.5] EV
COLOR_BALANCE_UNIT = 0.1  # log2 channel gain per unit: temperature r * 2^(+0.1 t), b * 2^(-0.1 t); tint g * 2^(0.1 u)
BLUR_UNIT_PX = 0.4  # Gaussian blur sigma per unit of blur, in pixels at 96 rows (scaled with the image height)
NOISE_UNIT = 2.0  # std of the added sensor noise per unit of noise, in 8-bit levels (per channel)
# (block, labels, range of x in units); the one-sided blocks have no effect below 0.
RENDERING_RANGES = {
    "camera": (("height", "pitch"), (-CLIP_UNITS, CLIP_UNITS)),
    "field_of_view": (("narrowing",), (0.0, CLIP_UNITS)),
    "exposure": (("ev",), (-CLIP_UNITS, CLIP_UNITS)),
    "color_balance": (("temperature", "tint"), (-CLIP_UNITS, CLIP_UNITS)),
    "blur": (("sigma",), (0.0, CLIP_UNITS)),
    "noise": (("sigma",), (0.0, CLIP_UNITS)),
}
RENDERING_BLOCKS = tuple(RENDERING_RANGES)
RENDERING_LOG_VAR_BOX = (0.0, 1.5)  # random psi: per-image spreads 0 .. 1.9 units

TREE_PROB_NO_HOUSE = 0.85
TREE_PROB_WITH_HOUSE = 0.45
POLE_PROB = 0.3

# Per-type body colour palettes (sRGB), 6 entries each, drawn uniformly. Mostly the
# greys, blacks, whites and dark blues of real traffic (KITTI's cars are dark on
# average); one or two livelier colours per type.
CAR_PALETTES = np.array(
    [
        # sedan: silver, black, dark blue, white, dark grey, dark red
        [[0.58, 0.59, 0.61], [0.06, 0.06, 0.07], [0.09, 0.12, 0.24], [0.82, 0.82, 0.82], [0.26, 0.27, 0.29],
         [0.34, 0.05, 0.06]],
        # hatchback: red, white, grey-blue, silver, black, green
        [[0.62, 0.08, 0.07], [0.84, 0.84, 0.83], [0.30, 0.40, 0.52], [0.60, 0.61, 0.62], [0.07, 0.07, 0.08],
         [0.14, 0.30, 0.18]],
        # suv: black, dark grey, silver, white, dark green, brown
        [[0.05, 0.05, 0.06], [0.20, 0.21, 0.23], [0.55, 0.56, 0.58], [0.80, 0.80, 0.79], [0.10, 0.18, 0.14],
         [0.28, 0.20, 0.13]],
        # van: mostly white, silver, cream, pale blue
        [[0.88, 0.88, 0.86], [0.90, 0.90, 0.88], [0.85, 0.86, 0.86], [0.62, 0.63, 0.64], [0.80, 0.76, 0.56],
         [0.50, 0.62, 0.74]],
        # pickup: red, dark blue, black, tan, white, orange
        [[0.52, 0.07, 0.06], [0.10, 0.14, 0.32], [0.06, 0.06, 0.06], [0.55, 0.46, 0.32], [0.82, 0.82, 0.81],
         [0.74, 0.38, 0.10]],
    ],
    np.float32,
)  # fmt: skip

# Facade and roof palettes (sRGB): plaster, cream, greys, brick, sandstone, white, brown.
HOUSE_PALETTE = np.array(
    [[0.70, 0.64, 0.55], [0.78, 0.74, 0.62], [0.52, 0.52, 0.51], [0.50, 0.29, 0.22], [0.64, 0.52, 0.39],
     [0.84, 0.83, 0.80], [0.38, 0.36, 0.34], [0.70, 0.54, 0.45]],
    np.float32,
)  # fmt: skip
ROOF_PALETTE = np.array([[0.42, 0.18, 0.13], [0.30, 0.30, 0.32], [0.50, 0.25, 0.16], [0.22, 0.22, 0.24]], np.float32)


def rendering_blocks(learn_rendering: bool | Sequence[str] | None) -> tuple[str, ...]:
    """The rendering blocks a ``learn_rendering`` option asks for, in psi order: True all of RENDERING_BLOCKS,
    False / None / () none, or the named ones (ValueError naming an unknown one)."""
    if learn_rendering is None or learn_rendering is False:
        return ()
    if learn_rendering is True:
        return RENDERING_BLOCKS
    names = [learn_rendering] if isinstance(learn_rendering, str) else list(learn_rendering)
    unknown = sorted(set(names) - set(RENDERING_BLOCKS))
    if unknown:
        raise ValueError(f"learn_rendering: unknown rendering blocks {unknown}; choose from {list(RENDERING_BLOCKS)}")
    return tuple(b for b in RENDERING_BLOCKS if b in names)


def make_spec(learn_intersection: bool = False, learn_rendering: bool | Sequence[str] = False) -> P.ParamSpec:
    """The traffic simulator's ParamSpec (blocks in psi order) and its presets.

    Blocks:
      road_length       categorical 11 ("8".."18"): blocks from the camera to the intersection.
      intersection      categorical 3 (L, T, X); frozen unless ``learn_intersection``.
      car_presence      bernoulli 1: each block's car slot is filled with this probability.
      car_type          categorical 5 (layout.CAR_TYPES).
      house_presence    bernoulli 1: each lot (block, side) has a house with this probability.
      weather           categorical 4 (layout.WEATHERS).
      camera_jitter     gaussian 2 (height, pitch), frozen; per image, in units of CAMERA_HEIGHT_UNIT
                        metres and CAMERA_PITCH_UNIT radians, clipped to +-CLIP_UNITS.
      sun               gaussian 2 (azimuth, elevation), frozen; per image, azimuth =
                        SUN_AZIMUTH_BASE + SUN_AZIMUTH_UNIT * x degrees, elevation = SUN_ELEVATION_BASE +
                        SUN_ELEVATION_UNIT * x degrees clipped to SUN_ELEVATION_RANGE.
      car_color_spread  gaussian 1, frozen; per car and channel, an sRGB offset of CAR_COLOR_UNIT * x.
    With ``learn_rendering``, the rendering parameters follow, learnable (the module docstring,
    "Rendering parameters", gives units, ranges and the per-image spread):
      camera            gaussian 2 (height, pitch): offsets of the camera's height and pitch.
      field_of_view     gaussian 1 (narrowing): horizontal field of view below KITTI's 81.43 deg.
      exposure          gaussian 1 (ev): exposure in stops.
      color_balance     gaussian 2 (temperature, tint): white balance as channel gains.
      blur              gaussian 1 (sigma): Gaussian optical blur.
      noise             gaussian 1 (sigma): added per-channel sensor noise.
    ``learn_rendering`` may also name a subset (e.g. ``("camera", "exposure", "color_balance")``): the
    others stay at today's values and the renderer skips their stages (the digital zoom of
    ``field_of_view`` is the costly one). Without it (the default) psi has no rendering blocks: today's
    camera, today's psi layout (stored runs and checkpoints stay valid) and bit-identical images.
    The neutral psi (zeros) is a sensible default: uniform categoricals, p = 0.5, unit-variance jitter
    on the frozen rendering blocks, and today's camera (zero offsets, no spread) on the rendering
    parameters.
    """
    blocks = [
        P.categorical("road_length", labels=[str(n) for n in range(L.MIN_BLOCKS, L.MAX_BLOCKS + 1)]),
        P.categorical("intersection", labels=list(L.INTERSECTIONS), frozen=not learn_intersection),
        P.bernoulli("car_presence"),
        P.categorical("car_type", labels=list(L.CAR_TYPES)),
        P.bernoulli("house_presence"),
        P.categorical("weather", labels=list(L.WEATHERS)),
        P.gaussian("camera_jitter", 2, labels=["height", "pitch"], frozen=True),
        P.gaussian("sun", 2, labels=["azimuth", "elevation"], frozen=True),
        P.gaussian("car_color_spread", 1, frozen=True),
    ]
    for name in rendering_blocks(learn_rendering):
        labels, (lo, hi) = RENDERING_RANGES[name]
        blocks.append(P.gaussian(name, len(labels), labels=list(labels), box=(lo, hi),
                                 log_var_box=RENDERING_LOG_VAR_BOX))  # fmt: skip
    return P.ParamSpec(blocks, PRESETS)


# Named points of psi (natural values; omitted blocks are neutral: see make_spec).
PRESETS = {
    # Everything neutral: uniform lengths, intersections, car types, weathers; p = 0.5.
    "default": {},
    # psi_real of the paper's sections 4.3-4.4 (WORKSPACE.md, "The method"): moderately crowded, unbalanced car types,
    # random (uniform) intersections and road lengths, houses on the side, mostly fair weather.
    "val": {
        "road_length": [1.0] * L.NUM_LENGTHS,
        "intersection": [1.0, 1.0, 1.0],
        "car_presence": 0.6,
        "car_type": {"sedan": 0.40, "hatchback": 0.25, "suv": 0.15, "van": 0.12, "pickup": 0.08},
        "house_presence": 0.8,
        "weather": {"clear": 0.40, "overcast": 0.30, "rain": 0.15, "fog": 0.15},
    },
    # A deliberately poor start: the shortest road, almost no cars, one car type
    # (pickup), one weather (fog), few houses.
    "adversarial": {
        "road_length": {"8": 1.0},
        "car_presence": 0.05,
        "car_type": {"pickup": 1.0},
        "house_presence": 0.1,
        "weather": {"fog": 1.0},
    },
}


class _Draws:
    """All of a batch's random numbers from ONE draw of bits (one threefry call keeps the
    compiled sampler small), handed out as open-interval uniforms per named request."""

    def __init__(self, key: jax.Array, num: int, shapes: dict[str, tuple[int, ...]]):
        self.shapes = shapes
        sizes = [int(np.prod(sh)) for sh in shapes.values()]
        self.offsets = dict(zip(shapes, np.cumsum([0] + sizes[:-1]).tolist()))
        self.sizes = dict(zip(shapes, sizes))
        self.num = num
        self.bits = jax.random.bits(key, (num, int(sum(sizes))), jnp.uint32)

    def raw(self, name: str) -> jax.Array:
        o, n = self.offsets[name], self.sizes[name]
        return self.bits[:, o : o + n].reshape((self.num, *self.shapes[name]))

    def u(self, name: str) -> jax.Array:
        """Uniform in (0, 1), never 0 or 1 (24 random bits, centred)."""
        return ((self.raw(name) >> 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))


def _categorical(u, logits):
    # Gumbel-max: u [..., m] uniforms, logits [m].
    return jnp.argmax(logits - jnp.log(-jnp.log(u)), axis=-1).astype(jnp.int32)


def _bernoulli(u, logit):
    # Logistic noise below the logit: a logit of -30 never fires and +30 always does
    # (24-bit uniforms give logistic samples within +-17).
    return jnp.log(u) - jnp.log1p(-u) < logit


def _uniform(u, lo, hi):
    return lo + (hi - lo) * u


def _randint(u, m):
    return jnp.minimum((u * m).astype(jnp.int32), m - 1)


def _normal(u):
    return jax.scipy.special.ndtri(u)


def sample_scenes(spec: P.ParamSpec, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
    """Samples ``num`` scene descriptions (see the module docstring) from psi.

    Args:
      spec: the ParamSpec of :func:`make_spec` (static).
      key: a typed PRNG key.
      psi: float32 [spec.dim]. Jittable: values are not checked here (see
        ``TrafficSimulator.check_psi`` for the host-side check).
      num: number of scenes (static).

    Returns:
      the scene dict, every entry with leading axis ``num``.
    """
    psi = jnp.asarray(psi, jnp.float32)
    raw = spec.split(psi)
    n = num
    d = _Draws(key, n, {
        "road_length": (L.NUM_LENGTHS,), "intersection": (3,), "weather": (len(L.WEATHERS),),
        "car_present": (B,), "car_type": (B, len(L.CAR_TYPES)), "car_lane": (B,), "car_x": (B,), "car_z": (B,),
        "car_heading": (B,), "car_palette": (B,), "car_color": (B, 3),
        "house_present": (B, 2), "house_height": (B, 2), "house_color": (B, 2), "house_shade": (B, 2),
        "roof_color": (B, 2), "tree_present": (B, 2), "tree_z": (B, 2), "tree_radius": (B, 2),
        "tree_height": (B, 2), "pole_present": (B, 2), "end_present": (E,), "end_height": (E,), "end_color": (E,),
        "camera": (2,), "sun": (2,), "seed": (),
    })  # fmt: skip

    road_length = _categorical(d.u("road_length"), raw["road_length"]) + L.MIN_BLOCKS
    intersection = _categorical(d.u("intersection"), raw["intersection"])
    weather = _categorical(d.u("weather"), raw["weather"])
    in_road = jnp.arange(B)[None, :] < road_length[:, None]  # [n, B]

    # Cars.
    car_present = _bernoulli(d.u("car_present"), raw["car_presence"][0]) & in_road
    car_type = _categorical(d.u("car_type"), raw["car_type"])
    car_lane = (d.u("car_lane") < 0.5).astype(jnp.int32)
    lane_x = jnp.where(car_lane == 0, L.LANE_WIDTH / 2, -L.LANE_WIDTH / 2)
    car_x = lane_x + _uniform(d.u("car_x"), -CAR_X_JITTER, CAR_X_JITTER)
    car_z = (jnp.arange(B) + 0.5) * L.BLOCK_LENGTH + _uniform(d.u("car_z"), -CAR_Z_JITTER, CAR_Z_JITTER)
    car_pos = jnp.stack([car_x, car_z], axis=-1)
    car_heading = jnp.where(car_lane == 0, 0.0, jnp.pi) + _uniform(
        d.u("car_heading"), -CAR_HEADING_JITTER, CAR_HEADING_JITTER
    )
    pal_idx = _randint(d.u("car_palette"), CAR_PALETTES.shape[1])
    base_color = jnp.asarray(CAR_PALETTES)[car_type, pal_idx]  # [n, B, 3]
    spread = raw["car_color_spread"]
    cz = spread[0] + jnp.sqrt(jnp.exp(spread[1])) * _normal(d.u("car_color"))
    car_color = jnp.clip(base_color + CAR_COLOR_UNIT * jnp.clip(cz, -CLIP_UNITS, CLIP_UNITS), 0.0, 1.0)

    # Houses on the lots beside the straight road.
    house_logit = raw["house_presence"][0]
    house_present = _bernoulli(d.u("house_present"), house_logit) & in_road[:, :, None]
    house_height = _uniform(d.u("house_height"), *L.HOUSE_HEIGHT_RANGE)
    hp = jnp.asarray(HOUSE_PALETTE)
    house_color = hp[_randint(d.u("house_color"), hp.shape[0])]
    house_color = jnp.clip(house_color * _uniform(d.u("house_shade"), 0.9, 1.08)[..., None], 0.0, 1.0)
    rp = jnp.asarray(ROOF_PALETTE)
    roof_color = rp[_randint(d.u("roof_color"), rp.shape[0])]

    # Trees and poles.
    tree_p = jnp.where(house_present, TREE_PROB_WITH_HOUSE, TREE_PROB_NO_HOUSE)
    tree_present = (d.u("tree_present") < tree_p) & in_road[:, :, None]
    tree_z = (jnp.arange(B)[None, :, None] + 0.5) * L.BLOCK_LENGTH + _uniform(d.u("tree_z"), -1.5, 1.5)
    tree_radius = _uniform(d.u("tree_radius"), *L.TREE_RADIUS_RANGE)
    tree_height = _uniform(d.u("tree_height"), *L.TREE_CROWN_HEIGHT_RANGE)
    pole_present = (d.u("pole_present") < POLE_PROB) & in_road[:, :, None]

    # The row of houses across the end of the road.
    centres = L.END_HOUSE_WIDTH * (jnp.arange(E) - E // 2)
    gap = (intersection[:, None] == 2) & (jnp.abs(centres)[None, :] <= L.END_HOUSE_WIDTH + 1e-3)
    end_present = _bernoulli(d.u("end_present"), house_logit) & ~gap
    end_height = _uniform(d.u("end_height"), *L.HOUSE_HEIGHT_RANGE)
    end_color = hp[_randint(d.u("end_color"), hp.shape[0])]

    # Rendering settings.
    cam = raw["camera_jitter"]
    cam_units = jnp.clip(cam[:2] + jnp.sqrt(jnp.exp(cam[2:])) * _normal(d.u("camera")), -CLIP_UNITS, CLIP_UNITS)
    camera_height = L.CAMERA_HEIGHT + CAMERA_HEIGHT_UNIT * cam_units[:, 0]
    camera_pitch = CAMERA_PITCH_UNIT * cam_units[:, 1]
    sun = raw["sun"]
    sun_units = jnp.clip(sun[:2] + jnp.sqrt(jnp.exp(sun[2:])) * _normal(d.u("sun")), -CLIP_UNITS, CLIP_UNITS)
    az = jnp.deg2rad(SUN_AZIMUTH_BASE + SUN_AZIMUTH_UNIT * sun_units[:, 0])
    el = jnp.deg2rad(jnp.clip(SUN_ELEVATION_BASE + SUN_ELEVATION_UNIT * sun_units[:, 1], *SUN_ELEVATION_RANGE))
    sun_dir = jnp.stack([jnp.cos(el) * jnp.sin(az), jnp.sin(el), jnp.cos(el) * jnp.cos(az)], axis=-1)
    seed = d.raw("seed") >> 8  # 24 bits: exact through float32 (the renderer keeps arrays via float32)

    extra = {}
    present = [b for b in RENDERING_BLOCKS if b in spec.block_names]
    if present:
        # Their own random bits (a key folded from this one), so that every other variable is drawn as
        # without them; zero offsets then give today's scenes exactly (x + 0.0 == x). Only the blocks
        # of the spec add fields: a renderer skips the stages of absent ones.
        x = _rendering_units(spec, raw, jax.random.fold_in(key, RENDERING_STREAM), n, present)
        if "camera" in x:
            camera_height = camera_height + CAMERA_OFFSET_HEIGHT_UNIT * x["camera"][:, 0]
            camera_pitch = camera_pitch + CAMERA_OFFSET_PITCH_UNIT * x["camera"][:, 1]
        if "field_of_view" in x:
            extra["camera_fov"] = jnp.float32(KITTI_HFOV_DEG) - FOV_UNIT_DEG * x["field_of_view"][:, 0]
        if "exposure" in x:
            extra["exposure"] = EXPOSURE_UNIT_EV * x["exposure"][:, 0]
        if "color_balance" in x:
            t, tint = x["color_balance"][:, 0], x["color_balance"][:, 1]
            extra["color_gains"] = jnp.exp2(COLOR_BALANCE_UNIT * jnp.stack([t, tint, -t], axis=-1))
        if "blur" in x:
            extra["blur_sigma"] = BLUR_UNIT_PX * x["blur"][:, 0]
        if "noise" in x:
            extra["noise_sigma"] = NOISE_UNIT * x["noise"][:, 0]
        extra = {k: v.astype(jnp.float32) for k, v in extra.items()}

    return extra | {
        "road_length": road_length.astype(jnp.int32),
        "intersection": intersection,
        "car_present": car_present,
        "car_type": car_type,
        "car_lane": car_lane,
        "car_pos": car_pos.astype(jnp.float32),
        "car_heading": car_heading.astype(jnp.float32),
        "car_color": car_color.astype(jnp.float32),
        "house_present": house_present,
        "house_height": house_height,
        "weather": weather,
        "camera_height": camera_height.astype(jnp.float32),
        "camera_pitch": camera_pitch.astype(jnp.float32),
        "sun_dir": sun_dir.astype(jnp.float32),
        "house_color": house_color.astype(jnp.float32),
        "roof_color": roof_color.astype(jnp.float32),
        "tree_present": tree_present,
        "tree_z": tree_z.astype(jnp.float32),
        "tree_radius": tree_radius,
        "tree_height": tree_height,
        "pole_present": pole_present,
        "end_present": end_present,
        "end_height": end_height,
        "end_color": end_color.astype(jnp.float32),
        "seed": seed,
    }


RENDERING_STREAM = 1  # fold_in(key, RENDERING_STREAM): the rendering parameters' random bits


def _rendering_units(spec: P.ParamSpec, raw: dict, key: jax.Array, num: int, names) -> dict[str, jax.Array]:
    """Per image, each named rendering block's value in units: clip(mean + spread * z, range), [num, size]."""
    d = _Draws(key, num, {name: (spec[name].size,) for name in names})
    out = {}
    for name in names:
        labels, (lo, hi) = RENDERING_RANGES[name]
        k = len(labels)
        mean, log_var = raw[name][:k], raw[name][k:]
        spread = jnp.sqrt(jnp.maximum(jnp.exp(log_var) - 1.0, 0.0))
        out[name] = jnp.clip(mean + spread * _normal(d.u(name)), lo, hi)
    return out


def rendering_settings(spec: P.ParamSpec, psi) -> dict[str, dict[str, float]]:
    """The rendering parameters of one concrete psi [spec.dim] in physical units, for reports (host-side).

    Returns ``{quantity: {"value": the setting at the blocks' means, "spread": per-image std in the
    same unit (0: every image alike; before the range's clipping)}}`` for camera_height_m,
    camera_pitch_deg (positive: down), hfov_deg, fx_over_width, exposure_ev, gain_r, gain_g, gain_b
    (linear), blur_px_at_96_rows and noise_levels (today's values for blocks the spec lacks: spread 0);
    empty when ``spec`` has no rendering blocks. The frozen
    ``camera_jitter`` adds its own per-image spread (0.05 m and 0.01 rad at the neutral psi) on top.
    Compare with the real data sets' cameras: ``lts_jax.data.real.DATASETS[name].camera``.
    """
    if not any(b in spec.block_names for b in RENDERING_BLOCKS):
        return {}
    arr = np.asarray(spec.validate(psi), np.float64)
    if arr.ndim != 1:
        raise ValueError(f"rendering_settings takes one psi of shape [{spec.dim}], got {list(arr.shape)}")
    mean, spread = {}, {}
    for name, (labels, (lo, hi)) in RENDERING_RANGES.items():
        k = len(labels)
        raw = arr[spec.slices[name]] if name in spec.block_names else np.zeros(2 * k)
        for i, lab in enumerate(labels):
            mean[f"{name}.{lab}"] = float(np.clip(raw[i], lo, hi))
            spread[f"{name}.{lab}"] = float(np.sqrt(max(np.exp(raw[k + i]) - 1.0, 0.0)))

    def entry(key, fn, unit):  # fn: units -> physical (monotone); spread scaled by |unit|
        return {"value": float(fn(mean[key])), "spread": float(abs(unit) * spread[key])}

    hfov = KITTI_HFOV_DEG - FOV_UNIT_DEG * mean["field_of_view.narrowing"]
    cb = COLOR_BALANCE_UNIT * np.log(2.0)  # d gain / d unit at gain 1
    return {
        "camera_height_m": entry("camera.height", lambda u: L.CAMERA_HEIGHT + CAMERA_OFFSET_HEIGHT_UNIT * u,
                                 CAMERA_OFFSET_HEIGHT_UNIT),
        "camera_pitch_deg": entry("camera.pitch", lambda u: np.degrees(CAMERA_OFFSET_PITCH_UNIT * u),
                                  np.degrees(CAMERA_OFFSET_PITCH_UNIT)),
        "hfov_deg": entry("field_of_view.narrowing", lambda u: KITTI_HFOV_DEG - FOV_UNIT_DEG * u, FOV_UNIT_DEG),
        "fx_over_width": {"value": float(0.5 / np.tan(np.radians(hfov) / 2.0)), "spread": float("nan")},
        "exposure_ev": entry("exposure.ev", lambda u: EXPOSURE_UNIT_EV * u, EXPOSURE_UNIT_EV),
        "gain_r": entry("color_balance.temperature", lambda u: 2.0 ** (COLOR_BALANCE_UNIT * u), cb),
        "gain_g": entry("color_balance.tint", lambda u: 2.0 ** (COLOR_BALANCE_UNIT * u), cb),
        "gain_b": entry("color_balance.temperature", lambda u: 2.0 ** (-COLOR_BALANCE_UNIT * u), cb),
        "blur_px_at_96_rows": entry("blur.sigma", lambda u: BLUR_UNIT_PX * u, BLUR_UNIT_PX),
        "noise_levels": entry("noise.sigma", lambda u: NOISE_UNIT * u, NOISE_UNIT),
    }  # fmt: skip


# Static bounds the renderer's view culling relies on (the sampler guarantees them).
CAMERA_HEIGHT_BOUNDS = (
    L.CAMERA_HEIGHT - CLIP_UNITS * CAMERA_HEIGHT_UNIT,
    L.CAMERA_HEIGHT + CLIP_UNITS * CAMERA_HEIGHT_UNIT,
)
CAMERA_PITCH_BOUND = CLIP_UNITS * CAMERA_PITCH_UNIT
# ... and with the rendering parameters (make_spec(learn_rendering=True)): the camera block's offsets on top.
RENDERING_CAMERA_HEIGHT_BOUNDS = (
    CAMERA_HEIGHT_BOUNDS[0] - CLIP_UNITS * CAMERA_OFFSET_HEIGHT_UNIT,
    CAMERA_HEIGHT_BOUNDS[1] + CLIP_UNITS * CAMERA_OFFSET_HEIGHT_UNIT,
)  # 0.90 .. 2.40 m
RENDERING_CAMERA_PITCH_BOUND = CAMERA_PITCH_BOUND + CLIP_UNITS * CAMERA_OFFSET_PITCH_UNIT  # 0.075 rad (4.3 deg)
MIN_HFOV_DEG = KITTI_HFOV_DEG - CLIP_UNITS * FOV_UNIT_DEG  # 57.43 deg: at most 1.57x KITTI's focal length
MAX_BLUR_PX = CLIP_UNITS * BLUR_UNIT_PX  # at 96 rows
