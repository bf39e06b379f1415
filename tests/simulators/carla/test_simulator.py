"""CarlaSimulator through the host bridge in both step paths, with stand-in sessions (no server); the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed (pip install 'lts_jax[carla]')")

import simulators  # noqa: E402
from lts_jax import lts  # noqa: E402
from lts_jax.search import policy  # noqa: E402
from lts_jax.simulator import SceneSimulator  # noqa: E402
from simulators.carla import CarlaPool, CarlaSimulator  # noqa: E402
from simulators.carla.simulator import SCENE_KEYS  # noqa: E402
from simulators.carla.testing import FakeSession, FakeTraffic  # noqa: E402
from simulators.traffic import layout as L  # noqa: E402

H, W = 4, 6


def _sim():
    traffic = FakeTraffic()
    pool = CarlaPool("a:2000,b:2002", lambda h, p: FakeSession(h, p, H, W, delay_s=0.01))
    sim = CarlaSimulator(None, H, W, traffic=traffic, pool=pool)
    calls = []  # scenes per host call
    inner = sim.render_host

    def counting(scenes):
        calls.append(np.asarray(scenes["road_length"]).shape)
        return inner(scenes)

    sim.render_host = counting
    return sim, traffic, calls


def test_vmapped_sample_renders_all_candidates_in_one_host_call():
    sim, traffic, calls = _sim()
    assert isinstance(sim, SceneSimulator) and sim.spec is traffic.spec
    k, num = 3, 4
    keys = jax.random.split(jax.random.key(1), k)
    psi = jnp.stack([traffic.spec.from_natural({"car_presence": p}) for p in (0.2, 0.5, 0.9)])
    out = jax.block_until_ready(jax.jit(jax.vmap(lambda key, p: sim.sample(key, p, num)))(keys, psi))
    assert calls == [(k * num,)]  # one host call with all K x num scenes
    assert out["image"].shape == (k, num, H, W, 3) and out["image"].dtype == jnp.uint8
    assert out["label"].shape == (k, num, H, W) and out["label"].dtype == jnp.uint8
    assert out["instance"].shape == (k, num, H, W) and out["instance"].dtype == jnp.int32
    assert out["counts"].shape == (k, num, len(L.CAR_TYPES)) and out["counts"].dtype == jnp.int32
    # Each output belongs to its own scene (the stand-in session encodes the scene in its outputs).
    scenes = jax.jit(jax.vmap(lambda key, p: traffic.sample_scenes(key, p, num)))(keys, psi)
    np.testing.assert_array_equal(out["image"][..., 0, 0, 0], scenes["road_length"])
    np.testing.assert_array_equal(out["image"][..., 0, 0, 1], scenes["intersection"])
    np.testing.assert_array_equal(out["label"][..., 0, 0], scenes["weather"])
    present = np.asarray(scenes["car_present"])
    types = np.asarray(scenes["car_type"])
    expected = np.stack([[np.bincount(types[i, j][present[i, j]], minlength=5) for j in range(num)] for i in range(k)])
    np.testing.assert_array_equal(out["counts"], expected)
    # Both servers took part.
    assert {i["server"] for i in sim.last_info} == {"a:2000", "b:2002"}


def test_unbatched_sample():
    sim, traffic, calls = _sim()
    out = jax.block_until_ready(jax.jit(lambda key: sim.sample(key, jnp.zeros(traffic.spec.dim), 2))(jax.random.key(0)))
    assert calls == [(2,)]
    assert out["image"].shape == (2, H, W, 3)


def test_missing_scene_field_is_named():
    sim, traffic, _ = _sim()
    real = traffic.sample_scenes
    traffic.sample_scenes = lambda *a: {k: v for k, v in real(*a).items() if k != "sun_dir"}
    with pytest.raises(KeyError, match="sun_dir"):
        jax.eval_shape(lambda key: sim.sample(key, jnp.zeros(traffic.spec.dim), 1), jax.random.key(0))


def test_registry_validates_hosts_and_rebuilds_from_describe():
    with pytest.raises(ValueError, match="'nohost'"):
        simulators.make("carla", hosts="localhost:2000,nohost", height=8, width=8, traffic=FakeTraffic())
    with pytest.raises(ValueError, match="'h:99999'"):
        simulators.make("carla", hosts="h:99999", height=8, width=8, traffic=FakeTraffic())
    sim = simulators.make(
        "carla", hosts="localhost:2000, localhost:2002", height=8, width=16, learn_intersection=True,
        timeout_s=5.0, max_retries=1, warmup_ticks=3,
    )  # fmt: skip
    assert sim.pool.hosts == ["localhost:2000", "localhost:2002"]
    assert sim.config.warmup_ticks == 3 and sim.config.timeout_s == 5.0 and sim.pool.max_retries == 1
    assert sim.fatal_error is None  # nothing connects before .connect() or the first sample
    d = sim.describe()
    assert d["name"] == "carla" and d["hosts"] == "localhost:2000,localhost:2002" and d["warmup_ticks"] == 3
    assert (d["height"], d["width"], d["learn_intersection"]) == (8, 16, True)
    again = simulators.make(**d)
    assert again.describe() == d and not again.spec["intersection"].frozen
    assert again.config == sim.config and again.pool.max_retries == 1


def test_selected_outputs_share_the_pool():
    sim, traffic, calls = _sim()
    counting = sim.select(("image", "counts"))
    assert list(counting.outputs) == ["image", "counts"] and counting.pool is sim.pool
    out = jax.block_until_ready(
        jax.jit(lambda key: counting.sample(key, jnp.zeros(traffic.spec.dim), 3))(jax.random.key(0))
    )
    assert set(out) == {"image", "counts"} and calls == [(3,)]
    assert list(sim.outputs) == ["image", "label", "instance", "counts"]  # the original is unchanged


@pytest.mark.slow
def test_make_step_equals_make_split_step_one_host_call_per_iteration(count_task):
    """One CarlaSimulator object in both step paths: make_step renders through pure_callback inside its one
    jit, make_split_step through the default render_batches (one jitted render of all K x M scenes); each
    iteration is one host call with all K x M scenes, and both give the same metrics and state."""
    sim, traffic, calls = _sim()
    K, M = 2, 3
    pol = policy.GaussianPolicy(traffic.spec, learning_rate=0.1)
    config = lts.LTSConfig(num_candidates=K, dataset_size=M, mtm_epochs=2, retain_mtm=True)
    psi0 = traffic.spec.from_natural({"car_presence": 0.5})
    val = sim.sample_dataset(jax.random.key(10), psi0, 5)
    calls.clear()
    fused = lts.make_step(config, sim, count_task, pol)
    split = lts.make_split_step(config, sim, count_task, pol)
    s_f = s_s = lts.init_state(config, count_task, pol, jax.random.key(0), psi0)
    for i in range(2):
        key = jax.random.fold_in(jax.random.key(1), i)
        s_f, m_f = jax.block_until_ready(fused(s_f, key, val))
        assert calls == [(K * M,)] * (2 * i + 1)
        s_s, m_s = jax.block_until_ready(split(s_s, key, val))
        assert calls == [(K * M,)] * (2 * i + 2)
        assert set(m_f) == set(m_s)
        for k in m_f:
            np.testing.assert_allclose(np.asarray(m_s[k]), np.asarray(m_f[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(s_f), jax.tree_util.tree_leaves(s_s)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_traffic_simulator_scenes_match_the_renderers_contract():
    traffic_mod = pytest.importorskip("simulators.traffic", reason="simulators.traffic not importable")
    if not hasattr(traffic_mod, "TrafficSimulator"):
        pytest.skip("simulators.traffic.TrafficSimulator has not landed yet (issue 3)")
    traffic = traffic_mod.TrafficSimulator(16, 48)
    # Shapes only: tracing is enough (and far cheaper than running the sampler).
    scenes = jax.eval_shape(lambda k: traffic.sample_scenes(k, jnp.zeros(traffic.spec.dim), 2), jax.random.key(0))
    assert set(SCENE_KEYS) <= set(scenes)
    n = L.MAX_BLOCKS
    shapes = {
        "car_present": (2, n),
        "car_type": (2, n),
        "car_lane": (2, n),
        "car_pos": (2, n, 2),
        "car_heading": (2, n),
        "car_color": (2, n, 3),
        "house_present": (2, n, 2),
        "house_height": (2, n, 2),
        "sun_dir": (2, 3),
        "road_length": (2,),
        "intersection": (2,),
        "weather": (2,),
        "camera_height": (2,),
        "camera_pitch": (2,),
    }
    for key, shape in shapes.items():
        assert scenes[key].shape == shape, key
    sim = CarlaSimulator(None, 16, 48, traffic=traffic, pool=CarlaPool("a:1", lambda h, p: FakeSession(h, p, 16, 48)))
    assert sim.spec is traffic.spec
    assert sim.config.min_visible_pixels == traffic.min_visible_pixels
    out = jax.eval_shape(lambda k: sim.sample(k, jnp.zeros(traffic.spec.dim), 3), jax.random.key(0))
    # The output contract of TrafficSimulator.sample (its docstring; tracing the pure-JAX
    # renderer to compare would cost more than the rest of this file).
    expected = {
        "image": jax.ShapeDtypeStruct((3, 16, 48, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((3, 16, 48), jnp.uint8),
        "instance": jax.ShapeDtypeStruct((3, 16, 48), jnp.int32),
        "counts": jax.ShapeDtypeStruct((3, len(L.CAR_TYPES)), jnp.int32),
    }
    assert out == expected
