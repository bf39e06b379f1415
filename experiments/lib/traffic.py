"""What the traffic experiments share: the simulator settings, their translation into simulator options, psi0.

:func:`simulator_options` turns a :class:`TrafficConfig` into the options of ``simulators.make``; the
experiments run the simulator with ``lts.make_split_step``, whose pieces are compiled once per configuration
and shared by every run of a process (the traffic renderer takes ~25 CPU-seconds to compile; its
``render_batches`` runs chunks of ``render_chunk`` scenes of one compiled program). A CARLA simulator renders
through the host bridge; it plugs in the same way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

import simulators
from experiments.lib import common
from lts_jax.params import ParamSpec

SIMULATORS = ("traffic", "carla")
# Settings that change how fast a run goes, not what it computes (a re-run may change them).
SPEED_ONLY = frozenset({"compile_cache_dir", "render_chunk", "carla_timeout"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrafficConfig(common.SearchConfig):
    """A search over the traffic scene model, rendered by the pure-JAX renderer or by CARLA servers."""

    height: int = 96
    width: int = 320
    simulator: str = "traffic"
    carla_hosts: str | None = None
    carla_timeout: float = 30.0  # seconds: each CARLA RPC, and all connection attempts to one server together
    learn_intersection: bool = False
    render_chunk: int = 100
    compile_cache_dir: str | None = None


def validate_traffic(cfg: TrafficConfig) -> None:
    """Checks the simulator settings; ConfigError names the setting and the accepted values."""
    common.check(cfg.height >= 8, "height", cfg.height, "an integer >= 8")
    common.check(cfg.width >= 8, "width", cfg.width, "an integer >= 8")
    common.check(cfg.simulator in SIMULATORS, "simulator", cfg.simulator, " | ".join(SIMULATORS))
    common.check(cfg.render_chunk >= 1, "render_chunk", cfg.render_chunk, "an integer >= 1")
    common.check(cfg.carla_timeout > 0, "carla_timeout", cfg.carla_timeout, "a float > 0 (seconds)")
    rendering_option(cfg)
    if cfg.simulator == "carla":
        if not cfg.carla_hosts:
            raise common.ConfigError(
                lambda p: (
                    f"{p('carla_hosts')} is required with {p('simulator', 'carla')} (e.g. gpuhost:2000,gpuhost:2002)"
                )
            )
        from simulators.carla import parse_hosts

        try:
            parse_hosts(cfg.carla_hosts)
        except ValueError as e:
            reason = str(e)
            raise common.ConfigError(lambda p: f"{p('carla_hosts', cfg.carla_hosts)}: {reason}") from e


def rendering_option(cfg: TrafficConfig) -> bool | list[str]:
    """The simulators' ``learn_rendering`` option of a config's ``learn_rendering`` setting (the segmentation
    experiments': rendering parameters in psi, scene.py's camera, field_of_view, exposure, color_balance,
    blur, noise): False for () or a config without the setting, True for ("all",), else the list of blocks;
    ConfigError naming the setting and the blocks for an unknown one."""
    from simulators.traffic.scene import RENDERING_BLOCKS

    names = list(getattr(cfg, "learn_rendering", ()))
    if not names:
        return False
    if names == ["all"]:
        return True
    ok = len(set(names)) == len(names) and all(n in RENDERING_BLOCKS for n in names)
    common.check(ok, "learn_rendering", ",".join(names), f"all, or distinct blocks of {', '.join(RENDERING_BLOCKS)}")
    return names


def spec_of(cfg: TrafficConfig) -> ParamSpec:
    """The simulator's ParamSpec without building a renderer (for validation)."""
    from simulators.traffic.scene import make_spec

    return make_spec(cfg.learn_intersection, rendering_option(cfg))


def simulator_options(cfg: TrafficConfig) -> dict[str, Any]:
    """``simulators.make`` options: ``{"name": "traffic", "height", "width", "learn_intersection",
    "learn_rendering", "render_chunk"}``, or for CARLA ``{"name": "carla", "hosts", "height", "width",
    "learn_intersection", "learn_rendering", "timeout_s"}``."""
    options = {"height": cfg.height, "width": cfg.width, "learn_intersection": cfg.learn_intersection,
               "learn_rendering": rendering_option(cfg)}  # fmt: skip
    if cfg.simulator == "carla":
        return {"name": "carla", "hosts": cfg.carla_hosts, **options, "timeout_s": cfg.carla_timeout}
    return {"name": "traffic", **options, "render_chunk": cfg.render_chunk}


def make_simulator(cfg: TrafficConfig):
    """The configured simulator; turns on JAX's persistent compilation cache first when ``compile_cache_dir``
    is set (reruns then skip compiling the renderer): programs that took at least 1 s to compile, or
    $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS (JAX's own variable; the tests set 0)."""
    if cfg.compile_cache_dir:
        min_s = float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS") or 1.0)
        jax.config.update("jax_compilation_cache_dir", cfg.compile_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_s)
    return simulators.make(**simulator_options(cfg))


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
