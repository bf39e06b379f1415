"""One connection to one CARLA server, rendering traffic scenes. Host-only, not jittable.

A :class:`CarlaSession` owns a ``carla.Client``. On connect it makes sure the
server runs the atlas world (``opendrive.atlas_xodr``; generated once per server
with ``client.generate_opendrive_world``), switches it to synchronous mode with a
fixed time step and resolves the blueprints. ``render(scene)`` then:

1. sets the weather;
2. spawns the cars (``try_spawn_actor`` at a staging spot away from the road, so
   that neighbouring cars' boxes never make a spawn fail, then physics off and
   moved into place; failures go to ``info["failed_cars"]``) and the houses;
3. moves the three cameras (RGB, semantic and instance segmentation; same pose,
   resolution and FOV) to the scene's camera pose; they render
   ``convert.crop_rows(height)`` extra rows on top, cropped away on decoding, so
   that the principal point sits where KITTI's (and the pure-JAX renderer's) does.
   A scene with rendering parameters (``convert.camera_settings``: field of view,
   exposure, white balance) whose camera attributes differ from the cameras'
   respawns them first (CARLA reads camera attributes at spawn only); blur and
   noise are applied to the delivered image (``convert.postprocess``);
4. ticks ``warmup_ticks`` times, ticks once more and takes from each camera the
   image whose frame id is that tick's frame id;
5. destroys every actor it spawned for the scene, in a ``finally`` (also on
   error).

The cameras live as long as the session: spawning sensors costs far more than
moving them. They are destroyed by :meth:`close`, and also whenever a scene
fails, so a failed session leaves nothing behind on the server.

Not thread-safe: the pool gives each session its own thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import queue
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from simulators.carla import convert, labels, opendrive
from simulators.traffic import layout as L
from simulators.traffic import visibility as V

SENSORS = {
    "rgb": "sensor.camera.rgb",
    "semantic": "sensor.camera.semantic_segmentation",
    "instance": "sensor.camera.instance_segmentation",
}
# Spawn height (m) of cars before they are moved into place: high above the atlas,
# where nothing can collide with them (below the ground a map's kill-Z could bite).
# They are moved before the next tick, so no camera ever sees them there.
STAGING_Z = 500.0
# From 0.9.16 the instance camera writes CARLA actor ids (carla-simulator/carla PR 8334);
# before, Unreal's internal ids.
ACTOR_ID_INSTANCES_SINCE = (0, 9, 16)
# The traffic scene's optional rendering parameters (simulators/traffic/scene.py), read when present.
RENDERING_KEYS = ("camera_fov", "exposure", "color_gains", "blur_sigma", "noise_sigma")
DEFAULT_CAMERA = convert.CameraSettings()  # a scene without them: today's cameras


class SceneError(ValueError):
    """A scene description the renderer cannot place (a bug upstream, not a server failure)."""


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Static settings of a CARLA rendering session.

    Attributes:
      height, width: image size in pixels (all three cameras).
      timeout_s: limit of every RPC and of the wait for each camera frame.
      map_timeout_s: limit of the one-off atlas generation (CARLA builds all meshes).
      fixed_delta_seconds: synchronous-mode time step.
      warmup_ticks: ticks before the captured one, so that moved actors, weather
        and streaming have settled.
      house_model: how houses are built (see convert.HouseModel).
      instance_mode: "auto" (actor ids from CARLA 0.9.16, box projection before),
        "actor_id" or "projection".
      visibility: which cars count (simulators/traffic/visibility.py: pixels, share of the car's own
        projection, fog transmittance); default the pure-JAX renderer's rule.
      min_visible_pixels: the pixel floor at this size (derived from ``visibility``); given instead of it,
        the rule before issue 13 (that many pixels, nothing else).
    """

    height: int
    width: int
    timeout_s: float = 30.0
    map_timeout_s: float = 300.0
    fixed_delta_seconds: float = 0.05
    warmup_ticks: int = 2
    house_model: convert.HouseModel = convert.HouseModel()
    instance_mode: str = "auto"
    min_visible_pixels: int | None = None
    visibility: V.VisibilityRule | None = None

    def __post_init__(self):
        rule = V.make_rule(self.visibility, self.min_visible_pixels, self.height, self.width)
        object.__setattr__(self, "visibility", rule)
        object.__setattr__(self, "min_visible_pixels", rule.pixel_floor(self.height, self.width))
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.instance_mode not in ("auto", "actor_id", "projection"):
            raise ValueError(f"instance_mode must be auto, actor_id or projection, got {self.instance_mode!r}")


def _attribute_default(bp, name: str, fallback: float = 0.0) -> float:
    """A blueprint attribute's value as a float (its default before any set_attribute), else ``fallback``."""
    try:
        return float(bp.get_attribute(name).as_float())
    except (AttributeError, IndexError, RuntimeError, ValueError, TypeError):
        return fallback


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.9.16-dirty"`` -> (0, 9, 16); unparsable parts end the tuple."""
    out = []
    for part in str(text).split("-")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def validate_scene(scene: Mapping[str, Any]) -> None:
    """Raises SceneError naming the field when one scene cannot be placed."""
    try:
        n = int(scene["road_length"])
        inter = int(scene["intersection"])
        opendrive.layout_index(n, inter)
        w = int(scene["weather"])
        if not 0 <= w < len(L.WEATHERS):
            raise ValueError(f"weather {w} not in [0, {len(L.WEATHERS) - 1}]")
        types = np.asarray(scene["car_type"])
        present = np.asarray(scene["car_present"], bool)
        if np.any(present & ((types < 0) | (types >= len(L.CAR_TYPES)))):
            raise ValueError(f"car_type outside [0, {len(L.CAR_TYPES) - 1}]")
        for key in ("car_pos", "car_heading", "camera_height", "camera_pitch", "sun_dir"):
            if not np.all(np.isfinite(np.asarray(scene[key], np.float64))):
                raise ValueError(f"{key} is not finite")
        for key in RENDERING_KEYS:
            if key in scene and not np.all(np.isfinite(np.asarray(scene[key], np.float64))):
                raise ValueError(f"{key} is not finite")
        if "camera_fov" in scene and not 1.0 <= float(scene["camera_fov"]) <= 170.0:
            raise ValueError(f"camera_fov {float(scene['camera_fov'])} is outside CARLA's 1..170 degrees")
        if "color_gains" in scene and np.any(np.asarray(scene["color_gains"], np.float64) <= 0):
            raise ValueError("color_gains must be positive")
    except KeyError as e:
        raise SceneError(f"scene lacks field {e}") from None
    except ValueError as e:
        raise SceneError(f"bad scene: {e}") from None


class CarlaSession:
    """A connection to one CARLA server that renders scenes (see the module docstring). Not jittable.

    Args:
      host, port: the server's RPC address.
      config: RenderConfig.
    """

    def __init__(self, host: str, port: int, config: RenderConfig):
        import carla

        self._carla = carla
        self.host, self.port, self.config = host, port, config
        self.name = f"{host}:{port}"
        self.client = carla.Client(host, port)
        self.client.set_timeout(config.timeout_s)
        # The first RPC: a dead or silent server fails here, within timeout_s.
        self.server_version = self.client.get_server_version()
        client_version = self.client.get_client_version()
        if parse_version(client_version)[:3] != parse_version(self.server_version)[:3]:
            logging.warning(
                "CARLA client %s and server %s (%s) differ; the RPC protocol may not match",
                client_version,
                self.server_version,
                self.name,
            )
        mode = config.instance_mode
        if mode == "auto":
            mode = "actor_id" if parse_version(self.server_version) >= ACTOR_ID_INSTANCES_SINCE else "projection"
        self.instance_mode = mode
        self.world = self._load_atlas()
        self._set_synchronous(True)
        self._resolve_blueprints()
        self._sensors: dict[str, Any] | None = None
        self._queues: dict[str, queue.Queue] = {}
        self._house_mesh_checked = False

    # ----- setup ---------------------------------------------------------------
    def _load_atlas(self):
        xodr = opendrive.atlas_xodr()
        world = self.client.get_world()
        try:
            current = world.get_map().to_opendrive()
        except RuntimeError:
            current = ""
        if hashlib.sha1(current.encode()).digest() == hashlib.sha1(xodr.encode()).digest():
            return world
        logging.info("generating the OpenDRIVE atlas on %s (once per server)", self.name)
        self.client.set_timeout(self.config.map_timeout_s)
        try:
            world = self.client.generate_opendrive_world(xodr, opendrive.generation_parameters())
        finally:
            self.client.set_timeout(self.config.timeout_s)
        return world

    def _set_synchronous(self, on: bool) -> None:
        settings = self.world.get_settings()
        settings.synchronous_mode = on
        settings.fixed_delta_seconds = self.config.fixed_delta_seconds if on else None
        settings.no_rendering_mode = False
        self.world.apply_settings(settings)

    def _resolve_blueprints(self) -> None:
        library = self.world.get_blueprint_library()
        available = {bp.id for bp in library}
        self.car_blueprint_ids: list[str] = []
        for car_type, candidates in convert.CAR_BLUEPRINTS.items():
            found = next((c for c in candidates if c in available), None)
            if found is None:
                raise RuntimeError(f"{self.name} has none of the {car_type} blueprints {candidates}")
            self.car_blueprint_ids.append(found)
        self._library = library
        for name in list(SENSORS.values()) + ["static.prop.mesh"]:
            if name not in available:
                raise RuntimeError(f"{self.name} lacks the blueprint {name} (CARLA >= 0.9.14 needed)")

    def _spawn_sensors(self, settings: convert.CameraSettings = DEFAULT_CAMERA) -> None:
        cfg = self.config
        self._sensors, self._queues = {}, {}
        self._sensor_key = settings.sensor_key()
        parking = self._carla.Transform(self._carla.Location(0.0, 0.0, 50.0))
        for key, bp_id in SENSORS.items():
            bp = self._library.find(bp_id)
            bp.set_attribute("image_size_x", str(cfg.width))
            bp.set_attribute("image_size_y", str(cfg.height + convert.crop_rows(cfg.height)))
            if key == "rgb":
                exposure_default = _attribute_default(bp, "exposure_compensation")
                for name, value in convert.rgb_attributes(settings, exposure_default).items():
                    bp.set_attribute(name, value)
            else:
                bp.set_attribute("fov", f"{settings.fov_deg:.6f}")
            bp.set_attribute("sensor_tick", "0.0")
            if bp.has_attribute("motion_blur_intensity"):
                bp.set_attribute("motion_blur_intensity", "0.0")
            sensor = self.world.spawn_actor(bp, parking)
            q: queue.Queue = queue.Queue()
            sensor.listen(q.put)
            self._sensors[key], self._queues[key] = sensor, q

    def _destroy_sensors(self) -> None:
        sensors, self._sensors = self._sensors, None
        if not sensors:
            return
        for s in sensors.values():
            try:
                s.stop()
            except RuntimeError:
                pass
        self._destroy([s.id for s in sensors.values()])

    def _destroy(self, ids: list[int]) -> None:
        if ids:
            self.client.apply_batch_sync([self._carla.command.DestroyActor(i) for i in ids])

    def close(self) -> None:
        """Destroys the cameras and gives the server back its asynchronous mode (best effort)."""
        try:
            self._destroy_sensors()
            self._set_synchronous(False)
        except RuntimeError as e:
            logging.warning("closing CARLA session %s: %s", self.name, e)

    # ----- one scene -------------------------------------------------------------
    def render(self, scene: Mapping[str, Any]) -> dict[str, Any]:
        """Renders one scene (numpy fields of ONE scene, no batch axis). Not jittable.

        Returns:
          {"image": uint8 [H, W, 3], "label": uint8 [H, W], "instance": int32 [H, W],
           "counts": int32 [5], "info": dict}.
        """
        validate_scene(scene)
        spawned: list[Any] = []
        info: dict[str, Any] = {
            "server": self.name,
            "instance_mode": self.instance_mode,
            "failed_cars": [],
            "failed_houses": [],
        }
        ok = False
        settings = convert.camera_settings(scene, self.config.height)
        try:
            if self._sensors is not None and self._sensor_key != settings.sensor_key():
                self._destroy_sensors()
            if self._sensors is None:
                self._spawn_sensors(settings)
            self.world.set_weather(convert.weather_parameters(scene))
            cars = self._spawn_cars(scene, spawned, info)
            houses = self._spawn_houses(scene, spawned, info)
            cam = convert.camera_placement(scene)
            for sensor in self._sensors.values():
                sensor.set_transform(cam.to_carla())
            for _ in range(self.config.warmup_ticks):
                self.world.tick(self.config.timeout_s)
            frame = self.world.tick(self.config.timeout_s)
            raw = {key: self._frame(key, frame) for key in SENSORS}
            info["frame"] = int(frame)
            out = self._decode(scene, raw, cars, houses, cam, info, settings)
            ok = True
            return out
        finally:
            try:
                self._destroy([a.id for a in spawned])
            finally:
                if not ok:
                    self._destroy_sensors()

    def _frame(self, key: str, frame: int) -> np.ndarray:
        q = self._queues[key]
        while True:
            try:
                image = q.get(timeout=self.config.timeout_s)
            except queue.Empty:
                raise RuntimeError(
                    f"{self.name}: no {key} image for frame {frame} within {self.config.timeout_s} s"
                ) from None
            if image.frame == frame:
                return labels.image_to_array(image)
            if image.frame > frame:
                raise RuntimeError(f"{self.name}: {key} camera skipped frame {frame} (got {image.frame})")

    def _spawn_cars(self, scene, spawned, info) -> dict[int, Any]:
        carla = self._carla
        cars: dict[int, Any] = {}
        for i, spec in enumerate(convert.car_specs(scene)):
            bp = self._library.find(self.car_blueprint_ids[spec.car_type])
            if bp.has_attribute("color"):
                bp.set_attribute("color", "{},{},{}".format(*spec.color))
            if bp.has_attribute("role_name"):
                bp.set_attribute("role_name", "lts_car")
            p = spec.placement
            staging = carla.Transform(carla.Location(p.x, p.y, STAGING_Z + 10.0 * i), carla.Rotation(yaw=p.yaw))
            actor = self.world.try_spawn_actor(bp, staging)
            if actor is None:
                info["failed_cars"].append(spec.block)
                continue
            spawned.append(actor)
            actor.set_simulate_physics(False)
            # Place the bounding box's centre on the scene's car centre, its bottom on the road.
            bb = actor.bounding_box
            yaw = np.radians(p.yaw)
            dx = np.cos(yaw) * bb.location.x - np.sin(yaw) * bb.location.y
            dy = np.sin(yaw) * bb.location.x + np.cos(yaw) * bb.location.y
            z = p.z - (bb.location.z - bb.extent.z)
            actor.set_transform(carla.Transform(carla.Location(p.x - dx, p.y - dy, z), carla.Rotation(yaw=p.yaw)))
            cars[spec.block] = actor
        info["car_blueprints"] = {b: a.type_id for b, a in cars.items()}
        return cars

    def _spawn_houses(self, scene, spawned, info) -> list[Any]:
        model = self.config.house_model
        bp = self._library.find("static.prop.mesh")
        bp.set_attribute("mesh_path", model.mesh_path)
        tiles = []
        for house in convert.house_specs(scene, model):
            bp.set_attribute("scale", f"{house.scale:.6f}")
            for tile in house.tiles:
                actor = self.world.try_spawn_actor(bp, tile.to_carla())
                if actor is None:
                    info["failed_houses"].append((house.block, house.side))
                    continue
                spawned.append(actor)
                tiles.append(actor)
        if tiles and not self._house_mesh_checked:
            self._house_mesh_checked = True
            ext = tiles[0].bounding_box.extent
            if max(ext.x, ext.y, ext.z) < 1e-3:
                logging.warning(
                    "%s: house mesh %r did not load (empty bounding box); houses will be invisible",
                    self.name,
                    model.mesh_path,
                )
        return tiles

    def _decode(self, scene, raw, cars, houses, cam, info, settings=DEFAULT_CAMERA) -> dict[str, Any]:
        cfg = self.config
        top = convert.crop_rows(cfg.height)  # rendered above the image to place the principal point
        raw = {k: v[top:] for k, v in raw.items()}
        tags = labels.semantic_tags(raw["semantic"])
        inst_tags = labels.semantic_tags(raw["instance"])
        ids = labels.instance_ids(raw["instance"])
        vehicle = np.isin(inst_tags, labels.VEHICLE_TAGS)
        untagged = inst_tags == labels.CARLA_TAGS["unlabeled"]
        if self.instance_mode == "actor_id":
            id_to_block = {a.id: b for b, a in cars.items()}
            # Id 0 is also what untagged background without an actor carries; a tile whose
            # 16-bit actor id wraps to 0 (one actor in 65536) is left unlabeled rather
            # than turning the background into building.
            house_ids = [i for i in (a.id & 0xFFFF for a in houses) if i != 0]
        else:
            blocks = list(cars)
            boxes, depths = self._boxes([cars[b] for b in blocks], cam, settings.fov_deg)
            seg_to_car = labels.assign_segments_by_boxes(ids, vehicle, boxes, depths, min_share=0.5)
            id_to_block = {sid: blocks[i] for sid, i in seg_to_car.items()}
            # A house segment lies wholly in its tile's box; the background's does not.
            boxes, depths = self._boxes(houses, cam, settings.fov_deg)
            house_ids = list(labels.assign_segments_by_boxes(ids, untagged, boxes, depths, min_share=0.9))
        instance = labels.instance_map(ids, inst_tags, id_to_block)
        label = labels.tags_to_cityscapes(tags)
        # Houses built from an untagged mesh (convert.HouseModel) come out tagged 0.
        if house_ids:
            house_px = np.isin(ids, house_ids) & untagged
            label = np.where(house_px, labels.CITYSCAPES["building"], label).astype(np.uint8)
        rendered = np.zeros(L.MAX_BLOCKS, bool)
        rendered[list(cars)] = True
        counts = labels.visible_counts(instance, np.asarray(scene["car_type"]), rendered, cfg.min_visible_pixels,
                                       keep=self._visible(scene, instance, settings))  # fmt: skip
        info["unmatched_vehicle_pixels"] = int(np.count_nonzero(vehicle & (instance == 0)))
        image = convert.postprocess(labels.rgb_from_bgra(raw["rgb"]), settings, int(scene.get("seed", 0)))
        return {
            "image": image,
            "label": label,
            "instance": instance,
            "counts": counts,
            "info": info,
        }

    def _visible(self, scene, instance, settings) -> np.ndarray:
        """bool [MAX_BLOCKS]: the cars the visibility rule counts (share of the projection, fog), as the
        pure-JAX renderer decides it; CARLA's camera has its principal point at the image centre."""
        cfg = self.config
        pixels = np.bincount(np.asarray(instance).ravel(), minlength=L.MAX_BLOCKS + 1)[1 : L.MAX_BLOCKS + 1]
        focal = convert.camera_intrinsics(cfg.height, cfg.width, settings.fov_deg)[0, 0]
        horizon = 0.5 * cfg.height - focal * math.tan(float(scene["camera_pitch"]))
        pos = np.asarray(scene["car_pos"], np.float32)
        area = V.projected_box_area(np, np.asarray(scene["car_type"]), pos, np.asarray(scene["car_heading"]),
                                    float(scene["camera_height"]), horizon, focal, 0.5 * cfg.width, cfg.height,
                                    cfg.width)  # fmt: skip
        distance = np.hypot(pos[:, 0] - L.CAMERA_X, pos[:, 1] - L.CAMERA_Z)
        fog_distance = V.FOG_DISTANCE[int(scene["weather"])]
        return V.counted(np, cfg.visibility, pixels, area, distance, fog_distance, cfg.height, cfg.width)

    def _boxes(self, actors, cam, fov_deg: float = convert.FOV_DEG) -> tuple[np.ndarray, np.ndarray]:
        """Projected pixel boxes [n, 4] and nearest depths [n] of actors' bounding boxes (delivered image)."""
        cfg = self.config
        boxes, depths = [], []
        for actor in actors:
            corners = actor.bounding_box.get_world_vertices(actor.get_transform())
            pts = np.array([[c.x, c.y, c.z] for c in corners])
            uv, depth = convert.project_points(pts, cam, cfg.height, cfg.width, fov_deg)
            box, near = labels.boxes_from_corners(uv, depth, cfg.height, cfg.width)
            boxes.append(box)
            depths.append(near)
        return np.array(boxes, np.float64).reshape(-1, 4), np.array(depths, np.float64)
