"""The traffic scene model rendered by CARLA servers (issue 8; simulators/carla/README.md).

Modules:
  opendrive  road layouts as OpenDRIVE (pure Python; the atlas of all 33 layouts)
  convert    scene description -> CARLA placements, blueprints, weathers, camera
  labels     CARLA sensor images -> Cityscapes labels, instances, visible counts
  session    one server: world setup, synchronous rendering of one scene
  pool       many servers: concurrency, timeouts, retries, dropping, NoCarlaServerError
  simulator  CarlaSimulator (a SceneSimulator whose renderer runs through the host bridge)

Importing this package does not import the ``carla`` client; connecting does.
Everything that talks to a server is host code and not jittable; only
``CarlaSimulator.render`` (and ``sample``) is, through the bridge. Build one with
``simulators.make("carla", hosts=..., height=..., width=...)``.
"""

from simulators.carla.pool import CarlaPool, NoCarlaServerError, find_no_server_error, parse_hosts
from simulators.carla.session import CarlaSession, RenderConfig, SceneError
from simulators.carla.simulator import CarlaSimulator

__all__ = [
    "CarlaPool",
    "CarlaSession",
    "CarlaSimulator",
    "NoCarlaServerError",
    "RenderConfig",
    "SceneError",
    "find_no_server_error",
    "parse_hosts",
]
