"""Semantic segmentation main task model; reward = car IoU (paper sections 4.4 and 4.5).

Label space. Data carry Cityscapes label IDs (uint8), the convention of KITTI's
semantics benchmark, so simulated and real data share one label space. The
model predicts the seven classes the traffic simulator renders::

    index  0     1         2         3           4        5    6
    class  road  sidewalk  building  vegetation  terrain  sky  car
    ID     7     8         11        21          22       23   26

Every other ID falls in one of two groups (:func:`label_to_index`):

- OTHER (index 7): an evaluated Cityscapes class the simulator does not render
  (wall 12, fence 13, pole 17, traffic light 19, traffic sign 20, person 24,
  rider 25, truck 27, bus 28, train 31, motorcycle 32, bicycle 33). Such pixels
  take no part in the training loss (the model has no class for them), but they
  DO count in the metrics: a truck pixel predicted as car is a false positive of
  car.
- IGNORE (255): Cityscapes' void IDs (0-6, 9, 10, 14-16, 18, 29, 30: unlabelled,
  ego vehicle, static, ground, parking, guard rail, ...; ``ignoreInEval`` in the
  Cityscapes label table) and IDs > 33 (255 pads evaluation chunks). They are left
  out of the loss and of the metrics, as KITTI's benchmark evaluation does. With
  ``void_as_other=True`` void pixels count like OTHER instead (every pixel but the
  padding is scored).

Metrics are data-set level, as in the benchmark: one confusion matrix is
accumulated over the whole evaluation set, then IoU_c = TP / (TP + FP + FN).
Car IoU of an empty union (no car labelled and none predicted anywhere) is 1.0:
nothing to find and nothing falsely found. Mean IoU averages the seven classes
whose union is non-empty (1.0 if none is).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lts_jax.models.segmentation import MODELS, make_model
from lts_jax.optim import make_optimizer
from lts_jax.tasks import trainer
from lts_jax.tasks.base import TaskBase
from lts_jax.tasks.trainer import TrainState

CLASS_IDS = (7, 8, 11, 21, 22, 23, 26)
CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "terrain", "sky", "car")
NUM_CLASSES = len(CLASS_IDS)
CAR_ID = 26
CAR = CLASS_IDS.index(CAR_ID)  # 6
OTHER = NUM_CLASSES  # 7
IGNORE = 255
PAD_ID = 255  # label ID of padding pixels; always ignored
VOID_IDS = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)
MAX_CITYSCAPES_ID = 33


def label_table(void_as_other: bool = False) -> np.ndarray:
    """uint8 [256]: Cityscapes label ID -> class index (0..6), OTHER (7) or IGNORE (255)."""
    table = np.full(256, OTHER, np.uint8)
    if not void_as_other:
        table[list(VOID_IDS)] = IGNORE
        table[MAX_CITYSCAPES_ID + 1 :] = IGNORE
    table[PAD_ID] = IGNORE
    table[list(CLASS_IDS)] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return table


def label_to_index(label: jax.Array, void_as_other: bool = False) -> jax.Array:
    """Cityscapes IDs (integer [...]) -> int32 [...] of class index, OTHER or IGNORE."""
    return jnp.asarray(label_table(void_as_other))[label.astype(jnp.int32)].astype(jnp.int32)


def index_to_id(pred: jax.Array) -> jax.Array:
    """Class indices [...] in [0, NUM_CLASSES) -> uint8 Cityscapes IDs [...]."""
    return jnp.asarray(CLASS_IDS, jnp.uint8)[pred]


# ----- metrics -----------------------------------------------------------------------------------
_CONFUSION_CHUNK = 1 << 20  # pixels per one-hot matmul: float32 counts stay exact (< 2**24)


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int = NUM_CLASSES) -> jax.Array:
    """Confusion counts of predicted classes against labels, int32 [num_classes + 1, num_classes].

    Args:
      pred: integer [...] predicted class indices in [0, num_classes).
      label: integer [...] (same shape) label indices: [0, num_classes) a class,
        ``num_classes`` a labelled pixel of no modelled class (counted as a false
        positive of the predicted class), anything else ignored.
      num_classes: C.

    Returns:
      cm with ``cm[l, p]`` = number of pixels labelled l and predicted p; row C is OTHER.
    """
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} must have the same shape")
    pred = pred.reshape(-1).astype(jnp.int32)
    label = label.reshape(-1).astype(jnp.int32)
    # A one-hot matmul rather than a scatter-add: 56 bins hit by millions of
    # pixels serialise on GPU atomics, a matmul does not. Chunks keep float32 exact.
    chunk = min(_CONFUSION_CHUNK, max(pred.shape[0], 1))
    pad = -pred.shape[0] % chunk
    pred = jnp.pad(pred, (0, pad)).reshape(-1, chunk)
    label = jnp.pad(label, (0, pad), constant_values=-1).reshape(-1, chunk)
    valid = (label >= 0) & (label <= num_classes)
    lab_1h = jax.nn.one_hot(jnp.where(valid, label, -1), num_classes + 1, dtype=jnp.float32)
    pred_1h = jax.nn.one_hot(pred, num_classes, dtype=jnp.float32)
    counts = jnp.einsum("npl,npc->nlc", lab_1h, pred_1h, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(counts.astype(jnp.int32), axis=0)


def iou_from_confusion(cm: jax.Array, empty: float = math.nan) -> jax.Array:
    """Per-class IoU, float32 [C], from ``cm`` [C + 1, C] (or [C, C], without an OTHER row).

    IoU_c = TP / (TP + FP + FN); FP includes pixels of the OTHER row. Classes
    whose union is empty get ``empty``.
    """
    num_classes = cm.shape[1]
    cm = cm.astype(jnp.float32)
    tp = jnp.diagonal(cm[:num_classes])
    union = cm[:num_classes].sum(axis=1) + cm.sum(axis=0) - tp
    return jnp.where(union > 0, tp / jnp.maximum(union, 1.0), empty).astype(jnp.float32)


def mean_iou(cm: jax.Array) -> jax.Array:
    """float32 []: mean IoU over the classes with a non-empty union (1.0 if none)."""
    iou = iou_from_confusion(cm, empty=0.0)
    num_classes = cm.shape[1]
    union = cm[:num_classes].sum(axis=1) + cm.sum(axis=0) - jnp.diagonal(cm[:num_classes])
    present = (union > 0).astype(jnp.float32)
    return jnp.where(present.sum() > 0, jnp.sum(iou * present) / jnp.maximum(present.sum(), 1.0), 1.0)


def car_iou(pred: jax.Array, label: jax.Array, void_as_other: bool = False) -> jax.Array:
    """float32 []: IoU of car (ID 26) between two Cityscapes-ID label maps.

    pred, label: integer [...] of Cityscapes IDs (``pred`` e.g. ``index_to_id(argmax)``).
    Pixels whose LABEL is void (see the module docstring; all void IDs count
    when ``void_as_other``) or 255 are left out; every other pixel predicted car
    and not labelled car is a false positive. Empty union -> 1.0.
    """
    valid = label_to_index(label, void_as_other) != IGNORE
    p = (pred == CAR_ID) & valid
    t = (label == CAR_ID) & valid
    inter = jnp.sum(p & t, dtype=jnp.int32)
    union = jnp.sum(p | t, dtype=jnp.int32)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0).astype(jnp.float32)


def segmentation_loss(
    logits: jax.Array,
    label: jax.Array,
    class_weights: jax.Array | None = None,
    example_weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Summed pixel cross-entropy and the (weighted) number of pixels it covers.

    logits: float [B, ..., C]; label: int [B, ...] class indices (OTHER / IGNORE and
    anything outside [0, C) are excluded); class_weights: [C] or None; example_weights:
    [B] or None (0 drops a padded example). Returns (sum, count), float32 [] each.
    """
    num_classes = logits.shape[-1]
    valid = (label >= 0) & (label < num_classes)
    safe = jnp.where(valid, label, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    w = valid.astype(jnp.float32)
    if class_weights is not None:
        w = w * class_weights[safe]
    if example_weights is not None:
        w = w * example_weights.astype(jnp.float32).reshape((-1,) + (1,) * (w.ndim - 1))
    return jnp.sum(ce * w), jnp.sum(w)


# ----- augmentation ------------------------------------------------------------------------------
def augment(key: jax.Array, image: jax.Array, label: jax.Array, jitter: float = 0.2, flip: bool = True):
    """Random horizontal flip and colour jitter of a batch (pure JAX; for training only).

    image: float [B, H, W, 3] in [0, 1]; label: [B, H, W]. Per example: flip with
    probability 1/2 (image and label together), then brightness, contrast and
    saturation factors each uniform in [1 - jitter, 1 + jitter]. Rendered images
    are cleaner and more uniform than camera images; mild photometric noise and
    mirror symmetry are the cheap, label-preserving part of closing that gap.
    """
    b = image.shape[0]
    k_flip, k_b, k_c, k_s = jax.random.split(key, 4)
    if flip:
        f = jax.random.bernoulli(k_flip, 0.5, (b,))
        image = jnp.where(f[:, None, None, None], image[:, :, ::-1], image)
        label = jnp.where(f[:, None, None], label[:, :, ::-1], label)
    if jitter > 0:
        u = lambda k: jax.random.uniform(k, (b, 1, 1, 1), minval=1.0 - jitter, maxval=1.0 + jitter)
        image = image * u(k_b)
        luma = lambda im: jnp.sum(im * jnp.asarray([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
        mean = jnp.mean(luma(image), axis=(1, 2, 3), keepdims=True)
        image = mean + (image - mean) * u(k_c)
        gray = luma(image)
        image = gray + (image - gray) * u(k_s)
        image = jnp.clip(image, 0.0, 1.0)
    return image, label


# ----- checkpoints -------------------------------------------------------------------------------
def save_params(path: str | os.PathLike, params: Any) -> None:
    """Writes params (a pytree of arrays) to ``path`` as flax msgpack; atomic (temp file + rename).

    Not jittable (host IO).
    """
    path = os.fspath(path)
    state = jax.tree_util.tree_map(np.asarray, flax.serialization.to_state_dict(params))
    data = flax.serialization.msgpack_serialize(state)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): v for p, v in leaves}


def load_params(path: str | os.PathLike, like: Any) -> Any:
    """Reads params written by :func:`save_params` and checks them against ``like``.

    ``like``: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the expected
    structure and shapes (e.g. ``jax.eval_shape`` of the model's init). A file
    holding ``{"params": tree}`` is accepted too. Returns NumPy float32 arrays in
    the structure of ``like``. Raises ValueError naming the file and the first
    missing, unexpected or mis-shaped entry. Not jittable (host IO).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path!r}: {e}") from e
    try:
        state = flax.serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"checkpoint {path!r} is not a flax msgpack file: {type(e).__name__}: {e}") from e
    target = flax.serialization.to_state_dict(like)
    if isinstance(state, dict) and set(state) == {"params"} and set(target) != {"params"}:
        state = state["params"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(state).__name__}, not a tree of parameters")
    want, got = _flat(target), _flat(state)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(
            f"checkpoint {path!r} does not match the model: "
            f"{len(missing)} missing entries {missing[:3]}, {len(extra)} unexpected entries {extra[:3]}"
        )
    for k, spec in want.items():
        if tuple(np.shape(got[k])) != tuple(spec.shape):
            raise ValueError(
                f"checkpoint {path!r}: entry {k} has shape {list(np.shape(got[k]))}, "
                f"the model expects {list(spec.shape)}"
            )
    restored = flax.serialization.from_state_dict(target, state)
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), restored)


# ----- the task ----------------------------------------------------------------------------------
_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16}


class SegmentationTask(TaskBase):
    """Semantic segmentation MTM: init / train / evaluate (the Task protocol).

    The train state is a :class:`lts_jax.tasks.trainer.TrainState`.

    Args:
      model: one of :data:`lts_jax.models.segmentation.MODELS`.
      height, width: input size; ``data["image"]`` must be [N, height, width, 3].
      batch_size: the largest training minibatch; an epoch takes ceil(N / batch_size) steps
        with the N examples spread evenly over them (short batches padded and masked;
        :func:`lts_jax.tasks.trainer.batching`).
      learning_rate, optimizer, grad_clip: optax update (adam, sgd, rmsprop).
      augment: random flip + colour jitter of training batches.
      jitter: colour jitter strength (see :func:`augment`).
      eval_batch_size: images per evaluation chunk (default ``batch_size``).
      init_checkpoint: optional path of a :func:`save_params` file to start from
        instead of a random init (read once, here, on the host).
      compute_dtype: "float32" or "bfloat16" (parameters stay float32).
      class_weights: optional per-class loss weights [NUM_CLASSES].
      void_as_other: score void pixels like OTHER (see the module docstring).
      model_kwargs: extra keyword arguments of the model (e.g. ``width``).

    ``data`` for ``train`` / ``evaluate``: ``{"image": uint8 [N, H, W, 3],
    "label": uint8 [N, H, W]}`` of Cityscapes IDs (other keys are ignored).
    """

    # "auto" -> lax.map on every backend: vmap would turn the K candidates' convolutions into grouped
    # convolutions (15x slower on an H100, benchmarks/README.md), and an unrolled loop compiles the
    # ResNet K times; map compiles once and runs within a few percent of the loop.
    preferred_strategy = "map"
    data_keys = ("image", "label")

    def __init__(
        self,
        model: str = "fcn_small",
        height: int = 64,
        width: int = 192,
        batch_size: int = 8,
        learning_rate: float = 1e-3,
        optimizer: str | optax.GradientTransformation = "adam",
        grad_clip: float | None = None,
        augment: bool = True,
        jitter: float = 0.2,
        eval_batch_size: int | None = None,
        init_checkpoint: str | os.PathLike | None = None,
        compute_dtype: str | Any = "float32",
        class_weights: Sequence[float] | None = None,
        void_as_other: bool = False,
        model_kwargs: dict | None = None,
    ):
        if model not in MODELS:
            raise ValueError(f"unknown segmentation model {model!r}; choose one of {MODELS}")
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be >= 1, got {height}x{width}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        if isinstance(compute_dtype, str):
            if compute_dtype not in _DTYPES:
                raise ValueError(f"unknown compute_dtype {compute_dtype!r}; choose one of {sorted(_DTYPES)}")
            compute_dtype = _DTYPES[compute_dtype]
        if class_weights is not None:
            if len(class_weights) != NUM_CLASSES or any(w < 0 for w in class_weights):
                raise ValueError(f"class_weights must be {NUM_CLASSES} non-negative numbers, got {class_weights}")
            class_weights = tuple(float(w) for w in class_weights)
        self.model_name = model
        self.height, self.width = int(height), int(width)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.augment = bool(augment)
        self.jitter = float(jitter)
        self.compute_dtype = compute_dtype
        self.class_weights = class_weights
        self.void_as_other = bool(void_as_other)
        self.model = make_model(model, NUM_CLASSES, dtype=compute_dtype, **(model_kwargs or {}))
        if isinstance(optimizer, str):
            self.optimizer = make_optimizer(optimizer, learning_rate, grad_clip)
        else:
            self.optimizer = optimizer
        self.init_checkpoint = None if init_checkpoint is None else os.fspath(init_checkpoint)
        self._init_params = None
        if self.init_checkpoint is not None:
            if not os.path.isfile(self.init_checkpoint):
                raise ValueError(f"init checkpoint {self.init_checkpoint!r} does not exist")
            self._init_params = load_params(self.init_checkpoint, self.param_shapes())

    # ----- helpers ---------------------------------------------------------------------------------
    def _dummy(self) -> jax.Array:
        # Parameter shapes do not depend on the spatial size; a small dummy keeps init cheap.
        return jnp.zeros((1, min(self.height, 64), min(self.width, 64), 3), jnp.float32)

    def param_shapes(self) -> Any:
        """The model's parameter tree as ``jax.ShapeDtypeStruct`` leaves."""
        return jax.eval_shape(lambda k: self.model.init(k, self._dummy())["params"], jax.random.key(0))

    def _check(self, data: dict, what: str) -> tuple[jax.Array, jax.Array]:
        for k in self.data_keys:
            if k not in data:
                raise ValueError(f"{what}: data has no {k!r} entry (keys: {sorted(data)})")
        # jnp.asarray: NumPy inputs would otherwise be indexed by tracers inside the scans
        images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
        n = images.shape[0]
        if images.shape != (n, self.height, self.width, 3) or labels.shape != (n, self.height, self.width):
            raise ValueError(
                f"{what}: expected image [N, {self.height}, {self.width}, 3] and label [N, {self.height}, "
                f"{self.width}], got {list(images.shape)} and {list(labels.shape)}"
            )
        if n < 1:
            raise ValueError(f"{what}: empty data set")
        return images, labels

    def _images(self, images: jax.Array) -> jax.Array:
        # uint8 -> [0, 1]; float inputs are taken to be in [0, 1] already.
        if jnp.issubdtype(images.dtype, jnp.integer):
            return images.astype(jnp.float32) / 255.0
        return images.astype(jnp.float32)

    def apply(self, params: Any, images: jax.Array) -> jax.Array:
        """Logits float32 [B, H, W, NUM_CLASSES] of uint8 (or [0, 1] float) images [B, H, W, 3]."""
        return self.model.apply({"params": params}, self._images(images))

    def predict(self, state: TrainState, images: jax.Array) -> jax.Array:
        """Predicted Cityscapes IDs, uint8 [B, H, W] (one forward pass over the batch)."""
        return index_to_id(jnp.argmax(self.apply(state.params, images), axis=-1))

    # ----- the Task protocol ---------------------------------------------------------------------
    def init(self, key: jax.Array) -> TrainState:
        """A fresh state: random params (or the init checkpoint's) and a new optimiser state."""
        if self._init_params is not None:
            params = jax.tree_util.tree_map(jnp.asarray, self._init_params)
        else:
            params = self.model.init(key, self._dummy())["params"]
        return TrainState.create(params, self.optimizer)

    def train(self, state: TrainState, data: dict, key: jax.Array, epochs: int) -> TrainState:
        """``epochs`` (static) passes over shuffled minibatches of ``data``, in one ``lax.scan``.

        :func:`lts_jax.tasks.trainer.train_epochs` with a key per step for the augmentation: each
        epoch a new permutation, every example once (short batches padded and masked).
        Pure: the same (state, data, key) give the same result.
        """
        images, labels = self._check(data, "train")
        cw = None if self.class_weights is None else jnp.asarray(self.class_weights, jnp.float32)

        def loss_fn(params, x, y, w):
            total, count = segmentation_loss(self.model.apply({"params": params}, x), y, cw, w)
            return total / jnp.maximum(count, 1e-6)

        def step(st: TrainState, idx: jax.Array, w: jax.Array, k: jax.Array):
            x = self._images(images[idx])
            y = labels[idx]
            if self.augment:
                x, y = augment(k, x, y, self.jitter)
            y = label_to_index(y, self.void_as_other)
            return trainer.gradient_step(self.optimizer, loss_fn, st, x, y, w)

        return trainer.train_epochs(step, state, key, images.shape[0], epochs, self.batch_size, step_keys=True)

    def train_metrics(self, state: TrainState) -> dict[str, jax.Array]:
        """Scalars of a trained state for the logs: ``{"loss": mean loss of the last epoch}``."""
        return {"loss": state.train_loss}

    def evaluate(self, state: TrainState, data: dict) -> dict[str, jax.Array]:
        """Data-set-level metrics of the model on ``data`` (any N; chunks of ``eval_batch_size``).

        Returns float32 scalars ``reward`` (= ``car_iou``), ``car_iou``,
        ``mean_iou`` (over the seven classes), ``loss`` (mean pixel cross-entropy
        over pixels of the seven classes) and ``class_iou`` [NUM_CLASSES] (nan
        where a class's union is empty).
        """
        images, labels = self._check(data, "evaluate")
        n = images.shape[0]
        eb = min(self.eval_batch_size, n)
        chunks = -(-n // eb)

        def body(carry, i):
            cm, loss_sum, count = carry
            # Read fixed-size chunks in place; indices past the end re-read the
            # last image and are scored as padding (label 255, ignored).
            idx = i * eb + jnp.arange(eb)
            real = idx < n
            idx = jnp.minimum(idx, n - 1)
            y = jnp.where(real[:, None, None], labels[idx], jnp.asarray(PAD_ID, labels.dtype))
            y = label_to_index(y, self.void_as_other)
            logits = self.apply(state.params, images[idx])
            s, c = segmentation_loss(logits, y)
            cm = cm + confusion_matrix(jnp.argmax(logits, axis=-1), y, NUM_CLASSES)
            return (cm, loss_sum + s, count + c), None

        init = (jnp.zeros((NUM_CLASSES + 1, NUM_CLASSES), jnp.int32), jnp.zeros(()), jnp.zeros(()))
        (cm, loss_sum, count), _ = jax.lax.scan(body, init, jnp.arange(chunks))
        class_iou = iou_from_confusion(cm)
        car = jnp.where(jnp.isnan(class_iou[CAR]), 1.0, class_iou[CAR])
        return {
            "reward": car,
            "car_iou": car,
            "mean_iou": mean_iou(cm),
            "loss": loss_sum / jnp.maximum(count, 1.0),
            "class_iou": class_iou,
        }
