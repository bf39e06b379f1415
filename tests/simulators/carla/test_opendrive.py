"""OpenDRIVE layouts checked through the real CARLA client (carla.Map builds the road network; no server)."""

import math

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the CARLA Python client is not installed (pip install 'lts_jax[carla]')")

from simulators.carla import convert, opendrive  # noqa: E402
from simulators.traffic import layout as L  # noqa: E402

LENGTHS = range(L.MIN_BLOCKS, L.MAX_BLOCKS + 1)


def _map(n, inter):
    return carla.Map(f"lts_{n}_{inter}", opendrive.layout_xodr(n, inter))


def _road(n, inter, local):
    return 100 * opendrive.layout_index(n, inter) + local


def _walk_straight(m, n, inter):
    """Waypoints of the right-hand lane of the straight road, start to end."""
    start = m.get_waypoint_xodr(_road(n, inter, opendrive.STRAIGHT_ID), -1, 0.0)
    assert start is not None
    return [start] + list(start.next_until_lane_end(0.5))


@pytest.mark.parametrize("inter", range(3), ids=opendrive.INTERSECTION_KINDS)
def test_straight_length_and_frame(inter):
    for n in LENGTHS:
        m = _map(n, inter)
        wps = _walk_straight(m, n, inter)
        xs = np.array([w.transform.location.x for w in wps])
        ys = np.array([w.transform.location.y for w in wps])
        yaws = np.array([w.transform.rotation.yaw for w in wps])
        length = n * L.BLOCK_LENGTH
        assert xs[0] == pytest.approx(0.0, abs=1e-3)
        assert xs[-1] == pytest.approx(length, abs=0.6), (n, inter)
        # Lane 0 of the traffic simulator (right lane, heading +z) is CARLA y > 0 heading yaw 0.
        cx, cy, _ = convert.layout_to_carla((0.0, 0.0), L.CAMERA_X, 0.0, 0.0)
        np.testing.assert_allclose(ys, cy, atol=1e-3)
        np.testing.assert_allclose(yaws, 0.0, atol=1e-3)
        assert all(not w.is_junction for w in wps)
        # The camera (layout z = CAMERA_Z < 0, before the first block) stands in the right
        # lane of the lead-in road, which goes on behind it.
        assert 0 < -L.CAMERA_Z < opendrive.LEAD_IN
        cam = convert.layout_to_carla((0.0, 0.0), L.CAMERA_X, 0.0, L.CAMERA_Z)
        w = m.get_waypoint(carla.Location(*cam), project_to_road=False)
        assert w is not None and w.lane_id == -1 and w.lane_type == carla.LaneType.Driving
        assert w.road_id == _road(n, inter, opendrive.LEAD_IN_ID)
        assert w.s == pytest.approx(opendrive.LEAD_IN + L.CAMERA_Z, abs=0.1)


@pytest.mark.parametrize("inter,legs", [(1, 3), (2, 4)], ids=["T", "X"])
def test_junction_leg_count(inter, legs):
    for n in LENGTHS:
        m = _map(n, inter)
        end = _walk_straight(m, n, inter)[-1]
        nxt = end.next(1.0)
        assert nxt and all(w.is_junction for w in nxt)
        junction = nxt[0].get_junction()
        pairs = junction.get_waypoints(carla.LaneType.Driving)
        assert len(pairs) == legs * (legs - 1)  # one connector per ordered pair of legs
        # Directions in which traffic enters the junction, one per leg.
        entry = {round(a.transform.rotation.yaw / 90.0) % 4 for a, _ in pairs}
        assert len(entry) == legs, (n, sorted(entry))
        centre = junction.bounding_box.location
        assert centre.x == pytest.approx(n * L.BLOCK_LENGTH + opendrive.JUNCTION_HALF, abs=1.0)
        assert centre.y == pytest.approx(0.0, abs=1.0)
        assert sum(w.is_junction for w in m.generate_waypoints(2.0)) > 0


def test_l_is_a_bend_not_a_junction():
    for n in LENGTHS:
        m = _map(n, 0)
        assert not any(w.is_junction for w in m.generate_waypoints(1.0))
        w = _walk_straight(m, n, 0)[-1]
        yaws = []
        for _ in range(int(L.BEND_RADIUS * math.pi / 2 / 0.5) + 20):
            nxt = w.next(0.5)
            assert len(nxt) == 1  # no branching anywhere
            w = nxt[0]
            yaws.append(w.transform.rotation.yaw)
        turn = (yaws[-1] - 0.0 + 180.0) % 360.0 - 180.0
        # L_TURN = "left": towards layout x < 0, i.e. CARLA y < 0, i.e. yaw -90.
        expected = -90.0 if L.L_TURN == "left" else 90.0
        assert turn == pytest.approx(expected, abs=1.0)
        assert w.road_id == _road(n, 0, opendrive.EXIT_ID)


def test_sidewalks_on_both_sides():
    m = _map(10, 1)
    w = m.get_waypoint_xodr(_road(10, 1, opendrive.STRAIGHT_ID), -2, 10.0)
    assert w.lane_type == carla.LaneType.Sidewalk
    assert w.transform.location.y == pytest.approx(L.ROAD_WIDTH / 2 + L.SIDEWALK_WIDTH / 2, abs=1e-3)
    w = m.get_waypoint_xodr(_road(10, 1, opendrive.STRAIGHT_ID), 2, 10.0)
    assert w.lane_type == carla.LaneType.Sidewalk
    assert w.transform.location.y == pytest.approx(-(L.ROAD_WIDTH / 2 + L.SIDEWALK_WIDTH / 2), abs=1e-3)


def test_atlas_places_every_layout_out_of_the_others_view():
    m = carla.Map("lts_atlas", opendrive.atlas_xodr())
    pts = np.array([[w.transform.location.x, w.transform.location.y] for w in m.generate_waypoints(4.0)])
    half_fov = math.radians(convert.FOV_DEG / 2)
    for inter in range(3):
        for n in LENGTHS:
            k = opendrive.layout_index(n, inter)
            ox, oy = opendrive.layout_origin(k)
            start = m.get_waypoint_xodr(100 * k + opendrive.STRAIGHT_ID, -1, 0.0).transform.location
            assert (start.x, start.y) == pytest.approx((ox, oy + L.LANE_WIDTH / 2), abs=1e-3)
            # Points of other layouts seen from this layout's camera: all outside the FOV (+10 degrees margin).
            cam = np.array([ox + L.CAMERA_Z, oy + L.CAMERA_X])
            rel = pts - cam
            others = np.abs(pts[:, 1] - oy) > opendrive.ATLAS_SPACING / 2
            ahead = rel[others, 0] > 0
            angle = np.arctan2(np.abs(rel[others][ahead, 1]), rel[others][ahead, 0])
            assert angle.size == 0 or angle.min() > half_fov + math.radians(10)


def test_generation_parameters():
    p = opendrive.generation_parameters()
    for name, value in opendrive.GENERATION_PARAMETERS.items():
        assert getattr(p, name) == pytest.approx(value), name
