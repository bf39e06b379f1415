"""experiments.generate: a data set rendered with a run's learned psi, in KITTI's layout; resumable; no overwrite."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simulators
from experiments import generate as generate_cli
from experiments.lib import generate
from lts_jax.data import kitti
from simulators import gmm
from simulators.traffic import TrafficSimulator
from simulators.traffic import layout as L

H, W = 24, 80
LABEL_IDS = {7, 8, 11, 21, 22, 23, 26}


def write_run(path: Path, results: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    return path


def traffic_run(path: Path) -> Path:
    psi = TrafficSimulator(H, W).preset("val")
    return write_run(
        path,
        {"experiment": "synth_seg", "simulator": {"name": "traffic", "height": H, "width": W}, "psi_raw": psi.tolist()},
    )


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))} | {
        "counts.jsonl": (out / "counts.jsonl").read_bytes()
    }


@pytest.mark.slow
def test_traffic_export_in_kitti_layout_resumable(tmp_path):
    run = traffic_run(tmp_path / "run")
    out = tmp_path / "out"
    summary = generate.generate(generate.GenerateConfig(out=str(out), num=5, chunk_size=2, progress=False), run)
    assert summary["rendered_now"] == 5 and summary["chunks"] == 3
    names = [generate.example_name(i) for i in range(5)]
    assert names[0] == "000000_10"
    assert kitti.list_names(out) == names  # the KITTI loader reads the output back
    for name in names:
        image = Image.open(out / "image_2" / f"{name}.png")
        label = Image.open(out / "semantic" / f"{name}.png")
        assert image.mode == "RGB" and image.size == (W, H)
        assert label.mode == "L" and label.size == (W, H)
        ids = set(np.unique(kitti.read_label(str(out / "semantic" / f"{name}.png"))).tolist())
        assert ids <= LABEL_IDS, ids
    lines = [json.loads(line) for line in (out / "counts.jsonl").read_text().splitlines()]
    assert [r["name"] for r in lines] == names
    for r in lines:
        assert list(r["counts"]) == list(L.CAR_TYPES) and r["total"] == sum(r["counts"].values())
    first = snapshot(out)

    # killed while rendering chunk 1: its marker and an image missing, counts.jsonl not assembled yet
    (out / ".chunks" / "000001.jsonl").unlink()
    (out / "image_2" / "000003_10.png").unlink()
    (out / "counts.jsonl").unlink()
    resumed = generate.generate(generate.GenerateConfig(out=str(out), num=5, chunk_size=2, progress=False), run)
    assert resumed["rendered_now"] == 2
    assert snapshot(out) == first  # bitwise the same data set

    with pytest.raises(generate.AlreadyComplete):
        generate.generate(generate.GenerateConfig(out=str(out), num=5, chunk_size=2, progress=False), run)
    with pytest.raises(generate.GenerateError, match="holds a different data set .*differs in: num"):
        generate.generate(generate.GenerateConfig(out=str(out), num=3, chunk_size=2, progress=False), run)

    # overwrite starts over; example i does not depend on num
    generate.generate(generate.GenerateConfig(out=str(out), num=3, chunk_size=2, overwrite=True, progress=False), run)
    assert kitti.list_names(out) == names[:3]
    again = snapshot(out)
    for name in names[:3]:
        for d in ("image_2", "semantic"):
            assert again[f"{d}/{name}.png"] == first[f"{d}/{name}.png"]


def test_gmm_run_exports_points(tmp_path):
    psi = gmm.make_spec(2).preset("real") if "real" in gmm.make_spec(2).preset_names else gmm.make_spec(2).zeros()
    run = write_run(
        tmp_path / "run",
        {
            "experiment": "gmm_toy",
            "num_gaussians": 2,
            "simulator": {"name": "gmm", "num_gaussians": 2},
            "psi_raw": psi.tolist(),
        },
    )
    generate.generate(generate.GenerateConfig(out=str(tmp_path / "out"), num=10, progress=False), run)
    rows = (tmp_path / "out" / "points.csv").read_text().splitlines()
    assert rows[0] == "x0,x1,label" and len(rows) == 11
    labels = [int(r.split(",")[2]) for r in rows[1:]]
    assert labels.count(0) == labels.count(1) == 5


def test_bad_requests_name_the_problem(tmp_path):
    with pytest.raises(generate.GenerateError, match=r"run/results.json does not exist"):
        generate.generate(generate.GenerateConfig(out=str(tmp_path / "out"), num=2), tmp_path / "run")
    run = write_run(tmp_path / "r1", {"experiment": "car_count", "psi_raw": [0.0]})
    with pytest.raises(generate.GenerateError, match="no 'simulator' entry"):
        generate.generate(generate.GenerateConfig(out=str(tmp_path / "out"), num=2), run)
    with pytest.raises(generate.GenerateError, match="'unity' is not supported"):
        generate.simulator_config({"simulator": {"name": "unity"}})
    with pytest.raises(generate.GenerateError, match="pass height"):
        generate.simulator_config({"simulator": {"name": "traffic"}})
    # height/width: "simulator" first, then "config", then the flags
    cfg = generate.simulator_config({"simulator": {"name": "traffic", "width": 64}, "config": {"height": 16}}, 8, 8)
    assert (cfg["height"], cfg["width"]) == (16, 64)
    run = write_run(tmp_path / "r2", {"simulator": {"name": "traffic", "height": H, "width": W}, "psi_raw": [0.0, 1.0]})
    with pytest.raises(generate.GenerateError, match="psi_raw has shape"):
        generate.generate(generate.GenerateConfig(out=str(tmp_path / "out"), num=2), run)
    with pytest.raises(generate.GenerateError, match="num=0 is out of range"):
        generate.generate(generate.GenerateConfig(out=str(tmp_path / "out"), num=0), run)


def test_cli_refuses_to_overwrite(tmp_path, cli):
    run = write_run(
        tmp_path / "run",
        {"experiment": "gmm_toy", "simulator": {"name": "gmm", "num_gaussians": 1}, "psi_raw": [0.0] * 8},
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    status, err = cli(generate_cli.main, f"--workdir={run}", f"--out={out}", "--num=4")
    assert status == 2, err[-2000:]
    assert f"--out {out} is not empty" in err and "pass --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    status, err = cli(generate_cli.main, f"--workdir={run}", f"--out={out}")
    assert status == 2 and "--num is required" in err


def test_simulator_entries_old_and_new_rebuild_a_pure_jax_renderer():
    """results.json's "simulator" is the simulator's describe() (a CARLA run: {"name": "carla", ...}); the older
    {"name": "traffic", "renderer": ...} entries still read. Either way the scene model is rebuilt with the
    pure-JAX renderer, one compiled call per chunk."""
    described = TrafficSimulator(H, W, learn_intersection=True).describe()
    entries = [
        {"simulator": described},
        {"simulator": {"name": "traffic", "renderer": "traffic", "height": H, "width": W, "learn_intersection": True}},
        {"simulator": {**described, "name": "carla", "hosts": "gpu:2000", "timeout_s": 30.0}},
        {"simulator": {"name": "traffic", "renderer": "carla", "height": H, "width": W, "learn_intersection": True}},
    ]
    for results, renderer in zip(entries, (None, "traffic", "carla", "carla")):
        cfg = generate.simulator_config(results)
        assert generate.renderer_of(cfg) == renderer
        options = generate.make_options(cfg, chunk_size=8)
        assert options["name"] == "traffic" and options["render_chunk"] == 8
        assert (options["height"], options["width"], options["learn_intersection"]) == (H, W, True)
        assert simulators.make(**options).describe()["learn_intersection"] is True
    gmm_options = generate.make_options(generate.simulator_config({"experiment": "gmm_toy", "num_gaussians": 3}), 8)
    assert gmm_options == {"name": "gmm", "num_gaussians": 3}
