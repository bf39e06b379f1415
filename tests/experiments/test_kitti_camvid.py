"""kitti_seg on either real data set (issue 14): --real_data=kitti|camvid, --real_dir (--kitti_dir its older name),
--eval_real_dir, --learn_rendering, --fresh_images, the default_psi method, and a run stopped by SIGTERM that the
same command resumes and completes.

The end-to-end runs use tests/experiments/test_seg_experiments.py's TINY sizes (compiled programs shared with it
through the session's compilation cache); the real data come from tests/conftest.py's real_data_dir (skipped
when absent).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import kitti_seg
from experiments.lib import common
from experiments.lib import kitti_seg as lib
from lts_jax.data import real
from simulators.traffic.scene import make_spec
from tests.conftest import COMPILE_CACHE, real_data_dir
from tests.experiments.conftest import FLAGFILES, ROOT
from tests.experiments.test_seg_experiments import TINY

CAMVID_QUICK = f"--flagfile={FLAGFILES / 'camvid_seg_quick.flags'}"
KITTI_QUICK = f"--flagfile={FLAGFILES / 'kitti_seg_quick.flags'}"


@pytest.mark.slow
def test_camvid_run_records_the_data_set_camera_fresh_models_and_evaluates_another_directory(tmp_path, cli):
    camvid = real_data_dir("camvid")
    workdir = tmp_path / "run"
    methods = ["lts", "default_psi", "real"]
    status, output = cli(kitti_seg.main, CAMVID_QUICK, f"--workdir={workdir}", f"--real_dir={camvid}", *TINY,
                         f"--methods={','.join(methods)}", "--learn_rendering=all",
                         "--fresh_images=8")  # fmt: skip
    assert status == 0, output[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["experiment"] == "kitti_seg" and set(results["test_car_iou"]) == {"pretrained", *methods}
    # the data set's description: the split by whole sequence (train from val's drive), the crop band, the mirror
    assert [len(results["split"][p]) for p in ("train", "val", "test")] == [204, 101, 163]
    assert {real.camvid_sequence(n) for n in results["split"]["test"]} == {"0001TP", "0006R0"}
    assert results["real_data"] == real.CAMVID.describe((24, 80))
    assert results["real_data"]["mirror"] and results["real_data"]["camera"]["height_m"] is None
    assert results["real_dir"] == os.path.abspath(camvid)
    # the rendering parameters: in psi, and the learned camera in physical units per method
    # (every block, as kitti_seg_quick.flags: the programs of the KITTI test; a subset: test_rendering.py)
    assert results["simulator"]["learn_rendering"] is True
    assert len(results["psi_raw"]) == make_spec(False, True).dim
    assert results["rendering_by_method"]["default_psi"]["camera_height_m"] == {"value": 1.65, "spread": 0.0}
    assert set(results["rendering_by_method"]) == {"lts", "default_psi"}
    assert "known (camvid)" in output and "horizon/H" in output
    # a fresh MTM per method with a psi (not real), and the late mean reward
    assert set(results["fresh_test_car_iou"]) == {"lts", "default_psi"} and results["fresh"]["images"] == 8
    assert all(0.0 <= v <= 1.0 for v in results["fresh_test_car_iou"].values())
    assert (workdir / "fresh_lts" / "fresh_params.msgpack").is_file() and "fresh MTM test car IoU" in output
    assert set(results["late_mean_reward"]) == set(methods)

    # --eval_real_dir: the best MTMs on another CamVid directory, cropped and mirrored as CamVid (2 frames)
    other = tmp_path / "other"
    names = {
        "image_2": ("0001TP_006690.jpg", "0016E5_07959.jpg"),
        "semantic": ("0001TP_006690.png", "0016E5_07959.png"),
    }
    for sub, files in names.items():
        (other / sub).mkdir(parents=True)
        for f in files:
            shutil.copy(Path(camvid) / "training" / sub / f, other / sub / f)
    status, output = cli(kitti_seg.main, f"--workdir={workdir}", f"--eval_real_dir={other}")
    assert status == 0, output[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["eval"]["data"] == "camvid" and results["eval"]["images"] == 2
    assert set(results["eval_car_iou"]) == set(methods) and "eval car IoU" in output


def test_real_data_settings_are_checked_before_any_work(tmp_path, cli, monkeypatch):
    camvid, w = real_data_dir("camvid"), f"--workdir={tmp_path / 'w'}"
    cases = [
        ((CAMVID_QUICK, "--kitti_dir=/data/kitti"), "--kitti_dir=/data/kitti names a KITTI directory"),
        ((KITTI_QUICK, "--kitti_dir=/a", "--real_dir=/b"), "--real_dir=/b and --kitti_dir=/a differ"),
        ((KITTI_QUICK, "--real_data=coco"), "--real_data=coco is out of range; accepted: kitti | camvid"),
        ((CAMVID_QUICK, f"--real_dir={camvid}", "--notrain_from_val_sequence"), "needs --train_from_val_sequence"),
        ((KITTI_QUICK, "--train_from_val_sequence"), "--train_from_val_sequence is out of range; accepted: false"),
        ((CAMVID_QUICK, "--learn_rendering=lens"), "--learn_rendering=lens is out of range; accepted: all, or"),
        ((CAMVID_QUICK, "--fresh_images=-1"), "--fresh_images=-1 is out of range"),
        ((f"--eval_real_dir={tmp_path}", f"--eval_kitti_dir={tmp_path / 'x'}"), "differ (one setting)"),
    ]
    for argv, message in cases:
        status, err = cli(kitti_seg.main, w, *argv)
        assert status == 2 and message in err, (argv, err[-2000:])
    assert not (tmp_path / "w").exists()
    # the old name of --eval_real_dir still works (here: no finished run)
    status, err = cli(kitti_seg.main, f"--workdir={tmp_path}", f"--eval_kitti_dir={tmp_path}")
    assert status == 2 and "--eval_real_dir needs a finished run" in err
    # no CamVid directory (run from elsewhere): the message says where to get CamVid
    monkeypatch.chdir(tmp_path)
    status, err = cli(kitti_seg.main, w, CAMVID_QUICK)
    assert status == 2 and "--real_dir is not set" in err and real.CAMVID.url in err, err[-2000:]


def test_kitti_dir_is_the_older_name_of_real_dir(tmp_path):
    cfg = lib.KittiSegConfig
    assert lib.resolve_real_dir(cfg(kitti_dir="/k")) == "/k" == lib.resolve_real_dir(cfg(real_dir="/k"))
    assert lib.resolve_real_dir(cfg(kitti_dir="/k", real_dir="/k/")) == "/k/"
    with pytest.raises(common.ConfigError, match="differ"):
        lib.resolve_real_dir(cfg(kitti_dir="/k", real_dir="/other"))
    source = lib.source(cfg(real_data="camvid", real_dir="/c", methods=("lts",)))
    assert source.dataset == "camvid" and source.split_options == {"train_from_val_sequence": False}
    assert lib.source(cfg(real_dir="/k")).split_options["val_fraction"] == 0.5


@pytest.mark.parametrize("name", ["camvid_seg", "camvid_seg_quick"])
def test_camvid_flagfiles_start_with_their_command(name):
    lines = (FLAGFILES / f"{name}.flags").read_text().splitlines()
    assert lines[0].startswith(f"# python -m experiments.kitti_seg --flagfile=experiments/flags/{name}.flags")
    assert any("Expected" in line for line in lines if line.startswith("#"))
    assert all(line.startswith(("#", "--")) for line in lines if line.strip())
    assert "--real_data=camvid" in lines and "--train_from_val_sequence" in lines


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_resumes_with_the_same_command_and_completes(tmp_path, cli):
    """Long runs over several calls (a device's command limit): SIGTERM saves a checkpoint and exits 143; the same
    command continues from it and finishes (its metrics: every iteration once). The stop in a real process, the
    resume in this one (its compiled programs are this session's)."""
    workdir, n = tmp_path / "run", 12
    # the programs of the in-process KITTI test (kitti_seg_quick.flags' rendering parameters): the session's
    # compilation cache has them
    command = [
        sys.executable, "-m", "experiments.kitti_seg", KITTI_QUICK, f"--workdir={workdir}",
        f"--real_dir={real_data_dir('kitti_semantics')}", *TINY, "--pretrain_images=0", "--fresh_images=8",
        "--methods=lts", f"--num_iterations={n}", "--checkpoint_every=2",
        f"--compile_cache_dir={COMPILE_CACHE}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = workdir / "lts" / "metrics.jsonl", time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert not (workdir / "results.json").exists()
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < n and any((workdir / "lts" / "checkpoints").iterdir()), output[-3000:]

    status, output = cli(kitti_seg.main, *command[3:])
    assert status == 0, output[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["fresh_test_car_iou"]) == {"lts"}
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(n))


def test_seed_summary_gives_mean_and_spread_over_seeds():
    runs = [
        {"test_car_iou": {"lts": a, "real": 0.3}, "late_mean_reward": {"lts": b}, "fresh_test_car_iou": {"lts": c}}
        for a, b, c in ((0.2, 0.1, 0.4), (0.4, 0.3, 0.2))
    ]
    summary = lib.seed_summary(runs)
    assert summary["lts"]["test_car_iou"]["mean"] == pytest.approx(0.3)
    assert summary["lts"]["test_car_iou"]["std"] == pytest.approx(0.1 * 2**0.5)
    assert summary["real"]["test_car_iou"]["std"] == 0.0 and "fresh_test_car_iou" not in summary["real"]
    table = lib.seed_table(runs)
    assert "| lts | 0.200 +- 0.141 | | 0.300 +- 0.141 | 0.300 +- 0.141 |" in table.replace("  ", " ")
