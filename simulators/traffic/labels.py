"""Label IDs of the traffic simulator (Cityscapes IDs, as KITTI's semantics benchmark uses).

Every pixel of a rendered ``label`` map holds one of LABEL_IDS. What is drawn as what:

- road 7: road surface of every road, lane markings, zebra crossings;
- sidewalk 8: sidewalks and their kerbs (the kerb's vertical face too);
- building 11: houses (walls, windows, roofs), distant buildings of the skyline, lamp poles
  (Cityscapes has "pole" 17, which this label space leaves out; poles go to building);
- vegetation 21: tree crowns and trunks, the distant tree line;
- terrain 22: grass and soil of the lots and verges;
- sky 23;
- car 26: every part of a car (body, windows, wheels, lights).
"""

from __future__ import annotations

import numpy as np

ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, CAR = 7, 8, 11, 21, 22, 23, 26
LABEL_IDS = (ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, CAR)
LABEL_NAMES = {
    ROAD: "road", SIDEWALK: "sidewalk", BUILDING: "building", VEGETATION: "vegetation", TERRAIN: "terrain",
    SKY: "sky", CAR: "car",
}  # fmt: skip

# Cityscapes' own display colours, for label previews.
_COLORS = {
    0: (0, 0, 0), ROAD: (128, 64, 128), SIDEWALK: (244, 35, 232), BUILDING: (70, 70, 70),
    VEGETATION: (107, 142, 35), TERRAIN: (152, 251, 152), SKY: (70, 130, 180), CAR: (0, 0, 142),
}  # fmt: skip


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] Cityscapes display colours of a label map [...] (host side, NumPy)."""
    lut = np.zeros((256, 3), np.uint8)
    for k, c in _COLORS.items():
        lut[k] = c
    return lut[np.asarray(label, np.uint8)]
