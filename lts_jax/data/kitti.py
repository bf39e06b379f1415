"""Loader for KITTI's semantic segmentation layout (real data for the reward and the test split).

Layout (KITTI data_semantics, Cityscapes label IDs, car = 26)::

    <root>/training/image_2/<name>.png     RGB images (PNG, or JPEG: .jpg / .jpeg, as CamVid's)
    <root>/training/semantic/<name>.png    8-bit label IDs (grayscale PNG)

A root that holds ``image_2/`` and ``semantic/`` directly is accepted as well
(that is what the simulators' generate commands write). Images and labels are
paired by file stem; every problem raises :class:`KittiDataError` naming the
file or directory. The data sets in this layout and how each is split, cropped
and sized are described in ``lts_jax/data/real.py``.

The loaded data set is a NumPy dict, ready to hand to a task::

    {"image": uint8 [N, H, W, 3], "label": uint8 [N, H, W], "names": list[str]}

(:func:`arrays` drops ``names`` before the data go into jitted code.)

Resizing uses Pillow: bilinear with antialiasing for images (a triangle filter
spread over the reduction, so a 4x reduction averages like an area filter),
nearest neighbour for labels so that only label IDs present in the file come out.
An optional :class:`Crop` (a band of full-width rows) and a mirror are applied
before resizing, to image and label alike.

None of this is jittable: it reads files on the host, once, before training.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

KITTI_URL = "http://www.cvlibs.net/datasets/kitti/eval_semseg.php"
IMAGE_DIR = "image_2"
LABEL_DIR = "semantic"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")  # image files, in the order a name is looked up
LABEL_EXTS = (".png",)  # label maps must be lossless

# The five images of the shared sample that carry the benchmark's original
# label maps (the others were reconstructed from colour masks; see the sample's
# README). They are the natural held-out test split.
ORIGINAL_LABEL_NAMES = ("000000_10", "000001_10", "000002_10", "000003_10", "000004_10")


class KittiDataError(ValueError):
    """A KITTI-layout directory or file is missing, unreadable or inconsistent; the message names it."""


# ----- directory layout --------------------------------------------------------------------------
def resolve_dirs(root: str | os.PathLike) -> tuple[str, str]:
    """(image_dir, label_dir) of a KITTI-layout root.

    Accepts ``<root>/training/{image_2,semantic}`` (the benchmark's layout) or
    ``<root>/{image_2,semantic}`` (what the generate commands write).
    Raises KittiDataError naming the directory, and saying where to get KITTI.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise KittiDataError(
            f"KITTI directory {root!r} does not exist. Download the semantic segmentation data "
            f"(data_semantics.zip) from {KITTI_URL} and pass the directory that holds training/image_2 "
            f"and training/semantic, or a directory holding image_2/ and semantic/ directly."
        )
    for base in (os.path.join(root, "training"), root):
        img, lab = os.path.join(base, IMAGE_DIR), os.path.join(base, LABEL_DIR)
        if os.path.isdir(img) or os.path.isdir(lab):
            for d in (img, lab):
                if not os.path.isdir(d):
                    raise KittiDataError(
                        f"KITTI directory {root!r}: {d!r} is missing (expected both {IMAGE_DIR}/ and {LABEL_DIR}/ "
                        f"in {base!r}; KITTI's layout is described at {KITTI_URL})"
                    )
            return img, lab
    raise KittiDataError(
        f"KITTI directory {root!r} holds neither training/{IMAGE_DIR} and training/{LABEL_DIR} nor "
        f"{IMAGE_DIR}/ and {LABEL_DIR}/ (KITTI's semantic segmentation data: {KITTI_URL})"
    )


def _stems(directory: str, exts: Sequence[str]) -> dict[str, str]:
    """{stem: path} of the files in ``directory`` with one of ``exts`` (any case); two files of one stem
    (``a.png`` and ``a.jpg``) raise KittiDataError naming both."""
    out: dict[str, str] = {}
    for f in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(f)
        if ext.lower() not in exts:
            continue
        path = os.path.join(directory, f)
        if stem in out:
            raise KittiDataError(f"{out[stem]!r} and {path!r} have the same name; keep one of them")
        out[stem] = path
    return out


def _expected(directory: str, name: str, exts: Sequence[str]) -> str:
    """The path a missing file of ``name`` is expected at, for messages."""
    path = repr(os.path.join(directory, name + exts[0]))
    return path + (f" (or {' / '.join(exts[1:])})" if len(exts) > 1 else "")


def list_names(root: str | os.PathLike) -> list[str]:
    """Sorted names (file stems) of the image/label pairs under ``root``.

    Raises KittiDataError naming the first image without a label or label
    without an image, or an empty directory.
    """
    img_dir, lab_dir = resolve_dirs(root)
    images, labels = _stems(img_dir, IMAGE_EXTS), _stems(lab_dir, LABEL_EXTS)
    for name, path in images.items():
        if name not in labels:
            raise KittiDataError(f"image {path!r} has no label: expected {_expected(lab_dir, name, LABEL_EXTS)}")
    for name, path in labels.items():
        if name not in images:
            raise KittiDataError(f"label {path!r} has no image: expected {_expected(img_dir, name, IMAGE_EXTS)}")
    if not images:
        raise KittiDataError(
            f"KITTI directory {os.fspath(root)!r}: no images ({' / '.join(IMAGE_EXTS)}) in {img_dir!r}"
        )
    return sorted(images)


# ----- files -------------------------------------------------------------------------------------
def _open(path: str) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()  # decode now, so a truncated file fails here and is named
    except FileNotFoundError as e:
        raise KittiDataError(f"file {path!r} does not exist") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise KittiDataError(f"cannot read image file {path!r}: {e}") from e
    return im


def read_image(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of an image file, PNG or JPEG (grayscale is replicated, alpha dropped)."""
    return np.asarray(_open(path).convert("RGB"), dtype=np.uint8)


def read_label(path: str) -> np.ndarray:
    """uint8 [H, W] of 8-bit label IDs.

    Accepts a grayscale PNG (mode L, or 16/32-bit grayscale whose values fit in
    8 bits), and an RGB PNG whose three channels are equal everywhere. A colour
    label map (KITTI's ``semantic_rgb``, a palette PNG) raises KittiDataError.
    """
    im = _open(path)
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 255:
            raise KittiDataError(
                f"label {path!r} holds values {int(arr.min())}..{int(arr.max())}; expected 8-bit label IDs 0..255"
            )
        return arr.astype(np.uint8)
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
    raise KittiDataError(
        f"label {path!r} is a colour ({im.mode}) image; expected a grayscale PNG of 8-bit Cityscapes label IDs "
        f"(KITTI's training/{LABEL_DIR}/, not semantic_rgb/)"
    )


@dataclasses.dataclass(frozen=True)
class Crop:
    """A band of full-width rows cut from every image and its label before resizing.

    The band keeps the whole width (so the horizontal field of view) and has the aspect
    ``width / height`` of the target size given to :func:`load_kitti` (or ``aspect`` when no size
    is given); its first row is ``top`` times the file's height (rounded), e.g. ``top = 0.314``
    keeps rows 113..256 of a 480x360 CamVid frame for a 96x320 target (see real.py for why).
    """

    top: float
    aspect: float = 1242.0 / 375.0  # KITTI's, used when no target size is given

    def __post_init__(self):
        if not 0.0 <= self.top < 1.0 or not self.aspect > 0:
            raise ValueError(f"Crop(top={self.top}, aspect={self.aspect}): need 0 <= top < 1 and aspect > 0")

    def rows(self, height: int, width: int, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(first, stop) rows of the band in an image of ``height`` x ``width``; ``size`` = target (h, w)."""
        aspect = size[1] / size[0] if size is not None else self.aspect
        band = int(round(width / aspect))
        first = int(round(self.top * height))
        return first, first + band


def _resize(arr: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    height, width = size
    if arr.shape[:2] == (height, width):
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), resample=resample))


# ----- loading -----------------------------------------------------------------------------------
def load_kitti(
    root: str | os.PathLike,
    size: tuple[int, int] | None = None,
    names: Sequence[str] | None = None,
    crop: Crop | None = None,
    mirror: bool = False,
) -> dict:
    """Loads image/label pairs from a KITTI-layout directory.

    Args:
      root: the KITTI directory (see :func:`resolve_dirs`).
      size: ``(height, width)`` to resize to (images: antialiased bilinear,
        labels: nearest); None keeps the file size (then all files must agree).
      names: file stems to load, in this order; None loads every pair (and
        checks that every image has a label and every label an image).
      crop: a :class:`Crop` cut from image and label before resizing (None: the whole frame).
      mirror: flip image and label left-right (after the crop).

    Returns:
      ``{"image": uint8 [N, H, W, 3], "label": uint8 [N, H, W], "names": list[str]}``.
    """
    img_dir, lab_dir = resolve_dirs(root)
    if names is None:
        names = list_names(root)
    names = list(names)
    if not names:
        raise KittiDataError(f"KITTI directory {os.fspath(root)!r}: no names to load")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise KittiDataError(f"KITTI directory {os.fspath(root)!r}: duplicate names {dup}")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if size[0] < 1 or size[1] < 1:
            raise ValueError(f"size must be (height, width) with positive entries, got {size}")
    image_files, label_files = _stems(img_dir, IMAGE_EXTS), _stems(lab_dir, LABEL_EXTS)

    images, labels = [], []
    for name in names:
        img_path, lab_path = image_files.get(name), label_files.get(name)
        if img_path is None:
            raise KittiDataError(
                f"image {_expected(img_dir, name, IMAGE_EXTS)} does not exist"
                + (f" (its label {lab_path!r} does)" if lab_path else "")
            )
        if lab_path is None:
            raise KittiDataError(f"image {img_path!r} has no label: expected {_expected(lab_dir, name, LABEL_EXTS)}")
        image, label = read_image(img_path), read_label(lab_path)
        if image.shape[:2] != label.shape:
            raise KittiDataError(
                f"image {img_path!r} is {image.shape[1]}x{image.shape[0]} but its label {lab_path!r} is "
                f"{label.shape[1]}x{label.shape[0]} (width x height); they must agree"
            )
        if crop is not None:
            first, stop = crop.rows(*label.shape, size)
            if stop > label.shape[0] or stop - first < 1:
                raise KittiDataError(
                    f"image {img_path!r} ({image.shape[1]}x{image.shape[0]}) is too short for {crop}: the band "
                    f"needs rows {first}..{stop - 1}"
                )
            image, label = image[first:stop], label[first:stop]
        if mirror:
            image, label = image[:, ::-1], label[:, ::-1]
        if size is None and images and image.shape != images[0].shape:
            raise KittiDataError(
                f"image {img_path!r} is {image.shape[1]}x{image.shape[0]} but {names[0]!r} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}; pass size=(height, width) to resize them alike"
            )
        image, label = np.ascontiguousarray(image), np.ascontiguousarray(label)
        if size is not None:
            image = _resize(image, size, Image.Resampling.BILINEAR)
            label = _resize(label, size, Image.Resampling.NEAREST)
        images.append(image)
        labels.append(label)
    return {"image": np.stack(images), "label": np.stack(labels), "names": names}


def arrays(data: Mapping) -> dict[str, np.ndarray]:
    """``{"image", "label"}`` of a loaded data set, without ``names``.

    Pass this (not the loader's dict) into jitted code: a list of strings is not
    an array and ``jax.jit`` refuses it.
    """
    return {"image": data["image"], "label": data["label"]}


# ----- splits ------------------------------------------------------------------------------------
def split_names(names: Sequence[str], fractions: Mapping[str, float], seed: int = 0) -> dict[str, list[str]]:
    """Splits names by a seeded permutation into parts of the given fractions.

    ``fractions`` maps part name -> fraction (summing to 1). Part sizes are
    ``round(fraction * n)`` for all parts but the last, which takes the rest.
    The permutation is of the sorted names (``numpy.random.default_rng(seed)``),
    so the result does not depend on the input order; each part is sorted.
    """
    names = sorted(names)
    total = sum(fractions.values())
    if not fractions or any(f < 0 for f in fractions.values()) or abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {dict(fractions)}")
    order = np.random.default_rng(seed).permutation(len(names))
    parts, start = {}, 0
    keys = list(fractions)
    for i, part in enumerate(keys):
        stop = len(names) if i == len(keys) - 1 else min(len(names), start + round(fractions[part] * len(names)))
        parts[part] = sorted(names[j] for j in order[start:stop])
        start = stop
    return parts


def default_split(
    root_or_names: str | os.PathLike | Sequence[str],
    seed: int = 0,
    val_fraction: float = 0.5,
    test_names: Sequence[str] = ORIGINAL_LABEL_NAMES,
) -> dict[str, list[str]]:
    """The default test / val / train split of a KITTI directory (or a list of names).

    - ``test``: the names in ``test_names`` that are present; by default the five
      images with the benchmark's original labels (000000_10 .. 000004_10).
    - ``val`` and ``train``: the remaining names, split by :func:`split_names`
      with ``{"val": val_fraction, "train": 1 - val_fraction}`` and ``seed``.

    On the shared 25-image sample the defaults give 5 test, 10 val, 10 train.
    Raises KittiDataError if none of ``test_names`` is present (then choose a
    split explicitly).
    """
    if isinstance(root_or_names, (str, os.PathLike)):
        names = list_names(root_or_names)
        where = f"KITTI directory {os.fspath(root_or_names)!r}"
    else:
        names = list(root_or_names)
        where = "the given names"
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    test = sorted(n for n in names if n in set(test_names))
    if not test:
        raise KittiDataError(
            f"{where} holds none of the default test images {list(test_names)}; give test_names explicitly"
        )
    rest = [n for n in names if n not in set(test)]
    parts = split_names(rest, {"val": val_fraction, "train": 1.0 - val_fraction}, seed)
    return {"train": parts["train"], "val": parts["val"], "test": test}


def load_splits(
    root: str | os.PathLike,
    size: tuple[int, int] | None,
    splits: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    crop: Crop | None = None,
    mirror: bool = False,
) -> dict[str, dict]:
    """Loads each split of ``root``: ``{split: load_kitti(root, size, names, crop, mirror)}``.

    ``splits`` maps split name -> names; None uses :func:`default_split` with
    ``seed``. Empty splits are left out.
    """
    if splits is None:
        splits = default_split(root, seed=seed)
    return {part: load_kitti(root, size, names, crop, mirror) for part, names in splits.items() if len(names)}
