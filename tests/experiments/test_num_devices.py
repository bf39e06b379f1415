"""--num_devices from the command line (issue 18): an experiment splits its K candidates over forced CPU devices."""

import json
import os
import subprocess
import sys

import pytest

from tests.experiments.conftest import FLAGFILES, ROOT


def _gmm(tmp_path, *args, devices=4):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, "-m", "experiments.gmm_toy", f"--flagfile={FLAGFILES / 'gmm_toy_quick.flags'}",
           "--num_iterations=2", "--num_candidates=4", "--dataset_size=40", "--val_size=40", "--test_size=40",
           "--eval_repeats=1", "--noprogress", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_candidates_over_four_devices_and_bad_counts(tmp_path):
    done = _gmm(tmp_path, f"--workdir={tmp_path / 'four'}", "--num_devices=0")  # 0: every device (4)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "four" / "results.json").read_text())
    assert results["iterations"] == 2
    bad = _gmm(tmp_path, f"--workdir={tmp_path / 'bad'}", "--num_devices=3")
    assert bad.returncode == 2 and "--num_devices=3 is out of range" in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "bad").exists()  # refused before any work
    many = _gmm(tmp_path, f"--workdir={tmp_path / 'many'}", "--num_devices=8", "--num_candidates=8")
    assert many.returncode == 2 and "at most the 4 devices" in many.stderr, many.stderr[-2000:]
