"""The KITTI loader: on the shared real sample, and on every bad-input case with small synthetic trees."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from lts_jax.data import kitti
from tests.conftest import real_data_dir


def _sample():
    return real_data_dir("kitti_semantics")


def _write_pair(base, name, size=(12, 8), image=None, label=None):
    """Writes image_2/<name>.png (RGB) and semantic/<name>.png (L) under ``base``; size is (width, height)."""
    w, h = size
    os.makedirs(os.path.join(base, "image_2"), exist_ok=True)
    os.makedirs(os.path.join(base, "semantic"), exist_ok=True)
    rng = np.random.default_rng(0)
    if image is None:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if label is None:
        label = rng.choice(np.array([7, 8, 26], np.uint8), (h, w))
    Image.fromarray(image).save(os.path.join(base, "image_2", name + ".png"))
    Image.fromarray(label).save(os.path.join(base, "semantic", name + ".png"))
    return image, label


# ----- the shared real sample --------------------------------------------------------------------
def test_real_sample_shapes_dtypes_and_ids():
    root = _sample()
    names = kitti.list_names(root)
    assert len(names) == 25
    data = kitti.load_kitti(root, size=(48, 160))
    assert data["image"].shape == (25, 48, 160, 3) and data["image"].dtype == np.uint8
    assert data["label"].shape == (25, 48, 160) and data["label"].dtype == np.uint8
    assert data["names"] == names
    assert set(np.unique(data["label"])) <= set(range(34))  # Cityscapes label IDs
    assert (data["label"] == 26).any()  # every image of the sample shows cars
    img_dir, lab_dir = kitti.resolve_dirs(root)
    for i in (0, 7, 24):
        # nearest-neighbour resizing invents no label IDs
        full = kitti.read_label(os.path.join(lab_dir, names[i] + ".png"))
        assert full.shape == (375, 1242)
        assert set(np.unique(data["label"][i])) <= set(np.unique(full))


def test_real_sample_default_split():
    root = _sample()
    split = kitti.default_split(root)
    assert {k: len(v) for k, v in split.items()} == {"train": 10, "val": 10, "test": 5}
    assert split["test"] == list(kitti.ORIGINAL_LABEL_NAMES)
    parts = [set(v) for v in split.values()]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(kitti.list_names(root))
    assert kitti.default_split(root) == split  # seeded
    assert kitti.default_split(root, seed=1) != split
    loaded = kitti.load_splits(root, (24, 80))
    assert {k: v["image"].shape[0] for k, v in loaded.items()} == {"train": 10, "val": 10, "test": 5}
    assert loaded["val"]["names"] == split["val"]
    assert set(kitti.arrays(loaded["val"])) == {"image", "label"}


# ----- layouts and splits ------------------------------------------------------------------------
def test_both_layouts_and_explicit_names(tmp_path):
    img, lab = _write_pair(tmp_path / "flat", "a")
    _write_pair(tmp_path / "flat", "b")
    _write_pair(tmp_path / "bench" / "training", "a", image=img, label=lab)
    flat = kitti.load_kitti(tmp_path / "flat")
    bench = kitti.load_kitti(tmp_path / "bench")
    assert flat["names"] == ["a", "b"] and bench["names"] == ["a"]
    np.testing.assert_array_equal(flat["image"][0], img)
    np.testing.assert_array_equal(bench["label"][0], lab)
    only_b = kitti.load_kitti(tmp_path / "flat", names=["b"], size=(4, 6))
    assert only_b["names"] == ["b"] and only_b["image"].shape == (1, 4, 6, 3)
    assert set(np.unique(only_b["label"])) <= {7, 8, 26}


def test_split_names_fractions_and_seed():
    names = [f"n{i:02d}" for i in range(20)]
    parts = kitti.split_names(names, {"val": 0.25, "train": 0.75}, seed=3)
    assert len(parts["val"]) == 5 and len(parts["train"]) == 15
    assert sorted(parts["val"] + parts["train"]) == names
    assert kitti.split_names(names[::-1], {"val": 0.25, "train": 0.75}, seed=3) == parts
    with pytest.raises(ValueError, match="sum to 1"):
        kitti.split_names(names, {"val": 0.5, "train": 0.6})
    with pytest.raises(kitti.KittiDataError, match="none of the default test images"):
        kitti.default_split(names)


# ----- bad inputs: every error names the file or directory ---------------------------------------
def test_missing_directory_names_it_and_says_where_to_get_kitti(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(missing)
    assert str(missing) in str(e.value) and kitti.KITTI_URL in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(kitti.KittiDataError, match="image_2"):
        kitti.list_names(tmp_path / "empty")
    (tmp_path / "half" / "image_2").mkdir(parents=True)
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.list_names(tmp_path / "half")
    assert os.path.join(str(tmp_path / "half"), "semantic") in str(e.value)


def test_image_without_label(tmp_path):
    _write_pair(tmp_path, "a")
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "image_2" / "lonely.png")
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path)
    assert str(tmp_path / "image_2" / "lonely.png") in str(e.value) and "no label" in str(e.value)
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path, names=["lonely"])
    assert str(tmp_path / "semantic" / "lonely.png") in str(e.value)


def test_label_without_image(tmp_path):
    _write_pair(tmp_path, "a")
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(tmp_path / "semantic" / "orphan.png")
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path)
    assert str(tmp_path / "semantic" / "orphan.png") in str(e.value) and "no image" in str(e.value)
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path, names=["orphan"])
    assert str(tmp_path / "image_2" / "orphan.png") in str(e.value)


def test_unreadable_png(tmp_path):
    _write_pair(tmp_path, "a")
    bad = tmp_path / "semantic" / "a.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path)
    assert str(bad) in str(e.value) and "cannot read" in str(e.value)
    # a truncated file fails at decoding, and is named too
    _write_pair(tmp_path, "b", size=(64, 48))
    trunc = tmp_path / "image_2" / "b.png"
    trunc.write_bytes(trunc.read_bytes()[:200])
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path, names=["b"])
    assert str(trunc) in str(e.value)


def test_colour_label_map(tmp_path):
    _write_pair(tmp_path, "a")
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 142  # Cityscapes' car colour is (0, 0, 142); any colour map must be refused
    rgb[..., 2] = 7
    Image.fromarray(rgb).save(tmp_path / "semantic" / "a.png")
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path)
    assert str(tmp_path / "semantic" / "a.png") in str(e.value) and "colour" in str(e.value)
    # a grey map stored as RGB (three equal channels) is read as IDs
    ids = np.full((8, 12), 26, np.uint8)
    Image.fromarray(np.stack([ids] * 3, -1)).save(tmp_path / "semantic" / "a.png")
    np.testing.assert_array_equal(kitti.load_kitti(tmp_path)["label"][0], ids)


def test_size_mismatch(tmp_path):
    _write_pair(tmp_path, "a", size=(12, 8))
    Image.fromarray(np.zeros((9, 12), np.uint8)).save(tmp_path / "semantic" / "a.png")
    with pytest.raises(kitti.KittiDataError) as e:
        kitti.load_kitti(tmp_path, size=(4, 6))
    msg = str(e.value)
    assert str(tmp_path / "image_2" / "a.png") in msg and str(tmp_path / "semantic" / "a.png") in msg
    # pairs that agree but differ from each other need a size to be stacked
    _write_pair(tmp_path, "a", size=(12, 8))
    _write_pair(tmp_path, "b", size=(10, 8))
    with pytest.raises(kitti.KittiDataError, match="size=") as e:
        kitti.load_kitti(tmp_path)
    assert str(tmp_path / "image_2" / "b.png") in str(e.value)
    assert kitti.load_kitti(tmp_path, size=(8, 12))["image"].shape == (2, 8, 12, 3)
