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
CAMERA_Z = -2.0  # the camera stands a little before the first block
# KITTI's colour camera: fx = 721.5 px at 1242 px image width (81 degrees horizontal FOV).
KITTI_FX_OVER_WIDTH = 721.5377 / 1242.0
