"""The real data sets (lts_jax/data/real.py): JPEG and PNG reading, crop and mirror geometry, the split by whole
sequence, errors on small synthetic trees; shapes, dtypes and label IDs on the shared KITTI and CamVid copies."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from lts_jax.data import kitti, real
from tests.conftest import real_data_dir

CITYSCAPES_IDS = set(range(34))
CAMVID_IDS = {0, 7, 8, 11, 13, 17, 20, 21, 23, 24, 25, 26}  # the README's mapping of CamVid's 11 classes


def _write(base, name, size=(16, 12), image=None, label=None, ext=".png"):
    """Writes image_2/<name><ext> and semantic/<name>.png under ``base``; size is (width, height)."""
    w, h = size
    os.makedirs(os.path.join(base, "image_2"), exist_ok=True)
    os.makedirs(os.path.join(base, "semantic"), exist_ok=True)
    rng = np.random.default_rng(len(name))
    if image is None:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if label is None:
        label = rng.choice(np.array([7, 8, 26], np.uint8), (h, w))
    Image.fromarray(image).save(os.path.join(base, "image_2", name + ext), quality=95)
    Image.fromarray(label).save(os.path.join(base, "semantic", name + ".png"))
    return image, label


def _smooth(h, w):
    """A smooth RGB image (JPEG keeps it to within a few levels)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)


# ----- JPEG and PNG ------------------------------------------------------------------------------------------
def test_jpeg_and_png_images_read_alike(tmp_path):
    smooth = _smooth(24, 32)
    _, lab_j = _write(tmp_path, "j", (32, 24), image=smooth, ext=".jpg")
    _, lab_p = _write(tmp_path, "p", (32, 24), image=smooth)
    _write(tmp_path, "u", (32, 24), image=smooth, ext=".JPEG")  # any case
    assert kitti.list_names(tmp_path) == ["j", "p", "u"]
    data = kitti.load_kitti(tmp_path)
    assert data["image"].dtype == np.uint8 and data["image"].shape == (3, 24, 32, 3)
    np.testing.assert_array_equal(data["image"][1], smooth)  # PNG: lossless
    assert np.abs(data["image"][0].astype(int) - smooth).mean() < 2.0  # JPEG q95: close
    np.testing.assert_array_equal(data["label"][0], lab_j)
    np.testing.assert_array_equal(data["label"][1], lab_p)


def test_one_stem_two_formats_and_jpeg_labels_are_refused(tmp_path):
    _write(tmp_path, "a")
    Image.fromarray(_smooth(12, 16)).save(tmp_path / "image_2" / "a.jpg")
    with pytest.raises(real.DataError) as e:
        kitti.list_names(tmp_path)
    assert str(tmp_path / "image_2" / "a.png") in str(e.value) and str(tmp_path / "image_2" / "a.jpg") in str(e.value)
    os.remove(tmp_path / "image_2" / "a.jpg")
    # a JPEG label map is not a label (lossy IDs): the image is reported as unlabelled
    os.remove(tmp_path / "semantic" / "a.png")
    Image.fromarray(np.full((12, 16), 26, np.uint8)).save(tmp_path / "semantic" / "a.jpg")
    with pytest.raises(real.DataError, match="no label") as e:
        kitti.load_kitti(tmp_path)
    assert str(tmp_path / "semantic" / "a.png") in str(e.value)


def test_corrupt_jpeg_and_missing_jpeg_are_named(tmp_path):
    _write(tmp_path, "a", ext=".jpg")
    bad = tmp_path / "image_2" / "a.jpg"
    bad.write_bytes(bad.read_bytes()[:150])  # truncated
    with pytest.raises(real.DataError, match="cannot read") as e:
        kitti.load_kitti(tmp_path)
    assert str(bad) in str(e.value)
    os.remove(bad)
    with pytest.raises(real.DataError, match="does not exist") as e:
        kitti.load_kitti(tmp_path, names=["a"])
    assert str(tmp_path / "image_2" / "a.png") in str(e.value) and ".jpg" in str(e.value)


# ----- crop and mirror ---------------------------------------------------------------------------------------
def test_crop_band_geometry():
    crop = kitti.Crop(top=0.314)
    assert crop.rows(360, 480, (96, 320)) == (113, 257)  # 144 rows: the target's aspect, whole width
    assert crop.rows(360, 480, (192, 640)) == (113, 257)
    assert crop.rows(720, 960, (96, 320)) == (226, 514)  # the same band of a full-size CamVid frame
    first, stop = crop.rows(360, 480)  # no target: KITTI's aspect, 1242 / 375
    assert (first, stop - first) == (113, 145)
    with pytest.raises(ValueError, match="top"):
        kitti.Crop(top=1.0)


def test_crop_and_mirror_move_image_and_label_together(tmp_path):
    h, w = 36, 48
    rows = np.repeat(np.arange(h, dtype=np.uint8)[:, None], w, 1)  # label = row index
    cols = np.repeat(np.arange(w, dtype=np.uint8)[None, :], h, 0)
    image = np.stack([rows, cols, rows], -1)
    _write(tmp_path, "a", (w, h), image=image, label=rows)
    crop = kitti.Crop(top=0.25)
    out = kitti.load_kitti(tmp_path, size=None, crop=crop, mirror=True)
    first, stop = crop.rows(h, w)  # 9 .. 9 + round(48 / 3.312) = 23
    assert out["label"].shape == (1, stop - first, w)
    np.testing.assert_array_equal(out["label"][0], rows[first:stop])  # the band of rows, whole width
    np.testing.assert_array_equal(out["image"][0, :, :, 1], cols[first:stop, ::-1])  # mirrored
    np.testing.assert_array_equal(out["image"][0, :, :, 0], out["label"][0])
    sized = kitti.load_kitti(tmp_path, size=(6, 16), crop=crop)
    assert sized["image"].shape == (1, 6, 16, 3) and sized["label"].shape == (1, 6, 16)
    band = crop.rows(h, w, (6, 16))  # the target's aspect: 48 / (16 / 6) = 18 rows
    assert set(np.unique(sized["label"])) <= set(range(band[0], band[1]))  # nearest: only rows of the band
    with pytest.raises(real.DataError, match="too short") as e:
        kitti.load_kitti(tmp_path, size=(4, 8), crop=kitti.Crop(top=0.9))  # needs rows 32..55 of 36
    assert str(tmp_path / "image_2" / "a.png") in str(e.value)


# ----- the CamVid split --------------------------------------------------------------------------------------
def _camvid_tree(base, val_names, names):
    for n in names:
        _write(base / "training", n, (8, 6), ext=".jpg")
    (base / "val.txt").write_text("".join(n + "\n" for n in val_names))


def test_camvid_split_keeps_sequences_apart(tmp_path):
    names = [f"S1_{i:03d}" for i in range(6)] + [f"T1_{i:03d}" for i in range(3)] + [f"T2_f{i:02d}" for i in range(2)]
    names += [f"X9_{i:03d}" for i in range(2)]  # a sequence in no list
    _camvid_tree(tmp_path, ["S1_002", "S1_003", "S1_004"], names)
    ds = dataclasses.replace(real.CAMVID, test_sequences=("T1", "T2"))
    split = ds.split(tmp_path)
    assert split["val"] == ["S1_002", "S1_003", "S1_004"]
    assert split["test"] == ["T1_000", "T1_001", "T1_002", "T2_f00", "T2_f01"]
    assert split["train"] == ["X9_000", "X9_001"]  # not val's sequence S1
    seqs = {k: {real.camvid_sequence(n) for n in v} for k, v in split.items()}
    assert not (seqs["train"] & seqs["val"]) and not (seqs["train"] & seqs["test"]) and not (seqs["val"] & seqs["test"])
    assert ds.split(tmp_path, seed=5) == split  # fixed, whatever the seed
    wide = ds.split(tmp_path, train_from_val_sequence=True)
    assert wide["train"] == ["S1_000", "S1_001", "S1_005", "X9_000", "X9_001"]  # val's drive, then the others
    assert wide["val"] == split["val"] and wide["test"] == split["test"]
    loaded = ds.load_splits(tmp_path, (4, 8))
    assert {k: v["image"].shape for k, v in loaded.items()} == {
        "train": (2, 4, 8, 3), "val": (3, 4, 8, 3), "test": (5, 4, 8, 3)
    }  # fmt: skip


def test_camvid_split_errors_name_the_file(tmp_path):
    names = ["S1_000", "S1_001", "T1_000"]
    _camvid_tree(tmp_path, ["S1_000"], names)
    ds = dataclasses.replace(real.CAMVID, test_sequences=("T1",))
    os.remove(tmp_path / "val.txt")
    with pytest.raises(real.DataError, match="val.txt"):
        ds.split(tmp_path)
    (tmp_path / "val.txt").write_text("S1_000\nS1_777\n")
    with pytest.raises(real.DataError, match="S1_777") as e:
        ds.split(tmp_path)
    assert str(tmp_path / "val.txt") in str(e.value)
    (tmp_path / "val.txt").write_text("S1_000\nT1_000\n")
    with pytest.raises(real.DataError, match="test sequences"):
        ds.split(tmp_path)
    (tmp_path / "val.txt").write_text("S1_000\n")
    with pytest.raises(real.DataError, match="no frames of the test sequences"):
        dataclasses.replace(ds, test_sequences=("Q7",)).split(tmp_path)


def test_missing_directory_says_where_to_get_the_data(tmp_path):
    for ds in real.DATASETS.values():
        with pytest.raises(real.DataError) as e:
            ds.load(tmp_path / "nowhere", (4, 8))
        assert str(tmp_path / "nowhere") in str(e.value) and ds.url in str(e.value)
    with pytest.raises(ValueError, match="camvid"):
        real.get("cityscapes")
    assert real.get("camvid") is real.CAMVID and real.KITTI.default_dir("/d") == os.path.join("/d", "kitti_semantics")


# ----- the shared real copies --------------------------------------------------------------------------------
def test_camvid_sample_split_shapes_and_ids():
    root = real_data_dir("camvid")
    split = real.CAMVID.split(root)
    assert {k: len(v) for k, v in split.items()} == {"train": 0, "val": 101, "test": 163}
    assert {real.camvid_sequence(n) for n in split["val"]} == {"0016E5"}
    assert {real.camvid_sequence(n) for n in split["test"]} == {"0001TP", "0006R0"}
    wide = real.CAMVID.split(root, train_from_val_sequence=True)
    assert len(wide["train"]) == 204 and {real.camvid_sequence(n) for n in wide["train"]} == {"0016E5"}
    assert not set(wide["train"]) & set(split["val"])
    names = [split["val"][0], split["test"][0], split["test"][-1]]
    data = real.CAMVID.load(root, (48, 160), names)
    assert data["image"].shape == (3, 48, 160, 3) and data["image"].dtype == np.uint8
    assert data["label"].shape == (3, 48, 160) and data["label"].dtype == np.uint8
    assert set(np.unique(data["label"])) <= CAMVID_IDS and (data["label"] == 26).any()
    # the loader's crop + mirror + resize is the documented band of the JPEG file, flipped, resized
    img_dir, lab_dir = kitti.resolve_dirs(root)
    full = kitti.read_image(os.path.join(img_dir, names[0] + ".jpg"))
    lab = kitti.read_label(os.path.join(lab_dir, names[0] + ".png"))
    assert full.shape == (360, 480, 3) and lab.shape == (360, 480)
    first, stop = real.CAMVID.crop.rows(360, 480, (48, 160))
    expect = Image.fromarray(np.ascontiguousarray(full[first:stop, ::-1])).resize((160, 48), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(data["image"][0], np.asarray(expect))
    expect = Image.fromarray(np.ascontiguousarray(lab[first:stop, ::-1])).resize((160, 48), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(data["label"][0], np.asarray(expect))
    d = real.CAMVID.describe((96, 320))
    assert d["crop"]["rows"] == [113, 257] and d["mirror"] and d["camera"]["height_m"] is None


def test_kitti_through_its_description_is_as_before():
    root = real_data_dir("kitti_semantics")
    split = real.KITTI.split(root, seed=1)
    assert split == kitti.default_split(root, seed=1)
    a = real.KITTI.load_splits(root, (24, 80), seed=1)
    b = kitti.load_splits(root, (24, 80), seed=1)
    assert set(a) == set(b) == {"train", "val", "test"}
    for part in a:
        np.testing.assert_array_equal(a[part]["image"], b[part]["image"])
        np.testing.assert_array_equal(a[part]["label"], b[part]["label"])
        assert set(np.unique(a[part]["label"])) <= CITYSCAPES_IDS
    cam = real.KITTI.camera
    assert cam.height_m == 1.65 and cam.hfov_deg == pytest.approx(81.4, abs=0.1)
