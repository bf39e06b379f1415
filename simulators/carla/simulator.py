"""CarlaSimulator: the traffic scene model, rendered by CARLA servers.

``G(x, y | psi) = R(S(rho | psi), P(phi | psi))`` (WORKSPACE.md, "The method") with S and P the
traffic simulator's pure-JAX scene sampler and R a pool of CARLA servers: a
``lts_jax.simulator.SceneSimulator`` whose ``sample_scenes`` is
``TrafficSimulator.sample_scenes`` (so the scenes are the very ones the pure-JAX
renderer would draw for the same key and psi) and whose ``render`` is the host
bridge (``lts_jax.host.host_renderer``) around :meth:`CarlaSimulator.render_host`.
Under ``vmap`` over the K candidates the host function runs once with all K x num
scenes, which the pool renders concurrently; ``lts.make_split_step`` renders the
K x M scenes of an iteration with one such call too (the default ``render_batches``).
Passing the scenes (not psi) keeps JAX out of the host callback: calling back into
JAX from a callback can deadlock on accelerators.

The outputs match the traffic simulator's: ``{"image": uint8 [num, H, W, 3],
"label": uint8 [num, H, W] Cityscapes ids, "instance": int32 [num, H, W] (0 none,
else 1 + block), "counts": int32 [num, 5]}`` (the kept ones, ``keep``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lts_jax.host import host_renderer
from lts_jax.simulator import SceneSimulatorBase, select_outputs
from simulators.carla.pool import CarlaPool, NoCarlaServerError, find_no_server_error, parse_hosts, probe
from simulators.carla.session import RENDERING_KEYS, CarlaSession, RenderConfig
from simulators.traffic.simulator import TrafficSimulator

# The scene fields the renderer reads (the traffic simulator's scene description),
# and the optional extras it draws when the scenes have them (the row of houses
# across the end of the road; the rendering parameters and the seed of the added
# noise, convert.camera_settings). The other extras (trees, poles, colours of houses)
# have no CARLA counterpart here; see simulators/carla/README.md.
OPTIONAL_SCENE_KEYS = ("end_present", "end_height", *RENDERING_KEYS, "seed")
SCENE_KEYS = (
    "road_length", "intersection", "car_present", "car_type", "car_lane", "car_pos", "car_heading",
    "car_color", "house_present", "house_height", "weather", "camera_height", "camera_pitch", "sun_dir",
)  # fmt: skip
# RenderConfig fields that describe() records (JSON values; a custom house_model is not recorded).
_DESCRIBED_CONFIG = ("map_timeout_s", "fixed_delta_seconds", "warmup_ticks", "instance_mode")


class CarlaSimulator(SceneSimulatorBase):
    """The traffic scene model rendered by CARLA (see the module docstring; registry name "carla").

    Does not connect when built: the pool connects on the first render (or :meth:`connect`).

    Args:
      hosts: ``"host:port,..."`` or a list of ``"host:port"``.
      height, width: image size.
      learn_intersection: as TrafficSimulator's (used when ``traffic`` is not given).
      learn_rendering: as TrafficSimulator's: psi with the rendering parameters, which the
        sessions map to camera attributes and post-processing (convert.camera_settings).
      traffic: the scene sampler, with ``.spec`` and ``.sample_scenes(key, psi,
        num)``; default ``TrafficSimulator(height, width, learn_intersection)``.
      keep: the outputs rendered (default all four).
      timeout_s, max_retries, backoff_s: the pool's failure handling (CarlaPool).
      pool: a ready pool (tests); overrides hosts and the failure settings.
      **render_kw: further RenderConfig fields (fixed_delta_seconds, warmup_ticks,
        house_model, instance_mode, min_visible_pixels, map_timeout_s).
    """

    def __init__(
        self,
        hosts: str | Sequence[str] | None,
        height: int,
        width: int,
        *,
        learn_intersection: bool = False,
        learn_rendering: bool | Sequence[str] = False,
        traffic: Any = None,
        keep: Sequence[str] | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        pool: CarlaPool | None = None,
        **render_kw: Any,
    ):
        self.height, self.width = int(height), int(width)
        self.learn_intersection = bool(learn_intersection)
        if traffic is None:
            traffic = TrafficSimulator(self.height, self.width, learn_intersection=self.learn_intersection,
                                       learn_rendering=learn_rendering)  # fmt: skip
        self.traffic = traffic
        self.learn_rendering = getattr(traffic, "learn_rendering", bool(learn_rendering))
        self.spec = self.traffic.spec
        self.outputs = select_outputs(TrafficSimulator.output_spec(self.height, self.width), keep)
        # Count visibility exactly as the pure-JAX renderer of the same scenes does.
        if render_kw.get("min_visible_pixels") is None and render_kw.get("visibility") is None:
            render_kw["visibility"] = getattr(self.traffic, "visibility", None)
        self.config = RenderConfig(self.height, self.width, timeout_s=timeout_s, **render_kw)
        self.min_visible_pixels = self.config.min_visible_pixels
        if pool is None:
            config = self.config
            pool = CarlaPool(
                hosts,
                lambda host, port: CarlaSession(host, port, config),
                timeout_s=timeout_s,
                max_retries=max_retries,
                backoff_s=backoff_s,
                probe_fn=probe,  # a dead or silent server is known before the CARLA client waits on it
            )
        self.pool = pool
        self.last_info: list[dict] = []  # per-scene info of the latest host call, for logs and debugging

    def __repr__(self) -> str:
        return f"CarlaSimulator({self.height}x{self.width}, {self.pool.hosts}, {list(self.outputs)})"

    def describe(self) -> dict:
        """What results.json records to rebuild this simulator: ``simulators.make(**sim.describe())``."""
        out = {
            "name": "carla",
            "hosts": ",".join(self.pool.hosts),
            "height": self.height,
            "width": self.width,
            "learn_intersection": self.learn_intersection,
            "learn_rendering": self.learn_rendering,
            "timeout_s": self.pool.timeout_s,
            "max_retries": self.pool.max_retries,
            "backoff_s": self.pool.backoff_s,
        }
        out |= {k: getattr(self.config, k) for k in _DESCRIBED_CONFIG}
        return out | {"visibility": self.config.visibility.describe()}

    def select(self, keys: Sequence[str]) -> CarlaSimulator:
        """The same simulator (same pool and servers) rendering only the outputs ``keys``."""
        view = copy.copy(self)
        view.__dict__.pop("_compiled", None)
        view.outputs = select_outputs(TrafficSimulator.output_spec(self.height, self.width), keys)
        return view

    @property
    def fatal_error(self) -> NoCarlaServerError | None:
        """The pool's NoCarlaServerError once every server is gone, else None."""
        return self.pool.fatal_error

    def connect(self) -> list[str]:
        """Connects every server now; returns the live hosts (NoCarlaServerError if none)."""
        return self.pool.connect()

    def close(self) -> None:
        self.pool.close()

    def sample_scenes(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """The traffic simulator's scenes for one psi [spec.dim], leading axis ``num``. Pure JAX."""
        return self.traffic.sample_scenes(key, psi, num)

    def render(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Scenes (leading axis num) -> outputs, rendered on the pool through the host bridge: one host
        call for all vmapped candidates. Jittable and vmappable."""
        missing = [k for k in SCENE_KEYS if k not in scenes]
        if missing:
            raise KeyError(f"the traffic simulator's scenes lack {missing}; the CARLA renderer needs {SCENE_KEYS}")
        scenes = {k: scenes[k] for k in SCENE_KEYS + OPTIONAL_SCENE_KEYS if k in scenes}
        return host_renderer(self.render_host, self.outputs)(scenes)

    def render_host(self, scenes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host function of the bridge: scene arrays [N, ...] -> the kept outputs [N, ...]. Not jittable."""
        scenes = {k: np.asarray(v) for k, v in scenes.items()}
        total = int(scenes["road_length"].shape[0])
        results = self.pool.render([{k: v[i] for k, v in scenes.items()} for i in range(total)])
        self.last_info = [r.get("info", {}) for r in results]
        out = {}
        for name, field in self.outputs.items():
            if total:
                out[name] = np.stack([np.asarray(r[name], field.dtype) for r in results])
            else:
                out[name] = np.zeros((0, *field.shape), field.dtype)
        return out


__all__ = ["CarlaSimulator", "NoCarlaServerError", "find_no_server_error", "parse_hosts", "SCENE_KEYS"]
