"""A minimal simulator to copy: the whole contract in one file (tests/test_templates.py runs it).

A simulator is an object with ``spec`` (a :class:`lts_jax.params.ParamSpec`: the named blocks of psi) and
``sample(key, psi, num) -> {name: array [num, ...]}``. ``sample`` must be pure JAX: the step jits it and
vmaps it over the K candidates, so ``psi`` arrives as a tracer, never as numbers. Python control flow on
psi's values, ``float(psi[0])``, ``np.asarray(psi)`` or a NumPy/scikit-learn/game-engine call inside it fail
with a ConcretizationTypeError (the step says so); wrap such code with the host bridge instead:
``lts_jax.host.HostSimulator(spec, sample_fn, outputs)`` (a whole NumPy simulator, called once per iteration
with all K candidates) or ``lts_jax.host.host_renderer`` (only the renderer of a scene simulator).

What this one simulates: 2-D points of two classes. Class 1 has probability ``p(class_1)`` (a Bernoulli
block); each point's spread is one of three named levels (a categorical block); the class-1 points are centred
at ``offset`` (a Gaussian block with a mean and a variance per dimension, labelled x and y); class-0 points
sit around the origin. Steps to make your own:

1. Declare psi as blocks: ``P.bernoulli``, ``P.categorical(labels=...)``, ``P.gaussian(size, labels=...)``
   (optional ``box=`` bounds what random initialisation and random search draw; ``frozen=True`` keeps a
   block out of the search). ``spec.distributions(psi)`` turns raw psi into probabilities, means, variances.
2. Name presets (a psi for the validation data, a start for the search): ``presets={name: {block: value}}``,
   values as :meth:`ParamSpec.from_natural` takes them.
3. Write ``sample`` with ``jax.random`` only (split the key, one key per random choice), returning every
   array with the leading axis ``num``; the task's ``data_keys`` must be among its keys.
4. ``describe()``: what results.json records to rebuild it; add ``"name": make`` to
   ``simulators/__init__.py``'s registry to build it by name (``simulators.make("mine", ...)``).
5. Test: shapes, determinism per key, ``vmap`` over (key, psi) equals a loop, and that each block changes
   what it should (see tests/simulators/test_gmm.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lts_jax import params as P

SPREADS = (0.3, 1.0, 3.0)  # the standard deviation of each "spread" level


def make_spec() -> P.ParamSpec:
    """psi of the template: p(class_1), the spread level, the class-1 centre."""
    return P.ParamSpec(
        [
            P.bernoulli("class_1"),
            P.categorical("spread", labels=["tight", "normal", "wide"]),
            P.gaussian("offset", 2, labels=["x", "y"], box=(-4.0, 4.0)),
        ],
        presets={"val": {"class_1": 0.5, "spread": [0.1, 0.8, 0.1], "offset": {"mean": [2.0, 2.0],
                                                                               "variance": [0.5, 0.5]}}},
    )  # fmt: skip


class TemplateSimulator:
    """``sample(key, psi, num) -> {"x": float32 [num, 2], "y": int32 [num]}``; pure JAX, jittable, vmappable."""

    def __init__(self):
        self.spec = make_spec()

    def sample(self, key: jax.Array, psi: jax.Array, num: int) -> dict[str, jax.Array]:
        d = self.spec.distributions(psi)  # {"class_1": {"probs"}, "spread": {"probs"}, "offset": {"mean", "variance"}}
        k_class, k_spread, k_centre, k_noise = jax.random.split(key, 4)
        y = jax.random.bernoulli(k_class, d["class_1"]["probs"][0], (num,)).astype(jnp.int32)
        level = jax.random.categorical(k_spread, jnp.log(d["spread"]["probs"]), shape=(num,))
        centre = d["offset"]["mean"] + jnp.sqrt(d["offset"]["variance"]) * jax.random.normal(k_centre, (num, 2))
        noise = jnp.asarray(SPREADS)[level][:, None] * jax.random.normal(k_noise, (num, 2))
        x = jnp.where(y[:, None] == 1, centre, 0.0) + noise
        return {"x": x.astype(jnp.float32), "y": y}

    def describe(self) -> dict:
        """results.json's "simulator" (no options here)."""
        return {"name": "template"}
