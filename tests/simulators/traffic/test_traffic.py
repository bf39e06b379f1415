"""Tests of the traffic scene simulator (simulators/traffic): scene model, renderer, interface.

Tiny images (24x80) and a few compiled programs shared through module fixtures keep the
file fast: a jitted ``sample`` (num=4), a jitted ``sample_scenes``, a vmapped ``sample``, the
chunked renderer (chunks of 3) and one fused policy iteration.
Every scene variable has its own slot of random bits, so with the same key, forcing one
block of psi (e.g. the weather) changes only that variable of the scenes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simulators
from lts_jax import lts
from lts_jax.search import policy
from lts_jax.simulator import Field, SceneSimulator
from simulators.traffic import TrafficSimulator, preview
from simulators.traffic import labels as LB
from simulators.traffic import layout as L
from simulators.traffic import scene as S
from simulators.traffic import visibility as V

H, W, NUM, CHUNK = 24, 80, 4, 3
B = L.MAX_BLOCKS


@pytest.fixture(scope="module")
def sim():
    return TrafficSimulator(H, W, render_chunk=CHUNK)


@pytest.fixture(scope="module")
def sample(sim):
    return jax.jit(lambda k, p: sim.sample(k, p, NUM))


@pytest.fixture(scope="module")
def scenes_fn(sim):
    return jax.jit(lambda k, p: sim.sample_scenes(k, p, NUM))


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _set(sim, psi, **logits):
    """psi with blocks' raw logits replaced (lists, or a scalar for all entries)."""
    out = np.array(psi, np.float32)
    for name, value in logits.items():
        out[sim.spec.slices[name]] = value
    return out


def _onehot_logits(n, i, big=30.0):
    v = np.full(n, -big, np.float32)
    v[i] = 0.0
    return v


# ----- the parameter spec ------------------------------------------------------------------
def test_spec_blocks_and_presets(sim):
    spec = sim.spec
    assert spec.block_names[:6] == ["road_length", "intersection", "car_presence", "car_type", "house_presence",
                                    "weather"]  # fmt: skip
    assert spec["road_length"].labels == tuple(str(n) for n in range(8, 19))
    assert spec["intersection"].labels == ("L", "T", "X") and spec["intersection"].frozen
    assert not TrafficSimulator(H, W, learn_intersection=True).spec["intersection"].frozen
    assert spec["car_type"].labels == L.CAR_TYPES and spec["weather"].labels == L.WEATHERS
    assert spec["car_presence"].kind == "bernoulli" and spec["house_presence"].kind == "bernoulli"
    for name in ("camera_jitter", "sun", "car_color_spread"):
        assert spec[name].frozen
    np.testing.assert_array_equal(sim.default_psi(), spec.zeros())
    val = spec.describe(sim.preset("val"))
    assert val["car_presence"]["prob"] == pytest.approx(0.6, abs=1e-5)
    assert val["house_presence"]["prob"] == pytest.approx(0.8, abs=1e-5)
    assert val["car_type"]["probs"]["sedan"] == pytest.approx(0.40, abs=1e-5)
    assert val["intersection"]["probs"]["T"] == pytest.approx(1 / 3, abs=1e-5)
    adv = spec.describe(sim.preset("adversarial"))
    assert adv["car_presence"]["prob"] == pytest.approx(0.05, abs=1e-5)
    assert adv["car_type"]["probs"]["pickup"] > 0.999 and adv["weather"]["probs"]["fog"] > 0.999
    assert adv["road_length"]["probs"]["8"] > 0.999


def test_bad_psi_is_refused_with_block_names(sim):
    key = jax.random.key(0)
    for bad in (np.zeros(sim.spec.dim + 1, np.float32), np.zeros((2, sim.spec.dim), np.float32)):
        with pytest.raises(ValueError, match="car_presence"):
            sim.sample(key, bad, 2)
    nan = sim.default_psi()
    nan[sim.spec.slices["weather"].start + 1] = np.nan
    with pytest.raises(ValueError, match=r"weather\[overcast\]"):
        sim.check_psi(nan)
    with pytest.raises(ValueError, match="non-finite"):
        sim.sample(key, nan, 2)  # eager: psi is concrete and checked
    inf = sim.default_psi()
    inf[0] = np.inf
    with pytest.raises(ValueError, match="road_length"):
        sim.sample_checked(key, inf, 2)


# ----- the scene model -----------------------------------------------------------------------
def test_scene_contract(sim, scenes_fn):
    sc = _np(scenes_fn(jax.random.key(1), jnp.asarray(sim.preset("val"))))
    expect = {
        "road_length": ((), np.int32), "intersection": ((), np.int32), "car_present": ((B,), np.bool_),
        "car_type": ((B,), np.int32), "car_lane": ((B,), np.int32), "car_pos": ((B, 2), np.float32),
        "car_heading": ((B,), np.float32), "car_color": ((B, 3), np.float32), "house_present": ((B, 2), np.bool_),
        "house_height": ((B, 2), np.float32), "weather": ((), np.int32), "camera_height": ((), np.float32),
        "camera_pitch": ((), np.float32), "sun_dir": ((3,), np.float32),
    }  # fmt: skip
    for name, (shape, dtype) in expect.items():
        assert sc[name].shape == (NUM, *shape), name
        assert sc[name].dtype == dtype, name
    n = sc["road_length"]
    assert np.all((n >= 8) & (n <= 18))
    beyond = np.arange(B)[None, :] >= n[:, None]
    assert not np.any(sc["car_present"] & beyond)
    assert not np.any(sc["house_present"] & beyond[..., None])
    assert not np.any(sc["tree_present"] & beyond[..., None])
    # cars stay inside their lane and block
    x, z = sc["car_pos"][..., 0], sc["car_pos"][..., 1]
    lane_x = np.where(sc["car_lane"] == 0, L.LANE_WIDTH / 2, -L.LANE_WIDTH / 2)
    assert np.all(np.abs(x - lane_x) <= S.CAR_X_JITTER + 1e-5)
    centre = (np.arange(B) + 0.5) * L.BLOCK_LENGTH
    assert np.all(np.abs(z - centre) <= S.CAR_Z_JITTER + 1e-5)
    heading = np.where(sc["car_lane"] == 0, 0.0, np.pi)
    assert np.all(np.abs(sc["car_heading"] - heading) <= S.CAR_HEADING_JITTER + 1e-5)
    assert np.all((sc["car_color"] >= 0) & (sc["car_color"] <= 1))
    lo, hi = S.CAMERA_HEIGHT_BOUNDS
    assert np.all((sc["camera_height"] >= lo - 1e-6) & (sc["camera_height"] <= hi + 1e-6))
    assert np.all(np.abs(sc["camera_pitch"]) <= S.CAMERA_PITCH_BOUND + 1e-7)
    np.testing.assert_allclose(np.linalg.norm(sc["sun_dir"], axis=-1), 1.0, atol=1e-5)
    assert np.all((sc["house_height"] >= L.HOUSE_HEIGHT_RANGE[0]) & (sc["house_height"] <= L.HOUSE_HEIGHT_RANGE[1]))


# ----- outputs -----------------------------------------------------------------------------
def test_shapes_dtypes_labels_and_determinism(sim, sample):
    psi = jnp.asarray(sim.preset("val"))
    out = _np(sample(jax.random.key(2), psi))
    assert out["image"].shape == (NUM, H, W, 3) and out["image"].dtype == np.uint8
    assert out["label"].shape == (NUM, H, W) and out["label"].dtype == np.uint8
    assert out["instance"].shape == (NUM, H, W) and out["instance"].dtype == np.int32
    assert out["counts"].shape == (NUM, len(L.CAR_TYPES)) and out["counts"].dtype == np.int32
    assert set(np.unique(out["label"])) <= set(LB.LABEL_IDS)
    # car pixels carry an instance and vice versa
    np.testing.assert_array_equal(out["label"] == LB.CAR, out["instance"] > 0)
    again = _np(sample(jax.random.key(2), psi))
    for name in out:
        np.testing.assert_array_equal(out[name], again[name])
    other = _np(sample(jax.random.key(3), psi))
    assert not np.array_equal(out["image"], other["image"])


def test_no_cars_and_all_cars(sim, sample, scenes_fn):
    psi = sim.preset("val")
    none = _np(sample(jax.random.key(4), jnp.asarray(_set(sim, psi, car_presence=-30.0))))
    assert not np.any(none["label"] == LB.CAR)
    assert not np.any(none["instance"])
    assert not np.any(none["counts"])
    full = jnp.asarray(_set(sim, psi, car_presence=30.0))
    sc = _np(scenes_fn(jax.random.key(5), full))
    in_road = np.arange(B)[None, :] < sc["road_length"][:, None]
    np.testing.assert_array_equal(sc["car_present"], in_road)
    out = _np(sample(jax.random.key(5), full))
    assert np.all(out["counts"].sum(-1) >= 1)
    assert np.all((out["label"] == LB.CAR).any(axis=(1, 2)))


def test_single_car_type_counts(sim, sample):
    for t in (0, 3):
        psi = _set(sim, sim.preset("val"), car_presence=30.0, car_type=_onehot_logits(len(L.CAR_TYPES), t))
        out = _np(sample(jax.random.key(6 + t), jnp.asarray(psi)))
        others = np.delete(out["counts"], t, axis=-1)
        assert not np.any(others)
        assert np.all(out["counts"][:, t] >= 1)


def test_counts_agree_with_instance_map(sim, sample, scenes_fn):
    """The renderer's counts equal the visibility rule recomputed in NumPy from its own instance map."""
    psi = jnp.asarray(_set(sim, sim.preset("val"), car_presence=2.0))
    key = jax.random.key(8)
    out = _np(sample(key, psi))
    sc = _np(scenes_fn(key, psi))
    r = sim.renderer
    checked_rules = np.zeros(3, int)
    for i in range(NUM):
        pix = np.bincount(out["instance"][i].ravel(), minlength=B + 1)[1:]
        v_h = r.cy - r.focal * np.tan(sc["camera_pitch"][i])
        area = V.projected_box_area(np, sc["car_type"][i], sc["car_pos"][i], sc["car_heading"][i],
                                    sc["camera_height"][i], v_h, r.focal, r.cx, H, W)  # fmt: skip
        dist = np.hypot(sc["car_pos"][i][:, 0] - L.CAMERA_X, sc["car_pos"][i][:, 1] - L.CAMERA_Z)
        fog = V.FOG_DISTANCE[sc["weather"][i]]
        visible = V.counted(np, sim.visibility, pix, area, dist, fog, H, W) & sc["car_present"][i]
        expect = np.bincount(sc["car_type"][i][visible], minlength=len(L.CAR_TYPES))
        np.testing.assert_array_equal(out["counts"][i], expect)
        # every instance belongs to a present car
        assert np.all(sc["car_present"][i][np.flatnonzero(pix)])
        seen = sc["car_present"][i] & (pix > 0)
        checked_rules += [np.sum(seen & (pix < sim.min_visible_pixels)), np.sum(seen & (pix < 0.4 * area)), 0]
    assert checked_rules[:2].sum() > 0  # some car was left out by the pixel floor or the share


def test_forcing_one_block_changes_only_that_variable(sim, scenes_fn):
    key = jax.random.key(9)
    psi = sim.preset("val")
    a = _np(scenes_fn(key, jnp.asarray(_set(sim, psi, weather=_onehot_logits(4, 0)))))
    b = _np(scenes_fn(key, jnp.asarray(_set(sim, psi, weather=_onehot_logits(4, 3)))))
    assert np.all(a["weather"] == 0) and np.all(b["weather"] == 3)
    for name in a:
        if name != "weather":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_sky_above_horizon_ground_below(sim, sample, scenes_fn):
    psi = jnp.asarray(_set(sim, sim.preset("val"), camera_jitter=[0.0, 0.0, 0.0, 0.0]))
    key = jax.random.key(10)
    out = _np(sample(key, psi))
    sc = _np(scenes_fn(key, psi))
    r = sim.renderer
    ground = np.isin(out["label"], [LB.ROAD, LB.SIDEWALK, LB.TERRAIN])
    sky = out["label"] == LB.SKY
    rows = np.arange(H)[:, None] + 0.5
    for i in range(NUM):
        v_h = r.cy - r.focal * np.tan(sc["camera_pitch"][i])
        above = np.broadcast_to(rows < v_h - 0.5, (H, W))
        below = np.broadcast_to(rows > v_h + 0.5, (H, W))
        assert not np.any(ground[i] & above), "ground above the horizon"
        assert not np.any(sky[i] & below), "sky below the horizon"


def test_weather_changes_image_statistics(sim, sample):
    """Documented directions (render.WEATHER_TABLE): fog lowers the contrast (vs clear); rain darkens the road
    (vs overcast, the other sunless weather: wet asphalt, dimmer sky light)."""
    psi = _set(sim, sim.preset("val"), car_presence=-30.0)

    def with_weather(wi):  # the same scenes (same key), only the weather forced
        return _np(sample(jax.random.key(11), jnp.asarray(_set(sim, psi, weather=_onehot_logits(4, wi)))))

    clear, overcast, rain, fog = with_weather(0), with_weather(1), with_weather(2), with_weather(3)
    gray = lambda o: o["image"].astype(np.float32).mean(-1)
    for i in range(NUM):
        assert gray(fog)[i].std() < 0.7 * gray(clear)[i].std()
        road = clear["label"][i] == LB.ROAD
        assert road.any()
        assert gray(rain)[i][road].mean() < 0.85 * gray(overcast)[i][road].mean()
    np.testing.assert_array_equal(clear["label"], fog["label"])  # weather changes looks, not geometry


@pytest.mark.slow
def test_vmap_over_candidates_equals_loop(sim, sample):
    keys = jax.random.split(jax.random.key(12), 2)
    psis = jnp.stack([jnp.asarray(sim.preset("val")), jnp.asarray(sim.preset("adversarial"))])
    batched = _np(jax.jit(jax.vmap(sim.sample, in_axes=(0, 0, None)), static_argnums=2)(keys, psis, NUM))
    for k in range(2):
        single = _np(sample(keys[k], psis[k]))
        np.testing.assert_array_equal(batched["counts"][k], single["counts"])
        np.testing.assert_array_equal(batched["instance"][k], single["instance"])
        assert np.mean(batched["label"][k] == single["label"]) > 0.999
        assert np.mean(np.abs(batched["image"][k].astype(int) - single["image"].astype(int)) <= 1) > 0.999


def test_preview_contact_sheet(sim, sample):
    psi = preview.forced_psi(sim.spec, sim.preset("val"), weather=2, intersection=1)
    probs = sim.spec.describe(psi)
    assert probs["weather"]["probs"]["rain"] > 0.999999
    assert probs["intersection"]["probs"]["T"] > 0.999999
    assert probs["car_presence"]["prob"] == pytest.approx(0.6, abs=1e-5)
    sheet = preview.contact_sheet(sim, sim.preset("adversarial"), seed=1, road_length=8, sample_fn=sample)
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    # 4 weathers x 3 intersections, each an image and its label map side by side
    assert sheet.shape[0] >= 4 * H and sheet.shape[1] >= 3 * 2 * W
    with pytest.raises(ValueError, match="weather"):
        preview.contact_sheet(sim, np.zeros(sim.spec.dim - 1, np.float32))


# ----- the scene-simulator protocol: outputs, chunks, both step paths, the registry ----------
def test_declared_outputs_and_selection(sim, sample):
    assert isinstance(sim, SceneSimulator)
    out = sample(jax.random.key(2), jnp.asarray(sim.preset("val")))
    assert list(sim.outputs) == ["image", "label", "instance", "counts"]
    for name, field in sim.outputs.items():
        assert (out[name].shape, out[name].dtype) == ((NUM, *field.shape), field.dtype), name
    assert sim.outputs["counts"] == Field((len(L.CAR_TYPES),), np.int32)
    counting = sim.select(("image", "counts"))
    assert list(counting.outputs) == ["image", "counts"] and counting.render_chunk == CHUNK
    shapes = jax.eval_shape(lambda k: counting.sample(k, jnp.zeros(sim.spec.dim), 2), jax.random.key(0))
    assert set(shapes) == {"image", "counts"}
    with pytest.raises(ValueError, match="depth"):
        sim.select(("image", "depth"))


@pytest.mark.slow
def test_chunked_renderer_equals_one_render(sim, sample):
    """NUM = 4 scenes in chunks of 3 (the second padded) give exactly the images of one render of all 4."""
    psi = jnp.asarray(sim.preset("val"))
    one = _np(sample(jax.random.key(5), psi))
    chunked = _np(sim.sample_dataset(jax.random.key(5), psi, NUM))
    assert set(chunked) == set(one)
    for name in one:
        np.testing.assert_array_equal(chunked[name], one[name], err_msg=name)
    checked = sim.sample_checked(jax.random.key(5), sim.preset("val"), NUM)
    np.testing.assert_array_equal(checked["image"], one["image"])


@pytest.mark.slow
def test_make_step_equals_make_split_step(sim, count_task):
    """The same TrafficSimulator in make_step (the renderer inside the one jit) and make_split_step (the
    chunked renderer): same keys, same metrics and state (images may differ by one level in a few pixels
    between the two compiled renderers, so the rewards are compared with a tolerance)."""
    K, M = 2, 2  # 4 scenes: the chunk of 3 and a padded one
    pol = policy.GaussianPolicy(sim.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=K, dataset_size=M, mtm_epochs=2, retain_mtm=True)
    val = sim.sample_dataset(jax.random.key(10), sim.preset("val"), NUM)
    fused = lts.make_step(config, sim, count_task, pol)
    split = lts.make_split_step(config, sim, count_task, pol)
    s_f = s_s = lts.init_state(config, count_task, pol, jax.random.key(0), sim.preset("val"))
    key = jax.random.key(1)
    s_f, m_f = fused(s_f, key, val)
    s_s, m_s = split(s_s, key, val)
    assert set(m_f) == set(m_s)
    for k in m_f:
        np.testing.assert_allclose(np.asarray(m_s[k]), np.asarray(m_f[k]), rtol=1e-3, atol=1e-4, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(s_f), jax.tree_util.tree_leaves(s_s)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-4)


def test_registry_rebuilds_from_describe():
    sim = simulators.make("traffic", height=16, width=32, learn_intersection=True, render_chunk=7)
    d = sim.describe()
    assert d == {"name": "traffic", "height": 16, "width": 32, "learn_intersection": True,
                 "learn_rendering": False, "visibility": V.VisibilityRule().describe()}  # fmt: skip
    again = simulators.make(**d)
    assert isinstance(again, TrafficSimulator) and again.describe() == d
    assert again.spec.dim == sim.spec.dim and not again.spec["intersection"].frozen
    with pytest.raises(ValueError, match="render_chunk"):
        simulators.make("traffic", height=16, width=32, render_chunk=0)
    # an older run's description (the pixel-count rule before issue 13) rebuilds that rule
    old = simulators.make("traffic", height=16, width=32, min_visible_pixels=3)
    assert old.min_visible_pixels == 3 and old.visibility.min_share == 0.0
