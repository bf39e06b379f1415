"""The counting CNN and task: the patch formulation, the L1 metric, mixed precision, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lts_jax.models.counting import CountingCNN, forward_macs, neighbourhood, to_patch_order, train_flops_per_image
from lts_jax.tasks.counting import CountingTask, l1_per_type

TINY = dict(features=(4, 8, 8, 8), hidden=8)
# XLA's CPU backend optimisations only cost compile time here (semantics are unchanged); tests stay fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _data(rng, n, h, w):
    return {
        "image": jnp.asarray(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)),
        "counts": jnp.asarray(rng.integers(0, 4, (n, 5), dtype=np.int32)),
    }


def test_patch_cnn_equals_stride2_convolutions():
    """The patch-order matmul network is the 2x2 stride-2 VALID convolution network on the NHWC image."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    model = CountingCNN(**TINY)
    x = to_patch_order(jnp.asarray(images), 4)
    assert x.shape == (2, 2, 3, 256 * 3)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]

    h = images.astype(np.float32) / 255.0
    for level in range(4):
        p = params[f"conv{level}"]
        kernel = np.asarray(p["kernel"]).reshape(2, 2, h.shape[-1], -1)  # rows of the dense kernel = (dy, dx, c)
        h = jax.lax.conv_general_dilated(
            h, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
        )
        h = np.maximum(np.asarray(h) + np.asarray(p["bias"]), 0.0)
    h = h.mean(axis=(1, 2))
    h = np.maximum(h @ np.asarray(params["hidden"]["kernel"]) + np.asarray(params["hidden"]["bias"]), 0.0)
    ref = h @ np.asarray(params["out"]["kernel"]) + np.asarray(params["out"]["bias"])
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)({"params": params}, x)), ref, rtol=1e-4, atol=1e-5)


def test_context_layers_equal_3x3_convolutions():
    """position + context: the embedding is added at the last level, then each context layer is a 3x3 SAME conv."""
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (2, 32, 64, 3), dtype=np.uint8)
    model = CountingCNN(features=(4, 8, 8), hidden=8, context=2, position=True)
    x = to_patch_order(jnp.asarray(images), 3)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    assert params["position"].shape == (4, 8, 8)
    # A non-zero embedding, so that the test sees where it is added.
    params = dict(params, position=jnp.asarray(rng.normal(0, 0.3, (4, 8, 8)), jnp.float32))

    h = images.astype(np.float32) / 255.0
    conv = lambda h, k, s, pad: np.asarray(  # noqa: E731
        jax.lax.conv_general_dilated(h, k, s, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    )
    for level in range(3):
        p = params[f"conv{level}"]
        h = np.maximum(conv(h, np.asarray(p["kernel"]).reshape(2, 2, h.shape[-1], -1), (2, 2), "VALID") + p["bias"], 0)
    h = h + np.asarray(params["position"])
    for i in range(2):
        p = params[f"context{i}"]
        h = np.maximum(conv(h, np.asarray(p["kernel"]).reshape(3, 3, 8, 8), (1, 1), "SAME") + p["bias"], 0)
    h = h.mean(axis=(1, 2))
    h = np.maximum(h @ np.asarray(params["hidden"]["kernel"]) + np.asarray(params["hidden"]["bias"]), 0.0)
    ref = h @ np.asarray(params["out"]["kernel"]) + np.asarray(params["out"]["bias"])
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)({"params": params}, x)), ref, rtol=1e-4, atol=1e-5)


def test_neighbourhood_order():
    x = jnp.arange(1 * 3 * 4 * 2, dtype=jnp.float32).reshape(1, 3, 4, 2)
    y = neighbourhood(x)
    assert y.shape == (1, 3, 4, 18)
    np.testing.assert_array_equal(y[0, 1, 1].reshape(3, 3, 2), x[0, 0:3, 0:3])  # interior: the 3x3 block
    np.testing.assert_array_equal(y[0, 0, 0].reshape(3, 3, 2)[0], 0)  # top row padded
    np.testing.assert_array_equal(y[0, 0, 0].reshape(3, 3, 2)[1:, 1:], x[0, 0:2, 0:2])


def test_patch_order_pads_odd_sizes():
    x = jnp.arange(2 * 20 * 36 * 3, dtype=jnp.int32).reshape(2, 20, 36, 3)
    y = to_patch_order(x, 2)  # padded to 20 x 36 (already multiples of 4)
    assert y.shape == (2, 5, 9, 48)
    z = to_patch_order(x[:, :18, :33], 2)  # padded to 20 x 36
    assert z.shape == (2, 5, 9, 48)
    # The top-left window's first (a1, b1, a0, b0) = (0, 0, 0, 0) entry is pixel (0, 0); (0, 0, 0, 1) is pixel (0, 1).
    np.testing.assert_array_equal(y[0, 0, 0, :3], x[0, 0, 0])
    np.testing.assert_array_equal(y[0, 0, 0, 3:6], x[0, 0, 1])
    np.testing.assert_array_equal(y[0, 0, 0, 6:9], x[0, 1, 0])
    np.testing.assert_array_equal(y[0, 0, 0, 12:15], x[0, 0, 2])  # (a1, b1) = (0, 1) -> column 2
    assert int(z[0, -1, -1, -1]) == 0  # padding


def test_flops_count():
    macs = forward_macs(96, 320, (16, 32, 64, 128), 128, 5, "patch")
    assert macs[:4] == [48 * 160 * 12 * 16, 24 * 80 * 64 * 32, 12 * 40 * 128 * 64, 6 * 20 * 256 * 128]
    assert train_flops_per_image(96, 320, (16, 32, 64, 128), 128, 5, "patch") == 2 * (3 * sum(macs) - macs[0])
    macs = forward_macs(96, 320, (16, 32, 64, 128, 128), 128, 5, "patch", context=2)
    assert macs[4:7] == [3 * 10 * 512 * 128, 3 * 10 * 9 * 128 * 128, 3 * 10 * 9 * 128 * 128]
    task = CountingTask(96, 320, features=(16, 32, 64, 128, 128), context=2, position=True)
    assert task.flops_per_image() == 2 * (3 * sum(macs) - macs[0])


def test_l1_against_numpy():
    rng = np.random.default_rng(1)
    pred = rng.normal(2.0, 1.5, (37, 5)).astype(np.float32)
    counts = rng.integers(0, 6, (37, 5))
    weights = (rng.random(37) < 0.7).astype(np.float32)
    np.testing.assert_allclose(l1_per_type(jnp.asarray(pred), jnp.asarray(counts)), np.abs(pred - counts).mean(0), 1e-6)
    ref = (np.abs(pred - counts) * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(l1_per_type(jnp.asarray(pred), jnp.asarray(counts), jnp.asarray(weights)), ref, 1e-6)


@pytest.mark.parametrize("loss", ["l1", "mse", "huber"])
def test_training_losses(loss):
    """The training loss against NumPy (masked examples drop out); the metric stays L1 whatever the loss."""
    rng = np.random.default_rng(7)
    task = CountingTask(16, 32, loss=loss, **TINY)
    state = jax.jit(task.init)(jax.random.key(0))
    data = _data(rng, 9, 16, 32)
    weights = jnp.asarray((rng.random(9) < 0.6).astype(np.float32))
    inputs = task.prepare(data["image"])
    got = float(jax.jit(task.loss_fn)(state.params, inputs, data["counts"], weights))
    err = np.asarray(task.apply(state.params, inputs)) - np.asarray(data["counts"])
    per = {"l1": np.abs(err), "mse": err**2, "huber": np.where(np.abs(err) < 1, 0.5 * err**2, np.abs(err) - 0.5)}[loss]
    w = np.asarray(weights)
    np.testing.assert_allclose(got, (per.mean(1) * w).sum() / w.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        CountingTask(16, 32, loss="l2")


def test_evaluate_chunks_and_masks_remainder():
    """37 examples in chunks of 8 (5 chunks, 3 padded) give the NumPy L1 of the model's predictions."""
    rng = np.random.default_rng(2)
    task = CountingTask(16, 32, eval_batch_size=8, **TINY)
    state = jax.jit(task.init)(jax.random.key(3))
    data = _data(rng, 37, 16, 32)
    metrics = jax.jit(task.evaluate, compiler_options=FAST_COMPILE)(state, data)
    pred = np.asarray(jax.jit(task.predict)(state, data["image"]))
    per_type = np.abs(pred - np.asarray(data["counts"])).mean(0)
    np.testing.assert_allclose(metrics["l1_per_type"], per_type, rtol=1e-5)
    np.testing.assert_allclose(metrics["l1"], per_type.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["reward"], -per_type.mean(), rtol=1e-5)


def test_bfloat16_keeps_float32_master_weights():
    rng = np.random.default_rng(4)
    data = _data(rng, 6, 16, 16)  # fewer examples than a batch: one step of 6 per epoch
    f32 = CountingTask(16, 16, batch_size=32, **TINY)
    bf16 = CountingTask(16, 16, batch_size=32, compute_dtype="bfloat16", **TINY)
    state = jax.jit(f32.init)(jax.random.key(0))
    out16 = jax.jit(lambda s, d: bf16.train(s, d, jax.random.key(1), 2), compiler_options=FAST_COMPILE)(state, data)
    for leaf in jax.tree_util.tree_leaves((out16.params, out16.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    assert int(out16.step) == 2 and np.isfinite(float(out16.train_loss))
    # Same initial weights: bf16 predictions match float32 ones to bf16 precision.
    p32, p16 = jax.jit(f32.predict)(state, data["image"]), jax.jit(bf16.predict)(state, data["image"])
    assert p16.dtype == jnp.float32
    np.testing.assert_allclose(p16, p32, rtol=0.05, atol=0.02)


def _squares(rng, n, size=16, colours=5, max_per=3, side=3):
    """Dark images with bright 3x3 squares of 5 colours on a grid of non-overlapping cells; counts per colour."""
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)
    cells = [(r, c) for r in range(0, size - side + 1, side + 1) for c in range(0, size - side + 1, side + 1)]
    images = rng.integers(0, 40, (n, size, size, 3)).astype(np.uint8)
    counts = rng.integers(0, max_per + 1, (n, colours))
    for i in range(n):
        where = rng.permutation(len(cells))
        j = 0
        for colour in range(colours):
            for _ in range(counts[i, colour]):
                r, c = cells[where[j]]
                images[i, r : r + side, c : c + side] = palette[colour]
                j += 1
    return {"image": jnp.asarray(images), "counts": jnp.asarray(counts.astype(np.int32))}


@pytest.mark.parametrize("context, position", [(0, False), (2, True)])
def test_learns_to_count_squares(context, position):
    """Trained on 512 images, the CNN's held-out L1 is well below that of predicting the training mean (the
    paper-like CNN and today's default with context layers and a position embedding)."""
    rng = np.random.default_rng(5)
    train, test = _squares(rng, 512), _squares(rng, 256)
    task = CountingTask(16, 16, batch_size=32, learning_rate=3e-3, features=(16, 32, 32, 32), hidden=32,
                        context=context, position=position)  # fmt: skip
    fit = jax.jit(lambda key: task.evaluate(task.train(task.init(key), train, jax.random.fold_in(key, 1), 30), test))
    l1 = float(fit(jax.random.key(0))["l1"])
    mean = np.asarray(train["counts"]).mean(0)
    baseline = float(np.abs(np.asarray(test["counts"]) - mean).mean())
    assert l1 < 0.4 * baseline, (l1, baseline)  # seen: 0.1 (no context) and 0.32 (context) against 1.0


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_density_head_norm_and_pretrained_start():
    from lts_jax.models.counting import CountingCNN, to_patch_order

    x = to_patch_order(jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 32, 64, 3)), jnp.uint8), 4)
    model = CountingCNN(features=(4, 8, 8, 8), hidden=8, head="density", context=1, position=True, norm=True)
    params = model.init(jax.random.key(0), x)["params"]
    assert "conv0_norm" in params and np.all(np.asarray(model.apply({"params": params}, x)) == 0.0)  # zero-init out
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    dmap = model.apply({"params": params}, x, density_map=True)
    assert dmap.shape == (2, 2, 4, 5)
    np.testing.assert_allclose(model.apply({"params": params}, x), dmap.sum((1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown head"):
        CountingCNN(head="bogus").init(jax.random.key(0), x)
    task = CountingTask(32, 64, features=(4, 8, 8, 8), hidden=8)
    trained = task.init(jax.random.key(1)).params
    start = task.with_init_params(trained).init(jax.random.key(2))
    for a, b in zip(jax.tree_util.tree_leaves(start.params), jax.tree_util.tree_leaves(trained)):
        np.testing.assert_array_equal(a, b)
    assert int(start.step) == 0
    with pytest.raises(ValueError, match="init_params do not fit"):
        CountingTask(32, 64, features=(4, 8, 8, 16), hidden=8, init_params=trained)
