"""TrafficSimulator: appendix A's scene model with the pure-JAX renderer (the embedded default).

``sample(key, psi, num) = render(sample_scenes(key, psi, num))``. Both halves are
pure JAX; the scene dict in between (scene.py) is the contract a host renderer
(CARLA) draws from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.params import ParamSpec
from simulators.traffic import layout as L
from simulators.traffic import scene as S
from simulators.traffic.render import Renderer


class TrafficSimulator:
    """The traffic scene simulator (implements ``lts_jax.simulator.Simulator``).

    Args:
      height, width: image size (default 96x320, KITTI's aspect; 192x640 at paper scale).
      learn_intersection: if True the ``intersection`` block is learnable (frozen by default,
        uniform L/T/X).
      min_visible_pixels: visibility threshold for ``counts``; default layout.MIN_VISIBLE_PIXELS
        (10) scaled with the image area relative to 96x320.
      materialize: the renderer's XLA:CPU tuning (render.Renderer); same images either way. Default:
        on for the CPU backend only (an H100 renders 119k images/s at 96x320 with it, 141k without;
        benchmarks/README.md).

    Attributes:
      spec: the ParamSpec (scene.make_spec); presets "default", "val", "adversarial".
      renderer: the :class:`Renderer`.
    """

    def __init__(
        self,
        height: int = 96,
        width: int = 320,
        learn_intersection: bool = False,
        min_visible_pixels: int | None = None,
        materialize: bool | None = None,
    ):
        self.height, self.width = int(height), int(width)
        self.spec: ParamSpec = S.make_spec(learn_intersection=learn_intersection)
        if materialize is None:
            materialize = jax.default_backend() == "cpu"
        self.renderer = Renderer(self.height, self.width, min_visible_pixels, materialize=materialize)
        self.min_visible_pixels = self.renderer.min_visible_pixels

    def __repr__(self) -> str:
        return f"TrafficSimulator({self.height}x{self.width}, {self.spec!r})"

    # ----- psi ---------------------------------------------------------------------------
    def default_psi(self) -> np.ndarray:
        """float32 [dim]: the neutral point (uniform categoricals, p = 0.5, unit jitter)."""
        return self.spec.zeros()

    def preset(self, name: str) -> np.ndarray:
        """float32 [dim] of a named preset ("default", "val", "adversarial"; scene.PRESETS)."""
        return self.spec.preset(name)

    def check_psi(self, psi, what: str = "psi") -> np.ndarray:
        """Host-side check of a concrete psi [..., dim]; raises ValueError naming the expected
        shape and the blocks when the shape is wrong or an entry is not finite."""
        return self.spec.validate(psi, what=what)

    def _check_traced(self, psi) -> None:
        # Inside jit the values are unknown; the shape can still be checked. A concrete
        # psi (eager call) is checked fully.
        shape = tuple(jnp.shape(psi))
        if len(shape) != 1 or shape[0] != self.spec.dim:
            raise ValueError(
                f"psi has shape {list(shape)}; expected one psi of shape [{self.spec.dim}]: {self.spec.layout()}"
            )
        try:
            concrete = np.asarray(psi)
        except jax.errors.TracerArrayConversionError:
            return  # traced (under jit / vmap): values unknown until run time
        self.check_psi(concrete)

    # ----- sampling -------------------------------------------------------------------------
    def sample_scenes(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """Scene descriptions (scene.py docstring), leading axis ``num``. Jittable."""
        self._check_traced(psi)
        return S.sample_scenes(self.spec, key, psi, num)

    def render(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Renders scene dicts (leading axis num). Jittable."""
        return self.renderer.render(scenes)

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """``{"image": uint8 [num, H, W, 3], "label": uint8 [num, H, W], "instance": int32 [num, H, W],
        "counts": int32 [num, 5]}``. Jittable and vmappable over (key, psi); ``num`` static.

        Under jit/vmap only psi's shape can be checked (values are traced); call
        :meth:`check_psi` on concrete values first (the host-facing helpers do).
        """
        return self.render(self.sample_scenes(key, psi, num))

    def sample_checked(self, key: jax.Array, psi, num: int) -> dict[str, np.ndarray]:
        """Host-facing: validates a concrete psi [dim], samples under jit, returns NumPy arrays."""
        psi = self.check_psi(psi)
        if psi.ndim != 1:
            raise ValueError(f"psi has shape {list(psi.shape)}; expected [{self.spec.dim}]: {self.spec.layout()}")
        out = self._jitted(num)(key, jnp.asarray(psi))
        return jax.tree_util.tree_map(np.asarray, out)

    def _jitted(self, num: int):
        cache = self.__dict__.setdefault("_jit_cache", {})
        if num not in cache:
            cache[num] = jax.jit(lambda k, p: self.sample(k, p, num))
        return cache[num]


NUM_CAR_TYPES = len(L.CAR_TYPES)
