"""World geometry shared by every renderer of the traffic scene model.

The pure-JAX renderer (``render.py``) and the CARLA backend (``simulators/carla``)
build the very same scene from one scene description, so the constants that
place things live here, in one place.

World frame (metres): x to the right, y up, z forward along the straight road.
The ground is y = 0. The straight road runs along z from z = 0 to the
intersection at z = road_length * BLOCK_LENGTH; its centre line is x = 0. Traffic
drives on the right: lane 0 is the right lane (x > 0, heading +z, like the
camera's car), lane 1 the oncoming lane (x < 0, heading -z).

The camera stands in the centre of lane 0 at z = CAMERA_Z, CAMERA_HEIGHT above
the ground, looking down +z (KITTI's camera, pitch 0 unless jittered).
"""

BLOCK_LENGTH = 6.0  # metres of road per block (one car slot per block)
MIN_BLOCKS = 8  # shortest straight road, in blocks, to the intersection
MAX_BLOCKS = 18  # longest
NUM_LENGTHS = MAX_BLOCKS - MIN_BLOCKS + 1  # 11 categories
INTERSECTIONS = ("L", "T", "X")  # index 0, 1, 2
CAR_TYPES = ("sedan", "hatchback", "suv", "van", "pickup")  # index 0..4
WEATHERS = ("clear", "overcast", "rain", "fog")  # index 0..3

NUM_LANES = 2
LANE_WIDTH = 3.5
ROAD_WIDTH = NUM_LANES * LANE_WIDTH  # 7.0: road surface |x| <= 3.5
SIDEWALK_WIDTH = 2.5  # 3.5 < |x| <= 6.0
KERB_HEIGHT = 0.15  # sidewalks are raised by this much
HOUSE_SETBACK = 1.0  # terrain strip between sidewalk and house front
HOUSE_DEPTH = 8.0
SIDE_ROAD_LENGTH = 40.0  # how far the intersection's side roads extend

CAMERA_HEIGHT = 1.65
CAMERA_X = LANE_WIDTH / 2  # centre of the right lane
CAMERA_Z = -6.0  # a block before block 0: at -2 a car in block 0 filled a third of the image (not KITTI-like)
# KITTI's colour camera: fx = 721.5 px at 1242 px image width (81 degrees horizontal FOV).
KITTI_FX_OVER_WIDTH = 721.5377 / 1242.0

# ----------------------------------------------------------------------------------
# Added with the pure-JAX renderer (issue 3). Existing names above are unchanged.
# ----------------------------------------------------------------------------------
# KITTI's principal point row: cy = 172.854 px of 375 (the horizon of a level camera
# sits at this fraction of the image height, a little above the middle).
KITTI_CY_OVER_HEIGHT = 172.854 / 375.0

# Intersection at z_I = road_length * BLOCK_LENGTH (as the CARLA layouts build it):
# - L: the road bends LEFT through a quarter circle whose centre-line radius is
#   BEND_RADIUS, centred at (x, z) = (-BEND_RADIUS, z_I); then it runs along -x.
# - T, X: a crossing road occupies z in [z_I, z_I + ROAD_WIDTH], legs to both sides
#   up to |x| = ROAD_WIDTH / 2 + SIDE_ROAD_LENGTH; X also continues ahead for
#   SIDE_ROAD_LENGTH beyond the crossing.
# Every road has a sidewalk (SIDEWALK_WIDTH) on each side.
BEND_RADIUS = 8.0
L_TURN = "left"

# Houses: a house of block b on side s spans |x| in [HOUSE_X0, HOUSE_X0 + HOUSE_DEPTH],
# z in [b * BLOCK_LENGTH + HOUSE_GAP / 2, (b + 1) * BLOCK_LENGTH - HOUSE_GAP / 2];
# house_height is the height of its walls (eaves); a gable roof with its ridge along
# z over the middle of the house rises HOUSE_ROOF_HEIGHT above the eaves.
HOUSE_X0 = ROAD_WIDTH / 2 + SIDEWALK_WIDTH + HOUSE_SETBACK  # 7.0
HOUSE_GAP = 0.4
HOUSE_ROOF_HEIGHT = 2.5
HOUSE_HEIGHT_RANGE = (6.0, 13.0)  # uniform eave heights, metres

# The row of houses across the end of the road (facing the camera), beyond the far
# sidewalk of the crossing road: END_HOUSE_COUNT houses of END_HOUSE_WIDTH centred
# at x = END_HOUSE_WIDTH * (j - END_HOUSE_COUNT // 2); fronts at z_I + END_ROW_Z[type].
# For X the houses with |centre| <= END_HOUSE_WIDTH are absent (the road goes on).
END_HOUSE_COUNT = 13
END_HOUSE_WIDTH = 7.0
END_ROW_Z = (
    BEND_RADIUS + ROAD_WIDTH / 2 + SIDEWALK_WIDTH + HOUSE_SETBACK,  # L: beyond the bend's outer sidewalk
    ROAD_WIDTH + SIDEWALK_WIDTH + HOUSE_SETBACK,  # T
    ROAD_WIDTH + SIDEWALK_WIDTH + HOUSE_SETBACK,  # X
)

# Street furniture and vegetation (one slot per block and side).
TREE_X = ROAD_WIDTH / 2 + SIDEWALK_WIDTH + 0.5  # |x| of tree trunks: 6.5, in the strip before the houses
TREE_RADIUS_RANGE = (1.8, 2.8)  # crown radius (the crown is an ellipsoid 1.15 times taller)
TREE_CROWN_HEIGHT_RANGE = (5.0, 7.0)  # height of the crown's centre (its bottom stays above 1.7 m)
POLE_X = ROAD_WIDTH / 2 + SIDEWALK_WIDTH - 0.3  # |x| of lamp poles: 5.7, at the sidewalk's outer edge
POLE_HEIGHT = 6.5

# Far tree line / skyline around the scene: a wall at |x| = BACKDROP_X and at
# z = z_I + BACKDROP_Z, with a profile of heights (vegetation, some distant buildings).
BACKDROP_X = 50.0
BACKDROP_Z = ROAD_WIDTH + SIDE_ROAD_LENGTH + 8.0

# What counts as a visible car (simulators/traffic/visibility.py says why): at least MIN_VISIBLE_PIXELS
# visible pixels at the reference image size (scaled with the image area), at least MIN_VISIBLE_SHARE of
# the bounding box of its unoccluded projection, and a fog / haze transmittance of at least
# MIN_FOG_TRANSMITTANCE at its distance. (Before issue 13: 10 pixels, no share, no fog.)
MIN_VISIBLE_PIXELS = 100
MIN_VISIBLE_SHARE = 0.4
MIN_FOG_TRANSMITTANCE = 0.3
# e-folding distance of fog / haze per weather (WEATHERS order), metres: render.WEATHER_TABLE's fog_d.
FOG_DISTANCE = (900.0, 450.0, 140.0, 30.0)
REFERENCE_SIZE = (96, 320)
