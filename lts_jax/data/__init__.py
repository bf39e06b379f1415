"""Real data in KITTI's semantic layout: ``kitti`` reads it (PNG / JPEG images, PNG label IDs; crop, mirror,
resize; KITTI's default split), ``real`` describes each data set (``real.DATASETS``: "kitti", "camvid") with its
split, crop and camera geometry."""
