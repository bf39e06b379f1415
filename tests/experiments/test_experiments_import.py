"""Every experiment module imports into one process: each flag is defined once (absl would refuse a second
definition), and the library halves import without defining any flag."""

import importlib

from absl import flags

LIBRARY = [
    "experiments.lib.common",
    "experiments.lib.traffic",
    "experiments.lib.seg",
    "experiments.lib.gmm_toy",
    "experiments.lib.gmm_table2",
    "experiments.lib.car_count",
    "experiments.lib.car_count_sweep",
    "experiments.lib.search_comparison",
    "experiments.lib.synth_seg",
    "experiments.lib.kitti_seg",
    "experiments.lib.plot",
    "experiments.lib.generate",
    "experiments.lib.preview",
    "simulators.traffic.preview",
]
COMMANDS = [
    "experiments.common",
    "experiments.gmm_toy",
    "experiments.gmm_table2",
    "experiments.car_count",
    "experiments.car_count_sweep",
    "experiments.search_comparison",
    "experiments.synth_seg",
    "experiments.kitti_seg",
    "experiments.plot",
    "experiments.generate",
    "experiments.preview",
]


def test_all_experiment_modules_import_together():
    for name in LIBRARY + COMMANDS:
        importlib.import_module(name)
    by_module = flags.FLAGS.flags_by_module_dict()
    assert not [m for m in by_module if m.startswith(("experiments.lib", "simulators", "lts_jax"))]
