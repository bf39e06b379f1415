"""Scene description -> CARLA placements, as plain numbers (no server needed).

Frames. The traffic layout frame (``simulators/traffic/layout.py``) has x to the
right, y up, z forward along the road, in metres. CARLA (Unreal Engine) has x
forward, y right, z up, in metres, and is left-handed, like the layout frame, so
the mapping is a pure axis permutation (no mirror):

    carla.x = origin.x + layout.z
    carla.y = origin.y + layout.x
    carla.z = layout.y

where ``origin`` is the layout's place in the atlas (``opendrive.layout_origin``).
Angles: CARLA's yaw turns +x towards +y (clockwise seen from above), pitch > 0
looks up. A traffic-scene heading h (radians about +y, 0 = facing +z) is taken to
face the layout direction (sin h, 0, cos h), i.e. h > 0 turns towards +x; that is
CARLA yaw = degrees(h). The camera's ``camera_pitch`` (radians) is taken as
positive = looking DOWN (CAMERA_PITCH_DOWN_IS_POSITIVE); CARLA pitch is its
negative in degrees. Headings 0 and pi, the only ones the lanes use, map the same
under either sign convention.

Rendering parameters (the traffic scene's optional ``camera_fov``, ``exposure``, ``color_gains``,
``blur_sigma``, ``noise_sigma``; simulators/traffic/scene.py), as far as CARLA's camera API allows
(:func:`camera_settings`, :func:`rgb_attributes`, :func:`postprocess`):

  scene field          CARLA                                          match
  camera_height/pitch  the cameras' transform (as before)             exact height; a true rotation
                                                                      (the pure-JAX renderer: a
                                                                      principal-point shift)
  camera_fov           ``fov`` of all three cameras (horizontal)      exact (a real focal change; the
                                                                      pure-JAX renderer zooms digitally)
  exposure             RGB ``exposure_compensation`` = the blueprint's stops, like the pure-JAX renderer's
                       default + exposure (stops)                     multiplier, but on top of CARLA's
                                                                      auto exposure and tone curve
  color_gains          RGB ``temp`` (K) and ``tint`` (Unreal's white  approximate: temp = 6500 K *
                       balance)                                       2^(log2(r / b) / 0.8) (the red/blue
                                                                      ratio of Planckian light near
                                                                      6500 K), tint = -log2(g / sqrt(rb))
                                                                      / 0.3 clipped to [-1, 1]; sign and
                                                                      scale not checked against a server
  blur_sigma           none (CARLA's blurs are depth of field and     host post-processing of the image
                       motion blur): host post-processing              (same Gaussian, linear light)
  noise_sigma          none (CARLA's RGB camera has no noise           host post-processing: Gaussian noise
                       attribute): host post-processing                of that std per channel, seeded by
                                                                      the scene's ``seed``
A scene without these fields renders as before (no attribute or post-processing changes).

Everything here is plain Python / NumPy on concrete values: not jittable (it runs
inside the host function of the bridge).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from simulators.carla import opendrive
from simulators.traffic import layout as L

CAMERA_PITCH_DOWN_IS_POSITIVE = True

# Horizontal field of view of KITTI's colour camera; CARLA's camera ``fov`` is the
# horizontal one, with square pixels, so fx = width * KITTI_FX_OVER_WIDTH at any
# resolution, as in the pure-JAX renderer.
FOV_DEG = math.degrees(2.0 * math.atan(0.5 / L.KITTI_FX_OVER_WIDTH))


def crop_rows(height: int) -> int:
    """Rows to render above the image and crop away, to place the principal point like KITTI.

    CARLA's camera has its principal point at the image centre; KITTI's (and the
    pure-JAX renderer's) sits at row KITTI_CY_OVER_HEIGHT * height, a little above
    the middle. Rendering ``height + t`` rows and dropping the top ``t`` puts it at
    (height - t) / 2; t = round(height - 2 cy) leaves at most half a pixel of
    difference (none at 192 rows). The width, hence fx and the horizontal FOV, is
    unchanged.
    """
    return max(0, int(math.floor(height * (1.0 - 2.0 * L.KITTI_CY_OVER_HEIGHT) + 0.5)))


# The 5 car types of the scene model as CARLA vehicle blueprints. The first id of
# each tuple that the server's blueprint library has is used (all first choices
# ship with CARLA 0.9.14, 0.9.15 and 0.9.16); the others are fallbacks of the same
# body style. CARLA has exactly one pickup, the Cybertruck; its semantic tag may be
# Truck (15), which label conversion maps to car.
CAR_BLUEPRINTS: dict[str, tuple[str, ...]] = {
    "sedan": ("vehicle.tesla.model3", "vehicle.lincoln.mkz_2020", "vehicle.lincoln.mkz_2017"),
    "hatchback": ("vehicle.audi.a2", "vehicle.seat.leon", "vehicle.mini.cooper_s"),
    "suv": ("vehicle.nissan.patrol", "vehicle.nissan.patrol_2021", "vehicle.audi.etron"),
    "van": ("vehicle.mercedes.sprinter", "vehicle.volkswagen.t2_2021", "vehicle.volkswagen.t2"),
    "pickup": ("vehicle.tesla.cybertruck",),
}
assert tuple(CAR_BLUEPRINTS) == L.CAR_TYPES, "CAR_BLUEPRINTS must follow layout.CAR_TYPES"

# The 4 weathers as carla.WeatherParameters fields (the sun's angles come from the
# scene's sun_dir). They start from CARLA's own presets at noon and change what
# names the weather:
#   clear:    ClearNoon (few clouds, dry, a trace of haze);
#   overcast: CloudyNoon with full cloud cover;
#   rain:     HardRainNoon with somewhat less rain and wind, plus lens wetness;
#   fog:      not a CARLA preset: thick fog from 5 m on, under 70% cloud.
# Every weather keeps the presets' sky scattering (scattering_intensity 1,
# mie 0.03, rayleigh 0.0331); the constructor's defaults (0) would flatten fog.
_SKY = dict(scattering_intensity=1.0, mie_scattering_scale=0.03, rayleigh_scattering_scale=0.0331)
WEATHERS: dict[str, dict[str, float]] = {
    "clear": dict(
        cloudiness=5.0, precipitation=0.0, precipitation_deposits=0.0, wind_intensity=10.0,
        fog_density=2.0, fog_distance=0.75, fog_falloff=0.1, wetness=0.0, **_SKY,
    ),
    "overcast": dict(
        cloudiness=90.0, precipitation=0.0, precipitation_deposits=0.0, wind_intensity=30.0,
        fog_density=3.0, fog_distance=0.75, fog_falloff=0.1, wetness=0.0, **_SKY,
    ),
    "rain": dict(
        cloudiness=100.0, precipitation=80.0, precipitation_deposits=70.0, wind_intensity=60.0,
        fog_density=7.0, fog_distance=0.75, fog_falloff=0.1, wetness=50.0, **_SKY,
    ),
    "fog": dict(
        cloudiness=70.0, precipitation=0.0, precipitation_deposits=0.0, wind_intensity=5.0,
        fog_density=60.0, fog_distance=5.0, fog_falloff=0.5, wetness=0.0, **_SKY,
    ),
}  # fmt: skip
assert tuple(WEATHERS) == L.WEATHERS, "WEATHERS must follow layout.WEATHERS"


@dataclasses.dataclass(frozen=True)
class HouseModel:
    """How a house is built in CARLA.

    CARLA's blueprint library has no buildings: the towns' buildings are level
    geometry, not spawnable actors, and the ``static.prop.*`` blueprints are street
    furniture (containers, kiosks, bus stops). What it does offer is the generic
    ``static.prop.mesh`` blueprint, which spawns ANY cooked static mesh by path with
    one uniform ``scale``. A house is therefore a stack of cubes: the unit cube
    ``/Engine/BasicShapes/Cube.Cube`` (1 m, pivot at its centre, part of every
    Unreal build), scaled to the house's length along the road (BLOCK_LENGTH -
    HOUSE_GAP, as in the pure-JAX renderer), as many stacked as the height needs,
    the top one ending at the eaves plus half the gable roof (the stack may reach
    below the ground, where the OpenDRIVE world has nothing).

    Limitations: (1) the uniform scale makes a house as deep as it is long (5.6 m,
    not layout.HOUSE_DEPTH) and flat-roofed; (2) CARLA tags a
    mesh's semantic class from its content folder, and the engine cube has none,
    so its pixels come out tagged 0; the renderer relabels them as building from
    the instance sensor (actor ids, CARLA >= 0.9.16) or, with older servers, from
    the untagged pixels (nothing else in the generated world is untagged). A mesh
    under ``/Game/Carla/Static/Buildings/`` of your CARLA content is tagged Building
    by CARLA itself; pass its path (and its size, pivot at the centre) to use it.
    """

    mesh_path: str = "/Engine/BasicShapes/Cube.Cube"
    mesh_size_m: float = 1.0
    tile_m: float = L.BLOCK_LENGTH - L.HOUSE_GAP

    @property
    def scale(self) -> float:
        """Scale of the lots' houses (the end row's houses are END_HOUSE_WIDTH - HOUSE_GAP wide)."""
        return self.tile_m / self.mesh_size_m


@dataclasses.dataclass(frozen=True)
class Placement:
    """A CARLA transform as plain numbers (metres, degrees)."""

    x: float
    y: float
    z: float
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0

    def to_carla(self):
        """``carla.Transform``; needs the carla client."""
        import carla

        return carla.Transform(carla.Location(self.x, self.y, self.z), carla.Rotation(self.pitch, self.yaw, self.roll))


def layout_to_carla(origin: tuple[float, float], x: float, y: float, z: float) -> tuple[float, float, float]:
    """A layout-frame point (x right, y up, z forward) -> CARLA (x forward, y right, z up)."""
    return origin[0] + z, origin[1] + x, y


def heading_to_yaw(heading: float) -> float:
    """Layout heading (radians about +y, 0 = +z) -> CARLA yaw (degrees)."""
    return math.degrees(heading)


def scene_origin(scene: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """CARLA (x, y) of the scene's layout in the atlas."""
    k = opendrive.layout_index(int(scene["road_length"]), int(scene["intersection"]))
    return opendrive.layout_origin(k)


def camera_placement(scene: Mapping[str, np.ndarray]) -> Placement:
    """The traffic simulator's camera pose in CARLA."""
    origin = scene_origin(scene)
    x, y, z = layout_to_carla(origin, L.CAMERA_X, float(scene["camera_height"]), L.CAMERA_Z)
    pitch = math.degrees(float(scene["camera_pitch"]))
    return Placement(x, y, z, pitch=-pitch if CAMERA_PITCH_DOWN_IS_POSITIVE else pitch)


@dataclasses.dataclass(frozen=True)
class CarSpec:
    block: int
    car_type: int
    placement: Placement  # of the car's CENTRE on the ground; the renderer corrects for the actor's pivot
    color: tuple[int, int, int]


def car_specs(scene: Mapping[str, np.ndarray]) -> list[CarSpec]:
    """One CarSpec per present car, blocks in order."""
    origin = scene_origin(scene)
    n = int(scene["road_length"])
    out = []
    present = np.asarray(scene["car_present"], bool)
    for b in range(min(n, present.shape[0])):
        if not present[b]:
            continue
        px, pz = (float(v) for v in np.asarray(scene["car_pos"])[b])
        x, y, z = layout_to_carla(origin, px, 0.0, pz)
        rgb = np.clip(np.round(np.asarray(scene["car_color"], np.float64)[b] * 255.0), 0, 255).astype(int)
        out.append(
            CarSpec(
                block=b,
                car_type=int(np.asarray(scene["car_type"])[b]),
                placement=Placement(x, y, z, yaw=heading_to_yaw(float(np.asarray(scene["car_heading"])[b]))),
                color=(int(rgb[0]), int(rgb[1]), int(rgb[2])),
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class HouseSpec:
    block: int  # block of a lot beside the road, or index in the end row
    side: int  # 0 left (layout x < 0), 1 right, -1 the row across the end of the road
    tiles: tuple[Placement, ...]  # centres of the stacked mesh tiles
    scale: float  # the static.prop.mesh scale of every tile


def _stack(origin, lx: float, lz: float, eave: float, a: float) -> tuple[Placement, ...]:
    """Centres of the tiles (cubes of side ``a``) of one house whose footprint centre is (lx, lz)."""
    top = max(float(eave), 0.5) + L.HOUSE_ROOF_HEIGHT / 2
    count = max(1, math.ceil(top / a))
    return tuple(Placement(*layout_to_carla(origin, lx, top - a / 2 - i * a, lz)) for i in range(count))


def house_specs(scene: Mapping[str, np.ndarray], model: HouseModel = HouseModel()) -> list[HouseSpec]:
    """The houses of a scene as stacks of tiles (see :class:`HouseModel`).

    The lots beside the road (``house_present``: block b, side s; side -1 below
    marks the row across the end of the road), and, when the scene has them, the
    row of houses across the end of the road (``end_present``, ``end_height``:
    layout.END_HOUSE_*), which the pure-JAX renderer also draws.
    """
    origin = scene_origin(scene)
    n = int(scene["road_length"])
    present = np.asarray(scene["house_present"], bool)
    heights = np.asarray(scene["house_height"], np.float64)
    a = model.tile_m
    out = []
    for b in range(min(n, present.shape[0])):
        for side in (0, 1):
            if not present[b, side]:
                continue
            lx = (-1.0 if side == 0 else 1.0) * (L.HOUSE_X0 + a / 2)
            tiles = _stack(origin, lx, (b + 0.5) * L.BLOCK_LENGTH, heights[b, side], a)
            out.append(HouseSpec(b, side, tiles, model.scale))
    if "end_present" in scene:
        end_present = np.asarray(scene["end_present"], bool)
        end_height = np.asarray(scene["end_height"], np.float64)
        front = n * L.BLOCK_LENGTH + L.END_ROW_Z[int(scene["intersection"])]
        a_end = L.END_HOUSE_WIDTH - L.HOUSE_GAP
        for j in np.flatnonzero(end_present):
            lx = L.END_HOUSE_WIDTH * (j - L.END_HOUSE_COUNT // 2)
            tiles = _stack(origin, lx, front + a_end / 2, end_height[j], a_end)
            out.append(HouseSpec(int(j), -1, tiles, a_end / model.mesh_size_m))
    return out


def sun_angles(sun_dir: Sequence[float]) -> tuple[float, float]:
    """(altitude, azimuth) in degrees for carla.WeatherParameters.

    ``sun_dir`` points from the scene towards the sun, in the layout frame. The
    altitude is exact; the azimuth is the sun's bearing in CARLA's x-y plane
    (0 = along the road, 90 = to the right). CARLA documents its azimuth only as
    an angle in [0, 360), so the bearing's zero may differ from the pure-JAX
    renderer's; it changes shadows, not labels.
    """
    v = np.asarray(sun_dir, np.float64)
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        return 45.0, 0.0
    x, y, z = v / norm
    altitude = math.degrees(math.asin(max(-1.0, min(1.0, y))))
    azimuth = math.degrees(math.atan2(x, z)) % 360.0  # CARLA x = layout z, CARLA y = layout x
    return altitude, azimuth


def weather_fields(scene: Mapping[str, np.ndarray]) -> dict[str, float]:
    """carla.WeatherParameters keyword arguments for the scene's weather and sun."""
    w = int(scene["weather"])
    if not 0 <= w < len(L.WEATHERS):
        raise ValueError(f"weather must be in [0, {len(L.WEATHERS) - 1}] {L.WEATHERS}, got {w}")
    fields = dict(WEATHERS[L.WEATHERS[w]])
    fields["sun_altitude_angle"], fields["sun_azimuth_angle"] = sun_angles(scene["sun_dir"])
    return fields


def weather_parameters(scene: Mapping[str, np.ndarray]):
    """``carla.WeatherParameters`` for a scene; needs the carla client."""
    import carla

    return carla.WeatherParameters(**weather_fields(scene))


def camera_intrinsics(height: int, width: int, fov_deg: float = FOV_DEG) -> np.ndarray:
    """float64 [3, 3] pinhole matrix of the delivered (cropped, see :func:`crop_rows`) image of a camera with
    horizontal field of view ``fov_deg`` (default KITTI's)."""
    f = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    cy = (height - crop_rows(height)) / 2.0
    return np.array([[f, 0.0, width / 2.0], [0.0, f, cy], [0.0, 0.0, 1.0]])


def world_to_camera_matrix(cam: Placement) -> np.ndarray:
    """float64 [4, 4] CARLA world -> camera frame (x right, y down, z forward)."""
    cy, sy = math.cos(math.radians(cam.yaw)), math.sin(math.radians(cam.yaw))
    cp, sp = math.cos(math.radians(cam.pitch)), math.sin(math.radians(cam.pitch))
    cr, sr = math.cos(math.radians(cam.roll)), math.sin(math.radians(cam.roll))
    # Unreal's rotation (yaw about z, pitch about y, roll about x) of the camera body.
    rot = np.array(
        [
            [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
            [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
            [sp, -cp * sr, cp * cr],
        ]
    )
    body = np.eye(4)
    body[:3, :3] = rot
    body[:3, 3] = [cam.x, cam.y, cam.z]
    world_to_body = np.linalg.inv(body)
    # Body axes (x forward, y right, z up) -> image axes (x right, y down, z forward).
    axes = np.array([[0, 1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.float64)
    return axes @ world_to_body


def project_points(
    points: np.ndarray, cam: Placement, height: int, width: int, fov_deg: float = FOV_DEG
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [n, 2] (u right, v down) and depths [n] of CARLA world points [n, 3]."""
    pts = np.concatenate([np.asarray(points, np.float64), np.ones((len(points), 1))], axis=1)
    cam_pts = (world_to_camera_matrix(cam) @ pts.T)[:3]
    depth = cam_pts[2]
    uvw = camera_intrinsics(height, width, fov_deg) @ cam_pts
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (uvw[:2] / uvw[2]).T
    return uv, depth


# ----- rendering parameters ------------------------------------------------------------------------
WHITE_TEMP_K = 6500.0  # Unreal's neutral white balance (the ``temp`` attribute's default)
TEMP_LOG2_PER_STOP = 0.8  # log2(r / b) of Planckian light changes ~0.8x as fast as log2 of its temperature near 6500 K
TINT_LOG2_PER_UNIT = 0.3  # log2 green gain (relative to sqrt(r b)) that maps to Unreal's tint of -1 (the ends)
# The settings are rounded so that scenes of one candidate (same psi, no per-image spread) share one set of
# cameras: a change respawns them (CARLA reads camera attributes at spawn only).
FOV_STEP_DEG, EV_STEP, TEMP_STEP_K, TINT_STEP = 0.01, 0.01, 10.0, 0.01


@dataclasses.dataclass(frozen=True)
class CameraSettings:
    """A scene's camera attributes and host post-processing (see the module docstring). ``None``: the
    attribute is left as CARLA's default (the scene lacks the field, or it is at its neutral value)."""

    fov_deg: float = FOV_DEG
    exposure_ev: float | None = None
    temp_k: float | None = None
    tint: float | None = None
    blur_sigma_px: float = 0.0  # in pixels of the delivered image
    noise_sigma: float = 0.0  # levels of 255

    def sensor_key(self) -> tuple:
        """What the spawned cameras depend on (post-processing is per image)."""
        return (self.fov_deg, self.exposure_ev, self.temp_k, self.tint)


def _round(x: float, step: float) -> float:
    return round(round(x / step) * step, 6)


def camera_settings(scene: Mapping[str, np.ndarray], height: int) -> CameraSettings:
    """The CameraSettings of one scene rendered ``height`` rows high (blur scales with the height, as in the
    pure-JAX renderer: ``blur_sigma`` is in pixels at layout.REFERENCE_SIZE[0] rows)."""
    kw: dict = {}
    if "camera_fov" in scene:
        fov = float(scene["camera_fov"])
        if abs(fov - FOV_DEG) > 1e-3:  # the scene's float32 KITTI FOV is KITTI's
            kw["fov_deg"] = _round(fov, FOV_STEP_DEG)
    # Values that round to the neutral one leave the attribute at CARLA's default.
    if "exposure" in scene and (ev := _round(float(scene["exposure"]), EV_STEP)) != 0.0:
        kw["exposure_ev"] = ev
    if "color_gains" in scene:
        lr, lg, lb = np.log2(np.asarray(scene["color_gains"], np.float64))
        temp = _round(WHITE_TEMP_K * 2.0 ** ((lr - lb) / TEMP_LOG2_PER_STOP), TEMP_STEP_K)
        if temp != WHITE_TEMP_K:
            kw["temp_k"] = temp
        tint = _round(float(np.clip(-(lg - 0.5 * (lr + lb)) / TINT_LOG2_PER_UNIT, -1.0, 1.0)), TINT_STEP)
        if tint != 0.0:
            kw["tint"] = tint
    if "blur_sigma" in scene:
        kw["blur_sigma_px"] = float(scene["blur_sigma"]) * height / L.REFERENCE_SIZE[0]
    if "noise_sigma" in scene:
        kw["noise_sigma"] = float(scene["noise_sigma"])
    return CameraSettings(**kw)


def rgb_attributes(settings: CameraSettings, exposure_default: float = 0.0) -> dict[str, str]:
    """Blueprint attributes of the RGB camera beyond size and tick: ``fov`` always, the others only when
    set. ``exposure_default``: the blueprint's own ``exposure_compensation`` (platform-dependent in CARLA:
    +0.75 on Linux, 0 on Windows), to which the scene's stops are added."""
    out = {"fov": f"{settings.fov_deg:.6f}"}
    if settings.exposure_ev is not None:
        out["exposure_compensation"] = f"{exposure_default + settings.exposure_ev:.4f}"
    if settings.temp_k is not None:
        out["temp"] = f"{settings.temp_k:.1f}"
    if settings.tint is not None:
        out["tint"] = f"{settings.tint:.4f}"
    return out


def postprocess(image: np.ndarray, settings: CameraSettings, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8: the blur and the noise CARLA has no attribute for (unchanged when both are 0).

    The blur is the pure-JAX renderer's (a separable Gaussian with edges replicated) in linear light under its
    gamma-2 camera model; the noise is Gaussian, ``noise_sigma`` levels per channel, from ``seed``.
    """
    if settings.blur_sigma_px <= 0.0 and settings.noise_sigma <= 0.0:
        return image
    x = np.asarray(image, np.float64) / 255.0
    if settings.blur_sigma_px > 0.0:
        sigma = settings.blur_sigma_px
        radius = max(1, math.ceil(3.0 * sigma))
        taps = np.arange(-radius, radius + 1)
        w = np.exp(-0.5 * (taps / sigma) ** 2)
        w /= w.sum()
        lin = x * x
        for axis in (0, 1):
            pad = [(0, 0)] * 3
            pad[axis] = (radius, radius)
            p = np.pad(lin, pad, mode="edge")
            n = lin.shape[axis]
            lin = sum(wj * np.take(p, np.arange(j, j + n), axis=axis) for j, wj in enumerate(w))
        x = np.sqrt(np.clip(lin, 0.0, 1.0))
    y = x * 255.0
    if settings.noise_sigma > 0.0:
        y = y + settings.noise_sigma * np.random.default_rng(int(seed)).standard_normal(y.shape)
    return np.clip(np.round(y), 0, 255).astype(np.uint8)
