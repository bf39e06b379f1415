"""The visibility rule (simulators/traffic/visibility.py): NumPy and JAX agree, each threshold acts alone."""

import jax.numpy as jnp
import numpy as np
import pytest

from simulators.traffic import layout as L
from simulators.traffic import render
from simulators.traffic import visibility as V

H, W = 96, 320
FOCAL, CX, CY = L.KITTI_FX_OVER_WIDTH * W, 0.5 * W, L.KITTI_CY_OVER_HEIGHT * H


def test_tables_agree_with_the_renderer():
    cols = [render._F[k] for k in ("half_length", "half_width", "roof")]
    np.testing.assert_allclose(V.CAR_BOXES, render.CAR_SHAPES[:, cols])
    np.testing.assert_allclose(V.FOG_DISTANCE, render.WEATHER_TABLE[:, render._W["fog_d"]])


def _cars(z, x=L.CAMERA_X, car_type=0, heading=0.0):
    z = np.atleast_1d(np.asarray(z, np.float32))
    n = z.shape[0]
    pos = np.stack([np.full(n, x, np.float32), z], -1)
    return np.full(n, car_type), pos, np.full(n, heading, np.float32)


def test_projected_box_shrinks_with_distance_and_matches_jax():
    t, pos, head = _cars([5.0, 15.0, 40.0, 90.0])
    area = V.projected_box_area(np, t, pos, head, L.CAMERA_HEIGHT, CY, FOCAL, CX, H, W)
    assert np.all(np.diff(area) < 0)
    # a car straight ahead, far: its box is the rear face, width 2 hw and height roof at the rear distance
    d = 90.0 + V.CAR_BOXES[0, 0] - L.CAMERA_Z - 2 * V.CAR_BOXES[0, 0]
    expect = (FOCAL * 2 * V.CAR_BOXES[0, 1] / d) * (FOCAL * V.CAR_BOXES[0, 2] / d)
    assert area[-1] == pytest.approx(expect, rel=0.15)
    got = V.projected_box_area(jnp, jnp.asarray(t), jnp.asarray(pos), jnp.asarray(head), L.CAMERA_HEIGHT, CY,
                               FOCAL, CX, H, W)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), area, rtol=1e-5)
    # clipped to the image: a car beside the camera covers at most the image
    t, pos, head = _cars([-4.0], x=-1.7)
    assert V.projected_box_area(np, t, pos, head, L.CAMERA_HEIGHT, CY, FOCAL, CX, H, W)[0] <= H * W


def test_each_threshold_acts_alone():
    rule = V.VisibilityRule(min_pixels=100, min_share=0.4, min_transmittance=0.3)
    pixels = np.array([150.0, 50.0, 150.0, 150.0])
    area = np.array([200.0, 60.0, 1000.0, 200.0])
    dist = np.array([20.0, 20.0, 20.0, 60.0])
    got = V.counted(np, rule, pixels, area, dist, np.float32(30.0), H, W)  # fog: e^-2 = 0.14 at 60 m
    np.testing.assert_array_equal(got, [True, False, False, False])
    clear = V.counted(np, rule, pixels, area, dist, np.float32(900.0), H, W)
    np.testing.assert_array_equal(clear, [True, False, False, True])
    # the floor scales with the image area
    assert rule.pixel_floor(192, 640) == 400 and rule.pixel_floor(24, 80) == 6


def test_rules_from_options():
    assert V.make_rule(None, None, H, W) == V.VisibilityRule()
    assert V.make_rule({"min_share": 0.5}, None, H, W).min_share == 0.5
    old = V.make_rule(None, 10, H, W)  # an older run's results.json
    assert (old.pixel_floor(H, W), old.min_share, old.min_transmittance) == (10, 0.0, 0.0)
    with pytest.raises(ValueError, match="unknown visibility settings"):
        V.make_rule({"pixels": 3}, None, H, W)
    with pytest.raises(ValueError, match="not both"):
        V.make_rule({"min_share": 0.5}, 10, H, W)
    with pytest.raises(ValueError, match="min_share"):
        V.VisibilityRule(min_share=1.5)
