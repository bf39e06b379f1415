"""The traffic scene simulator (the paper's appendix A; WORKSPACE.md, "The method"): scene model + pure-JAX renderer.

Public API: :class:`TrafficSimulator`, a ``lts_jax.simulator.SceneSimulator`` (``.spec``, ``.outputs``,
``.default_psi()``, ``.preset(name)``, ``.sample(key, psi, num)``, ``.sample_scenes``, ``.render``, the
chunked ``.render_batches``, ``.select(keys)``, ``.describe()``; registry name "traffic"), the scene-dict
contract (``scene.py``), label ids (``labels.py``) and world constants (``layout.py``).
"""

from simulators.traffic.simulator import TrafficSimulator

__all__ = ["TrafficSimulator"]
