"""CarlaSimulator: the traffic scene model, rendered by CARLA servers.

``G(x, y | psi) = R(S(rho | psi), P(phi | psi))`` (PAPER.md) with S and P the
traffic simulator's pure-JAX scene sampler and R a pool of CARLA servers.
``sample`` samples the scenes in JAX (``TrafficSimulator.sample_scenes``, so
they are the very scenes the pure-JAX renderer would draw for the same key and
psi) and hands the scene arrays to the host bridge (``lts_jax.simulator.host_call``).
Under ``vmap`` over the K candidates the host function runs once with all K x num
scenes, which the pool renders concurrently. Passing the scenes (not psi) keeps
JAX out of the host callback: calling back into JAX from a callback can deadlock
on accelerators.

The output matches the traffic simulator's: ``{"image": uint8 [num, H, W, 3],
"label": uint8 [num, H, W] Cityscapes ids, "instance": int32 [num, H, W] (0 none,
else 1 + block), "counts": int32 [num, 5]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.simulator import host_call
from simulators.carla.pool import CarlaPool, NoCarlaServerError, find_no_server_error, parse_hosts
from simulators.carla.session import CarlaSession, RenderConfig
from simulators.traffic import layout as L

# The scene fields the renderer reads (the traffic simulator's scene description),
# and the optional extras it draws when the scenes have them (the row of houses
# across the end of the road). The other extras (trees, poles, colours of houses,
# texture seeds) have no CARLA counterpart here; see simulators/carla/README.md.
OPTIONAL_SCENE_KEYS = ("end_present", "end_height")
SCENE_KEYS = (
    "road_length", "intersection", "car_present", "car_type", "car_lane", "car_pos", "car_heading",
    "car_color", "house_present", "house_height", "weather", "camera_height", "camera_pitch", "sun_dir",
)  # fmt: skip
NUM_CAR_TYPES = len(L.CAR_TYPES)


def _default_traffic(height: int, width: int):
    try:
        from simulators.traffic import TrafficSimulator
    except ImportError as e:  # pragma: no cover - depends on the traffic package's state
        raise ImportError(
            "CarlaSimulator samples its scenes with simulators.traffic.TrafficSimulator, which failed to import; "
            "pass traffic=... explicitly"
        ) from e
    return TrafficSimulator(height, width)


class CarlaSimulator:
    """The Simulator protocol, rendered by CARLA (see the module docstring).

    Args:
      hosts: ``"host:port,..."`` or a list of ``"host:port"``.
      height, width: image size.
      traffic: the scene sampler, with ``.spec`` and ``.sample_scenes(key, psi,
        num)``; default ``TrafficSimulator(height, width)``.
      timeout_s, max_retries, backoff_s: the pool's failure handling (CarlaPool).
      pool: a ready pool (tests); overrides hosts and the failure settings.
      **render_kw: further RenderConfig fields (fixed_delta_seconds, warmup_ticks,
        house_model, instance_mode, min_visible_pixels, map_timeout_s).
    """

    def __init__(
        self,
        hosts: str | Sequence[str],
        height: int,
        width: int,
        *,
        traffic: Any = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        pool: CarlaPool | None = None,
        **render_kw: Any,
    ):
        self.height, self.width = int(height), int(width)
        self.traffic = traffic if traffic is not None else _default_traffic(self.height, self.width)
        self.spec = self.traffic.spec
        # Count visibility exactly as the pure-JAX renderer of the same scenes does.
        if render_kw.get("min_visible_pixels") is None and hasattr(self.traffic, "min_visible_pixels"):
            render_kw["min_visible_pixels"] = int(self.traffic.min_visible_pixels)
        self.config = RenderConfig(self.height, self.width, timeout_s=timeout_s, **render_kw)
        if pool is None:
            config = self.config
            pool = CarlaPool(
                hosts,
                lambda host, port: CarlaSession(host, port, config),
                timeout_s=timeout_s,
                max_retries=max_retries,
                backoff_s=backoff_s,
            )
        self.pool = pool
        self.last_info: list[dict] = []  # per-scene info of the latest host call, for logs and debugging

    @property
    def fatal_error(self) -> NoCarlaServerError | None:
        """The pool's NoCarlaServerError once every server is gone, else None."""
        return self.pool.fatal_error

    def connect(self) -> list[str]:
        """Connects every server now (drivers call this before the first iteration); returns the live hosts."""
        return self.pool.connect()

    def close(self) -> None:
        self.pool.close()

    def output_shapes(self, num: int) -> dict[str, jax.ShapeDtypeStruct]:
        h, w = self.height, self.width
        return {
            "image": jax.ShapeDtypeStruct((num, h, w, 3), jnp.uint8),
            "label": jax.ShapeDtypeStruct((num, h, w), jnp.uint8),
            "instance": jax.ShapeDtypeStruct((num, h, w), jnp.int32),
            "counts": jax.ShapeDtypeStruct((num, NUM_CAR_TYPES), jnp.int32),
        }

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """Samples ``num`` scenes for one psi [spec.dim] in JAX and renders them on the pool.

        Jittable and vmappable over (key, psi): the rendering goes through the
        host bridge, once for all vmapped candidates.
        """
        scenes = self.traffic.sample_scenes(key, psi, num)
        missing = [k for k in SCENE_KEYS if k not in scenes]
        if missing:
            raise KeyError(f"the traffic simulator's scenes lack {missing}; the CARLA renderer needs {SCENE_KEYS}")
        scenes = {k: scenes[k] for k in SCENE_KEYS + OPTIONAL_SCENE_KEYS if k in scenes}
        return host_call(self.render_batch, self.output_shapes(num), scenes)

    def render_batch(self, scenes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host function of the bridge: scene arrays [B, num, ...] -> outputs [B, num, ...]. Not jittable."""
        scenes = {k: np.asarray(v) for k, v in scenes.items()}
        lead = scenes["road_length"].shape  # (B, num)
        flat = {k: v.reshape((-1, *v.shape[len(lead) :])) for k, v in scenes.items()}
        total = int(np.prod(lead, dtype=np.int64))
        results = self.pool.render([{k: v[i] for k, v in flat.items()} for i in range(total)])
        self.last_info = [r.get("info", {}) for r in results]
        out = {}
        for name, spec in self.output_shapes(1).items():
            if total:
                stacked = np.stack([np.asarray(r[name], spec.dtype) for r in results])
            else:
                stacked = np.zeros((0, *spec.shape[1:]), spec.dtype)
            out[name] = stacked.reshape((*lead, *spec.shape[1:]))
        return out


def make_simulator(hosts: str, height: int, width: int, **kw: Any) -> CarlaSimulator:
    """The experiments' factory for ``--simulator=carla --carla_hosts=host:port,...``.

    Validates the host string first (ValueError naming the bad entry) and that
    the carla client is installed (ImportError saying how to install it). Does
    not connect; call ``.connect()`` to.
    """
    parse_hosts(hosts)
    try:
        import carla  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "--simulator=carla needs the CARLA Python client: pip install 'lts_jax[carla]' "
            "(or carla==<your server's version>); see simulators/carla/README.md"
        ) from e
    return CarlaSimulator(hosts, height, width, **kw)


__all__ = ["CarlaSimulator", "NoCarlaServerError", "find_no_server_error", "make_simulator", "SCENE_KEYS"]
