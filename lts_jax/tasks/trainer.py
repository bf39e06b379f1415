"""The minibatch-scan trainer the main task models share: schedule, one optimiser step, epochs as one scan.

    state = TrainState.create(params, optimizer)
    state = train_epochs(step_fn, state, key, num, epochs, batch_size)   # one lax.scan over all steps

where ``step_fn(state, idx [B], weights [B]) -> (state, loss [])`` gathers its minibatch ``data[idx]``
and takes one optimiser step (usually :func:`gradient_step`) on the ``weights``-weighted mean loss.

Batching. An epoch of ``num`` examples takes ``ceil(num / batch_size)`` steps with the examples spread
evenly over them (:func:`batching`); where they do not divide evenly the short batches are padded (index 0,
weight 0), so every example counts exactly once per epoch and no step computes a mostly empty batch. Each
epoch draws a new permutation.

All functions are pure and jittable; ``num``, ``epochs`` and ``batch_size`` are static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Training state of one main task model."""

    params: Any  # float32 pytree (master weights, also under bfloat16 compute)
    opt_state: Any  # the optimiser's state (float32)
    step: jax.Array  # [] int32: optimiser steps taken
    train_loss: jax.Array  # [] float32: mean minibatch loss of the last epoch trained (NaN before any)

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation) -> TrainState:
        """A state before any training: ``params`` and a fresh optimiser state."""
        return cls(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            train_loss=jnp.full((), jnp.nan, jnp.float32),
        )


def batching(num: int, batch_size: int) -> tuple[int, int]:
    """(steps per epoch, examples per step) for ``num`` examples and batches of at most ``batch_size``.

    steps = ceil(num / batch_size), the examples spread evenly over them (num = 100, batch 32: 4 steps
    of 25, not 3 of 32 and one of 4 padded to 32): the steps per epoch stay those of ``batch_size``
    and little padding is computed.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"need num >= 1 examples and batch_size >= 1, got {num} and {batch_size}")
    steps = -(-num // batch_size)
    return steps, -(-num // steps)


def schedule(key: jax.Array, num: int, epochs: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Shuffled minibatches of ``epochs`` passes over ``num`` examples.

    Returns (idx, weights): int32 [epochs * steps, B] example indices and float32 [epochs * steps, B]
    weights, 1 for an example and 0 for padding (index 0), with (steps, B) = ``batching(num, batch_size)``.
    Epoch e uses a permutation drawn with ``split(key, epochs)[e]``.
    """
    steps, b = batching(num, batch_size)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num))(jax.random.split(key, epochs))
    pad = steps * b - num
    idx = jnp.pad(perms, ((0, 0), (0, pad))).reshape(epochs * steps, b)
    valid = jnp.arange(steps * b) < num
    weights = jnp.tile(valid.reshape(steps, b), (epochs, 1)).astype(jnp.float32)
    return idx.astype(jnp.int32), weights


def gradient_step(
    optimizer: optax.GradientTransformation, loss_fn: Callable[..., jax.Array], state: TrainState, *args: Any
) -> tuple[TrainState, jax.Array]:
    """One optimiser step on ``loss_fn(params, *args) -> []``; returns (state, loss before the step)."""
    loss, grads = jax.value_and_grad(loss_fn)(state.params, *args)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), loss


def train_epochs(
    step_fn: Callable[..., tuple[Any, jax.Array]],
    state: Any,
    key: jax.Array,
    num: int,
    epochs: int,
    batch_size: int,
    *,
    step_keys: bool = False,
    unroll: int = 1,
) -> Any:
    """``epochs`` shuffled passes over ``num`` examples in one ``lax.scan`` of ``step_fn``.

    Args:
      step_fn: ``(state, idx [B], weights [B]) -> (state, loss [])``, or with ``step_keys``
        ``(state, idx, weights, key) -> (state, loss)``: one minibatch step.
      state: a pytree with a ``train_loss`` field (:class:`TrainState`).
      key: the schedule's key; with ``step_keys`` it is split into (schedule key, step keys).
      num, epochs, batch_size: static; :func:`schedule`'s.
      step_keys: give each step its own key (``split(k_step, epochs * steps)``), e.g. for augmentation.
      unroll: steps per iteration of the scan (``lax.scan``'s ``unroll``); a speed knob, same results.

    Returns:
      The state after ``epochs * steps`` steps, with ``train_loss`` the mean step loss of the last epoch;
      ``state`` unchanged when ``epochs`` is 0.
    """
    epochs = int(epochs)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return state
    k_schedule, k_steps = jax.random.split(key) if step_keys else (key, None)
    idx, weights = schedule(k_schedule, num, epochs, batch_size)
    xs = (idx, weights) if k_steps is None else (idx, weights, jax.random.split(k_steps, idx.shape[0]))
    state, losses = jax.lax.scan(lambda st, x: step_fn(st, *x), state, xs, unroll=unroll)
    steps_per_epoch = idx.shape[0] // epochs
    return state.replace(train_loss=jnp.mean(losses[-steps_per_epoch:]))
