"""Every experiment module imports into one process: no two define the same flag (absl would refuse)."""

import importlib

MODULES = [
    "experiments.common",
    "experiments.traffic_common",
    "experiments.seg_common",
    "experiments.gmm_toy",
    "experiments.gmm_table2",
    "experiments.car_count",
    "experiments.car_count_sweep",
    "experiments.synth_seg",
    "experiments.kitti_seg",
    "experiments.plot",
    "experiments.generate",
    "simulators.traffic.preview",
]


def test_all_experiment_modules_import_together():
    for name in MODULES:
        importlib.import_module(name)
