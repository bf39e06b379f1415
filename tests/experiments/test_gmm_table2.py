"""gmm_table2 through MultiRun: another run in the workdir is never touched; sub-runs are reused only when
their configuration matches, refused (naming the settings) otherwise, and started over with overwrite."""

import dataclasses
import json

import pytest

from experiments import common
from experiments.lib import gmm_table2
from lts_jax import run

SMALL = gmm_table2.Table2Config(seeds=(0,), gaussians=(1,), num_iterations=2, num_candidates=2, dataset_size=20)


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_table2_keeps_a_finished_run_and_checks_its_sub_runs(tmp_path):
    # A finished gmm_toy run in the workdir (issue 15: gmm_table2 used to delete it, exit 0).
    (tmp_path / "checkpoints" / "10").mkdir(parents=True)
    (tmp_path / "checkpoints" / "10" / "state").write_text("orbax")
    for name, text in (("flags.txt", "--seed=0\n"), ("metrics.jsonl", '{"step": 0}\n'), ("figure2.png", "png")):
        (tmp_path / name).write_text(text)
    (tmp_path / "results.json").write_text('{"experiment": "gmm_toy"}\n')
    before = files(tmp_path)
    lines = []

    table = gmm_table2.train_and_evaluate(SMALL, tmp_path, log=lines.append)
    after = files(tmp_path)
    assert {k: after[k] for k in before} == before  # every file of the other run is as it was
    acc = table["lts_test_accuracy"]["1"]
    assert len(acc["per_seed"]) == 1 and 0.0 <= acc["mean"] <= 1.0 and acc["min"] == acc["max"] == acc["mean"]
    assert table["runs"]["n1_seed0"]["status"] == "done" and not table["runs"]["n1_seed0"]["reused"]
    assert json.loads((tmp_path / "table2.json").read_text()) == table
    assert "| 1 | 0.670 |" in (tmp_path / "table2.md").read_text()
    sub = json.loads((tmp_path / "n1_seed0" / "results.json").read_text())
    assert sub["iterations"] == 2 and sub["config"]["init"] == "random" and sub["config"]["policy_variance"] == 0.05

    # the same command again: the finished sub-run is reused, nothing is recomputed
    sub_run = files(tmp_path / "n1_seed0")
    again = gmm_table2.train_and_evaluate(SMALL, tmp_path, log=lines.append)
    assert again["runs"]["n1_seed0"]["reused"] and again["lts_test_accuracy"] == table["lts_test_accuracy"]
    assert files(tmp_path / "n1_seed0") == sub_run
    assert "n=1 seed=0: test accuracy" in lines[0] and lines[-2].endswith("(reused)")

    # another configuration is refused before any work, naming the setting (exit 2 in the command)
    with pytest.raises(run.WorkdirError) as err:
        gmm_table2.train_and_evaluate(dataclasses.replace(SMALL, num_iterations=3), tmp_path, log=lines.append)
    assert err.value.differences == [("num_iterations", "2", "3")]
    assert "--num_iterations: 2 in the run, now 3" in common.user_message(err.value)
    assert files(tmp_path / "n1_seed0") == sub_run
    # run-management settings may differ
    gmm_table2.train_and_evaluate(dataclasses.replace(SMALL, checkpoint_every=1), tmp_path, log=lines.append)

    # overwrite starts the sub-runs over; the other run's files still stay
    bigger = dataclasses.replace(SMALL, num_iterations=3, overwrite=True)
    table = gmm_table2.train_and_evaluate(bigger, tmp_path, log=lines.append)
    assert not table["runs"]["n1_seed0"]["reused"]
    assert json.loads((tmp_path / "n1_seed0" / "results.json").read_text())["iterations"] == 3
    after = files(tmp_path)
    assert {k: after[k] for k in before} == before
