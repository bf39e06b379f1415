"""The Gaussian-mixture toy: simulator, registry, SVM task (the experiment: tests/experiments/test_gmm_toy.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simulators
from lts_jax.tasks.svm import SVMTask, fit_svc
from simulators import gmm


def test_real_distribution_and_spec():
    data = gmm.sample_real(0, 600)
    assert data["x"].shape == (600, 2) and data["y"].dtype == np.int32
    assert data["y"].sum() == 300  # balanced
    # samples sit around p's component means
    for c in (0, 1):
        means = gmm.REAL_COMPONENTS[gmm.REAL_COMPONENTS[:, 0] == c, 1:3]
        d = np.min(np.linalg.norm(data["x"][data["y"] == c][:, None] - means[None], axis=-1), axis=1)
        assert np.median(d) < 1.5
    assert gmm.make_spec(2).dim == 2 * 2 * 4


def test_simulator_follows_psi():
    sim = gmm.GMMSimulator(1)
    psi = sim.spec.from_natural(
        {
            "c0_g0": {"mean": [3.0, -2.0], "variance": [0.01, 0.01]},
            "c1_g0": {"mean": [-1.0, 4.0], "variance": [4.0, 4.0]},
        }
    )
    data = jax.jit(sim.sample, static_argnums=2)(jax.random.key(0), jnp.asarray(psi), 4000)
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    np.testing.assert_allclose(x[y == 0].mean(0), [3.0, -2.0], atol=0.02)
    np.testing.assert_allclose(x[y == 1].var(0), [4.0, 4.0], rtol=0.1)


def test_registry_rebuilds_from_describe():
    sim = simulators.make("gmm", num_gaussians=3)
    assert isinstance(sim, gmm.GMMSimulator) and sim.describe() == {"name": "gmm", "num_gaussians": 3}
    assert simulators.make(**sim.describe()).spec.dim == sim.spec.dim
    with pytest.raises(ValueError, match="unknown simulator 'unity'; choose one of gmm, traffic, carla"):
        simulators.make("unity")
    with pytest.raises(ValueError, match="simulator 'gmm'.*'height'.*num_gaussians"):
        simulators.make("gmm", height=3)


def test_svm_task_accuracy_matches_sklearn():
    train, val = gmm.sample_real(3, 200), gmm.sample_real(4, 300)
    task = SVMTask(200)
    state = task.train(task.init(jax.random.key(0)), jax.tree_util.tree_map(jnp.asarray, train), None, 1)
    acc = float(jax.jit(task.evaluate)(state, jax.tree_util.tree_map(jnp.asarray, val))["reward"])
    ref = np.mean(fit_svc(train["x"], train["y"]).predict(val["x"]) == val["y"])
    assert acc == pytest.approx(ref, abs=1e-6)
    assert acc > 0.95
