"""The 2-D Gaussian-mixture toy of paper section 4.1 (Table 2, Figure 2).

Binary classification in the plane. The real distribution p has 3 Gaussian
components per class (:data:`REAL_COMPONENTS`); the simulator q has n
components per class whose means and (diagonal) variances are psi. Mixture
weights are equal and fixed; labels are balanced (the first half of a data set
is class 0, the second half class 1).

p's layout is an "XOR with a split quadrant": class 0 lives in the first and
third quadrants (two components in the first), class 1 in the second and
fourth (two in the second). A single axis-aligned Gaussian per class cannot
separate diagonally opposite quadrants from the other diagonal; two per class
can, so the rows of Table 2 differ as in the paper.

psi layout (ParamSpec): one Gaussian block of size 2 per class and component,
named ``c{class}_g{component}``: 2 means then 2 log-variances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lts_jax import params

# (class, mean_x, mean_y, std) of p's components: 3 per class.
REAL_COMPONENTS = np.array(
    [
        # class 0: quadrant I (two components) and quadrant III
        [0, 2.5, 4.5, 0.85],
        [0, 4.5, 2.0, 0.85],
        [0, -3.5, -3.5, 0.85],
        # class 1: quadrant II (two components) and quadrant IV
        [1, -4.5, 2.5, 0.85],
        [1, -2.0, 4.5, 0.85],
        [1, 3.5, -3.5, 0.85],
    ],
    np.float32,
)
MEAN_BOX = (-3.0, 3.0)
LOG_VAR_BOX = (-1.0, 1.0)


def make_spec(num_gaussians: int) -> params.ParamSpec:
    """ParamSpec of q with ``num_gaussians`` components per class."""
    if num_gaussians < 1:
        raise ValueError(f"num_gaussians must be >= 1, got {num_gaussians}")
    blocks = [
        params.gaussian(f"c{c}_g{g}", 2, labels=("x", "y"), box=MEAN_BOX, log_var_box=LOG_VAR_BOX)
        for c in range(2)
        for g in range(num_gaussians)
    ]
    presets = {}
    if num_gaussians == 3:
        # p itself: the "val params" row of Table 2.
        per_class = {0: [], 1: []}
        for c, mx, my, s in REAL_COMPONENTS:
            per_class[int(c)].append({"mean": [mx, my], "variance": [s * s, s * s]})
        presets["real"] = {f"c{c}_g{g}": v for c in range(2) for g, v in enumerate(per_class[c])}
    return params.ParamSpec(blocks, presets)


def sample_mixture(key: jax.Array, means: jax.Array, variances: jax.Array, num: int) -> dict[str, jax.Array]:
    """Balanced two-class data from per-class mixtures.

    means, variances: [2, n, 2] (class, component, xy). Returns {"x": float32 [num, 2],
    "y": int32 [num]}; class 0 first.
    """
    k_comp, k_noise = jax.random.split(key)
    y = (jnp.arange(num) >= num // 2).astype(jnp.int32)
    n = means.shape[1]
    comp = jax.random.randint(k_comp, (num,), 0, n)
    mu = means[y, comp]
    sd = jnp.sqrt(variances[y, comp])
    x = mu + sd * jax.random.normal(k_noise, (num, 2))
    return {"x": x.astype(jnp.float32), "y": y}


class GMMSimulator:
    """q(x, y | psi): n Gaussians per class, means and variances from psi. Pure JAX (a Simulator;
    registry name "gmm")."""

    def __init__(self, num_gaussians: int = 2):
        self.num_gaussians = int(num_gaussians)
        self.spec = make_spec(self.num_gaussians)

    def describe(self) -> dict:
        """What results.json records to rebuild it: ``simulators.make(**sim.describe())``."""
        return {"name": "gmm", "num_gaussians": self.num_gaussians}

    def mixture(self, psi: jax.Array) -> tuple[jax.Array, jax.Array]:
        """psi [dim] -> (means, variances), each [2, n, 2]."""
        dists = self.spec.distributions(psi)
        n = self.num_gaussians
        means = jnp.stack([jnp.stack([dists[f"c{c}_g{g}"]["mean"] for g in range(n)]) for c in range(2)])
        variances = jnp.stack([jnp.stack([dists[f"c{c}_g{g}"]["variance"] for g in range(n)]) for c in range(2)])
        return means, variances

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        means, variances = self.mixture(psi)
        return sample_mixture(key, means, variances, num)


def real_simulator() -> tuple[GMMSimulator, np.ndarray]:
    """p as a simulator with its own parameters: (GMMSimulator(3), psi_real)."""
    sim = GMMSimulator(3)
    return sim, sim.spec.preset("real")


def sample_real(seed: int, num: int) -> dict[str, np.ndarray]:
    """``num`` points from p with a seed of their own (validation / test sets)."""
    sim, psi = real_simulator()
    data = jax.jit(sim.sample, static_argnums=2)(jax.random.key(seed), jnp.asarray(psi), num)
    return jax.tree_util.tree_map(np.asarray, data)
