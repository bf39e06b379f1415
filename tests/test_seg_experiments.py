"""End-to-end tests of the segmentation experiments (experiments/kitti_seg.py, experiments/synth_seg.py).

Each runs an experiment's quick flagfile as a subprocess, shrunk to a tiny size (TINY) so that a run is mostly
compilation. Compiled programs go to a persistent cache under .pytest_cache (git-ignored): the first run of
this file compiles the renderer and the MTM programs (a few minutes on 2 cores), later runs reuse them.
The KITTI tests are skipped when the shared KITTI sample is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lts_jax.data import kitti

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ROOT / "experiments" / "flags"
KITTI_SAMPLE = ROOT.parent / "shared" / "data" / "kitti_semantics"
CACHE = ROOT / ".pytest_cache" / "jax_compile_cache"
needs_kitti = pytest.mark.skipif(
    not KITTI_SAMPLE.is_dir(), reason=f"the shared KITTI sample {KITTI_SAMPLE} is absent (KITTI: {kitti.KITTI_URL})"
)

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
    f"--compile_cache_dir={CACHE}",
]


def run(module: str, *args: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_common(results: dict, methods: list[str], height: int = 24, width: int = 80) -> None:
    for key in ("val_car_iou", "test_car_iou", "val_mean_iou", "test_mean_iou"):
        assert set(results[key]) == {"pretrained", *methods}, key
        for m, v in results[key].items():
            assert 0.0 <= v <= 1.0, (key, m, v)
    assert set(results["best_iteration"]) == set(methods)
    assert set(results["curves"]) == set(methods)
    from simulators.traffic.scene import make_spec

    assert len(results["psi_raw"]) == make_spec().dim
    assert "car_presence" in results["psi"]
    assert results["simulator"]["name"] == "traffic"
    assert (results["simulator"]["height"], results["simulator"]["width"]) == (height, width)
    for m in methods:
        assert Path(results["checkpoints"][m]).is_file(), m


@needs_kitti
def test_kitti_seg_quick_end_to_end_and_eval_dir(tmp_path):
    workdir = tmp_path / "run"
    proc = run("kitti_seg", f"--flagfile={FLAGS / 'kitti_seg_quick.flags'}", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Table 1" in proc.stdout and "kitti_seg: car segmentation on real KITTI" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["experiment"] == "kitti_seg"
    methods = ["lts", "random_params", "random_search", "real"]
    check_common(results, methods)
    assert results["psi_method"] == "lts"
    assert [len(results["split"][p]) for p in ("train", "val", "test")] == [10, 10, 5]
    assert results["split"]["test"] == list(kitti.ORIGINAL_LABEL_NAMES)
    assert (workdir / "figure6b.png").stat().st_size > 0
    for m in methods:
        assert (workdir / m / "metrics.jsonl").is_file()

    # --eval_kitti_dir: the best MTMs of this run on another KITTI-layout directory (here: 2 images).
    other = tmp_path / "other"
    for sub in ("image_2", "semantic"):
        (other / sub).mkdir(parents=True)
        for name in ("000000_10", "20006"):
            shutil.copy(KITTI_SAMPLE / "training" / sub / f"{name}.png", other / sub / f"{name}.png")
    proc = run("kitti_seg", f"--workdir={workdir}", f"--eval_kitti_dir={other}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["eval_car_iou"]) == set(methods)
    assert all(0.0 <= v <= 1.0 for v in results["eval_car_iou"].values())
    assert results["eval"]["images"] == 2 and set(results["eval_mean_iou"]) == set(methods)
    assert "eval car IoU" in proc.stdout


def test_kitti_seg_missing_kitti_dir_exits_2(tmp_path):
    missing = tmp_path / "no_kitti"
    proc = run("kitti_seg", f"--flagfile={FLAGS / 'kitti_seg_quick.flags'}", f"--workdir={tmp_path / 'w'}",
               f"--kitti_dir={missing}", timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(missing) in proc.stderr and kitti.KITTI_URL in proc.stderr
    assert not (tmp_path / "w").exists()  # refused before any work

    # Without --kitti_dir, and no default directory (run from elsewhere): the message says where to get KITTI.
    proc = run("kitti_seg", f"--flagfile={FLAGS / 'kitti_seg_quick.flags'}", f"--workdir={tmp_path / 'w'}",
               cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--kitti_dir is not set" in proc.stderr and kitti.KITTI_URL in proc.stderr


def test_kitti_seg_eval_dir_needs_a_finished_run(tmp_path):
    proc = run("kitti_seg", f"--workdir={tmp_path}", f"--eval_kitti_dir={tmp_path}", timeout=120)
    assert proc.returncode == 2
    assert "results.json does not exist" in proc.stderr


def test_synth_seg_quick_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    proc = run("synth_seg", f"--flagfile={FLAGS / 'synth_seg_quick.flags'}", f"--workdir={workdir}", *TINY,
               "--val_images=4", "--test_images=4")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Figure 6a" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["experiment"] == "synth_seg"
    check_common(results, ["lts", "val_params"])
    assert set(results["max_reward"]) == {"lts", "val_params"}
    assert results["psi_val"]["car_presence"]["prob"] == pytest.approx(0.6, abs=1e-3)
    assert (workdir / "figure6a.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["kitti_seg", "kitti_seg_quick", "synth_seg", "synth_seg_quick"])
def test_flagfiles_start_with_their_command(name):
    path = FLAGS / f"{name}.flags"
    lines = path.read_text().splitlines()
    module = name.removesuffix("_quick")
    assert lines[0].startswith(f"# python -m experiments.{module} --flagfile=experiments/flags/{name}.flags")
    assert any("Expected" in line for line in lines if line.startswith("#"))
    assert all(line.startswith(("#", "--")) for line in lines if line.strip())
