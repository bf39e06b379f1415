"""The car-counting main task model (paper section 4.3).

A CNN (:class:`lts_jax.models.counting.CountingCNN`) predicts the number of cars
of each of 5 types in an image. The metric is the L1 distance between predicted
(real-valued, not rounded) and true counts, averaged over types; the reward is
the negative validation L1. The training loss is the same L1 by default
(``loss="mse"`` or ``"huber"`` train on another loss; the metric stays L1).

Data: ``{"image": uint8 [N, H, W, 3], "counts": int [N, num_types], ...}``
(``CountingTask.data_keys``; other keys are ignored), as the traffic simulator returns.

All methods are pure and jittable; ``epochs`` is static. Everything about the
shape of the computation (image size, batch size, dtype, layer widths) is static
configuration on the object.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lts_jax.models.counting import CONVS, CountingCNN, to_patch_order, train_flops_per_image
from lts_jax.optim import make_optimizer
from lts_jax.tasks import trainer
from lts_jax.tasks.base import TaskBase
from lts_jax.tasks.trainer import TrainState

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LOSSES = ("l1", "mse", "huber")


def l1_per_type(pred: jax.Array, counts: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean absolute count error per type.

    pred: [N, T] float; counts: [N, T] int or float; weights: [N] (0 masks an example) or None.
    Returns [T] float32: sum_n w_n |pred - counts| / sum_n w_n.
    """
    return per_type_mean(jnp.abs(pred.astype(jnp.float32) - counts.astype(jnp.float32)), weights)


def per_type_mean(per: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """[N, T] per-example, per-type values -> [T]: their (weighted) mean over examples, as in :func:`l1_per_type`."""
    if weights is None:
        return jnp.mean(per, axis=0)
    w = weights.astype(jnp.float32)
    return jnp.sum(per * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)


class CountingTask(TaskBase):
    """Counting CNN trained with L1 loss on minibatches; reward = -L1 on the evaluation data.

    The train state is a :class:`lts_jax.tasks.trainer.TrainState`.

    Args:
      height, width: image size (static; the simulator's).
      batch_size: the largest training minibatch. An epoch takes
        ceil(M / batch_size) steps with the M examples spread evenly over them
        (:func:`lts_jax.tasks.trainer.batching`); where they do not divide evenly the
        short batches are padded and masked, so every example counts once per epoch.
      learning_rate, optimizer, grad_clip: the optax optimiser (adam, sgd, rmsprop).
      compute_dtype: "float32" or "bfloat16". bfloat16 computes activations and
        matrix products in bf16 while parameters, gradients and optimizer state
        stay float32.
      features, hidden, conv, context, position, head, norm: the CNN (see :mod:`lts_jax.models.counting`).
        The defaults (two 3x3 context layers and a position embedding at the lowest resolution) are the
        formulation chosen by measurement in issue 13 (benchmarks/counting_signal.py: without them the CNN
        learns no more than the count prior); ``context=0, position=False`` is the earlier, paper-like CNN.
      init_params: parameters every :meth:`init` starts from (a pretrained model, e.g.
        :func:`pretrain`), with a fresh optimizer state; None: a random initialisation from the key.
      loss: training loss per count: "l1" (the metric), "mse" (squared error) or
        "huber" (squared below 1, linear above); averaged over types and examples.
      num_types: number of car types (length of ``counts``).
      eval_batch_size: examples per evaluation chunk (a scan; the last chunk is
        padded and masked).
      unroll: minibatch steps per iteration of the training scan (``lax.scan``'s
        ``unroll``); a speed knob, results are identical.
    """

    data_keys = ("image", "counts")

    def __init__(
        self,
        height: int = 96,
        width: int = 320,
        *,
        batch_size: int = 32,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        grad_clip: float | None = None,
        compute_dtype: str = "float32",
        features: Sequence[int] = (16, 32, 64, 128),
        hidden: int = 128,
        conv: str = "patch",
        context: int = 2,
        position: bool = True,
        loss: str = "l1",
        num_types: int = 5,
        eval_batch_size: int = 256,
        unroll: int = 1,
        head: str = "pooled",
        norm: bool = False,
        init_params: Any = None,
    ):
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size}, {eval_batch_size}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"unknown compute_dtype {compute_dtype!r}; choose one of {sorted(COMPUTE_DTYPES)}")
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; choose one of {CONVS}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {unroll}")
        self.height, self.width = int(height), int(width)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.compute_dtype = compute_dtype
        self.num_types = int(num_types)
        self.unroll = int(unroll)
        self.loss = loss
        self.model = CountingCNN(
            features=tuple(features),
            hidden=int(hidden),
            num_types=self.num_types,
            conv=conv,
            context=int(context),
            position=bool(position),
            head=head,
            norm=bool(norm),
            dtype=COMPUTE_DTYPES[compute_dtype],
        )
        self.optimizer = make_optimizer(optimizer, learning_rate, grad_clip)
        self.init_params = None if init_params is None else self._checked(init_params)

    # -- model ---------------------------------------------------------------------------------

    def prepare(self, images: jax.Array) -> jax.Array:
        """Model input from images [N, H, W, 3] uint8 (patch order for ``conv="patch"``); stays uint8."""
        if images.shape[-3:-1] != (self.height, self.width):
            raise ValueError(f"images are {images.shape[-3:-1]}, the task expects {(self.height, self.width)}")
        if self.model.conv == "patch":
            return to_patch_order(images, len(self.model.features))
        return images

    def apply(self, params: Any, inputs: jax.Array) -> jax.Array:
        """Predicted counts [N, num_types] float32 from prepared inputs."""
        return self.model.apply({"params": params}, inputs)

    def predict(self, state: TrainState, images: jax.Array) -> jax.Array:
        """Predicted counts [N, num_types] float32 from images [N, H, W, 3] uint8."""
        return self.apply(state.params, self.prepare(images))

    def flops_per_image(self) -> float:
        """Analytic FLOPs of one training step per image (matrix products only)."""
        m = self.model
        return train_flops_per_image(
            self.height, self.width, m.features, m.hidden, m.num_types, m.conv, context=m.context
        )

    # -- Task protocol -------------------------------------------------------------------------

    def _random_params(self, key: jax.Array) -> Any:
        dummy = self.prepare(jnp.zeros((1, self.height, self.width, 3), jnp.uint8))
        return self.model.init(key, dummy)["params"]

    def init(self, key: jax.Array) -> TrainState:
        """A fresh train state: ``init_params`` when given (the key is then unused), else random weights."""
        if self.init_params is not None:
            return TrainState.create(jax.tree_util.tree_map(jnp.asarray, self.init_params), self.optimizer)
        return TrainState.create(self._random_params(key), self.optimizer)

    def with_init_params(self, params: Any) -> CountingTask:
        """The same task whose models start from ``params`` (e.g. a pretrained CNN)."""
        clone = copy.copy(self)
        clone.init_params = self._checked(params)
        return clone

    def _checked(self, params: Any) -> Any:
        """``params`` if they fit this task's CNN (same tree, same shapes), else a ValueError."""
        expected = jax.eval_shape(self._random_params, jax.random.key(0))
        same_tree = jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
        if not same_tree or any(
            tuple(np.shape(a)) != tuple(b.shape)
            for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected))
        ):
            raise ValueError("init_params do not fit this CountingTask's CNN (another architecture or image size?)")
        return params

    def loss_fn(self, params: Any, inputs: jax.Array, counts: jax.Array, weights: jax.Array) -> jax.Array:
        """Weighted mean over examples of the type-averaged training loss; inputs prepared, weights [B]."""
        err = self.apply(params, inputs) - counts.astype(jnp.float32)
        per = {"l1": jnp.abs, "mse": jnp.square, "huber": lambda e: optax.huber_loss(e, delta=1.0)}[self.loss](err)
        return jnp.mean(per_type_mean(per, weights))

    def train_step(self, state: TrainState, inputs: jax.Array, counts: jax.Array, weights: jax.Array):
        """One optimizer step on a prepared minibatch (inputs [B, ...], counts [B, T], weights [B]);
        returns (state, loss)."""
        return trainer.gradient_step(self.optimizer, self.loss_fn, state, inputs, counts, weights)

    def train(self, state: TrainState, data: dict[str, jax.Array], key: jax.Array, epochs: int) -> TrainState:
        """``epochs`` (static) passes over ``data`` in shuffled minibatches; one ``lax.scan``
        (:func:`lts_jax.tasks.trainer.train_epochs`; ``train_loss``: the last epoch's mean loss)."""
        inputs = self.prepare(data["image"])
        counts = data["counts"]
        return trainer.train_epochs(
            lambda st, i, w: self.train_step(st, inputs[i], counts[i], w),
            state,
            key,
            inputs.shape[0],
            epochs,
            self.batch_size,
            unroll=self.unroll,
        )

    def evaluate(self, state: TrainState, data: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """{"reward": -l1 [], "l1": [], "l1_per_type": [num_types]} over all of ``data``.

        A scan over chunks of ``eval_batch_size`` examples; the last chunk is padded and masked.
        """
        inputs = self.prepare(data["image"])
        counts = data["counts"]
        num = inputs.shape[0]
        b = min(self.eval_batch_size, num)
        chunks = -(-num // b)
        pad = chunks * b - num

        def chunked(x):
            x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x
            return x.reshape(chunks, b, *x.shape[1:])

        weights = (jnp.arange(chunks * b) < num).astype(jnp.float32).reshape(chunks, b)

        def body(total, xs):
            x, y, w = xs
            err = jnp.abs(self.apply(state.params, x) - y.astype(jnp.float32))
            return total + jnp.sum(err * w[:, None], axis=0), None

        total, _ = jax.lax.scan(
            body, jnp.zeros((self.num_types,), jnp.float32), (chunked(inputs), chunked(counts), weights)
        )
        per_type = total / num
        l1 = jnp.mean(per_type)
        return {"reward": -l1, "l1": l1, "l1_per_type": per_type}
