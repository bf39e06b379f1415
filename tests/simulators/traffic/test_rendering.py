"""The rendering parameters of psi (scene.py, make_spec(learn_rendering=True)): the blocks, their scene fields and
units, what each does to the image, and that at their defaults the images are those of the simulator without them,
bit for bit. One compiled 24x80 sampler (psi traced) serves every setting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simulators
from simulators.traffic import TrafficSimulator, preview
from simulators.traffic import layout as L
from simulators.traffic import scene as S

H, W, NUM = 24, 80, 4
SKY = 23


@pytest.fixture(scope="module")
def sim():
    return TrafficSimulator(H, W, learn_rendering=True)


@pytest.fixture(scope="module")
def sample(sim):
    return jax.jit(lambda k, p: sim.sample(k, p, NUM))


@pytest.fixture(scope="module")
def scenes_fn(sim):
    return jax.jit(lambda k, p: sim.sample_scenes(k, p, NUM))


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _psi(sim, base="val", **blocks):
    """A preset with rendering blocks set: ``block=[means...]`` or ``block=(means, log_vars)``."""
    psi = sim.preset(base)
    for name, value in blocks.items():
        sl = sim.spec.slices[name]
        k = sim.spec[name].size
        means, log_vars = value if isinstance(value, tuple) else (value, [0.0] * k)
        psi[sl] = np.concatenate([np.asarray(means, np.float32), np.asarray(log_vars, np.float32)])
    return psi


# ----- the blocks ------------------------------------------------------------------------------------------
def test_blocks_appended_learnable_and_absent_by_default(sim):
    plain, spec = S.make_spec(), sim.spec
    assert plain.block_names == spec.block_names[: len(plain.blocks)]  # psi's old layout is a prefix
    assert spec.block_names[len(plain.blocks) :] == list(S.RENDERING_BLOCKS)
    assert not set(S.RENDERING_BLOCKS) & set(plain.block_names)
    for name, (labels, (lo, hi)) in S.RENDERING_RANGES.items():
        b = spec[name]
        assert b.kind == "gaussian" and not b.frozen and b.labels == labels and b.box == (lo, hi)
    assert spec["camera"].labels == ("height", "pitch") and spec["color_balance"].labels == ("temperature", "tint")
    for name in plain.preset_names:  # presets: today's values, the rendering blocks neutral (today's camera)
        np.testing.assert_array_equal(sim.preset(name)[: plain.dim], plain.preset(name))
        np.testing.assert_array_equal(sim.preset(name)[plain.dim :], 0.0)
    assert TrafficSimulator(H, W).spec.dim == plain.dim
    assert S.rendering_settings(plain, plain.zeros()) == {}


@pytest.mark.slow
def test_default_rendering_psi_renders_todays_images_bit_for_bit(sim, sample, scenes_fn):
    """The rendering parameters at their defaults (zero means, no spread) leave every scene variable and every
    output exactly as the simulator without them draws it (its own compiled program: other tiles, more stages)."""
    plain = TrafficSimulator(H, W)
    plain_sample = jax.jit(lambda k, p: plain.sample(k, p, NUM))
    plain_scenes = jax.jit(lambda k, p: plain.sample_scenes(k, p, NUM))
    for name, seed in (("val", 1), ("adversarial", 2), ("default", 3)):
        key = jax.random.key(seed)
        a = _np(plain_sample(key, jnp.asarray(plain.preset(name))))
        b = _np(sample(key, jnp.asarray(sim.preset(name))))
        for k in ("image", "label", "instance", "counts"):
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{name}: {k}")
        sa = _np(plain_scenes(key, jnp.asarray(plain.preset(name))))
        sb = _np(scenes_fn(key, jnp.asarray(sim.preset(name))))
        for k, v in sa.items():
            np.testing.assert_array_equal(sb[k], v, err_msg=f"{name}: scene field {k}")
        assert set(sb) - set(sa) == {"camera_fov", "exposure", "color_gains", "blur_sigma", "noise_sigma"}
        np.testing.assert_array_equal(sb["camera_fov"], np.float32(S.KITTI_HFOV_DEG))
        np.testing.assert_array_equal(sb["color_gains"], 1.0)
        for k in ("exposure", "blur_sigma", "noise_sigma"):
            np.testing.assert_array_equal(sb[k], 0.0)


# ----- scene fields and units ------------------------------------------------------------------------------
def test_scene_fields_units_ranges_and_spread(sim, scenes_fn):
    key = jax.random.key(5)
    base = _np(scenes_fn(key, jnp.asarray(sim.preset("val"))))
    p = _psi(sim, camera=[1.0, -2.0], field_of_view=[1.5], exposure=[2.0], color_balance=[3.0, -1.0], blur=[2.5],
             noise=[0.5])  # fmt: skip
    sc = _np(scenes_fn(key, jnp.asarray(p)))
    np.testing.assert_allclose(sc["camera_height"], base["camera_height"] + 0.2, atol=1e-6)  # 0.2 m per unit
    np.testing.assert_allclose(sc["camera_pitch"], base["camera_pitch"] - 0.03, atol=1e-7)  # 0.015 rad per unit
    np.testing.assert_allclose(sc["camera_fov"], S.KITTI_HFOV_DEG - 12.0, atol=1e-4)  # 8 deg per unit
    np.testing.assert_allclose(sc["exposure"], 1.0)  # 0.5 stops per unit
    np.testing.assert_allclose(sc["color_gains"], np.broadcast_to(2.0 ** np.array([0.3, -0.1, -0.3]), (NUM, 3)),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(sc["blur_sigma"], 1.0, rtol=1e-6)  # 0.4 px per unit
    np.testing.assert_allclose(sc["noise_sigma"], 1.0, rtol=1e-6)  # 2 levels per unit
    for k in ("road_length", "car_pos", "weather", "sun_dir", "seed"):  # the scene itself is unchanged
        np.testing.assert_array_equal(sc[k], base[k])
    # ranges: beyond them the value is clipped; one-sided blocks do nothing below 0
    p = _psi(sim, camera=[9.0, -9.0], field_of_view=[-2.0], blur=[7.0], noise=[-1.0], exposure=[-5.0])
    sc = _np(scenes_fn(key, jnp.asarray(p)))
    np.testing.assert_allclose(sc["camera_height"], base["camera_height"] + 0.6, atol=1e-6)
    np.testing.assert_allclose(sc["camera_pitch"], base["camera_pitch"] - 0.045, atol=1e-7)
    np.testing.assert_array_equal(sc["camera_fov"], np.float32(S.KITTI_HFOV_DEG))
    np.testing.assert_allclose(sc["blur_sigma"], S.MAX_BLUR_PX, rtol=1e-6)
    np.testing.assert_array_equal(sc["noise_sigma"], 0.0)
    np.testing.assert_allclose(sc["exposure"], -1.5)
    lo, hi = S.RENDERING_CAMERA_HEIGHT_BOUNDS
    assert np.all((sc["camera_height"] >= lo) & (sc["camera_height"] <= hi))
    assert np.all(np.abs(sc["camera_pitch"]) <= S.RENDERING_CAMERA_PITCH_BOUND + 1e-7)
    # per-image spread: none at log-variance <= 0 (variance <= 1), sqrt(e - 1) units at log-variance 1
    for log_var, spread in ((0.0, 0.0), (-2.0, 0.0), (1.0, np.sqrt(np.e - 1.0))):
        p = _psi(sim, exposure=([0.0], [log_var]))
        ev = np.concatenate([_np(scenes_fn(jax.random.key(s), jnp.asarray(p)))["exposure"] for s in range(64)])
        if spread == 0.0:
            np.testing.assert_array_equal(ev, 0.0)
        else:
            assert np.std(ev / S.EXPOSURE_UNIT_EV) == pytest.approx(spread, rel=0.15)


def test_rendering_settings_in_physical_units(sim):
    p = _psi(sim, camera=([-2.0, 1.0], [1.0, 0.0]), field_of_view=[3.0], exposure=[1.0], color_balance=[2.0, 0.0])
    r = S.rendering_settings(sim.spec, p)
    assert r["camera_height_m"]["value"] == pytest.approx(L.CAMERA_HEIGHT - 0.4)
    assert r["camera_height_m"]["spread"] == pytest.approx(0.2 * np.sqrt(np.e - 1.0))
    assert r["camera_pitch_deg"]["value"] == pytest.approx(np.degrees(0.015)) and r["camera_pitch_deg"]["spread"] == 0
    assert r["hfov_deg"]["value"] == pytest.approx(S.MIN_HFOV_DEG)
    assert r["fx_over_width"]["value"] == pytest.approx(0.5 / np.tan(np.radians(S.MIN_HFOV_DEG) / 2))
    assert r["exposure_ev"]["value"] == pytest.approx(0.5)
    assert r["gain_r"]["value"] == pytest.approx(2**0.2) and r["gain_b"]["value"] == pytest.approx(2**-0.2)
    zero = S.rendering_settings(sim.spec, sim.preset("val"))
    assert zero["camera_height_m"] == {"value": pytest.approx(L.CAMERA_HEIGHT), "spread": 0.0}
    assert zero["fx_over_width"]["value"] == pytest.approx(L.KITTI_FX_OVER_WIDTH, rel=1e-6)


# ----- what each parameter does to the image ---------------------------------------------------------------
def _mean_rgb(img):
    return img.reshape(-1, 3).astype(np.float64).mean(0)


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_sensor_parameters(sim, sample):
    key = jax.random.key(11)
    ref = _np(sample(key, jnp.asarray(sim.preset("val"))))

    def run(**blocks):
        out = _np(sample(key, jnp.asarray(_psi(sim, **blocks))))
        for k in ("label", "instance", "counts"):  # the sensor does not move the scene
            np.testing.assert_array_equal(out[k], ref[k])
        return out["image"]

    m0 = _mean_rgb(ref["image"])
    assert _mean_rgb(run(exposure=[3.0])).mean() > m0.mean() + 25
    assert _mean_rgb(run(exposure=[-3.0])).mean() < m0.mean() - 25
    warm, cool = _mean_rgb(run(color_balance=[3.0, 0.0])), _mean_rgb(run(color_balance=[-3.0, 0.0]))
    assert warm[0] / warm[2] > m0[0] / m0[2] * 1.1 > cool[0] / cool[2] * 1.2
    green = _mean_rgb(run(color_balance=[0.0, 3.0]))
    assert green[1] > m0[1] + 5 and abs(green[0] - m0[0]) < 1.0
    noisy = run(noise=[3.0]).astype(np.float64) - ref["image"]  # 6 levels of added noise (and today's)
    inside = (ref["image"] > 20) & (ref["image"] < 235)
    assert np.std(noisy[inside]) == pytest.approx(6.0, rel=0.15)

    def roughness(img):  # mean absolute difference of horizontal neighbours
        return np.abs(np.diff(img.astype(np.float64), axis=2)).mean()

    assert roughness(run(blur=[3.0])) < roughness(ref["image"]) - 0.05  # 0.3 px at 24 rows: a light blur


def test_blur_is_a_gaussian_and_today_at_zero():
    """The renderer's blur against scipy's Gaussian filter (edges replicated), at 96 rows (sigma in pixels)."""
    from scipy import ndimage

    from simulators.traffic.render import Renderer

    r = Renderer(96, 120, rendering_params=True)  # only the blur is called: nothing is rendered
    x = np.random.default_rng(0).uniform(0.0, 1.0, (96, 120)).astype(np.float32)
    ones = jnp.ones_like(x)
    radius = int(np.ceil(3.0 * S.MAX_BLUR_PX))
    for sigma in (0.4, 1.2):
        (out,) = r._blur(jnp.float32(sigma), [jnp.asarray(x)], ones)
        expect = ndimage.gaussian_filter(x.astype(np.float64), sigma, mode="nearest", truncate=radius / sigma)
        np.testing.assert_allclose(np.asarray(out), expect, atol=2e-6)
    (same,) = r._blur(jnp.float32(0.0), [jnp.asarray(x)], ones)
    np.testing.assert_array_equal(np.asarray(same), x)


def _zoom_nearest(x, s, cy, cx):
    """A NumPy reference of the digital zoom's nearest-neighbour resampling (render.Renderer._zoom)."""
    h, w = x.shape[-2:]

    def idx(n, c):
        i = np.arange(n, dtype=np.float64)
        src = np.clip(i + (i + 0.5 - c) * (1.0 / s - 1.0), 0, n - 1)
        return np.clip(np.floor(src + 0.5), 0, n - 1).astype(int)

    return x[..., idx(h, cy)[:, None], idx(w, cx)[None, :]]


def test_field_of_view_zooms_about_the_principal_point(sim, sample):
    key = jax.random.key(12)
    ref = _np(sample(key, jnp.asarray(sim.preset("val"))))
    out = _np(sample(key, jnp.asarray(_psi(sim, field_of_view=[2.0]))))
    fov = S.KITTI_HFOV_DEG - 16.0
    s = np.tan(np.radians(S.KITTI_HFOV_DEG) / 2) / np.tan(np.radians(fov) / 2)
    cy, cx = L.KITTI_CY_OVER_HEIGHT * H, W / 2
    for k in ("label", "instance"):
        expect = _zoom_nearest(ref[k], s, cy, cx)
        assert (out[k] != expect).mean() < 0.002, k  # float32 vs float64 at exact half-pixel ties
    # counts follow the zoomed instance map
    visible = np.array([[np.sum(inst == b + 1) for b in range(L.MAX_BLOCKS)] for inst in out["instance"]])
    assert np.all(out["counts"].sum(1) <= (visible > 0).sum(1))
    # a narrower view: the cars cover more pixels
    assert (out["label"] == 26).sum() > 1.3 * (ref["label"] == 26).sum()


def test_camera_height_and_pitch(sim, sample):
    key = jax.random.key(13)

    def labels(**blocks):
        return _np(sample(key, jnp.asarray(_psi(sim, base="adversarial", **blocks))))["label"]

    ref = labels()
    up, down = labels(camera=[0.0, -3.0]), labels(camera=[0.0, 3.0])
    # pitch: a vertical shift of the whole view by f tan(pitch) (2.1 px at 24x80; looking up moves it down)
    k = round(L.KITTI_FX_OVER_WIDTH * W * np.tan(3 * S.CAMERA_OFFSET_PITCH_UNIT))
    assert k == 2
    assert (up[:, k:] == ref[:, :-k]).mean() > 0.9 > (up == ref).mean()
    assert (down[:, :-k] == ref[:, k:]).mean() > 0.9 > (down == ref).mean()
    # height h: a row dv pixels below the horizon sees the ground at depth f h / dv, where the 7 m road is
    # 7 dv / h pixels wide: 1.05 m (low) vs 2.25 m (high) camera, 2.1x wider (rows 15, 16: dv = 4.4, 5.4 px)
    low, high = labels(camera=[-3.0, 0.0]), labels(camera=[3.0, 0.0])
    width = [(x[:, 15:17] == 7).sum() for x in (low, ref, high)]
    assert width[0] > width[1] > width[2] and 1.6 < width[0] / width[2] < 2.6


def test_preview_contact_sheet_with_rendering_parameters(sim, sample):
    p = _psi(sim, field_of_view=[2.0], exposure=[1.0], blur=[1.0])
    sheet = preview.contact_sheet(sim, p, sample_fn=sample)
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.dtype == np.uint8
    default = preview.contact_sheet(sim, sim.preset("val"), sample_fn=sample)
    assert sheet.shape == default.shape and not np.array_equal(sheet, default)


def test_registry_and_describe(sim):
    d = sim.describe()
    assert d["learn_rendering"] is True
    again = simulators.make(**d)
    assert again.spec.dim == sim.spec.dim and again.renderer.rendering_params
    assert again.select(["image"]).learn_rendering


@pytest.mark.slow  # seconds of compilation or a subprocess: the whole suite runs it
def test_a_subset_of_the_rendering_blocks():
    """learn_rendering may name blocks: only they enter psi and the scenes; the others keep today's values
    (the renderer skips their stages; without the camera block it keeps today's view bounds)."""
    part = TrafficSimulator(H, W, learn_rendering=["exposure", "color_balance"])
    assert part.spec.block_names[-2:] == ["exposure", "color_balance"] and "camera" not in part.spec.block_names
    assert not part.renderer.rendering_params and part.describe()["learn_rendering"] == ["exposure", "color_balance"]
    assert simulators.make(**part.describe()).spec.dim == part.spec.dim
    sc = _np(part.sample_scenes(jax.random.key(0), part.preset("val"), 2))
    assert {"exposure", "color_gains"} <= set(sc) and not {"camera_fov", "blur_sigma", "noise_sigma"} & set(sc)
    r = S.rendering_settings(part.spec, part.preset("val"))
    assert r["hfov_deg"]["value"] == pytest.approx(S.KITTI_HFOV_DEG) and r["exposure_ev"]["value"] == 0.0
    assert TrafficSimulator(H, W, learn_rendering=list(S.RENDERING_BLOCKS)).describe()["learn_rendering"] is True
    with pytest.raises(ValueError, match="lens_flare"):
        TrafficSimulator(H, W, learn_rendering=["exposure", "lens_flare"])
