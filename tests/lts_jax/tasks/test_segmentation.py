"""Segmentation task: IoU against NumPy, the scan-friendly convolution, learning, vmap = loop, checkpoints."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax import parallel
from lts_jax.models.resnet import loop_friendly_conv
from lts_jax.models.segmentation import MODELS, make_model
from lts_jax.tasks import segmentation as seg

# ----- NumPy references --------------------------------------------------------------------------
CITYSCAPES_VOID = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}
OURS = {7: 0, 8: 1, 11: 2, 21: 3, 22: 4, 23: 5, 26: 6}


def np_index(label_ids, void_as_other=False):
    """Cityscapes ID -> class index / 7 (other) / 255 (ignore), written independently of the library."""
    out = np.empty(label_ids.shape, np.int64)
    for idx, v in np.ndenumerate(label_ids):
        v = int(v)
        if v in OURS:
            out[idx] = OURS[v]
        elif v == 255 or (not void_as_other and (v in CITYSCAPES_VOID or v > 33)):
            out[idx] = 255
        else:
            out[idx] = 7
    return out


def np_confusion(pred, label, c):
    cm = np.zeros((c + 1, c), np.int64)
    for p, lab in zip(pred.ravel(), label.ravel(), strict=True):
        if 0 <= lab <= c:
            cm[lab, p] += 1
    return cm


def np_iou(cm):
    c = cm.shape[1]
    out = np.full(c, np.nan)
    for k in range(c):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        if tp + fp + fn > 0:
            out[k] = tp / (tp + fp + fn)
    return out


def random_ids(rng, shape):
    """Label IDs mixing our classes, other evaluated classes, void and padding."""
    pool = np.array([7, 8, 11, 21, 23, 26, 26, 12, 17, 24, 27, 0, 4, 9, 255, 40], np.uint8)
    return rng.choice(pool, shape)


# ----- metrics -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_iou_match_numpy(seed):
    rng = np.random.default_rng(seed)
    c = 5
    pred = rng.integers(0, c, (3, 7, 9))
    # labels 0..c-1 classes, c = other, -1 / c + 1 / 255 ignored; class 3 never labelled, class 4 never predicted
    label = rng.choice(np.array([0, 1, 2, 4, c, -1, c + 1, 255]), pred.shape)
    pred = np.where(pred == 4, 0, pred)
    cm = np.asarray(jax.jit(seg.confusion_matrix, static_argnums=2)(jnp.asarray(pred), jnp.asarray(label), c))
    ref = np_confusion(pred, label, c)
    np.testing.assert_array_equal(cm, ref)
    np.testing.assert_allclose(np.asarray(seg.iou_from_confusion(cm)), np_iou(ref), rtol=1e-6)
    present = ~np.isnan(np_iou(ref))
    np.testing.assert_allclose(float(seg.mean_iou(cm)), np_iou(ref)[present].mean(), rtol=1e-6)


def test_confusion_chunks_stay_exact(monkeypatch):
    monkeypatch.setattr(seg, "_CONFUSION_CHUNK", 16)  # force several chunks and a padded last one
    rng = np.random.default_rng(3)
    pred, label = rng.integers(0, 7, (5, 11)), rng.integers(-1, 9, (5, 11))
    np.testing.assert_array_equal(np.asarray(seg.confusion_matrix(pred, label)), np_confusion(pred, label, 7))


@pytest.mark.parametrize("void_as_other", [False, True])
def test_label_mapping_and_car_iou(void_as_other):
    rng = np.random.default_rng(4)
    label = random_ids(rng, (4, 6, 10))
    ref_idx = np_index(label, void_as_other)
    np.testing.assert_array_equal(np.asarray(seg.label_to_index(jnp.asarray(label), void_as_other)), ref_idx)
    pred_idx = rng.integers(0, 7, label.shape)
    pred_ids = np.asarray(seg.CLASS_IDS)[pred_idx]
    # car IoU from the IDs, by hand: every scored pixel counts, whatever its class
    scored = ref_idx != 255
    p, t = (pred_ids == 26) & scored, (label == 26) & scored
    want = (p & t).sum() / (p | t).sum()
    got = float(jax.jit(seg.car_iou, static_argnums=2)(jnp.asarray(pred_ids), jnp.asarray(label), void_as_other))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the same number from the confusion matrix (what evaluate uses)
    cm = seg.confusion_matrix(jnp.asarray(pred_idx), jnp.asarray(ref_idx))
    np.testing.assert_allclose(float(seg.iou_from_confusion(cm)[seg.CAR]), want, rtol=1e-6)
    # a car predicted on an OTHER pixel (a person, 24) is a false positive
    assert float(seg.car_iou(jnp.array([26, 26]), jnp.array([26, 24]))) == pytest.approx(0.5)
    # ... on a void pixel (0) it counts only when void is scored as other
    assert float(seg.car_iou(jnp.array([26, 26]), jnp.array([26, 0]), void_as_other)) == pytest.approx(
        0.5 if void_as_other else 1.0
    )


def test_empty_union_is_one():
    assert float(seg.car_iou(jnp.array([7, 8]), jnp.array([7, 0]))) == 1.0
    cm = seg.confusion_matrix(jnp.zeros((4,), jnp.int32), jnp.full((4,), 255))
    assert np.all(np.isnan(np.asarray(seg.iou_from_confusion(cm))))
    assert float(seg.mean_iou(cm)) == 1.0


def test_loss_example_weights_drop_padded_examples():
    """The trainer pads short batches with weight-0 examples: they leave the loss and its pixel count unchanged."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(3, 4, 5, 7)), jnp.float32)
    label = jnp.asarray(rng.choice([0, 3, 6, 7, 255], (3, 4, 5)))
    cw = jnp.asarray(rng.uniform(0.5, 2.0, 7), jnp.float32)
    total, count = seg.segmentation_loss(logits, label, cw, jnp.array([1.0, 0.0, 1.0]))
    ref_total, ref_count = seg.segmentation_loss(logits[::2], label[::2], cw)
    np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-6)
    assert float(count) == pytest.approx(float(ref_count))
    # weights of one change nothing, bit for bit
    ones = seg.segmentation_loss(logits, label, cw, jnp.ones(3))
    assert [float(v) for v in ones] == [float(v) for v in seg.segmentation_loss(logits, label, cw)]


# ----- the scan-friendly convolution -------------------------------------------------------------
@pytest.mark.parametrize(
    "h, w, k, stride, dilation",
    [(9, 13, 3, 1, 1), (9, 13, 3, 2, 1), (10, 12, 3, 2, 2), (11, 16, 7, 2, 1), (8, 8, 1, 2, 1), (8, 9, 3, 1, 4)],
)
def test_loop_friendly_conv_gradients(h, w, k, stride, dilation):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
    p = dilation * (k - 1) // 2
    args = ((stride, stride), ((p, p), (p + 1, p)))  # asymmetric padding too
    kw = dict(rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(conv_fn, x, kern):
        return jnp.sum(jnp.sin(conv_fn(x, kern, *args, **kw)))

    want = jax.grad(functools.partial(loss, jax.lax.conv_general_dilated), (0, 1))(x, kern)

    def in_scan(x, kern):  # the case the custom gradient exists for
        def body(c, _):
            return c, jax.grad(functools.partial(loss, loop_friendly_conv), (0, 1))(x, kern)

        return jax.lax.scan(body, 0.0, None, length=2)[1]

    got = jax.jit(in_scan)(x, kern)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_models_by_name_shapes():
    x = jnp.zeros((1, 24, 40, 3))
    for name in MODELS:
        model = make_model(name, 7, **({"width": 4} if name == "fcn_small" else {"decoder_width": 16}))
        shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        out = jax.eval_shape(model.apply, shapes, x)
        assert out.shape == (1, 24, 40, 7) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match="unknown segmentation model"):
        make_model("vgg", 7)


# ----- the task: learning, chunked evaluation, vmap = loop -----------------------------------------
COLOURS = {7: (128, 64, 128), 23: (70, 130, 180), 11: (70, 70, 70), 21: (107, 142, 35), 26: (0, 0, 142)}


def blobs(seed, n, h=16, w=32):
    """A toy segmentation problem: sky over road, rectangles of building, vegetation, car and person (an
    OTHER class), a void row; each class has its colour plus noise."""
    rng = np.random.default_rng(seed)
    label = np.full((n, h, w), 23, np.uint8)
    label[:, h // 2 :] = 7
    for i in range(n):
        for cls in (11, 21, 26, 26, 24):
            bh, bw = rng.integers(3, 7), rng.integers(4, 10)
            y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
            label[i, y : y + bh, x : x + bw] = cls
        label[i, rng.integers(0, h), :] = 0
    table = np.zeros((256, 3), np.uint8)
    for k, c in COLOURS.items():
        table[k] = c
    table[24] = (220, 20, 60)
    image = table[label].astype(np.float32) + rng.normal(0, 20, (n, h, w, 3))
    return {"image": np.clip(image, 0, 255).astype(np.uint8), "label": label}


EPOCHS = 5


class Toy:
    """One task and its jitted functions, shared so that each compiles once per test session (XLA:CPU
    compiles are the bulk of this file's time; the random init alone takes seconds)."""

    def __init__(self):
        self.task = seg.SegmentationTask("fcn_small", 16, 32, batch_size=8, learning_rate=1e-2)
        self.init = jax.jit(self.task.init)
        self.train = jax.jit(self.task.train, static_argnums=3)
        self.evaluate = jax.jit(self.task.evaluate)
        self.predict = jax.jit(self.task.predict)
        self.data, self.val = blobs(0, 32), blobs(1, 16)


@pytest.fixture(scope="module")
def toy():
    return Toy()


@pytest.mark.slow
def test_fcn_small_learns_toy_problem(toy):
    train, evaluate, data, val = toy.train, toy.evaluate, toy.data, toy.val
    state = toy.init(jax.random.key(0))
    before = evaluate(state, val)
    for i in range(4):
        state = train(state, data, jax.random.key(i), EPOCHS)
    after = evaluate(state, val)
    assert int(state.step) == 4 * EPOCHS * 4
    assert np.isfinite(float(state.train_loss))
    assert float(after["loss"]) < 0.5 * float(before["loss"])
    assert float(after["car_iou"]) > 0.75, after
    assert float(after["reward"]) == float(after["car_iou"])
    assert float(after["mean_iou"]) > 0.6, after
    # predict / car_iou agree with evaluate's confusion-matrix path
    pred = toy.predict(state, val["image"])
    np.testing.assert_allclose(float(seg.car_iou(pred, jnp.asarray(val["label"]))), float(after["car_iou"]), rtol=1e-5)


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_evaluate_chunks_and_padding(toy):
    val = toy.val
    state = toy.init(jax.random.key(1))
    sub = {k: v[:7] for k, v in val.items()}
    chunked = seg.SegmentationTask("fcn_small", 16, 32, eval_batch_size=3).evaluate(state, sub)  # 3 + 3 + 1 (+2 pad)
    whole = seg.SegmentationTask("fcn_small", 16, 32, eval_batch_size=7).evaluate(state, sub)
    for k in whole:
        np.testing.assert_allclose(np.asarray(chunked[k]), np.asarray(whole[k]), rtol=1e-5, atol=1e-6)
    # and against NumPy on the predictions
    pred = np.asarray(toy.predict(state, sub["image"]))
    idx = np_index(sub["label"])
    pred_idx = np.searchsorted(np.asarray(seg.CLASS_IDS), pred)
    ref = np_iou(np_confusion(pred_idx, idx, 7))
    np.testing.assert_allclose(np.asarray(whole["class_iou"]), ref, rtol=1e-5)


@pytest.mark.slow
def test_train_is_pure_and_vmap_equals_loop(toy):
    task, train, evaluate, data, val = toy.task, toy.train, toy.evaluate, toy.data, toy.val
    keys = jax.random.split(jax.random.key(5), 2)
    states = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[toy.init(k) for k in keys])
    datas = {k: np.stack([v, v[::-1]]) for k, v in data.items()}  # two candidates, two data sets

    vmapped = jax.jit(
        lambda s, d, k: parallel.run_candidates(lambda s, d, k: task.train(s, d, k, EPOCHS), "vmap", s, d, k)
    )(states, datas, keys)
    take = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)
    looped = [train(take(states, i), take(datas, i), keys[i], EPOCHS) for i in range(2)]
    for i in range(2):
        a, b = take(vmapped, i), looped[i]
        # vmap turns the convolutions into grouped ones (another summation order); 20 Adam steps at
        # lr 1e-2 amplify those rounding differences to ~1e-3 in a few weights (a tenth of a step)
        jax.tree_util.tree_map(
            lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-2, atol=3e-3),
            a.params,
            b.params,
        )
        np.testing.assert_allclose(float(a.train_loss), float(b.train_loss), rtol=1e-3)
        ma, mb = evaluate(a, val), evaluate(b, val)
        np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-3)
        np.testing.assert_allclose(float(ma["car_iou"]), float(mb["car_iou"]), atol=2e-3)
    # the two candidates did train differently, and training again with the same inputs is bit-identical
    assert not np.allclose(np.asarray(looped[0].train_loss), np.asarray(looped[1].train_loss))
    again = train(take(states, 0), take(datas, 0), keys[0], EPOCHS)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, looped[0].params)
    metrics = jax.vmap(evaluate, in_axes=(0, None))(vmapped, val)
    assert metrics["reward"].shape == (2,) and metrics["class_iou"].shape == (2, 7)


def test_augment_flips_image_and_label_together():
    image = jnp.broadcast_to(jnp.linspace(0.0, 1.0, 8)[None, None, :, None], (16, 4, 8, 3))
    label = jnp.broadcast_to(jnp.arange(8, dtype=jnp.uint8)[None, None, :], (16, 4, 8))
    augment = jax.jit(seg.augment, static_argnames="jitter")
    out_img, out_lab = augment(jax.random.key(0), image, label, jitter=0.0)
    flipped = np.asarray(out_lab[:, 0, 0] == 7)
    assert 0 < flipped.sum() < 16
    np.testing.assert_allclose(np.asarray(out_img[..., 0]), np.asarray(out_lab, np.float32) / 7.0, atol=1e-6)
    jittered, _ = augment(jax.random.key(0), image, label, jitter=0.3)
    assert float(jnp.min(jittered)) >= 0.0 and float(jnp.max(jittered)) <= 1.0
    assert not np.allclose(np.asarray(jittered), np.asarray(out_img))


def test_task_rejects_bad_configuration_and_data():
    with pytest.raises(ValueError, match="unknown segmentation model"):
        seg.SegmentationTask("unet")
    with pytest.raises(ValueError, match="compute_dtype"):
        seg.SegmentationTask(compute_dtype="float16x")
    task = seg.SegmentationTask("fcn_small", 16, 32, model_kwargs={"width": 4})
    bad = {"image": np.zeros((2, 8, 8, 3), np.uint8), "label": np.zeros((2, 8, 8))}
    with pytest.raises(ValueError, match=r"expected image \[N, 16, 32, 3\]"):
        task.evaluate(None, bad)  # the data are checked before the state is touched
    with pytest.raises(ValueError, match="no 'label' entry"):
        task.train(None, {"image": bad["image"]}, jax.random.key(0), 1)


def test_bf16_compute_keeps_fp32_params(toy):
    task = seg.SegmentationTask("fcn_small", 16, 32, compute_dtype="bfloat16")
    state = toy.init(jax.random.key(0))  # parameters do not depend on the compute dtype
    assert jax.tree_util.tree_structure(task.param_shapes()) == jax.tree_util.tree_structure(state.params)
    logits = jax.jit(task.apply)(state.params, jnp.asarray(toy.val["image"][:2]))
    ref = jax.jit(toy.task.apply)(state.params, jnp.asarray(toy.val["image"][:2]))
    assert logits.dtype == jnp.float32 and logits.shape == (2, 16, 32, 7)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=0.1 * float(jnp.std(ref)) + 0.05)


# ----- checkpoints -------------------------------------------------------------------------------
def test_init_checkpoint_round_trip_and_errors(toy, tmp_path):
    state = toy.init(jax.random.key(3))
    path = tmp_path / "mtm.msgpack"
    seg.save_params(path, state.params)
    loaded = seg.SegmentationTask("fcn_small", 16, 32, init_checkpoint=path)
    restored = jax.jit(loaded.init)(jax.random.key(99)).params  # the key no longer matters
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state.params)
    # a checkpoint of another model names the file and the first mismatching entry
    with pytest.raises(ValueError, match=r"mtm\.msgpack.*shape") as e:
        seg.SegmentationTask("fcn_small", 16, 32, model_kwargs={"width": 8}, init_checkpoint=path)
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="does not match the model") as e:
        seg.SegmentationTask("fcn_small", 16, 32, model_kwargs={"norm": False}, init_checkpoint=path)
    assert str(path) in str(e.value)
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x00\x01not msgpack at all")
    with pytest.raises(ValueError) as e:
        seg.SegmentationTask("fcn_small", 16, 32, init_checkpoint=garbage)
    assert str(garbage) in str(e.value)
    with pytest.raises(ValueError, match="does not exist") as e:
        seg.SegmentationTask("fcn_small", 16, 32, init_checkpoint=tmp_path / "missing.msgpack")
    assert "missing.msgpack" in str(e.value)
