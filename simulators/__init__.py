"""The simulators, and the registry that builds one by name: ``simulators.make(name, **options)``.

    gmm      gmm.GMMSimulator(num_gaussians=2)                       the 2-D Gaussian-mixture toy (paper 4.1)
    traffic  traffic.TrafficSimulator(height=96, width=320, learn_intersection=False, min_visible_pixels=None,
                                      materialize=None, render_chunk=100, keep=None, learn_rendering=False,
                                      visibility=None)
                                                                     appendix A's scene model, pure-JAX renderer
    carla    carla.CarlaSimulator(hosts, height, width, learn_intersection=False, learn_rendering=False, keep=None,
                                  timeout_s=30.0, max_retries=2, backoff_s=1.0, **RenderConfig fields)
                                                                     the same scene model rendered by CARLA servers

Every simulator describes itself: ``sim.describe()`` is a JSON-ready dict ``{"name": ..., options}`` (what
results.json records as "simulator"), and ``simulators.make(**sim.describe())`` rebuilds it. Options that
change how a simulator runs but not what it samples (render_chunk, keep, materialize) are not described.
"carla" checks the host list and that the CARLA client is installed; it does not connect.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def _carla(hosts: str, height: int, width: int, **options: Any):
    from simulators.carla import CarlaSimulator, parse_hosts

    parse_hosts(hosts)
    try:
        import carla  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the carla simulator needs the CARLA Python client: pip install 'lts_jax[carla]' "
            "(or carla==<your server's version>); see simulators/carla/README.md"
        ) from e
    return CarlaSimulator(hosts, height, width, **options)


def _factory(name: str) -> Callable[..., Any]:
    # Imported on demand: building a GMM need not import the traffic renderer or the CARLA backend.
    if name == "gmm":
        from simulators.gmm import GMMSimulator

        return GMMSimulator
    if name == "traffic":
        from simulators.traffic import TrafficSimulator

        return TrafficSimulator
    return _carla


NAMES = ("gmm", "traffic", "carla")


def make(name: str, **options: Any) -> Any:
    """The simulator registered as ``name`` (see the module docstring), built with ``options``.

    Raises ValueError naming an unknown simulator, or an option the simulator does not take.
    """
    if name not in NAMES:
        raise ValueError(f"unknown simulator {name!r}; choose one of {', '.join(NAMES)}")
    factory = _factory(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as e:
        accepted = [p.name for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
        raise ValueError(f"simulator {name!r}: {e}; its options: {', '.join(accepted)}") from None
    return factory(**options)


__all__ = ["NAMES", "make"]
