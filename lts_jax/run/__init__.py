"""Host-only run management: workdir, metrics and TensorBoard, progress, checkpoints, figures, the driver."""
