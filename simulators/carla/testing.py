"""Hand-made scenes and stand-ins for tests and smoke checks of the CARLA backend.

``make_scene`` writes one scene description by hand (NumPy, the traffic
simulator's field names and shapes); ``FakeTraffic`` is a tiny pure-JAX scene
sampler with the traffic simulator's interface; ``FakeSession`` renders without
a server (deterministic images that encode the scene), for the pool and bridge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax import params
from simulators.traffic import layout as L


def make_scene(
    road_length: int = 10,
    intersection: int = 1,
    cars: Mapping[int, tuple[int, int]] | None = None,
    houses: Mapping[tuple[int, int], float] | None = None,
    weather: int = 0,
    camera_height: float = L.CAMERA_HEIGHT,
    camera_pitch: float = 0.0,
    sun_dir=(0.3, 0.8, 0.5),
) -> dict[str, np.ndarray]:
    """One scene. ``cars``: {block: (car_type, lane)}; ``houses``: {(block, side): height}."""
    n = L.MAX_BLOCKS
    scene = {
        "road_length": np.int32(road_length),
        "intersection": np.int32(intersection),
        "car_present": np.zeros(n, bool),
        "car_type": np.zeros(n, np.int32),
        "car_lane": np.zeros(n, np.int32),
        "car_pos": np.zeros((n, 2), np.float32),
        "car_heading": np.zeros(n, np.float32),
        "car_color": np.full((n, 3), 0.5, np.float32),
        "house_present": np.zeros((n, 2), bool),
        "house_height": np.full((n, 2), 6.0, np.float32),
        "weather": np.int32(weather),
        "camera_height": np.float32(camera_height),
        "camera_pitch": np.float32(camera_pitch),
        "sun_dir": np.asarray(sun_dir, np.float32),
    }
    for b, (t, lane) in (cars or {}).items():
        scene["car_present"][b] = True
        scene["car_type"][b] = t
        scene["car_lane"][b] = lane
        x = L.LANE_WIDTH / 2 * (1 if lane == 0 else -1)
        scene["car_pos"][b] = (x, (b + 0.5) * L.BLOCK_LENGTH)
        scene["car_heading"][b] = 0.0 if lane == 0 else np.pi
        scene["car_color"][b] = ((b * 37) % 255 / 255, (b * 91) % 255 / 255, 0.4)
    for (b, side), h in (houses or {}).items():
        scene["house_present"][b, side] = True
        scene["house_height"][b, side] = h
    return scene


class FakeTraffic:
    """A pure-JAX scene sampler with the traffic simulator's interface (spec, sample_scenes)."""

    def __init__(self):
        self.spec = params.ParamSpec(
            [
                params.bernoulli("car_presence"),
                params.categorical("car_type", labels=L.CAR_TYPES),
                params.categorical("weather", labels=L.WEATHERS),
            ]
        )

    def sample_scenes(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        # One uniform draw, turned into every field by inverse CDFs: each random
        # primitive adds compile time, and tests compile this often.
        n = L.MAX_BLOCKS
        d = self.spec.distributions(psi)
        u = jax.random.uniform(key, (num, n, 8))

        def categorical(v, probs):
            return jnp.sum(v[..., None] > jnp.cumsum(probs)[:-1], axis=-1).astype(jnp.int32)

        length = (L.MIN_BLOCKS + jnp.floor(u[:, 0, 0] * L.NUM_LENGTHS)).astype(jnp.int32)
        present = (u[..., 1] < d["car_presence"]["probs"][0]) & (jnp.arange(n) < length[:, None])
        lane = (u[..., 3] < 0.5).astype(jnp.int32)
        z = (jnp.arange(n) + 0.5) * L.BLOCK_LENGTH
        x = jnp.where(lane == 0, L.LANE_WIDTH / 2, -L.LANE_WIDTH / 2)
        return {
            "road_length": length,
            "intersection": jnp.floor(u[:, 0, 4] * 3).astype(jnp.int32),
            "car_present": present,
            "car_type": categorical(u[..., 2], d["car_type"]["probs"]),
            "car_lane": lane,
            "car_pos": jnp.stack([x, jnp.broadcast_to(z, x.shape)], -1).astype(jnp.float32),
            "car_heading": jnp.where(lane == 0, 0.0, jnp.pi).astype(jnp.float32),
            "car_color": u[..., 5:8],
            "house_present": jnp.zeros((num, n, 2), bool),
            "house_height": jnp.full((num, n, 2), 6.0),
            "weather": categorical(u[:, 1, 4], d["weather"]["probs"]),
            "camera_height": jnp.full((num,), L.CAMERA_HEIGHT),
            "camera_pitch": jnp.zeros((num,)),
            "sun_dir": jnp.broadcast_to(jnp.array([0.3, 0.8, 0.5]), (num, 3)),
        }


class FakeSession:
    """Renders a scene without a server: outputs encode the scene so tests can check routing.

    image[..., 0] = road_length, image[..., 1] = intersection, label = weather,
    instance = 1 + first present block (or 0), counts = present cars per type.
    ``calls`` (shared, thread-safe) records (session name, road_length) per render;
    ``delay_s`` makes each render take that long (so every server of a pool gets work).
    """

    calls: list = []
    _lock = threading.Lock()

    def __init__(self, host: str, port: int, height: int = 4, width: int = 6, delay_s: float = 0.0):
        self.name = f"{host}:{port}"
        self.height, self.width = height, width
        self.delay_s = delay_s
        self.closed = False

    def render(self, scene):
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            FakeSession.calls.append((self.name, int(scene["road_length"])))
        h, w = self.height, self.width
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = int(scene["road_length"])
        image[..., 1] = int(scene["intersection"])
        present = np.asarray(scene["car_present"], bool)
        first = int(np.argmax(present)) + 1 if present.any() else 0
        counts = np.bincount(np.asarray(scene["car_type"])[present], minlength=len(L.CAR_TYPES)).astype(np.int32)
        return {
            "image": image,
            "label": np.full((h, w), int(scene["weather"]), np.uint8),
            "instance": np.full((h, w), first, np.int32),
            "counts": counts,
            "info": {"server": self.name},
        }

    def close(self):
        self.closed = True
