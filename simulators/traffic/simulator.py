"""TrafficSimulator: appendix A's scene model with the pure-JAX renderer (the embedded default).

``sample(key, psi, num) = render(sample_scenes(key, psi, num))``. Both halves are
pure JAX; the scene dict in between (scene.py) is the contract a host renderer
(CARLA) draws from. ``render_batches`` (the host-level renderer of ``lts.make_split_step``
and of ``sample_dataset``) runs fixed-size chunks of ONE compiled renderer
(:func:`render_in_chunks`): the renderer takes ~25 CPU-seconds to compile at 96x320, and one
program then serves every data set size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.params import ParamSpec
from lts_jax.simulator import Field, SceneSimulatorBase, select_outputs
from simulators.traffic import layout as L
from simulators.traffic import scene as S
from simulators.traffic import visibility as V
from simulators.traffic.render import Renderer

NUM_CAR_TYPES = len(L.CAR_TYPES)


def render_in_chunks(render_fn: Callable, scenes: dict[str, jax.Array], chunk: int) -> dict[str, jax.Array]:
    """``render_fn`` over scenes [N, ...] in chunks of exactly ``chunk`` scenes; outputs [N, ...].

    ``render_fn`` is a jitted renderer; called only with ``chunk`` scenes, it compiles once for every
    N. The last chunk is padded by repeating its last scene, and the padding is dropped from the
    outputs. Host-level (dispatches the compiled chunks); not jittable.
    """
    if chunk < 1:
        raise ValueError(f"render chunk must be >= 1, got {chunk}")
    n = int(jax.tree_util.tree_leaves(scenes)[0].shape[0])
    parts = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        if stop - start == chunk:
            piece = jax.tree_util.tree_map(lambda x, a=start, b=stop: x[a:b], scenes)
        else:
            idx = np.minimum(np.arange(start, start + chunk), n - 1)
            piece = jax.tree_util.tree_map(lambda x, i=idx: jnp.take(x, i, axis=0), scenes)
        parts.append(jax.tree_util.tree_map(lambda x, m=stop - start: x[:m], render_fn(piece)))
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)


class TrafficSimulator(SceneSimulatorBase):
    """The traffic scene simulator (a ``lts_jax.simulator.SceneSimulator``; registry name "traffic").

    Args:
      height, width: image size (default 96x320, KITTI's aspect; 192x640 at paper scale).
      learn_intersection: if True the ``intersection`` block is learnable (frozen by default,
        uniform L/T/X).
      learn_rendering: if True psi has the rendering parameters (scene.py: camera height, pitch and
        field of view, exposure, colour balance, blur, noise), learnable; a list of block names takes
        only those (scene.RENDERING_BLOCKS); False (default): psi and images as without them (today's
        camera).
      visibility: which cars ``counts`` counts: a visibility.VisibilityRule or its fields as a dict
        (min_pixels at 96x320, min_share, min_transmittance); default layout's thresholds (100 pixels,
        40% of the car's projection, fog transmittance 0.3; visibility.py says why).
      min_visible_pixels: the rule before issue 13, for rebuilding older runs (results.json entries with
        this key): a car counts with at least this many pixels at THIS image size, nothing else. Not
        together with ``visibility``.
      materialize: the renderer's XLA:CPU tuning (render.Renderer); same images either way. Default:
        on for the CPU backend only (an H100 renders 119k images/s at 96x320 with it, 141k without;
        benchmarks/README.md).
      render_chunk: scenes per call of the compiled renderer in ``render_batches``.
      keep: the outputs rendered (default all of :meth:`output_spec`), e.g. ``("image", "counts")``
        for counting: the rest is never computed or copied.

    Attributes:
      spec: the ParamSpec (scene.make_spec); presets "default", "val", "adversarial".
      outputs: ``{name: Field}`` of the kept outputs.
      renderer: the :class:`Renderer`.
    """

    def __init__(
        self,
        height: int = 96,
        width: int = 320,
        learn_intersection: bool = False,
        min_visible_pixels: int | None = None,
        materialize: bool | None = None,
        render_chunk: int = 100,
        keep: Sequence[str] | None = None,
        learn_rendering: bool | Sequence[str] = False,
        visibility: V.VisibilityRule | Mapping[str, float] | None = None,
    ):
        if render_chunk < 1:
            raise ValueError(f"render_chunk = {render_chunk} is out of range; accepted: an integer >= 1")
        self.height, self.width = int(height), int(width)
        self.learn_intersection = bool(learn_intersection)
        blocks = S.rendering_blocks(learn_rendering)
        # True (all), False (none) or the list of blocks: what describe() records
        self.learn_rendering = True if blocks == S.RENDERING_BLOCKS else list(blocks) if blocks else False
        self.spec: ParamSpec = S.make_spec(self.learn_intersection, blocks)
        if materialize is None:
            materialize = jax.default_backend() == "cpu"
        self.visibility = V.make_rule(visibility, min_visible_pixels, self.height, self.width)
        self.renderer = Renderer(self.height, self.width, self.visibility, materialize=materialize,
                                 rendering_params="camera" in blocks)  # fmt: skip
        self.min_visible_pixels = self.renderer.min_visible_pixels
        self.render_chunk = int(render_chunk)
        self.outputs = select_outputs(self.output_spec(self.height, self.width), keep)
        self._render_chunk_fn = jax.jit(self.render)

    @staticmethod
    def output_spec(height: int, width: int) -> dict[str, Field]:
        """Every output of the renderer at ``height`` x ``width``: image, label (Cityscapes ids),
        instance (0 none, else 1 + block) and counts (visible cars per type)."""
        return {
            "image": Field((height, width, 3), jnp.uint8),
            "label": Field((height, width), jnp.uint8),
            "instance": Field((height, width), jnp.int32),
            "counts": Field((NUM_CAR_TYPES,), jnp.int32),
        }

    def __repr__(self) -> str:
        return f"TrafficSimulator({self.height}x{self.width}, {list(self.outputs)}, {self.spec!r})"

    def describe(self) -> dict:
        """What results.json records to rebuild this simulator: ``simulators.make(**sim.describe())``.
        (render_chunk, keep and materialize change how it runs, not what it samples.)"""
        return {
            "name": "traffic",
            "height": self.height,
            "width": self.width,
            "learn_intersection": self.learn_intersection,
            "learn_rendering": self.learn_rendering,
            "visibility": self.visibility.describe(),
        }

    def select(self, keys: Sequence[str]) -> TrafficSimulator:
        """The same simulator rendering only the outputs ``keys``."""
        return TrafficSimulator(
            self.height,
            self.width,
            self.learn_intersection,
            materialize=self.renderer.materialize,
            render_chunk=self.render_chunk,
            keep=keys,
            learn_rendering=self.learn_rendering,
            visibility=self.visibility,
        )

    # ----- psi ---------------------------------------------------------------------------
    def default_psi(self) -> np.ndarray:
        """float32 [dim]: the neutral point (uniform categoricals, p = 0.5, unit jitter, today's camera)."""
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
        """Renders scene dicts (leading axis num) -> the kept ``outputs``. Jittable."""
        out = self.renderer.render(scenes)
        return {k: out[k] for k in self.outputs}

    def render_batches(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Host-level: scenes [N, ...] -> outputs [N, ...] in chunks of ``render_chunk`` scenes of one
        compiled renderer (:func:`render_in_chunks`). Not jittable."""
        return render_in_chunks(self._render_chunk_fn, scenes, self.render_chunk)

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """``{"image": uint8 [num, H, W, 3], "label": uint8 [num, H, W], "instance": int32 [num, H, W],
        "counts": int32 [num, 5]}`` (the kept ones). Jittable and vmappable over (key, psi); ``num`` static.

        Under jit/vmap only psi's shape can be checked (values are traced); call
        :meth:`check_psi` on concrete values first (the host-facing helpers do).
        """
        return self.render(self.sample_scenes(key, psi, num))

    def sample_checked(self, key: jax.Array, psi, num: int) -> dict[str, np.ndarray]:
        """Host-facing: validates a concrete psi [dim], samples (:meth:`sample_dataset`), returns NumPy arrays."""
        psi = self.check_psi(psi)
        if psi.ndim != 1:
            raise ValueError(f"psi has shape {list(psi.shape)}; expected [{self.spec.dim}]: {self.spec.layout()}")
        return jax.tree_util.tree_map(np.asarray, self.sample_dataset(key, psi, num))
