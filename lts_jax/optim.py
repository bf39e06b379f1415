"""Optimisers by name: the one place the library builds an optax transformation from configuration.

The search policy (:mod:`lts_jax.search.policy`) and the main task models (:mod:`lts_jax.tasks`) take an
optimiser name, a learning rate and an optional gradient clip; experiments pass their flags through.
"""

from __future__ import annotations

import math

import optax

OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop}


def make_optimizer(
    name: str,
    learning_rate: float,
    grad_clip: float | None = None,
    *,
    learning_rate_in_state: bool = False,
) -> optax.GradientTransformation:
    """An optax optimiser by name (adam, sgd, rmsprop), with optional global-norm clipping.

    Args:
      name: a key of :data:`OPTIMIZERS`.
      learning_rate: finite, > 0.
      grad_clip: clip the global gradient norm to this value (finite, > 0) before the update; None: no clipping.
      learning_rate_in_state: hold the learning rate in the optimiser state (``optax.inject_hyperparams``,
        ``opt_state.hyperparams["learning_rate"]``) instead of baking it into the program as a constant.
        States initialised with different rates then run through one compiled training program (the
        segmentation experiments pretrain and fine-tune at different rates this way).

    Raises:
      ValueError: an unknown name, a learning rate or clip that is not a finite float > 0.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if not learning_rate > 0:
        raise ValueError(f"learning rate must be > 0, got {learning_rate}")
    if not math.isfinite(learning_rate):
        raise ValueError(f"learning rate must be finite, got {learning_rate}")
    maker = optax.inject_hyperparams(OPTIMIZERS[name]) if learning_rate_in_state else OPTIMIZERS[name]
    opt = maker(learning_rate=learning_rate)
    if grad_clip is not None:
        if not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip}")
        if not math.isfinite(grad_clip):
            raise ValueError(f"grad_clip must be finite, got {grad_clip}")
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    return opt
