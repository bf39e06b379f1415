"""The traffic scene simulator (PAPER.md, appendix A): scene model + pure-JAX renderer.

Public API: :class:`TrafficSimulator` (``.spec``, ``.default_psi()``, ``.preset(name)``,
``.sample(key, psi, num)``, ``.sample_scenes``, ``.render``), the scene-dict contract
(``scene.py``), label ids (``labels.py``) and world constants (``layout.py``).
"""

from simulators.traffic.simulator import TrafficSimulator

__all__ = ["TrafficSimulator"]
