"""Label conversion, instance decoding, visible counts and scene placement, on synthetic arrays."""

import math

import numpy as np
import pytest

from simulators.carla import convert, labels, opendrive
from simulators.carla.testing import make_scene
from simulators.traffic import layout as L


def test_tag_numbers_match_the_clients_city_object_label():
    carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed")
    enum = carla.CityObjectLabel
    assert set(labels.CITY_OBJECT_LABEL_NAMES) == set(labels.CARLA_TAGS)
    for name, tag in labels.CARLA_TAGS.items():
        assert int(getattr(enum, labels.CITY_OBJECT_LABEL_NAMES[name])) == tag, name
    # Every real class of the client's enum (not the "Any" wildcard) is covered.
    covered = set(labels.CARLA_TAGS.values())
    assert {int(v) for k, v in enum.values.items() if int(v) != 255} == covered


def test_lookup_table():
    lut = labels.TAG_TO_CITYSCAPES
    t, c = labels.CARLA_TAGS, labels.CITYSCAPES
    expected = {
        t["road"]: c["road"], t["road_line"]: c["road"], t["sidewalk"]: c["sidewalk"],
        t["building"]: c["building"], t["vegetation"]: c["vegetation"], t["terrain"]: c["terrain"],
        t["sky"]: c["sky"], t["car"]: c["car"], t["truck"]: c["car"], t["bus"]: c["car"],
    }  # fmt: skip
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for tag in range(256):
        assert lut[tag] == expected.get(tag, 0), tag
    assert (c["road"], c["sidewalk"], c["building"], c["vegetation"], c["terrain"], c["sky"], c["car"]) == (
        7,
        8,
        11,
        21,
        22,
        23,
        26,
    )
    assert sorted(labels.VEHICLE_TAGS) == [14, 15, 16]


def _bgra(tag, ident):
    """Synthetic CARLA instance image: R = tag, G = id low byte, B = id high byte."""
    tag, ident = np.asarray(tag), np.asarray(ident)
    out = np.zeros((*tag.shape, 4), np.uint8)
    out[..., 2] = tag
    out[..., 1] = ident & 0xFF
    out[..., 0] = ident >> 8
    out[..., 3] = 255
    return out


def test_decoding_channels():
    tag = np.array([[1, 14], [11, 15]])
    ident = np.array([[0, 300], [7, 65535]])
    raw = _bgra(tag, ident)
    np.testing.assert_array_equal(labels.semantic_tags(raw), tag)
    np.testing.assert_array_equal(labels.instance_ids(raw), ident)
    np.testing.assert_array_equal(labels.tags_to_cityscapes(labels.semantic_tags(raw)), [[7, 26], [23, 26]])
    rgb = labels.rgb_from_bgra(np.array([[[1, 2, 3, 255]]], np.uint8))
    np.testing.assert_array_equal(rgb, [[[3, 2, 1]]])
    with pytest.raises(ValueError, match="BGRA"):
        labels.semantic_tags(np.zeros((2, 2, 3), np.uint8))


def test_instance_map_and_counts():
    h, w = 8, 12
    tag = np.full((h, w), labels.CARLA_TAGS["road"])
    ident = np.zeros((h, w), np.int64)
    # Car in block 2 (actor 70001 -> 16-bit id 70001 & 0xFFFF): 12 pixels.
    tag[0:3, 0:4], ident[0:3, 0:4] = 14, 70001 & 0xFFFF
    # Car in block 5 (actor 9, a truck-tagged van): 9 pixels, under the threshold of 10.
    tag[4:7, 4:7], ident[4:7, 4:7] = 15, 9
    # A building whose Unreal id collides with a car's: not a vehicle tag, so never a car.
    tag[7, :], ident[7, :] = 3, 9
    # Vehicle-tagged pixels of an object that is none of ours.
    tag[0, 10:12], ident[0, 10:12] = 14, 555
    raw = _bgra(tag, ident)
    inst = labels.instance_map(labels.instance_ids(raw), labels.semantic_tags(raw), {70001: 2, 9: 5})
    assert inst.dtype == np.int32
    assert (inst == 3).sum() == 12 and (inst == 6).sum() == 9
    assert (inst[7] == 0).all() and (inst[0, 10:12] == 0).all()
    car_type = np.zeros(L.MAX_BLOCKS, np.int32)
    car_type[2], car_type[5] = 1, 3
    rendered = np.zeros(L.MAX_BLOCKS, bool)
    rendered[[2, 5]] = True
    counts = labels.visible_counts(inst, car_type, rendered, min_pixels=10)
    np.testing.assert_array_equal(counts, [0, 1, 0, 0, 0])
    counts = labels.visible_counts(inst, car_type, rendered, min_pixels=9)
    np.testing.assert_array_equal(counts, [0, 1, 0, 1, 0])
    rendered[5] = False  # a car that failed to spawn never counts
    np.testing.assert_array_equal(labels.visible_counts(inst, car_type, rendered, min_pixels=1), [0, 1, 0, 0, 0])
    assert labels.visible_counts(inst, car_type, rendered, 10).dtype == np.int32


def test_visibility_threshold_matches_the_pure_jax_renderer():
    assert labels.min_visible_pixels(96, 320) == L.MIN_VISIBLE_PIXELS
    assert labels.min_visible_pixels(192, 640) == 4 * L.MIN_VISIBLE_PIXELS
    traffic = pytest.importorskip("simulators.traffic", reason="simulators.traffic not importable")
    if not hasattr(traffic, "TrafficSimulator"):
        pytest.skip("simulators.traffic.TrafficSimulator has not landed yet (issue 3)")
    for h, w in [(96, 320), (64, 200), (192, 640)]:
        assert labels.min_visible_pixels(h, w) == traffic.TrafficSimulator(h, w).min_visible_pixels


def test_assign_segments_by_boxes_handles_occlusion():
    ids = np.zeros((20, 30), np.int64)
    mask = np.zeros((20, 30), bool)
    # Near car: big box [2, 2, 20, 18], segment id 5 fills it.
    ids[2:19, 2:21], mask[2:19, 2:21] = 5, True
    # Far car: small box [15, 6, 25, 12]; its visible part is right of the near car's silhouette.
    ids[6:13, 21:26], mask[6:13, 21:26] = 8, True
    boxes = np.array([[2, 2, 20, 18], [15, 6, 25, 12], [0, 0, 1, 1]], float)
    depths = np.array([5.0, 20.0, np.inf])  # the third car is behind the camera
    got = labels.assign_segments_by_boxes(ids, mask, boxes, depths)
    assert got == {5: 0, 8: 1}
    # The background (a segment mostly outside every box) is matched to nothing.
    bg = np.ones_like(mask)
    assert labels.assign_segments_by_boxes(np.zeros_like(ids), bg, boxes, depths, min_share=0.9) == {}
    # A far segment wholly inside both boxes goes to the smaller (farther) box.
    ids2 = np.zeros_like(ids)
    m2 = np.zeros_like(mask)
    ids2[7:10, 16:19], m2[7:10, 16:19] = 9, True
    assert labels.assign_segments_by_boxes(ids2, m2, boxes, depths) == {9: 1}


def test_boxes_from_corners():
    uv = np.array([[-5.0, 3.0], [10.2, 8.7], [4.0, 30.0]])
    box, d = labels.boxes_from_corners(uv, np.array([3.0, 4.0, 5.0]), height=20, width=16)
    np.testing.assert_allclose(box, [0, 3, 11, 19])
    assert d == 3.0
    _, d = labels.boxes_from_corners(uv, np.array([3.0, -1.0, 5.0]), 20, 16)
    assert d == math.inf


# ----- convert ----------------------------------------------------------------------
def test_camera_matches_kitti():
    assert convert.FOV_DEG == pytest.approx(81.4, abs=0.1)
    for h, w in [(96, 320), (192, 640), (375, 1242), (50, 160)]:
        k = convert.camera_intrinsics(h, w)
        assert k[0, 0] == pytest.approx(w * L.KITTI_FX_OVER_WIDTH)
        assert k[1, 1] == k[0, 0] and k[0, 2] == w / 2
        # Rendering crop_rows extra rows on top and cropping them puts the principal
        # point within half a pixel of KITTI's (the pure-JAX renderer's) row.
        assert abs(k[1, 2] - L.KITTI_CY_OVER_HEIGHT * h) <= 0.5, (h, k[1, 2])
    assert convert.crop_rows(192) == 15 and convert.camera_intrinsics(192, 640)[1, 2] == pytest.approx(88.5)


def test_frames_and_projection():
    scene = make_scene(road_length=12, intersection=2, camera_pitch=0.0)
    origin = convert.scene_origin(scene)
    assert origin == opendrive.layout_origin(opendrive.layout_index(12, 2))
    cam = convert.camera_placement(scene)
    assert (cam.x, cam.y, cam.z) == pytest.approx((origin[0] + L.CAMERA_Z, origin[1] + L.CAMERA_X, L.CAMERA_HEIGHT))
    # A point straight ahead at camera height projects to the image centre; one to the
    # right (layout x > 0) lands right of centre, one below the camera lands below it.
    pts = np.array(
        [
            convert.layout_to_carla(origin, L.CAMERA_X, L.CAMERA_HEIGHT, 30.0),
            convert.layout_to_carla(origin, L.CAMERA_X + 2.0, L.CAMERA_HEIGHT, 30.0),
            convert.layout_to_carla(origin, L.CAMERA_X, 0.0, 30.0),
        ]
    )
    uv, depth = convert.project_points(pts, cam, 96, 320)
    cy = convert.camera_intrinsics(96, 320)[1, 2]
    np.testing.assert_allclose(uv[0], [160, cy], atol=1e-6)
    d = 30.0 - L.CAMERA_Z  # the points' distance ahead of the camera
    np.testing.assert_allclose(depth, d)
    f = 320 * L.KITTI_FX_OVER_WIDTH
    np.testing.assert_allclose(uv[1], [160 + f * 2.0 / d, cy], atol=1e-6)
    np.testing.assert_allclose(uv[2], [160, cy + f * L.CAMERA_HEIGHT / d], atol=1e-6)
    # Pitching the camera down (positive camera_pitch) moves a point on the axis up in the image.
    down = convert.camera_placement(make_scene(road_length=12, intersection=2, camera_pitch=0.1))
    assert down.pitch == pytest.approx(-math.degrees(0.1))
    uv_down, _ = convert.project_points(pts[:1], down, 96, 320)
    assert uv_down[0, 1] < cy


def test_car_and_house_specs():
    scene = make_scene(
        road_length=9, intersection=0, cars={0: (2, 0), 3: (4, 1), 11: (1, 0)}, houses={(1, 0): 9.0, (2, 1): 4.0}
    )
    origin = convert.scene_origin(scene)
    cars = convert.car_specs(scene)
    assert [c.block for c in cars] == [0, 3]  # block 11 lies beyond the 9-block road
    assert cars[0].car_type == 2 and cars[1].car_type == 4
    assert cars[0].placement.yaw == 0.0 and cars[1].placement.yaw == pytest.approx(180.0)
    assert (cars[1].placement.x, cars[1].placement.y) == pytest.approx(
        (origin[0] + 3.5 * L.BLOCK_LENGTH, origin[1] - L.LANE_WIDTH / 2)
    )
    assert all(0 <= v <= 255 for c in cars for v in c.color)
    houses = convert.house_specs(scene)
    a = L.BLOCK_LENGTH - L.HOUSE_GAP  # the house's length along the road, as in the pure-JAX renderer
    assert [(h.block, h.side, len(h.tiles)) for h in houses] == [(1, 0, 2), (2, 1, 1)]
    assert houses[0].scale == pytest.approx(a)
    # The top is at the eaves plus half the gable roof; fronts at layout.HOUSE_X0 from the centre line.
    assert max(t.z for t in houses[0].tiles) + a / 2 == pytest.approx(9.0 + L.HOUSE_ROOF_HEIGHT / 2)
    assert houses[0].tiles[0].y - origin[1] == pytest.approx(-(L.HOUSE_X0 + a / 2))
    assert houses[1].tiles[0].y - origin[1] == pytest.approx(L.HOUSE_X0 + a / 2)
    assert houses[0].tiles[0].x - origin[0] == pytest.approx(1.5 * L.BLOCK_LENGTH)
    # The row across the end of the road, when the scene has it.
    scene["end_present"] = np.zeros(L.END_HOUSE_COUNT, bool)
    scene["end_present"][[0, 6]] = True
    scene["end_height"] = np.full(L.END_HOUSE_COUNT, 8.0, np.float32)
    end = [h for h in convert.house_specs(scene) if h.side == -1]
    assert [h.block for h in end] == [0, 6]
    front = 9 * L.BLOCK_LENGTH + L.END_ROW_Z[0]
    a_end = L.END_HOUSE_WIDTH - L.HOUSE_GAP
    assert end[1].tiles[0].x - origin[0] == pytest.approx(front + a_end / 2)
    assert end[1].tiles[0].y - origin[1] == pytest.approx(0.0)
    assert end[0].tiles[0].y - origin[1] == pytest.approx(-6 * L.END_HOUSE_WIDTH)
    assert end[0].scale == pytest.approx(a_end)


def test_weathers_and_sun():
    assert tuple(convert.WEATHERS) == L.WEATHERS
    assert tuple(convert.CAR_BLUEPRINTS) == L.CAR_TYPES
    alt, az = convert.sun_angles([0.0, 1.0, 0.0])
    assert alt == pytest.approx(90.0)
    alt, az = convert.sun_angles([1.0, 1.0, 0.0])  # to the right, 45 degrees up
    assert (alt, az) == pytest.approx((45.0, 90.0))
    with pytest.raises(ValueError, match="weather"):
        convert.weather_fields(make_scene(weather=7))
    carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed")
    for w in range(len(L.WEATHERS)):
        fields = convert.weather_fields(make_scene(weather=w))
        params = convert.weather_parameters(make_scene(weather=w))
        assert isinstance(params, carla.WeatherParameters)
        for name, value in fields.items():
            assert getattr(params, name) == pytest.approx(value, abs=1e-4), (w, name)
    t = convert.camera_placement(make_scene()).to_carla()
    assert isinstance(t, carla.Transform)
