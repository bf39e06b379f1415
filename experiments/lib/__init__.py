"""The flag-free halves of the experiments: what tests import and run in-process with tiny configurations.

Each ``experiments/NAME.py`` defines its flags from a configuration class here and calls one function,
``NAME.train_and_evaluate(config, workdir)`` (flax's examples' shape). Shared: ``common`` (configuration base
classes, ConfigError, LTSConfig / search / workdir builders), ``traffic`` (the traffic simulator's settings),
``seg`` (the segmentation pipeline with its data sources).
"""
