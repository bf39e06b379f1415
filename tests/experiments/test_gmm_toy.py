"""experiments.gmm_toy (paper 4.1): the library function in-process, the command's flags, its quick flagfile."""

import json
import subprocess
import sys

import pytest

from experiments import gmm_toy
from experiments.lib import common
from experiments.lib import gmm_toy as lib
from lts_jax import run
from tests.experiments.conftest import FLAGFILES, ROOT


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_train_and_evaluate_tiny(tmp_path):
    cfg = lib.GmmToyConfig(num_iterations=3, num_candidates=2, dataset_size=20, val_size=40, test_size=40,
                           eval_repeats=1, progress=False)  # fmt: skip
    results = lib.train_and_evaluate(cfg, tmp_path)
    assert results["experiment"] == "gmm_toy" and results["iterations"] == 3
    assert set(results["test_accuracy"]) == {"lts", "val_params"}
    assert json.loads((tmp_path / "results.json").read_text())["psi_raw"] == results["psi_raw"]
    assert results["config"]["num_candidates"] == 2 and results["config"]["init"] == "zeros"
    for png in ("figure2.png", "reward.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    stored = run.read_config(tmp_path)  # flags.txt: every setting, as the command line writes it
    assert stored["num_gaussians"] == "2" and stored["workdir"] == str(tmp_path)
    with pytest.raises(run.RunComplete):
        lib.train_and_evaluate(cfg, tmp_path)
    with pytest.raises(common.ConfigError, match="svm_c=0.0 is out of range"):
        lib.train_and_evaluate(cfg.__class__(svm_c=0.0), tmp_path / "other")
    assert not (tmp_path / "other").exists()


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
def test_bad_flags_exit_2_before_work(tmp_path, cli, flag, message):
    status, err = cli(gmm_toy.main, f"--workdir={tmp_path / 'bad'}", flag)
    assert status == 2 and message in err, err[-2000:]
    assert not (tmp_path / "bad").exists()  # nothing was started


def run_experiment(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "experiments.gmm_toy", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_quick_flagfile_end_to_end(tmp_path, cli):
    workdir = tmp_path / "run"
    flagfile = f"--flagfile={FLAGFILES / 'gmm_toy_quick.flags'}"
    proc = run_experiment(flagfile, f"--workdir={workdir}")
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
    status, err = cli(gmm_toy.main, flagfile, f"--workdir={workdir}")
    assert status == 0 and "already complete" in err, err[-2000:]
    assert (workdir / "results.json").read_bytes() == before
    # a bad flag exits 2 as a process too
    proc = run_experiment(f"--workdir={tmp_path / 'bad'}", "--num_gaussians=0", timeout=120)
    assert proc.returncode == 2 and "--num_gaussians=0 is out of range" in proc.stderr
