"""``python -m experiments.plot`` redraws a segmentation workdir, whose runs live in RUN_DIR/<method>/."""

from __future__ import annotations

import json

import numpy as np

from experiments import plot
from simulators.traffic.scene import make_spec


def segmentation_workdir(workdir, run_dir):
    """What a finished synth_seg run leaves (results.json; a MultiRun sub-run per method), without training."""
    spec = make_spec()
    curves = {}
    for method in ("lts", "val_params"):
        d = run_dir / method
        d.mkdir(parents=True)
        (d / "subrun.json").write_text(json.dumps({"name": method, "status": "done"}))
        rows = []
        for i in range(4):
            psi = spec.zeros() + 0.1 * i
            rows.append({"step": i, "reward_mean": 0.6 + 0.01 * i, "reward_max": 0.62 + 0.01 * i,
                         "best_reward": 0.62 + 0.01 * i, "val_car_iou": 0.6 + 0.01 * i, "val_loss": 0.3,
                         "center": psi.tolist(), "params": spec.describe(psi)})  # fmt: skip
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        curves[method] = {k: [r[k] for r in rows] for k in ("reward_mean", "reward_max", "best_reward")}
    results = {
        "experiment": "synth_seg",
        "curves": curves,
        "max_reward": {"lts": 0.65, "val_params": 0.66},
        "val_car_iou": {"pretrained": 0.58, "lts": 0.65, "val_params": 0.66},
        "checkpoints": {m: str(run_dir / m / "best_params.msgpack") for m in curves},
        "psi_val": spec.describe(np.asarray(spec.preset("val"))),
        "config": {"run_dir": str(run_dir)},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results))


def test_plot_redraws_a_segmentation_workdir_and_its_method_runs(tmp_path, cli):
    workdir, run_dir = tmp_path / "w", tmp_path / "runs"  # --run_dir elsewhere, as the GPU flagfiles do
    segmentation_workdir(workdir, run_dir)
    status, output = cli(plot.main, f"--workdir={workdir}")
    assert status == 0, output
    for path in (workdir / "figure6a.png", run_dir / "lts" / "rewards.png", run_dir / "lts" / "params.png",
                 run_dir / "val_params" / "rewards.png"):  # fmt: skip
        assert str(path) in output and path.stat().st_size > 0, path
    assert "Unable to initialize backend" not in output


def test_plot_refuses_a_directory_without_a_run(tmp_path, cli):
    status, output = cli(plot.main, f"--workdir={tmp_path}")
    assert status == 2 and "metrics.jsonl does not exist" in output and "is --workdir a run's directory?" in output
