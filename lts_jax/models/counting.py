"""The car-counting CNN: 4 stride-2 convolutions, mean pooling, a dense head.

Two formulations of the convolutions (``conv=``):

- ``"patch"`` (default): 2x2 stride-2 convolutions. A 2x2 stride-2 convolution
  never overlaps its windows, so it is a matrix product over the 2x2xC values of
  each window. If the image is rearranged ONCE into *patch order* (see
  :func:`to_patch_order`), every layer's windows are contiguous and every layer
  is a reshape (free) followed by a dense matrix product. Why this matters: the
  K candidates' models have different weights, and ``jax.vmap`` turns K
  convolutions into one feature-grouped convolution, which cuDNN and the CPU
  runtime run badly (WORKSPACE.md, "Design", performance: vmap 18x slower than a loop on an H100); K
  matrix products become one batched matrix product (cuBLAS strided-batched
  gemm, tensor cores), which runs well. Mathematically the network equals
  ``nn.Conv(f, (2, 2), strides=2, padding="VALID")`` layers on the NHWC image
  (the dense kernel ``[4 C, f]`` reshaped to ``[2, 2, C, f]`` is the HWIO kernel).
- ``"conv3x3"``: 3x3 stride-2 SAME convolutions (``nn.Conv``) on the NHWC image,
  the textbook layout; kept as the reference the benchmarks compare against.

Optional, at the last (lowest) resolution, before pooling:

- ``position=True``: a learned per-position embedding ``[H', W', C]`` added to the
  feature map (the convolutions are translation invariant; where a car appears
  in the image says how far away it is, hence how large it should look);
- ``context=k``: k 3x3 stride-1 SAME convolutions with ``features[-1]`` channels,
  each written as a matrix product over the zero-padded 3x3 neighbourhood of every
  position (:func:`neighbourhood`), so that under ``vmap`` they stay batched
  matrix products too. Each widens the receptive field by two cells
  (2 * 2**levels pixels), so that a near car (~60 x 40 px at 96x320) fits in one.

The network then averages the ReLU features over positions and ends with
``Dense(hidden) -> ReLU -> Dense(num_types)``. Outputs are float32
counts ``[N, num_types]`` whatever the compute dtype.

Mixed precision: ``dtype`` is the compute dtype (activations and matrix
operands); parameters are always float32 (``param_dtype``), so gradients and the
optimizer state stay float32 (master weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CONVS = ("patch", "conv3x3")
HEADS = ("pooled", "density")
_he = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def padded_size(height: int, width: int, levels: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of 2**levels (the patch layout needs whole windows)."""
    m = 2**levels
    return -(-height // m) * m, -(-width // m) * m


def to_patch_order(images: jax.Array, levels: int) -> jax.Array:
    """Rearranges images so that every 2x2 stride-2 layer reads contiguous windows.

    images: [..., H, W, C] (any dtype; H, W are zero-padded at the bottom/right to
    multiples of 2**levels). Returns [..., H', W', 4**levels * C] with
    H' = H / 2**levels, W' = W / 2**levels, where the last axis is ordered
    (a_{L-1}, b_{L-1}, ..., a_0, b_0, c) for row = h' 2^L + sum_i a_i 2^i and
    column = w' 2^L + sum_i b_i 2^i. Layer l (l = 1..L) then merges the trailing
    (a_{l-1}, b_{l-1}, channel) triple by a plain reshape. Done once per data set,
    on uint8, before any training step.
    """
    *lead, h, w, c = images.shape
    hp, wp = padded_size(h, w, levels)
    if (hp, wp) != (h, w):
        pad = [(0, 0)] * len(lead) + [(0, hp - h), (0, wp - w), (0, 0)]
        images = jnp.pad(images, pad)
    n = len(lead)
    # [..., h', a_{L-1}, ..., a_0, w', b_{L-1}, ..., b_0, c]
    x = images.reshape(*lead, hp >> levels, *([2] * levels), wp >> levels, *([2] * levels), c)
    row = n  # index of h'
    col = n + 1 + levels  # index of w'
    order = list(range(n)) + [row, col]
    for i in range(levels):
        order += [row + 1 + i, col + 1 + i]
    order.append(col + 1 + levels)
    x = x.transpose(order)
    return x.reshape(*lead, hp >> levels, wp >> levels, 4**levels * c)


def neighbourhood(x: jax.Array) -> jax.Array:
    """[N, h, w, C] -> [N, h, w, 9 C]: each position's zero-padded 3x3 neighbourhood, ordered (dy, dx, c).

    ``Dense(f)`` on it is ``nn.Conv(f, (3, 3), padding="SAME")`` with the HWIO kernel reshaped to ``[9 C, f]``.
    """
    n, h, w, c = x.shape
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)


def forward_macs(
    height: int,
    width: int,
    features: Sequence[int],
    hidden: int,
    num_types: int,
    conv: str,
    channels: int = 3,
    context: int = 0,
) -> list[int]:
    """Multiply-accumulates per image of each matrix-product layer, in order (convs, context, head)."""
    k = 4 if conv == "patch" else 9
    h, w = padded_size(height, width, len(features)) if conv == "patch" else (height, width)
    macs, cin = [], channels
    for f in features:
        h, w = -(-h // 2), -(-w // 2)
        macs.append(h * w * k * cin * f)
        cin = f
    macs += [h * w * 9 * cin * cin] * context
    macs += [cin * hidden, hidden * num_types]
    return macs


def train_flops_per_image(height, width, features, hidden, num_types, conv, channels=3, context=0) -> float:
    """FLOPs per image of one training step: forward (2 MACs), weight gradient (2) and input gradient (2),
    except the first layer, whose input gradient is never needed."""
    macs = forward_macs(height, width, features, hidden, num_types, conv, channels, context)
    return float(2 * (3 * sum(macs) - macs[0]))


class CountingCNN(nn.Module):
    """Predicts per-type car counts.

    Input: for ``conv="patch"``, images in patch order ``[N, H/2^L, W/2^L, 4^L C]``
    (:func:`to_patch_order` with ``L = levels = len(features)``); for ``"conv3x3"``,
    ``[N, H, W, C]``. uint8 (scaled by 1/255 here) or float. Output: ``[N, num_types]`` float32.
    """

    features: Sequence[int] = (16, 32, 64, 128)
    hidden: int = 128
    num_types: int = 5
    conv: str = "patch"
    context: int = 0
    position: bool = False
    head: str = "pooled"
    norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, density_map: bool = False) -> jax.Array:
        if self.conv not in CONVS:
            raise ValueError(f"unknown conv {self.conv!r}; choose one of {CONVS}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        scale = 1.0 / 255.0 if x.dtype == jnp.uint8 else 1.0
        x = x.astype(self.dtype) * jnp.asarray(scale, self.dtype)
        if self.norm:
            x = x - jnp.asarray(0.5, self.dtype)  # centred inputs: the first layer's gradients do not share a sign

        def act(y, name):
            # LayerNorm over channels (per example and position, so it vmaps like a matmul) keeps every layer's
            # activations at unit scale, which lets a from-scratch model learn in hundreds of steps, not thousands.
            if self.norm:
                y = nn.LayerNorm(dtype=self.dtype, name=f"{name}_norm")(y)
            return nn.relu(y)

        levels = len(self.features)
        if self.conv == "patch":
            n, h, w, d = x.shape
            for level, f in enumerate(self.features):
                groups = 4 ** (levels - level - 1)
                # (a, b, channel) of this layer's 2x2 windows are the trailing d / groups entries.
                x = x.reshape(n, h, w, groups, d // groups)
                x = act(nn.Dense(f, dtype=self.dtype, kernel_init=_he, name=f"conv{level}")(x), f"conv{level}")
                d = groups * f
            x = x.reshape(n, h, w, d)
        else:
            for level, f in enumerate(self.features):
                conv = nn.Conv(f, (3, 3), 2, "SAME", dtype=self.dtype, kernel_init=_he, name=f"conv{level}")
                x = act(conv(x), f"conv{level}")
        if self.position:
            _, h, w, c = x.shape
            x = x + self.param("position", nn.initializers.zeros, (h, w, c)).astype(self.dtype)
        for i in range(self.context):
            dense = nn.Dense(self.features[-1], dtype=self.dtype, kernel_init=_he, name=f"context{i}")
            x = act(dense(neighbourhood(x)), f"context{i}")
        if self.head == "density":
            # Per-position counts, summed over positions: a car adds to the count where it is. Linear (signed)
            # densities with a zero bias: a softplus output would start the model at hundreds of cars (neutral
            # bias) or, started near zero, pass the L1 gradient through sigmoid ~ 0 and leave every unit dead.
            x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_he, name="hidden")(x))
            x = nn.Dense(self.num_types, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="out")(x)
            x = x.astype(jnp.float32)
            return x if density_map else jnp.sum(x, axis=(1, 2))
        # Mean over positions in float32: the sum of thousands of bf16 terms would lose the counts' resolution.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_he, name="hidden")(x))
        x = nn.Dense(self.num_types, dtype=self.dtype, name="out")(x)
        return x.astype(jnp.float32)
