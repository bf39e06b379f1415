"""The traffic scene's rendering parameters in the CARLA backend, without a server: the mapping to camera
attributes (convert.camera_settings, rgb_attributes), the host post-processing (blur, noise) against a scipy
reference, and the scenes of the traffic simulator with the rendering blocks at their defaults (today's cameras)."""

import math

import jax
import numpy as np
import pytest

from simulators.carla import convert
from simulators.carla.testing import make_scene
from simulators.traffic import scene as S


def _scene(**fields):
    scene = make_scene()
    scene.update({k: np.asarray(v, np.float32) for k, v in fields.items()})
    return scene


def test_scenes_without_rendering_fields_keep_todays_cameras():
    settings = convert.camera_settings(make_scene(), 96)
    assert settings == convert.CameraSettings()
    assert convert.rgb_attributes(settings, exposure_default=0.75) == {"fov": f"{convert.FOV_DEG:.6f}"}
    img = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    assert convert.postprocess(img, settings) is img


@pytest.mark.slow
def test_traffic_scenes_at_the_default_rendering_psi_keep_todays_cameras():
    from simulators.traffic import TrafficSimulator

    sim = TrafficSimulator(24, 80, learn_rendering=True)
    scenes = sim.sample_scenes(jax.random.key(0), sim.preset("val"), 3)
    for i in range(3):
        scene = {k: np.asarray(v)[i] for k, v in scenes.items()}
        assert convert.camera_settings(scene, 96) == convert.CameraSettings()


def test_camera_attributes_follow_the_scene():
    warm = 2.0 ** (S.COLOR_BALANCE_UNIT * np.array([2.0, 0.0, -2.0]))
    s = convert.camera_settings(_scene(camera_fov=65.0, exposure=1.0, color_gains=warm, blur_sigma=0.8,
                                       noise_sigma=3.0), 192)  # fmt: skip
    assert s.fov_deg == 65.0 and s.exposure_ev == 1.0 and s.tint is None
    # log2(r / b) = 0.4 -> 6500 K * 2^(0.4 / 0.8): warmer than the light, Unreal's "yellowish"
    assert s.temp_k == pytest.approx(6500.0 * 2**0.5, abs=10.0)
    assert s.blur_sigma_px == pytest.approx(1.6)  # 0.8 px at 96 rows, at 192 rows
    assert s.noise_sigma == 3.0
    attrs = convert.rgb_attributes(s, exposure_default=0.75)  # CARLA's Linux default
    assert attrs == {"fov": "65.000000", "exposure_compensation": "1.7500", "temp": f"{s.temp_k:.1f}"}
    cool = convert.camera_settings(_scene(color_gains=1.0 / warm), 96)
    assert cool.temp_k < convert.WHITE_TEMP_K < s.temp_k
    green = convert.camera_settings(_scene(color_gains=[1.0, 2.0**0.3, 1.0]), 96)
    magenta = convert.camera_settings(_scene(color_gains=[1.0, 2.0**-0.15, 1.0]), 96)
    assert (green.tint, magenta.tint, green.temp_k) == (-1.0, 0.5, None)
    # settings are rounded: scenes of one candidate share one set of cameras
    a = convert.camera_settings(_scene(camera_fov=65.0001, exposure=0.5), 96)
    b = convert.camera_settings(_scene(camera_fov=64.9999, exposure=0.5004), 96)
    assert a.sensor_key() == b.sensor_key()
    # the projection of the delivered image follows the field of view
    k = convert.camera_intrinsics(96, 320, 65.0)
    assert k[0, 0] == pytest.approx(160.0 / math.tan(math.radians(32.5)))
    assert k[0, 0] > convert.camera_intrinsics(96, 320)[0, 0]


def test_postprocess_blur_and_noise():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    s = convert.CameraSettings(blur_sigma_px=1.3)
    out = convert.postprocess(img, s)
    lin = (img / 255.0) ** 2  # the gamma-2 camera model of the pure-JAX renderer
    radius = math.ceil(3 * 1.3)
    ref = ndimage.gaussian_filter(lin, (1.3, 1.3, 0), mode="nearest", truncate=radius / 1.3)
    expect = np.clip(np.round(np.sqrt(ref) * 255.0), 0, 255)
    assert np.abs(out.astype(int) - expect).max() <= 1
    mid = np.full((200, 200, 3), 128, np.uint8)
    noisy = convert.postprocess(mid, convert.CameraSettings(noise_sigma=4.0), seed=3)
    assert np.std(noisy.astype(float) - 128) == pytest.approx(4.0, rel=0.05)
    np.testing.assert_array_equal(noisy, convert.postprocess(mid, convert.CameraSettings(noise_sigma=4.0), seed=3))
    assert not np.array_equal(noisy, convert.postprocess(mid, convert.CameraSettings(noise_sigma=4.0), seed=4))


def test_carla_simulator_with_rendering_parameters():
    pytest.importorskip("carla", reason="the CARLA Python client is not installed (pip install 'lts_jax[carla]')")
    from simulators.carla import CarlaPool, CarlaSimulator
    from simulators.carla.testing import FakeSession

    seen = []

    class Recording(FakeSession):
        def render(self, scene):
            seen.append(sorted(scene))
            return super().render(scene)

    pool = CarlaPool("a:2000", lambda h, p: Recording(h, p, 8, 8))
    sim = CarlaSimulator(None, 8, 8, learn_rendering=True, pool=pool)
    assert sim.describe()["learn_rendering"] is True and "field_of_view" in sim.spec.block_names
    out = jax.jit(lambda k: sim.sample(k, sim.spec.preset("val"), 2))(jax.random.key(0))
    assert out["image"].shape == (2, 8, 8, 3)
    # the bridge hands the sessions the rendering fields and the noise's seed
    assert {"camera_fov", "exposure", "color_gains", "blur_sigma", "noise_sigma", "seed"} <= set(seen[0])
