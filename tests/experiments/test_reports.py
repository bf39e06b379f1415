"""The closing lines a command prints: a short rounded table and the paths of results.json and the figures."""

from __future__ import annotations

from experiments.lib import car_count, gmm_toy


def test_car_count_report(tmp_path):
    (tmp_path / "car_count.png").write_bytes(b"png")
    results = {
        "method": "lts", "iterations": 30, "final_val_reward": -0.4712345,
        "test_reward": {"lts": -0.506123681863149, "lts_amtm": -0.5322252313296, "psi_real": -0.37640852729479474},
        "psi_real_reward": {"val": -0.39, "test": -0.38, "final_val": -0.3987, "final_test": -0.3764},
        "constant_predictors": {"val_median": {"val": -0.36, "test": -0.373}, "zero": {"val": -0.41, "test": -0.42}},
        "config": {"candidates_from_amtm": True, "final_window": 3},
    }  # fmt: skip
    text = car_count.report(results, tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("car_count: 30 iterations. Reward = -(mean L1 count error over 5 car types)")
    row = {line.split("  ")[0]: line.split() for line in lines[3:8]}
    assert row["lts (MTMs, mean over K)"][-2:] == ["-0.506", "-0.471"]
    assert row["psi_real (MTMs trained on its data)"][-2:] == ["-0.376", "-0.399"]  # the final window's
    assert "constant: the validation median" in text and "-0.506123" not in text  # rounded
    assert f"results: {tmp_path / 'results.json'}" in text and str(tmp_path / "car_count.png") in text
    assert str(tmp_path / "params.png") not in text  # only the figures that exist


def test_gmm_toy_report(tmp_path):
    results = {"search": "lts", "iterations": 150, "num_gaussians": 2,
               "test_accuracy": {"lts": 0.9973333333, "val_params": 0.998666666},
               "val_reward": {"first": 0.412, "last": 0.9918, "best": 0.9961}}  # fmt: skip
    text = gmm_toy.report(results, tmp_path)
    assert "lts (the learned q)    0.997          0.412              0.992  0.996" in text
    assert "val params (p itself)  0.999" in text and f"results: {tmp_path / 'results.json'}" in text
