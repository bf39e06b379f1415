"""CarlaSession's scene logic against a scripted stand-in of the CARLA server.

The real client's value types (Transform, BoundingBox, WeatherParameters,
command.DestroyActor) are used as they are; only ``carla.Client`` is replaced by
a fake whose world "renders" each vehicle and house as its projected bounding
box, encoded as CARLA encodes its segmentation cameras. This checks the wiring
(spawning, placement, frame matching, decoding, relabelling, counting, clean-up)
that the integration test checks against a real server.
"""

import dataclasses

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed (pip install 'lts_jax[carla]')")

from simulators.carla import convert, labels, opendrive  # noqa: E402
from simulators.carla.session import CarlaSession, RenderConfig, SceneError  # noqa: E402
from simulators.carla.testing import make_scene  # noqa: E402

H, W = 48, 160
MIN_PIXELS = 10  # explicit: the default scales with the image area (2 at this size)


def _config(**kw):
    return RenderConfig(H, W, min_visible_pixels=MIN_PIXELS, **kw)


@dataclasses.dataclass
class _Settings:
    synchronous_mode: bool = False
    fixed_delta_seconds: float | None = None
    no_rendering_mode: bool = False


class _Image:
    def __init__(self, bgra, frame):
        self.raw_data = bgra.tobytes()
        self.height, self.width = bgra.shape[:2]
        self.frame = frame


class _Blueprint:
    def __init__(self, bp_id):
        self.id = bp_id
        self.attributes = {}

    def has_attribute(self, key):
        return key in ("color", "role_name") if self.id.startswith("vehicle.") else True

    def set_attribute(self, key, value):
        self.attributes[key] = value

    def get_attribute(self, key):  # the defaults the session reads (CARLA's Linux exposure_compensation)
        if key != "exposure_compensation":
            raise IndexError(key)
        return _Attribute(0.75)


class _Attribute:
    def __init__(self, value):
        self.value = value

    def as_float(self):
        return float(self.value)


class _Library:
    def __init__(self, ids):
        self.ids = list(ids)

    def __iter__(self):
        return iter(_Blueprint(i) for i in self.ids)

    def find(self, bp_id):
        if bp_id not in self.ids:
            raise IndexError(bp_id)
        return _Blueprint(bp_id)


class _Actor:
    def __init__(self, world, actor_id, bp, transform):
        self.world, self.id, self.type_id = world, actor_id, bp.id
        self.attributes = dict(bp.attributes)
        self.transform = transform
        self.physics = True
        self.callback = None
        if bp.id.startswith("vehicle."):
            # Pivot at the ground, box centre a little forward of it, like CARLA's cars.
            self.bounding_box = carla.BoundingBox(carla.Location(0.2, 0.0, 0.75), carla.Vector3D(2.2, 0.95, 0.75))
        elif bp.id == "static.prop.mesh":
            half = 0.5 * float(bp.attributes["scale"])
            self.bounding_box = carla.BoundingBox(carla.Location(0, 0, 0), carla.Vector3D(half, half, half))
        else:
            self.bounding_box = carla.BoundingBox()

    def set_simulate_physics(self, on):
        self.physics = on

    def set_transform(self, t):
        self.transform = t

    def get_transform(self):
        return self.transform

    def listen(self, callback):
        self.callback = callback

    def stop(self):
        self.callback = None


class _World:
    def __init__(self, version):
        self.version = version
        self.xodr = ""
        self.generated = 0
        self.settings = _Settings()
        self.actors = {}
        self.next_id = 65530  # ids wrap past 16 bits during the test, as on a long-running server
        self.frame = 100
        self.weather = None
        self.fail_on_tick = False
        self.refuse = set()  # blueprint ids whose spawns fail
        ids = [c for cands in convert.CAR_BLUEPRINTS.values() for c in cands[:1]]
        self.library = _Library(
            ids
            + [
                "static.prop.mesh",
                "sensor.camera.rgb",
                "sensor.camera.semantic_segmentation",
                "sensor.camera.instance_segmentation",
            ]
        )

    # --- the API the session uses ---
    def get_map(self):
        world = self

        class _Map:
            def to_opendrive(self):
                return world.xodr

        return _Map()

    def get_settings(self):
        return dataclasses.replace(self.settings)

    def apply_settings(self, s):
        self.settings = dataclasses.replace(s)

    def get_blueprint_library(self):
        return self.library

    def spawn_actor(self, bp, transform):
        actor = self.try_spawn_actor(bp, transform)
        if actor is None:
            raise RuntimeError("spawn failed")
        return actor

    def try_spawn_actor(self, bp, transform):
        if bp.id in self.refuse:
            return None
        actor = _Actor(self, self.next_id, bp, transform)
        self.actors[actor.id] = actor
        self.next_id += 1
        return actor

    def set_weather(self, w):
        self.weather = w

    def tick(self, seconds=0.0):
        if self.fail_on_tick:
            raise RuntimeError("time-out while waiting for the simulator")
        self.frame += 1
        for a in list(self.actors.values()):
            if a.callback is not None:
                a.callback(_Image(self._render(a), self.frame))
        return self.frame

    # --- the stand-in renderer ---
    def _render(self, sensor):
        # Like CARLA's camera: the sensor's own size, principal point at its centre,
        # horizontal FOV from the blueprint.
        h, w = int(sensor.attributes["image_size_y"]), int(sensor.attributes["image_size_x"])
        f = w / (2 * np.tan(np.radians(float(sensor.attributes["fov"])) / 2))
        k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
        t = sensor.transform
        cam = convert.Placement(
            t.location.x, t.location.y, t.location.z, t.rotation.pitch, t.rotation.yaw, t.rotation.roll
        )
        img = np.zeros((h, w, 4), np.uint8)
        img[..., 3] = 255
        img[: h // 2, :, 2] = labels.CARLA_TAGS["sky"]
        img[: h // 2, :, 1] = 17  # the sky dome is an object with an id too
        img[h // 2 :, :, 2] = labels.CARLA_TAGS["road"]
        img[-3:, :, 2] = labels.CARLA_TAGS["unlabeled"]  # the void beside the OpenDRIVE roads (id 0)
        objects = []
        for a in self.actors.values():
            if not (a.type_id.startswith("vehicle.") or a.type_id == "static.prop.mesh"):
                continue
            corners = a.bounding_box.get_world_vertices(a.transform)
            pts = np.array([[c.x, c.y, c.z, 1.0] for c in corners])
            cam_pts = (convert.world_to_camera_matrix(cam) @ pts.T)[:3]
            if np.any(cam_pts[2] <= 0.05):
                continue
            uv = (k @ cam_pts)[:2] / cam_pts[2]
            u0, v0 = np.clip(np.floor(uv.min(axis=1)).astype(int), 0, None)
            u1, v1 = np.minimum(np.ceil(uv.max(axis=1)).astype(int), [w - 1, h - 1])
            if u0 <= u1 and v0 <= v1:
                objects.append((cam_pts[2].min(), (u0, v0, u1, v1), a))
        self.boxes = {a.id: (a.type_id, box) for _, box, a in objects}
        for _, (u0, v0, u1, v1), a in sorted(objects, key=lambda o: -o[0]):  # far to near: near ones occlude
            if a.type_id == "static.prop.mesh":
                tag = labels.CARLA_TAGS["unlabeled"]  # the engine cube has no CARLA content folder
            else:
                tag = labels.CARLA_TAGS["truck" if "cybertruck" in a.type_id else "car"]
            # CARLA >= 0.9.16 writes actor ids; older servers Unreal's own ids.
            ident = a.id & 0xFFFF if self.version >= "0.9.16" else (a.id * 7 + 3) & 0xFFFF
            img[v0 : v1 + 1, u0 : u1 + 1, 2] = tag
            img[v0 : v1 + 1, u0 : u1 + 1, 1] = ident & 0xFF
            img[v0 : v1 + 1, u0 : u1 + 1, 0] = ident >> 8
        if sensor.type_id == "sensor.camera.rgb":
            img[..., :3] = np.arange(w, dtype=np.uint8)[None, :, None]
        return img


class _Client:
    servers: dict = {}

    def __init__(self, host, port, worker_threads=0):
        self.world = _Client.servers[(host, port)]

    def set_timeout(self, seconds):
        self.timeout = seconds

    def get_server_version(self):
        return self.world.version

    def get_client_version(self):
        return self.world.version

    def get_world(self):
        return self.world

    def generate_opendrive_world(self, xodr, parameters):
        assert isinstance(parameters, carla.OpendriveGenerationParameters)
        self.world.xodr = xodr
        self.world.generated += 1
        return self.world

    def apply_batch_sync(self, commands, due_tick_cue=False):
        for c in commands:
            assert isinstance(c, carla.command.DestroyActor)
            self.world.actors.pop(c.actor_id, None)
        return []


@pytest.fixture
def server(monkeypatch, request):
    world = _World(getattr(request, "param", "0.9.16"))
    monkeypatch.setattr(carla, "Client", _Client)
    monkeypatch.setitem(_Client.servers, ("fake", 2000), world)
    return world


# The sedan of block 0 hides all but a sliver of the SUV of block 7 behind it (both in
# the camera's lane, 9 m and 51 m from the camera at CAMERA_Z = -6).
SCENE = dict(
    road_length=12, intersection=1,
    cars={0: (0, 0), 4: (4, 1), 7: (2, 0)},
    houses={(0, 0): 8.0, (2, 1): 5.0},
    weather=2,
)  # fmt: skip


@pytest.mark.parametrize("server", ["0.9.16", "0.9.15"], indirect=True)
def test_render_scene(server):
    session = CarlaSession("fake", 2000, _config(timeout_s=1.0))
    assert session.instance_mode == ("actor_id" if server.version >= "0.9.16" else "projection")
    assert server.generated == 1 and server.xodr == opendrive.atlas_xodr()
    assert server.settings.synchronous_mode and server.settings.fixed_delta_seconds == 0.05
    scene = make_scene(**SCENE)
    out = session.render(scene)
    # Weather of the scene.
    assert server.weather.precipitation == convert.WEATHERS["rain"]["precipitation"]
    # Shapes and dtypes.
    assert out["image"].shape == (H, W, 3) and out["image"].dtype == np.uint8
    assert out["label"].dtype == np.uint8 and out["instance"].dtype == np.int32
    np.testing.assert_array_equal(out["image"][0, :, 0], np.arange(W))  # BGRA -> RGB
    # Instances: the three cars, each of their pixels labelled car (the pickup is tagged Truck).
    assert set(np.unique(out["instance"]).tolist()) == {0, 1, 5, 8}
    assert (out["label"][out["instance"] > 0] == labels.CITYSCAPES["car"]).all()
    # The SUV in block 7 stands behind the sedan of block 0 in the camera's lane: too few pixels to count,
    # though its unoccluded box would count (occlusion, not distance, drops it).
    assert 0 < (out["instance"] == 8).sum() < MIN_PIXELS
    ((u0, v0, u1, v1),) = [box for type_id, box in server.boxes.values() if type_id == convert.CAR_BLUEPRINTS["suv"][0]]
    assert (u1 - u0 + 1) * (v1 - v0 + 1) >= MIN_PIXELS
    np.testing.assert_array_equal(out["counts"], [1, 0, 0, 0, 1])
    # Houses (untagged engine cubes) are relabelled building.
    assert (out["label"] == labels.CITYSCAPES["building"]).sum() > 0
    assert set(np.unique(out["label"]).tolist()) <= {0, 7, 11, 23, 26}
    # ... but the void stays unlabeled.
    assert (out["label"][-3:] == 0).any()
    # The crop of the extra top rows: the sedan (block 0) appears where the delivered
    # image's camera model projects its box.
    rows, cols = np.nonzero(out["instance"] == 1)
    ((u0, v0, u1, v1),) = [
        box for type_id, box in server.boxes.values() if type_id == convert.CAR_BLUEPRINTS["sedan"][0]
    ]
    top = convert.crop_rows(H)
    assert (cols.min(), rows.min(), cols.max(), rows.max()) == (u0, v0 - top, u1, v1 - top)
    assert out["info"]["failed_cars"] == [] and out["info"]["frame"] == server.frame
    assert out["info"]["unmatched_vehicle_pixels"] == 0
    # Cars placed with physics off, box centre on the scene's car centre, box bottom on the road.
    # Only the three cameras remain.
    assert sorted(a.type_id for a in server.actors.values()) == sorted(
        ["sensor.camera.rgb", "sensor.camera.semantic_segmentation", "sensor.camera.instance_segmentation"]
    )
    cam = convert.camera_placement(scene)
    for a in server.actors.values():
        assert (a.transform.location.x, a.transform.location.y, a.transform.location.z) == pytest.approx(
            (cam.x, cam.y, cam.z)
        )
        assert a.attributes["fov"] == f"{convert.FOV_DEG:.6f}"
        assert (a.attributes["image_size_x"], a.attributes["image_size_y"]) == (str(W), str(H + convert.crop_rows(H)))
    # A second scene reuses the cameras; a second session does not regenerate the atlas.
    out2 = session.render(make_scene(road_length=8, intersection=0))
    assert (out2["instance"] == 0).all() and (out2["counts"] == 0).all()
    assert len(server.actors) == 3
    CarlaSession("fake", 2000, _config(timeout_s=1.0))
    assert server.generated == 1
    session.close()
    assert server.actors == {} and not server.settings.synchronous_mode


def test_car_placement(server):
    session = CarlaSession("fake", 2000, _config())
    placed = {}
    original = server.tick

    def spy(seconds=0.0):
        for a in server.actors.values():
            if a.type_id.startswith("vehicle."):
                placed[a.id] = (a.transform, a.physics, a.bounding_box)
        return original(seconds)

    server.tick = spy
    scene = make_scene(road_length=10, intersection=2, cars={3: (1, 1)})
    session.render(scene)
    ((t, physics, bb),) = placed.values()
    assert not physics
    centre = bb.get_world_vertices(t)
    xs, ys, zs = zip(*[(c.x, c.y, c.z) for c in centre], strict=True)
    spec = convert.car_specs(scene)[0].placement
    assert (np.mean(xs), np.mean(ys), min(zs)) == pytest.approx((spec.x, spec.y, 0.0), abs=1e-4)
    assert t.rotation.yaw == pytest.approx(180.0)


def test_failed_spawn_is_reported_and_not_counted(server):
    server.refuse.add(convert.CAR_BLUEPRINTS["van"][0])
    session = CarlaSession("fake", 2000, _config())
    out = session.render(make_scene(road_length=10, intersection=2, cars={1: (3, 0), 2: (0, 1)}))
    assert out["info"]["failed_cars"] == [1]
    np.testing.assert_array_equal(out["counts"], [1, 0, 0, 0, 0])


def test_error_mid_scene_destroys_everything(server):
    session = CarlaSession("fake", 2000, _config())
    server.fail_on_tick = True
    with pytest.raises(RuntimeError, match="time-out"):
        session.render(make_scene(**SCENE))
    assert server.actors == {}  # cars, houses and the cameras
    server.fail_on_tick = False
    out = session.render(make_scene(**SCENE))  # the session recovers: new cameras
    assert out["counts"].sum() == 2 and len(server.actors) == 3


def test_bad_scene_raises_scene_error(server):
    session = CarlaSession("fake", 2000, _config())
    with pytest.raises(SceneError, match="weather"):
        session.render(make_scene(weather=9))
    bad = make_scene()
    del bad["sun_dir"]
    with pytest.raises(SceneError, match="sun_dir"):
        session.render(bad)


def test_scenes_of_the_traffic_simulator(server):
    traffic_mod = pytest.importorskip("simulators.traffic", reason="simulators.traffic not importable")
    if not hasattr(traffic_mod, "TrafficSimulator"):
        pytest.skip("simulators.traffic.TrafficSimulator has not landed yet (issue 3)")
    import jax

    from simulators.carla.simulator import OPTIONAL_SCENE_KEYS, SCENE_KEYS

    traffic = traffic_mod.TrafficSimulator(H, W)
    scenes = jax.jit(lambda k: traffic.sample_scenes(k, traffic.preset("val"), 6))(jax.random.key(3))
    scenes = {k: np.asarray(v) for k, v in scenes.items() if k in SCENE_KEYS + OPTIONAL_SCENE_KEYS}
    session = CarlaSession("fake", 2000, _config())
    for i in range(6):
        scene = {k: v[i] for k, v in scenes.items()}
        out = session.render(scene)
        present = scene["car_present"]
        assert out["info"]["failed_cars"] == [] and out["info"]["failed_houses"] == []
        assert np.all(out["counts"] <= np.bincount(scene["car_type"][present], minlength=5))
        assert set(np.unique(out["instance"]).tolist()) <= set((np.flatnonzero(present) + 1).tolist()) | {0}
        assert len(server.actors) == 3


@pytest.mark.parametrize("server", ["0.9.16", "0.9.15"], indirect=True)
def test_rendering_parameters_set_the_cameras_and_post_process(server):
    """A scene's rendering parameters (simulators/traffic/scene.py): field of view, exposure and white balance
    become camera attributes (the cameras are respawned when they change), blur and noise post-process the image."""
    session = CarlaSession("fake", 2000, _config())
    warm = np.float32([2.0**0.2, 1.0, 2.0**-0.2])
    scene = dict(make_scene(**SCENE), camera_fov=np.float32(60.0), exposure=np.float32(1.0), color_gains=warm,
                 blur_sigma=np.float32(0.0), noise_sigma=np.float32(0.0), seed=np.uint32(5))  # fmt: skip
    out = session.render(scene)
    sensors = {a.type_id: a for a in server.actors.values()}
    assert len(sensors) == 3
    rgb = sensors["sensor.camera.rgb"].attributes
    assert rgb["fov"] == "60.000000" and rgb["exposure_compensation"] == "1.7500"  # the blueprint's 0.75 + 1 stop
    assert float(rgb["temp"]) > convert.WHITE_TEMP_K and "tint" not in rgb
    for t in ("sensor.camera.semantic_segmentation", "sensor.camera.instance_segmentation"):
        assert sensors[t].attributes["fov"] == "60.000000" and "exposure_compensation" not in sensors[t].attributes
    # the instance map is the cars seen with the narrower field of view (boxes projected with it, too)
    rows, cols = np.nonzero(out["instance"] == 1)
    ((u0, v0, u1, v1),) = [
        box for type_id, box in server.boxes.values() if type_id == convert.CAR_BLUEPRINTS["sedan"][0]
    ]
    top = convert.crop_rows(H)
    assert (cols.min(), rows.min(), cols.max(), rows.max()) == (u0, v0 - top, u1, v1 - top)
    assert out["info"]["unmatched_vehicle_pixels"] == 0
    ids = {a.id for a in server.actors.values()}
    session.render(scene)  # the same settings: the same cameras
    assert {a.id for a in server.actors.values()} == ids
    wider = dict(scene, camera_fov=np.float32(70.0))
    plain = session.render(wider)  # another field of view: new cameras (CARLA reads attributes at spawn)
    assert len(server.actors) == 3 and not {a.id for a in server.actors.values()} & ids
    # blur and noise: post-processing of the delivered image, labels untouched
    noisy = dict(wider, blur_sigma=np.float32(0.5), noise_sigma=np.float32(4.0))
    out = session.render(noisy)
    expect = convert.postprocess(plain["image"], convert.camera_settings(noisy, H), seed=5)
    np.testing.assert_array_equal(out["image"], expect)
    np.testing.assert_array_equal(out["label"], plain["label"])
    assert not np.array_equal(out["image"], plain["image"])
    # a scene without them: today's cameras
    session.render(make_scene(**SCENE))
    rgb = next(a for a in server.actors.values() if a.type_id == "sensor.camera.rgb").attributes
    assert rgb["fov"] == f"{convert.FOV_DEG:.6f}" and not {"exposure_compensation", "temp", "tint"} & set(rgb)
    bad = dict(scene, camera_fov=np.float32(np.nan))
    with pytest.raises(SceneError, match="camera_fov"):
        session.render(bad)
