"""Renders real scenes on CARLA servers and checks the output contract.

Runs only when LTS_CARLA_HOSTS names running servers, e.g.
``LTS_CARLA_HOSTS=localhost:2000 pytest tests/simulators/carla/test_integration.py`` (simulators/carla/README.md
says how to start them). The first run on a server generates the atlas world
(tens of seconds).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

HOSTS = os.environ.get("LTS_CARLA_HOSTS", "").strip()
if not HOSTS:
    pytest.skip(
        "LTS_CARLA_HOSTS is not set: no CARLA server to render on (see simulators/carla/README.md)",
        allow_module_level=True,
    )
carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed (pip install 'lts_jax[carla]')")

from simulators.carla import CarlaPool, CarlaSession, CarlaSimulator, RenderConfig, labels  # noqa: E402
from simulators.carla.testing import FakeTraffic, make_scene  # noqa: E402
from simulators.traffic import layout as L  # noqa: E402

H, W = 96, 320
ALLOWED_LABELS = set(labels.CITYSCAPES.values())


@pytest.fixture(scope="module")
def pool():
    config = RenderConfig(H, W, timeout_s=60.0)
    p = CarlaPool(HOSTS, lambda h, port: CarlaSession(h, port, config), timeout_s=60.0, max_retries=1, backoff_s=2.0)
    p.connect()
    yield p
    p.close()


def _check(result, scene):
    assert result["image"].shape == (H, W, 3) and result["image"].dtype == np.uint8
    assert result["label"].shape == (H, W) and result["label"].dtype == np.uint8
    assert result["instance"].shape == (H, W) and result["instance"].dtype == np.int32
    assert result["counts"].shape == (len(L.CAR_TYPES),) and result["counts"].dtype == np.int32
    assert set(np.unique(result["label"]).tolist()) <= ALLOWED_LABELS
    present = np.asarray(scene["car_present"])
    blocks = set((np.flatnonzero(present) + 1).tolist())
    assert set(np.unique(result["instance"]).tolist()) <= blocks | {0}
    # Instance pixels are car pixels.
    inst = result["instance"] > 0
    assert (result["label"][inst] == labels.CITYSCAPES["car"]).mean() > 0.95
    per_type = np.bincount(np.asarray(scene["car_type"])[present], minlength=len(L.CAR_TYPES))
    assert np.all(result["counts"] <= per_type)
    assert result["image"].std() > 1.0  # not a blank frame
    lower = result["label"][H // 2 :]
    assert (lower == labels.CITYSCAPES["road"]).mean() > 0.1
    assert result["info"]["failed_cars"] == []


def test_renders_a_scene_with_cars_and_houses(pool):
    scene = make_scene(
        road_length=10, intersection=2,
        cars={1: (0, 0), 3: (3, 1), 6: (4, 0)},
        houses={(0, 0): 8.0, (1, 1): 5.0, (4, 0): 10.0, (5, 1): 7.0},
    )  # fmt: skip
    (result,) = pool.render([scene])
    _check(result, scene)
    # The sedan one block ahead in the camera's lane is plainly visible.
    assert (result["instance"] == 2).sum() >= labels.min_visible_pixels(H, W)
    assert result["counts"][0] == 1
    assert (result["label"] == labels.CITYSCAPES["building"]).any()
    assert (result["label"][: H // 3] == labels.CITYSCAPES["sky"]).any()


def test_every_weather_and_intersection_renders_and_cleans_up(pool):
    scenes = [
        make_scene(road_length=8 + 4 * i, intersection=i, weather=w, cars={2: (w, 0)})
        for w in range(len(L.WEATHERS))
        for i in range(3)
    ]
    results = pool.render(scenes)
    for r, s in zip(results, scenes, strict=True):
        _check(r, s)
    # Every scene actor is gone afterwards (only our three cameras remain of ours).
    for server in pool.servers:
        if server.session is None:
            continue
        actors = server.session.world.get_actors()
        assert len(actors.filter("vehicle.*")) == 0
        assert len(actors.filter("static.prop.mesh")) == 0


def test_simulator_through_the_bridge(pool):
    sim = CarlaSimulator(None, H, W, traffic=FakeTraffic(), pool=pool)
    keys = jax.random.split(jax.random.key(0), 2)
    psi = jnp.zeros((2, sim.spec.dim))
    out = jax.jit(jax.vmap(lambda k, p: sim.sample(k, p, 2)))(keys, psi)
    assert out["image"].shape == (2, 2, H, W, 3)
    assert out["counts"].shape == (2, 2, len(L.CAR_TYPES))
    assert set(np.unique(np.asarray(out["label"])).tolist()) <= ALLOWED_LABELS
