"""What the traffic experiments share: the simulator flags and their translation into simulator options.

Flags (any experiment importing this module gets them): ``--height --width --simulator=traffic|carla
--carla_hosts --learn_intersection --render_chunk --compile_cache_dir``.

:func:`simulator_options` turns them into the options of ``simulators.make``; the experiments build
their simulator with ``simulators.make(**traffic_common.simulator_options())`` and run it with
``lts.make_split_step``, whose pieces are compiled once per configuration and shared by every run of
a process (the traffic renderer takes ~25 CPU-seconds to compile; its ``render_batches`` runs chunks
of ``--render_chunk`` scenes of one compiled program). A CARLA simulator renders through the host
bridge; it plugs in the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import flags

from experiments import common
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


def simulator_options() -> dict[str, Any]:
    """The flags as ``simulators.make`` options: ``{"name": "traffic", "height", "width",
    "learn_intersection", "render_chunk"}``, or for ``--simulator=carla`` ``{"name": "carla", "hosts",
    "height", "width", "learn_intersection"}``. Call :func:`validate` first."""
    options = {"height": HEIGHT.value, "width": WIDTH.value, "learn_intersection": LEARN_INTERSECTION.value}
    if SIMULATOR.value == "carla":
        return {"name": "carla", "hosts": CARLA_HOSTS.value, **options}
    return {"name": "traffic", **options, "render_chunk": RENDER_CHUNK.value}


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
