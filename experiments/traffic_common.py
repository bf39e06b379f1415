"""What the traffic experiments share: simulator flags, the simulator, data rendering, a split step.

Flags (any experiment importing this module gets them): ``--height --width --simulator=traffic|carla
--carla_hosts --learn_intersection --render_chunk --compile_cache_dir``.

Why a split step. The pure-JAX renderer is a large program: compiling it takes ~25 CPU-seconds, about
4 times the counting CNN's training and evaluation together (measured at 24x80, jax 0.10.2 CPU). Inside
``lts.make_step`` it is compiled again for every distinct configuration (M, xi, search strategy, with or
without test data), and a sweep has a dozen of them. :func:`make_step` runs the same iteration as
``lts.make_step`` (same keys, same order, same metrics) as a few jitted programs that are cached in a
``lts.Programs`` object and shared by every run that can share them (``lts.make_split_step``; a
:class:`SceneRenderer` is its two-stage source):

    ask (per search)  ->  scene sampling (per K, M)  ->  rendering (ONE program, fixed chunk of images)
      ->  MTM training + validation (per task, K, M, xi)  ->  tell (per search)  ->  test evaluation (per K)

The step it returns has ``lts.make_step``'s signature, so ``lts.run_loop`` / ``experiment.run_search``
drive it unchanged. A CARLA simulator renders on the host (no compilation); it plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import common
from lts_jax import lts
from lts_jax.params import ParamSpec

SIMULATORS = ("traffic", "carla")

HEIGHT = flags.DEFINE_integer("height", 96, "Image height (the simulator's and the main task model's).")
WIDTH = flags.DEFINE_integer("width", 320, "Image width.")
SIMULATOR = flags.DEFINE_string(
    "simulator",
    "traffic",
    "Renderer of the traffic scenes: traffic (pure JAX) or carla (servers; simulators/carla/README.md).",
)
CARLA_HOSTS = flags.DEFINE_string(
    "carla_hosts", None, "CARLA servers for --simulator=carla: host:port entries, comma separated."
)
LEARN_INTERSECTION = flags.DEFINE_bool(
    "learn_intersection", False, "Let the search learn the intersection type (frozen and uniform by default)."
)
RENDER_CHUNK = flags.DEFINE_integer(
    "render_chunk", 100, "Images per call of the compiled renderer (one program serves every data set size)."
)
COMPILE_CACHE_DIR = flags.DEFINE_string(
    "compile_cache_dir", None, "JAX's persistent compilation cache (reruns skip compiling the renderer); off if unset."
)


def validate() -> None:
    """Checks the traffic flags; a usage error (exit 2) names the flag and the accepted values."""
    common.check(HEIGHT.value >= 8, "height", HEIGHT.value, "an integer >= 8")
    common.check(WIDTH.value >= 8, "width", WIDTH.value, "an integer >= 8")
    common.check(SIMULATOR.value in SIMULATORS, "simulator", SIMULATOR.value, " | ".join(SIMULATORS))
    common.check(RENDER_CHUNK.value >= 1, "render_chunk", RENDER_CHUNK.value, "an integer >= 1")
    if SIMULATOR.value == "carla":
        if not CARLA_HOSTS.value:
            raise common.usage_error(
                "--carla_hosts is required with --simulator=carla (e.g. gpuhost:2000,gpuhost:2002)"
            )
        from simulators.carla import parse_hosts

        try:
            parse_hosts(CARLA_HOSTS.value)
        except ValueError as e:
            raise common.usage_error(f"--carla_hosts={CARLA_HOSTS.value}: {e}") from e


def setup_compile_cache() -> None:
    """Turns on JAX's persistent compilation cache when --compile_cache_dir is set."""
    if COMPILE_CACHE_DIR.value:
        jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE_DIR.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def simulator_info() -> dict[str, Any]:
    """What results.json records so that a data set can be re-rendered (experiments/generate.py)."""
    # The scene model is the traffic simulator's whichever renderer drew it; "renderer" says which.
    return {
        "name": "traffic",
        "renderer": SIMULATOR.value,
        "height": HEIGHT.value,
        "width": WIDTH.value,
        "learn_intersection": LEARN_INTERSECTION.value,
    }


def make_simulator(
    name: str | None = None,
    height: int | None = None,
    width: int | None = None,
    *,
    learn_intersection: bool | None = None,
    carla_hosts: str | None = None,
    **carla_kw: Any,
):
    """The simulator named by the flags (arguments override them).

    ``traffic``: :class:`simulators.traffic.TrafficSimulator`. ``carla``: the same scene model rendered by
    CARLA servers (``simulators.carla.make_simulator``); it does not connect yet (call ``sim.connect()``
    before the first iteration, as the experiments do).
    """
    from simulators.traffic import TrafficSimulator

    name = name or SIMULATOR.value
    height = HEIGHT.value if height is None else height
    width = WIDTH.value if width is None else width
    learn = LEARN_INTERSECTION.value if learn_intersection is None else learn_intersection
    traffic = TrafficSimulator(height, width, learn_intersection=learn)
    if name == "traffic":
        return traffic
    if name == "carla":
        from simulators import carla

        return carla.make_simulator(carla_hosts or CARLA_HOSTS.value, height, width, traffic=traffic, **carla_kw)
    raise ValueError(f"unknown simulator {name!r}; choose one of {SIMULATORS}")


def is_carla(sim: Any) -> bool:
    return hasattr(sim, "render_batch") and hasattr(sim, "pool")


Programs = lts.Programs  # the compiled-piece cache of lts.make_split_step


class SceneRenderer:
    """Scenes -> data, in fixed-size chunks of one compiled renderer (or on CARLA's servers).

    Args:
      sim: a TrafficSimulator (``sample_scenes`` and a jittable ``render``) or a CarlaSimulator
        (host ``render_batch``).
      chunk: images per renderer call; smaller data sets are padded, larger ones split.
      keys: the outputs kept (e.g. ``("image", "counts")`` for counting); the rest is never copied.
    """

    def __init__(self, sim: Any, chunk: int, keys: Sequence[str]):
        if chunk < 1:
            raise ValueError(f"render chunk must be >= 1, got {chunk}")
        self.sim, self.chunk, self.keys = sim, int(chunk), tuple(keys)
        self.carla = is_carla(sim)
        self._scene_fns: dict[int, Callable] = {}
        if self.carla:
            from simulators.carla.simulator import OPTIONAL_SCENE_KEYS, SCENE_KEYS

            self._scene_keys = SCENE_KEYS + OPTIONAL_SCENE_KEYS
        else:
            self._render = jax.jit(lambda scenes: {k: v for k, v in sim.render(scenes).items() if k in self.keys})

    @property
    def spec(self) -> ParamSpec:
        return self.sim.spec

    def sample_scenes(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """Scene descriptions (jittable, vmappable over key and psi)."""
        traffic = self.sim.traffic if self.carla else self.sim
        return traffic.sample_scenes(key, psi, num)

    def render(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Scenes with a leading axis N -> ``{key: [N, ...]}``. Host-level (dispatches compiled chunks)."""
        n = int(jax.tree_util.tree_leaves(scenes)[0].shape[0])
        if self.carla:
            host = {k: np.asarray(v)[None] for k, v in scenes.items() if k in self._scene_keys}
            out = self.sim.render_batch(host)
            return {k: jnp.asarray(out[k][0]) for k in self.keys}
        parts = []
        for start in range(0, n, self.chunk):
            stop = min(start + self.chunk, n)
            if stop - start == self.chunk:
                piece = jax.tree_util.tree_map(lambda x, a=start, b=stop: x[a:b], scenes)
            else:  # pad the last chunk by repeating its last scene; the padding is dropped below
                idx = np.minimum(np.arange(start, start + self.chunk), n - 1)
                piece = jax.tree_util.tree_map(lambda x, i=idx: jnp.take(x, i, axis=0), scenes)
            out = self._render(piece)
            parts.append(jax.tree_util.tree_map(lambda x, m=stop - start: x[:m], out))
        if len(parts) == 1:
            return parts[0]
        return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)

    def sample(self, key: jax.Array, psi, num: int) -> dict[str, jax.Array]:
        """A data set of ``num`` examples from one psi [dim] (host-level; e.g. validation and test sets)."""
        if num not in self._scene_fns:
            self._scene_fns[num] = jax.jit(lambda k, p: self.sample_scenes(k, p, num))
        return self.render(self._scene_fns[num](key, jnp.asarray(psi, jnp.float32)))


def make_step(
    config: lts.LTSConfig,
    renderer: SceneRenderer,
    task: Any,
    search: Any,
    programs: lts.Programs | None = None,
    **kw: Any,
) -> Callable[..., tuple[lts.LTSState, dict[str, jax.Array]]]:
    """``lts.make_split_step`` over the chunked renderer (see the module docstring); ``kw`` as there."""
    return lts.make_split_step(config, renderer, task, search, programs=programs, **kw)


def initial_psi(spec: ParamSpec, how: str, key: jax.Array, min_prob: float = 0.0) -> np.ndarray:
    """The search's starting point: zeros, random (uniform in the spec's box) or a preset of the simulator,
    with every learnable probability floored at ``min_prob`` (:func:`floor_probabilities`)."""
    return floor_probabilities(spec, np.asarray(spec.initial(how, key), np.float32), min_prob)


def floor_probabilities(spec: ParamSpec, psi, min_prob: float) -> np.ndarray:
    """psi [dim] whose learnable categorical and Bernoulli probabilities are at least ``min_prob``.

    Why: a preset writes an absent category as a logit of -10 (ParamSpec.from_natural). The Gaussian
    policy (sigma ~ 0.22) then never samples a psi that shows that category, so REINFORCE gets no gradient
    for it and cannot bring it back. Mixing with the uniform distribution, p' = (1 - n m) p + m for n
    categories, keeps a poor start poor (m = 0.02: 92% pickups instead of 100%) but learnable. Bernoulli
    probabilities are clipped to [m, 1 - m]. Frozen blocks and Gaussians are left alone; 0 changes nothing.
    """
    psi = np.array(psi, np.float32)
    if min_prob <= 0:
        return psi
    dists = spec.distributions(psi.astype(np.float64))
    for b in spec.blocks:
        if b.frozen or b.kind == "gaussian":
            continue
        sl = spec.slices[b.name]
        p = np.asarray(dists[b.name]["probs"], np.float64)
        if b.kind == "categorical":
            if min_prob * b.size >= 1:
                raise ValueError(f"min_prob {min_prob} is too large for {b.size} categories of {b.name!r}")
            q = (1 - b.size * min_prob) * p + min_prob
            logits = np.log(q)
            psi[sl] = logits - logits.mean()
        else:
            q = np.clip(p, min_prob, 1 - min_prob)
            psi[sl] = np.log(q) - np.log1p(-q)
    return psi
