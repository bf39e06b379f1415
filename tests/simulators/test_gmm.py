"""The Gaussian-mixture toy: simulator, SVM task, experiment end to end."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simulators
from lts_jax.tasks.svm import SVMTask, fit_svc
from simulators import gmm

ROOT = Path(__file__).resolve().parents[2]


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


def run_experiment(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "experiments.gmm_toy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_quick_flagfile_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    proc = run_experiment("--flagfile=experiments/flags/gmm_toy_quick.flags", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["experiment"] == "gmm_toy" and results["num_gaussians"] == 2
    assert results["iterations"] == 150
    assert results["test_accuracy"]["lts"] >= 0.97
    assert results["test_accuracy"]["val_params"] >= 0.97
    assert set(results["psi"]) == {"c0_g0", "c0_g1", "c1_g0", "c1_g1"}
    assert set(results["psi"]["c0_g0"]) >= {"mean", "variance"}
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 150
    row = json.loads(lines[-1])
    for key in ("step", "reward_mean", "reward_max", "baseline", "params"):
        assert key in row
    for png in ("figure2.png", "reward.png"):
        assert (workdir / png).stat().st_size > 10_000
    assert "--num_gaussians=2" in (workdir / "flags.txt").read_text()

    # the finished run is never overwritten silently: the same command reports it complete (exit 0)
    before = (workdir / "results.json").read_bytes()
    again = run_experiment("--flagfile=experiments/flags/gmm_toy_quick.flags", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already complete" in again.stderr
    assert (workdir / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--num_candidates=0", "--num_candidates=0 is out of range"),
        ("--dataset_size=0", "--dataset_size=0 is out of range"),
        ("--mtm_epochs=-1", "--mtm_epochs=-1 is out of range"),
        ("--search=bogus", "--search=bogus is out of range; accepted: lts | fixed"),
        ("--policy_variance=-0.1", "--policy_variance=-0.1 is out of range; accepted: a float > 0"),
        ("--baseline_decay=1.5", "--baseline_decay=1.5 is out of range"),
        ("--init=nowhere", "--init=nowhere is out of range"),
        ("--num_gaussians=0", "--num_gaussians=0 is out of range"),
    ],
)
def test_bad_flags_exit_2_before_work(tmp_path, flag, message):
    workdir = tmp_path / "bad"
    proc = run_experiment(f"--workdir={workdir}", flag, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not workdir.exists()  # nothing was started
