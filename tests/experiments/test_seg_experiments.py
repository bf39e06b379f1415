"""The segmentation experiments (experiments/synth_seg.py, experiments/kitti_seg.py; experiments/lib/seg.py).

Each runs an experiment's quick flagfile through its command's main, in this process, shrunk to a tiny size
(TINY) so that a run is mostly compilation; the two experiments build the same renderer and MTM programs,
compiled once (tests/conftest.py's compilation cache). The KITTI tests are skipped when the shared KITTI
sample is absent.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from experiments import kitti_seg, synth_seg
from experiments.lib import common, seg
from experiments.lib import kitti_seg as kitti_lib
from experiments.lib import synth_seg as synth_lib
from lts_jax import run
from lts_jax.data import kitti
from tests.conftest import real_data_dir
from tests.experiments.conftest import FLAGFILES

# The quick flagfiles take minutes; these overrides keep every stage (pretraining, every method, the final
# evaluation, the figure) but make each tiny.
TINY = [
    "--height=24",
    "--width=80",
    "--num_iterations=2",
    "--num_candidates=2",
    "--dataset_size=4",
    "--mtm_epochs=1",
    "--batch_size=4",
    "--pretrain_images=8",
    "--render_chunk=8",
    "--log_every=1",
    "--noprogress",
]


def check_common(results: dict, methods: list[str], height: int = 24, width: int = 80) -> None:
    for key in ("val_car_iou", "test_car_iou", "val_mean_iou", "test_mean_iou"):
        assert set(results[key]) == {"pretrained", *methods}, key
        for m, v in results[key].items():
            assert 0.0 <= v <= 1.0, (key, m, v)
    assert set(results["best_iteration"]) == set(methods)
    assert set(results["curves"]) == set(methods)
    from simulators.traffic.scene import make_spec

    assert len(results["psi_raw"]) == make_spec(False, results["simulator"]["learn_rendering"]).dim
    assert "car_presence" in results["psi"]
    assert results["simulator"]["name"] == "traffic"
    assert (results["simulator"]["height"], results["simulator"]["width"]) == (height, width)
    for m in methods:
        assert Path(results["checkpoints"][m]).is_file(), m


@pytest.mark.slow
def test_kitti_seg_quick_end_to_end_and_eval_dir(tmp_path, cli):
    sample = real_data_dir("kitti_semantics")
    workdir = tmp_path / "run"
    status, err = cli(kitti_seg.main, f"--flagfile={FLAGFILES / 'kitti_seg_quick.flags'}", f"--workdir={workdir}",
                      f"--kitti_dir={sample}", *TINY, "--fresh_images=8")  # fmt: skip
    assert status == 0, err[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["experiment"] == "kitti_seg"
    methods = ["lts", "random_params", "random_search", "default_psi", "real"]
    check_common(results, methods)
    assert results["psi_method"] == "lts"
    assert [len(results["split"][p]) for p in ("train", "val", "test")] == [10, 10, 5]
    assert results["split"]["test"] == list(kitti.ORIGINAL_LABEL_NAMES)
    assert (workdir / "figure6b.png").stat().st_size > 0
    for m in methods:
        assert (workdir / m / "metrics.jsonl").is_file() and (workdir / m / "subrun.json").is_file()
    assert not (workdir / seg.PARTIAL).exists()

    # --eval_kitti_dir: the best MTMs of this run on another KITTI-layout directory (here: 2 images).
    other = tmp_path / "other"
    for sub in ("image_2", "semantic"):
        (other / sub).mkdir(parents=True)
        for name in ("000000_10", "20006"):
            shutil.copy(Path(sample) / "training" / sub / f"{name}.png", other / sub / f"{name}.png")
    status, output = cli(kitti_seg.main, f"--workdir={workdir}", f"--eval_kitti_dir={other}")
    assert status == 0, output[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["eval_car_iou"]) == set(methods)
    assert all(0.0 <= v <= 1.0 for v in results["eval_car_iou"].values())
    assert results["eval"]["images"] == 2 and set(results["eval_mean_iou"]) == set(methods)
    assert "eval car IoU" in output


def test_kitti_seg_missing_kitti_dir_exits_2(tmp_path, cli, monkeypatch):
    missing = tmp_path / "no_kitti"
    flagfile = f"--flagfile={FLAGFILES / 'kitti_seg_quick.flags'}"
    status, err = cli(kitti_seg.main, flagfile, f"--workdir={tmp_path / 'w'}", f"--kitti_dir={missing}")
    assert status == 2, err[-2000:]
    assert str(missing) in err and kitti.KITTI_URL in err
    assert not (tmp_path / "w").exists()  # refused before any work

    # Without --kitti_dir, and no default directory (run from elsewhere): the message says where to get KITTI.
    monkeypatch.chdir(tmp_path)
    status, err = cli(kitti_seg.main, flagfile, f"--workdir={tmp_path / 'w'}")
    assert status == 2, err[-2000:]
    assert "--kitti_dir is not set" in err and kitti.KITTI_URL in err


def test_kitti_seg_eval_dir_needs_a_finished_run(tmp_path, cli):
    status, err = cli(kitti_seg.main, f"--workdir={tmp_path}", f"--eval_kitti_dir={tmp_path}")
    assert status == 2
    assert "results.json does not exist" in err


def test_bad_flags_name_the_flag(tmp_path, cli):
    status, err = cli(synth_seg.main, f"--workdir={tmp_path / 'w'}", "--methods=lts,real")
    assert status == 2 and "--methods=lts,real: give distinct methods of lts, val_params" in err
    status, err = cli(synth_seg.main, f"--workdir={tmp_path / 'w'}", "--retain_mtm")
    assert status == 2 and "--retain_mtm is out of range; accepted: false" in err
    status, err = cli(synth_seg.main, f"--workdir={tmp_path / 'w'}", "--model=vgg")
    assert status == 2 and "--model=vgg is out of range" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_synth_seg_quick_end_to_end(tmp_path, cli):
    workdir = tmp_path / "run"
    flagfile = f"--flagfile={FLAGFILES / 'synth_seg_quick.flags'}"
    # 10 val and 5 test images, as the KITTI sample's split: the evaluation programs are kitti_seg's
    status, output = cli(synth_seg.main, flagfile, f"--workdir={workdir}", *TINY, "--val_images=10", "--test_images=5")
    assert status == 0, output[-3000:]
    assert "Figure 6a" in output
    results = json.loads((workdir / "results.json").read_text())
    assert results["experiment"] == "synth_seg"
    check_common(results, ["lts", "val_params"])
    assert set(results["max_reward"]) == {"lts", "val_params"}
    assert results["psi_val"]["car_presence"]["prob"] == pytest.approx(0.6, abs=1e-3)
    assert results["config"]["mtm_lr"] == 3e-4 and results["config"]["mtm_learning_rate"] == 3e-4
    assert (workdir / "figure6a.png").stat().st_size > 0

    # The library function in-process: a finished run is complete; a finished method is reused when the
    # top-level run starts over elsewhere with the methods' directories (--run_dir) kept.
    cfg = synth_lib.SynthSegConfig(
        height=24, width=80, num_iterations=2, num_candidates=2, dataset_size=4, mtm_epochs=1, batch_size=4,
        pretrain_images=8, render_chunk=8, val_images=10, test_images=5, progress=False, methods=("val_params",),
        run_dir=str(tmp_path / "runs"),
    )  # fmt: skip
    lines = []
    first = synth_lib.train_and_evaluate(cfg, tmp_path / "a", log=lines.append)
    with pytest.raises(run.RunComplete):
        synth_lib.train_and_evaluate(cfg, tmp_path / "a", log=lines.append)
    second = synth_lib.train_and_evaluate(cfg, tmp_path / "b", log=lines.append)
    assert any("(reused)" in line for line in lines)
    assert second["test_car_iou"] == first["test_car_iou"]
    with pytest.raises(run.WorkdirError) as err:  # another seed: refused before any work
        synth_lib.train_and_evaluate(dataclasses.replace(cfg, seed=1), tmp_path / "c", log=lines.append)
    assert ("seed", "0", "1") in err.value.differences
    assert not (tmp_path / "c" / "results.json").exists()


def test_kitti_source_checks_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(kitti_lib, "DEFAULT_KITTI_DIR", str(tmp_path / "none"))
    with pytest.raises(common.ConfigError, match="kitti_dir is not set"):
        kitti_lib.resolve_real_dir(kitti_lib.KittiSegConfig())
    source = seg.RealSource("kitti", str(tmp_path / "none"))
    with pytest.raises(kitti.KittiDataError):
        source.check()
    assert source.psi is None and seg.SimulatedSource("val", 2, 2, 1, 2).psi is not None


@pytest.mark.parametrize("name", ["kitti_seg", "kitti_seg_quick", "synth_seg", "synth_seg_quick"])
def test_flagfiles_start_with_their_command(name):
    path = FLAGFILES / f"{name}.flags"
    lines = path.read_text().splitlines()
    module = name.removesuffix("_quick")
    assert lines[0].startswith(f"# python -m experiments.{module} --flagfile=experiments/flags/{name}.flags")
    assert any("Expected" in line for line in lines if line.startswith("#"))
    assert all(line.startswith(("#", "--")) for line in lines if line.strip())
