"""The simulator protocols: a Simulator, and a two-stage SceneSimulator with a declared output spec.

A simulator maps psi to a labelled data set (WORKSPACE.md, "The method": the simulator interface):

- :class:`Simulator`: ``spec`` and ``sample(key, psi, num) -> {name: [num, ...]}``, jittable and
  vmappable over ``(key, psi)``. Pure JAX, or a host simulator through the bridge
  (:class:`lts_jax.host.HostSimulator`).
- :class:`SceneSimulator`: the same in two stages, ``G = R(S(psi))``:
  ``sample_scenes(key, psi, num)`` (S and P: pure JAX, ancestral sampling) and ``render(scenes)``
  (R: pure JAX, or a host renderer through the bridge, :func:`lts_jax.host.host_renderer`).
  ``outputs`` declares what ``render`` returns (name -> per-example :class:`Field`), so a host
  renderer's result shapes are known before it runs, and it lists only the outputs kept (a
  counting run keeps image and counts; labels are never copied). ``render_batches(scenes)`` is
  the host-level renderer of ``lts.make_split_step``: scenes with one leading axis ``N`` (all K x M
  of an iteration) -> outputs ``[N, ...]``; a simulator whose renderer takes long to compile
  overrides it (fixed-size chunks of one compiled renderer, simulators/traffic).

:class:`SceneSimulatorBase` gives the defaults: ``sample = render . sample_scenes``;
``render_batches`` = one jitted ``render``; ``sample_dataset`` (host-level: one data set from one
psi, e.g. validation sets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax.params import ParamSpec


@dataclasses.dataclass(frozen=True)
class Field:
    """One output of a simulator: shape and dtype of ONE example (no leading axis)."""

    shape: tuple[int, ...]
    dtype: Any

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    def struct(self, *lead: int) -> jax.ShapeDtypeStruct:
        """``jax.ShapeDtypeStruct`` of ``lead + shape`` (e.g. ``struct(num)`` for a data set)."""
        return jax.ShapeDtypeStruct((*lead, *self.shape), self.dtype)


OutputSpec = Mapping[str, Field]


def select_outputs(outputs: OutputSpec, keys: Any = None) -> dict[str, Field]:
    """``outputs`` restricted to ``keys`` (in that order; None: all); ValueError naming unknown keys."""
    if keys is None:
        return dict(outputs)
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    unknown = [k for k in keys if k not in outputs]
    if unknown or not keys:
        raise ValueError(f"outputs {list(keys)}: choose a non-empty subset of {list(outputs)}")
    return {k: outputs[k] for k in keys}


@runtime_checkable
class Simulator(Protocol):
    """What ``lts.make_step`` needs from a simulator.

    ``sample(key, psi, num)`` takes one typed key, one psi [spec.dim] and a static
    ``num``; it returns a dict of arrays with leading axis ``num``. It must be
    jittable and vmappable over ``(key, psi)`` (pure JAX, or through the bridge).
    """

    spec: ParamSpec

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]: ...


@runtime_checkable
class SceneSimulator(Simulator, Protocol):
    """A two-stage simulator, ``sample(key, psi, num) = render(sample_scenes(key, psi, num))``.

    ``lts.make_step`` runs ``sample`` inside its one jit; ``lts.make_split_step`` runs
    ``sample_scenes`` (compiled) and then ``render_batches`` on all K x M scenes of the iteration.

    Attributes:
      spec: the ParamSpec of psi.
      outputs: ``{name: Field}``, what ``render`` returns per example (exactly these keys).
    """

    spec: ParamSpec
    outputs: OutputSpec

    def sample_scenes(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """Scene descriptions for one psi [dim], leading axis ``num``. Pure JAX, vmappable."""
        ...

    def render(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Scenes with a leading axis -> ``outputs`` with that axis. Jittable and vmappable
        (pure JAX, or a host renderer through the bridge)."""
        ...

    def render_batches(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Host-level: scenes with ONE leading axis N -> outputs ``[N, ...]``. Not jitted by the caller."""
        ...


def _jit_cache(obj: Any) -> dict:
    return obj.__dict__.setdefault("_compiled", {})


class SceneSimulatorBase:
    """Defaults of :class:`SceneSimulator`; a subclass sets ``spec`` and ``outputs`` and defines
    ``sample_scenes`` and ``render``."""

    spec: ParamSpec
    outputs: OutputSpec

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        """``render(sample_scenes(key, psi, num))``: ``{name: [num, *field.shape]}``. Jittable."""
        return self.render(self.sample_scenes(key, psi, num))

    def render_batches(self, scenes: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Host-level: scenes [N, ...] -> outputs [N, ...] with one jitted ``render`` (compiled per N)."""
        cache = _jit_cache(self)
        if "render" not in cache:
            cache["render"] = jax.jit(self.render)
        return cache["render"](scenes)

    def sample_dataset(self, key: jax.Array, psi: Any, num: int) -> dict[str, jax.Array]:
        """Host-level: a data set of ``num`` examples from one concrete psi [dim] (validation and test
        sets, pretraining): compiled ``sample_scenes``, then ``render_batches``. Not jittable."""
        cache = _jit_cache(self)
        if ("scenes", num) not in cache:
            cache["scenes", num] = jax.jit(lambda k, p: self.sample_scenes(k, p, num))
        return self.render_batches(cache["scenes", num](key, jnp.asarray(psi, jnp.float32)))
