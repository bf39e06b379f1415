"""OpenDRIVE road layouts for the traffic scene model (pure Python, no server).

A layout is a straight road of ``num_blocks`` blocks ending in an L bend, a T or
an X junction (``simulators/traffic/layout.py``). CARLA's standalone OpenDRIVE
mode (``client.generate_opendrive_world``) builds the road meshes from it, so the
road really has the sampled length and intersection type.

Frames. OpenDRIVE's inertial frame is right-handed (x east, y north, z up); CARLA
reads it into Unreal's left-handed frame by negating y (checked in the tests:
the right-hand lane -1 of a road along +x lands at CARLA y > 0). A layout is
written so that, in CARLA coordinates relative to its origin, the straight road
runs along +x from x = 0 to the intersection at x = num_blocks * BLOCK_LENGTH,
with the right-hand lane (traffic simulator lane 0) at y > 0. See
``convert.py`` for the whole layout -> CARLA mapping.

Roads of one layout (road id = 100 * layout index + local id):

- 0 ``lead_in``: LEAD_IN metres ending at x = 0, so the camera (which stands at
  layout z = CAMERA_Z < 0) is on the road;
- 1 ``straight``: the N blocks, x in [0, N * BLOCK_LENGTH];
- L: 2 ``bend`` (a 90 degree arc of L.BEND_RADIUS towards L.L_TURN, NOT a junction) and 3 ``exit``
  (SIDE_ROAD_LENGTH, straight);
- T, X: a junction occupying the square x in [L, L + ROAD_WIDTH],
  |y| <= ROAD_WIDTH / 2, legs 4 ``left``, 5 ``right`` (SIDE_ROAD_LENGTH each) and,
  for X only, 3 ``ahead``; connecting roads 10.. inside the junction, one per
  ordered pair of legs (straight through, or a quarter circle of radius
  ROAD_WIDTH / 2 around a corner of the square).

Every ordinary road has a driving lane each way (LANE_WIDTH) and a sidewalk lane
each side (SIDEWALK_WIDTH); connecting roads carry one driving lane.

All 33 layouts (11 lengths x 3 intersection types) fit in ONE map, the *atlas*:
layout k sits at CARLA y = (k - 16) * ATLAS_SPACING. A server loads the atlas once
and every scene is rendered at its layout's origin, so no scene waits for a map
reload. ATLAS_SPACING keeps every other layout outside the camera's field of
view (see :data:`ATLAS_SPACING`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from simulators.traffic import layout as L

LEAD_IN = 20.0  # metres of road behind the first block (the camera stands at z = CAMERA_Z)
JUNCTION_HALF = L.ROAD_WIDTH / 2  # half side of the junction square; a turn is a quarter circle of this radius
# Layouts are ATLAS_SPACING apart sideways. The farthest point of a layout ahead of
# its camera is ~ LEAD_IN + 18 * 6 + 7 + 40 < 180 m, the widest ~ 70 m to the side
# (side road, sidewalk, houses); a neighbour is then >= 330 m aside and <= 180 m
# ahead, i.e. >= 61 degrees off the optical axis, outside the 81 degree (+-40.7) FOV.
ATLAS_SPACING = 400.0
INTERSECTION_KINDS = L.INTERSECTIONS  # ("L", "T", "X")
NUM_LAYOUTS = L.NUM_LENGTHS * len(INTERSECTION_KINDS)

# Local road ids (see the module docstring).
LEAD_IN_ID, STRAIGHT_ID, BEND_ID, AHEAD_ID, LEFT_ID, RIGHT_ID, EXIT_ID = 0, 1, 2, 3, 4, 5, 3
JUNCTION_LOCAL_ID = 99
FIRST_CONNECTOR_ID = 10


def layout_index(num_blocks: int, intersection: int) -> int:
    """Index of a layout in the atlas: intersection-major, then length."""
    if not L.MIN_BLOCKS <= num_blocks <= L.MAX_BLOCKS:
        raise ValueError(f"num_blocks must be in [{L.MIN_BLOCKS}, {L.MAX_BLOCKS}], got {num_blocks}")
    if not 0 <= intersection < len(INTERSECTION_KINDS):
        raise ValueError(
            f"intersection must be in [0, {len(INTERSECTION_KINDS) - 1}] {INTERSECTION_KINDS}, got {intersection}"
        )
    return intersection * L.NUM_LENGTHS + (num_blocks - L.MIN_BLOCKS)


def layout_origin(index: int) -> tuple[float, float]:
    """CARLA (x, y) of a layout's origin in the atlas (layout x = z = 0)."""
    return 0.0, (index - NUM_LAYOUTS // 2) * ATLAS_SPACING


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """One planView record in OpenDRIVE coordinates (curvature 0 = line)."""

    x: float
    y: float
    hdg: float
    length: float
    curvature: float = 0.0

    def end(self) -> tuple[float, float, float]:
        """End point and heading."""
        if self.curvature == 0.0:
            return (
                self.x + self.length * math.cos(self.hdg),
                self.y + self.length * math.sin(self.hdg),
                self.hdg,
            )
        r = 1.0 / self.curvature
        h1 = self.hdg + self.length * self.curvature
        return (self.x + r * (math.sin(h1) - math.sin(self.hdg)), self.y - r * (math.cos(h1) - math.cos(self.hdg)), h1)


@dataclasses.dataclass
class _Road:
    id: int
    name: str
    geometry: _Geometry
    junction: int = -1
    # (element_type, element_id, contact_point or None)
    predecessor: tuple[str, int, str | None] | None = None
    successor: tuple[str, int, str | None] | None = None
    connecting: bool = False
    # lane id -> (predecessor lane, successor lane) for lanes linked road to road
    lane_links: dict[int, tuple[int | None, int | None]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Connection:
    id: int
    incoming: int
    connecting: int
    from_lane: int


def _fmt(v: float) -> str:
    return f"{v:.6f}"


def _lane_xml(lane_id: int, kind: str, width: float, links: tuple[int | None, int | None] | None) -> str:
    link = ""
    if links is not None:
        pred, succ = links
        link = (f'<predecessor id="{pred}"/>' if pred is not None else "") + (
            f'<successor id="{succ}"/>' if succ is not None else ""
        )
    mark = "solid" if kind == "sidewalk" else "none"
    return (
        f'<lane id="{lane_id}" type="{kind}" level="false"><link>{link}</link>'
        f'<width sOffset="0" a="{_fmt(width)}" b="0" c="0" d="0"/>'
        f'<roadMark sOffset="0" type="{mark}" weight="standard" color="standard" width="0.15"/></lane>'
    )


def _link_xml(tag: str, link: tuple[str, int, str | None] | None) -> str:
    if link is None:
        return ""
    kind, eid, contact = link
    cp = f' contactPoint="{contact}"' if contact else ""
    return f'<{tag} elementType="{kind}" elementId="{eid}"{cp}/>'


def _road_xml(road: _Road) -> str:
    g = road.geometry
    shape = "<line/>" if g.curvature == 0.0 else f'<arc curvature="{g.curvature:.9f}"/>'
    links = _link_xml("predecessor", road.predecessor) + _link_xml("successor", road.successor)
    if road.connecting:
        # One driving lane, on the right of the reference line, which runs
        # between the centre lines of the legs: it continues the incoming leg's
        # right-hand (inbound) lane into the outgoing leg's right-hand lane.
        left = ""
        right = _lane_xml(-1, "driving", L.LANE_WIDTH, road.lane_links.get(-1))
        centre_mark = "none"
    else:
        left = _lane_xml(1, "driving", L.LANE_WIDTH, road.lane_links.get(1)) + _lane_xml(
            2, "sidewalk", L.SIDEWALK_WIDTH, road.lane_links.get(2)
        )
        right = _lane_xml(-1, "driving", L.LANE_WIDTH, road.lane_links.get(-1)) + _lane_xml(
            -2, "sidewalk", L.SIDEWALK_WIDTH, road.lane_links.get(-2)
        )
        centre_mark = "broken"
    left_xml = f"<left>{left}</left>" if left else ""
    return (
        f'<road name="{road.name}" length="{_fmt(g.length)}" id="{road.id}" junction="{road.junction}">'
        f"<link>{links}</link>"
        f'<planView><geometry s="0" x="{_fmt(g.x)}" y="{_fmt(g.y)}" hdg="{g.hdg:.9f}" length="{_fmt(g.length)}">'
        f"{shape}</geometry></planView>"
        '<elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile><lateralProfile/>'
        f'<lanes><laneSection s="0">{left_xml}'
        f'<center><lane id="0" type="none" level="false"><roadMark sOffset="0" type="{centre_mark}" '
        'weight="standard" color="standard" width="0.15"/></lane></center>'
        f"<right>{right}</right></laneSection></lanes></road>"
    )


_ALL_LANES = (-2, -1, 1, 2)


def _layout_roads(num_blocks: int, intersection: int, index: int, x0: float, y0: float):
    """Roads and junctions of one layout, in OpenDRIVE coordinates (y0 = OpenDRIVE y of the origin)."""
    base = 100 * index
    length = num_blocks * L.BLOCK_LENGTH
    kind = INTERSECTION_KINDS[intersection]
    rid = lambda local: base + local
    same = {lane: (lane, lane) for lane in _ALL_LANES}

    roads = [
        _Road(
            rid(LEAD_IN_ID),
            "lead_in",
            _Geometry(x0 - LEAD_IN, y0, 0.0, LEAD_IN),
            successor=("road", rid(STRAIGHT_ID), "start"),
            lane_links=same,
        ),
        _Road(
            rid(STRAIGHT_ID),
            "straight",
            _Geometry(x0, y0, 0.0, length),
            predecessor=("road", rid(LEAD_IN_ID), "end"),
            lane_links=same,
        ),
    ]
    junctions = []
    end_x = x0 + length
    if kind == "L":
        # OpenDRIVE turns left with positive curvature; "left" seen from a camera
        # looking down +x is +y in OpenDRIVE (-y in CARLA, layout x < 0).
        # L.BEND_RADIUS: centre-line radius; its inner sidewalk edge is 2 m from the arc centre.
        sign = 1.0 if L.L_TURN == "left" else -1.0
        bend = _Geometry(end_x, y0, 0.0, 0.5 * math.pi * L.BEND_RADIUS, sign / L.BEND_RADIUS)
        bx, by, bh = bend.end()
        roads[1].successor = ("road", rid(BEND_ID), "start")
        roads += [
            _Road(
                rid(BEND_ID),
                "bend",
                bend,
                predecessor=("road", rid(STRAIGHT_ID), "end"),
                successor=("road", rid(EXIT_ID), "start"),
                lane_links=same,
            ),
            _Road(
                rid(EXIT_ID),
                "exit",
                _Geometry(bx, by, bh, L.SIDE_ROAD_LENGTH),
                predecessor=("road", rid(BEND_ID), "end"),
                lane_links=same,
            ),
        ]
        return roads, junctions

    jid = base + JUNCTION_LOCAL_ID
    h = JUNCTION_HALF
    roads[1].successor = ("junction", jid, None)
    # Legs: (local id, border point, heading pointing AWAY from the junction).
    legs = {
        STRAIGHT_ID: ((end_x, y0), math.pi),  # the camera's road; its reference line points INTO the junction
        LEFT_ID: ((end_x + h, y0 + h), 0.5 * math.pi),
        RIGHT_ID: ((end_x + h, y0 - h), -0.5 * math.pi),
    }
    if kind == "X":
        legs[AHEAD_ID] = ((end_x + 2 * h, y0), 0.0)
    names = {LEFT_ID: "left", RIGHT_ID: "right", AHEAD_ID: "ahead"}
    for local, ((px, py), away) in legs.items():
        if local == STRAIGHT_ID:
            continue
        roads.append(
            _Road(
                rid(local),
                names[local],
                _Geometry(px, py, away, L.SIDE_ROAD_LENGTH),
                predecessor=("junction", jid, None),
            )
        )

    def inbound_lane(local):  # lane that drives INTO the junction on this leg
        return -1 if local == STRAIGHT_ID else 1

    def outbound_lane(local):
        return 1 if local == STRAIGHT_ID else -1

    def contact(local):  # which end of the leg road touches the junction
        return "end" if local == STRAIGHT_ID else "start"

    connections = []
    next_id = FIRST_CONNECTOR_ID
    for a, ((ax, ay), a_away) in legs.items():
        for b, ((bx, by), b_away) in legs.items():
            if a == b:
                continue
            heading_in = a_away + math.pi
            turn = math.remainder(b_away - heading_in, 2 * math.pi)
            if abs(turn) < 1e-6:
                geom = _Geometry(ax, ay, heading_in, 2 * h)
            else:
                geom = _Geometry(ax, ay, heading_in, 0.5 * math.pi * h, math.copysign(1.0 / h, turn))
            ex, ey, _ = geom.end()
            assert abs(ex - bx) < 1e-6 and abs(ey - by) < 1e-6, (a, b, ex, ey, bx, by)
            cid = rid(next_id)
            next_id += 1
            roads.append(
                _Road(
                    cid,
                    f"connector_{names.get(a, 'straight')}_{names.get(b, 'straight')}",
                    geom,
                    junction=jid,
                    predecessor=("road", rid(a), contact(a)),
                    successor=("road", rid(b), contact(b)),
                    connecting=True,
                    lane_links={-1: (inbound_lane(a), outbound_lane(b))},
                )
            )
            connections.append(_Connection(len(connections), rid(a), cid, inbound_lane(a)))
    junctions.append((jid, f"{kind}_{num_blocks}", connections))
    return roads, junctions


def _junction_xml(jid: int, name: str, connections: Sequence[_Connection]) -> str:
    body = "".join(
        f'<connection id="{c.id}" incomingRoad="{c.incoming}" connectingRoad="{c.connecting}" contactPoint="start">'
        f'<laneLink from="{c.from_lane}" to="-1"/></connection>'
        for c in connections
    )
    return f'<junction id="{jid}" name="{name}">{body}</junction>'


def _document(parts: list[tuple[int, int, int, float, float]], name: str) -> str:
    roads_xml, junctions_xml = [], []
    xs, ys = [], []
    for num_blocks, intersection, index, x0, y0 in parts:
        roads, junctions = _layout_roads(num_blocks, intersection, index, x0, y0)
        for r in roads:
            roads_xml.append(_road_xml(r))
            xs += [r.geometry.x, r.geometry.end()[0]]
            ys += [r.geometry.y, r.geometry.end()[1]]
        junctions_xml += [_junction_xml(*j) for j in junctions]
    margin = 100.0
    # A plain transverse-Mercator reference silences the client's georeference
    # warning; geolocation is not used.
    header = (
        f'<header revMajor="1" revMinor="4" name="{name}" version="1" '
        f'north="{_fmt(max(ys) + margin)}" south="{_fmt(min(ys) - margin)}" '
        f'east="{_fmt(max(xs) + margin)}" west="{_fmt(min(xs) - margin)}">'
        "<geoReference><![CDATA[+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m "
        "+no_defs]]></geoReference></header>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<OpenDRIVE>'
        + header
        + "\n"
        + "\n".join(roads_xml)
        + "\n"
        + "\n".join(junctions_xml)
        + "\n</OpenDRIVE>\n"
    )


def layout_xodr(num_blocks: int, intersection: int) -> str:
    """OpenDRIVE text of ONE layout with its origin at CARLA (0, 0).

    Args:
      num_blocks: straight-road length in blocks, MIN_BLOCKS..MAX_BLOCKS.
      intersection: 0 L (a bend), 1 T, 2 X (layout.INTERSECTIONS).
    """
    index = layout_index(num_blocks, intersection)
    return _document(
        [(num_blocks, intersection, index, 0.0, 0.0)], f"lts_{INTERSECTION_KINDS[intersection]}{num_blocks}"
    )


def atlas_xodr() -> str:
    """OpenDRIVE text of the atlas: all NUM_LAYOUTS layouts, at :func:`layout_origin`."""
    parts = []
    for intersection in range(len(INTERSECTION_KINDS)):
        for n in range(L.MIN_BLOCKS, L.MAX_BLOCKS + 1):
            k = layout_index(n, intersection)
            cx, cy = layout_origin(k)
            parts.append((n, intersection, k, cx, -cy))  # OpenDRIVE y = -CARLA y
    return _document(parts, "lts_atlas")


# Mesh generation settings for client.generate_opendrive_world:
# - vertex_distance 0.5 m: the default 2 m visibly facets the 3.5 m junction turns;
# - wall_height 0: CARLA otherwise raises 1 m walls on the road borders (meant to
#   keep vehicles from falling off); they are not part of the scene model and
#   would stand between the sidewalks and the houses. Our vehicles have physics off.
# - pedestrian navigation off: no walkers, and it costs generation time.
GENERATION_PARAMETERS = dict(
    vertex_distance=0.5,
    max_road_length=50.0,
    wall_height=0.0,
    additional_width=0.6,
    smooth_junctions=True,
    enable_mesh_visibility=True,
    enable_pedestrian_navigation=False,
)


def generation_parameters():
    """``carla.OpendriveGenerationParameters`` for the atlas. Needs the carla client; not jittable."""
    import carla

    return carla.OpendriveGenerationParameters(**GENERATION_PARAMETERS)
