"""ResNet-18 / ResNet-50 backbones (flax linen, NHWC) with GroupNorm and an optional dilated output stride.

Normalisation is GroupNorm rather than BatchNorm: the K candidate models are
trained under ``vmap``, ``lax.map`` or a Python loop inside one jit, and BatchNorm's
running statistics would be extra mutable state threaded through every
strategy; its batch statistics also behave badly at the small per-candidate
batch sizes used here. GroupNorm has no state and does not depend on the batch.

The last GroupNorm of each residual branch starts with scale 0, so every block
starts as the identity; this is what makes deep GroupNorm ResNets train from
scratch quickly.

``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters are always
float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

_NHWC = ("NHWC", "HWIO", "NHWC")


# ----- a convolution whose gradient stays fast inside lax.scan on CPU ------------------------------
# XLA:CPU runs a convolution fast only in its canonical layout (NHWC input, HWIO
# kernel). Outside loops, layout assignment rewrites the weight- and input-gradient
# convolutions of backprop into that layout; inside a while loop (every lax.scan
# training) it does not, and they fall back to a slow generic loop: measured on 2
# cores, a 3x3 16->32 weight gradient at 4x64x192 takes 730 ms in a scan against
# 16 ms outside (jax-ml/jax#12868 is the same effect). The custom VJP below writes
# both gradients as canonical convolutions on CPU; other backends keep JAX's own
# transposes (cuDNN and TPU handle any layout).
def _conv_nhwc(x, w, strides, padding, dilation, precision):
    return lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC, precision=precision
    )


def _canonical_grads(x, w, ct, strides, padding, dilation, precision):
    """(dx, dw) of ``sum(conv(x, w) * ct)`` as two NHWC/HWIO convolutions. x [B,H,W,I], w [kh,kw,I,O]."""
    kh, kw = w.shape[:2]
    # dx: the stride-dilated cotangent convolved with the flipped, I/O-swapped kernel.
    pads = []
    for i, (k, s, d, (lo, _)) in enumerate(zip((kh, kw), strides, dilation, padding, strict=True)):
        k_eff = d * (k - 1) + 1
        before = k_eff - 1 - lo
        after = x.shape[1 + i] + k_eff - 1 - ((ct.shape[1 + i] - 1) * s + 1) - before
        pads.append((before, after))
    w_t = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
    dx = lax.conv_general_dilated(
        ct,
        w_t,
        (1, 1),
        pads,
        lhs_dilation=strides,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        precision=precision,
    )
    # dw: batch and channel axes swap roles and the cotangent acts as the kernel;
    # the forward stride becomes its dilation and the forward dilation its stride.
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    out = lax.conv_general_dilated(
        jnp.transpose(xp, (3, 1, 2, 0)),
        jnp.transpose(ct, (1, 2, 0, 3)),
        dilation,
        "VALID",
        rhs_dilation=strides,
        dimension_numbers=_NHWC,
        precision=precision,
    )
    dw = jnp.transpose(out[:, :kh, :kw, :], (1, 2, 0, 3))
    return dx.astype(x.dtype), dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _loop_conv(x, w, strides, padding, dilation, precision):
    return _conv_nhwc(x, w, strides, padding, dilation, precision)


def _loop_conv_fwd(x, w, strides, padding, dilation, precision):
    return _conv_nhwc(x, w, strides, padding, dilation, precision), (x, w)


def _loop_conv_bwd(strides, padding, dilation, precision, res, ct):
    x, w = res

    def cpu(x, w, ct):
        return _canonical_grads(x, w, ct, strides, padding, dilation, precision)

    def default(x, w, ct):
        return jax.vjp(lambda x, w: _conv_nhwc(x, w, strides, padding, dilation, precision), x, w)[1](ct)

    return lax.platform_dependent(x, w, ct, cpu=cpu, default=default)


_loop_conv.defvjp(_loop_conv_fwd, _loop_conv_bwd)


def loop_friendly_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """Drop-in for ``lax.conv_general_dilated`` (flax's ``nn.Conv(conv_general_dilated=...)``).

    2-D NHWC/HWIO convolutions with explicit padding, no input dilation and one
    feature group get the scan-friendly gradient above; anything else goes to
    ``lax.conv_general_dilated`` unchanged.
    """
    canonical = (
        lhs.ndim == 4
        and not isinstance(padding, str)
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and feature_group_count == 1
        and not kwargs
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if not canonical:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kwargs,
        )
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in rhs_dilation) if rhs_dilation is not None else (1, 1)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _loop_conv(lhs, rhs, strides, padding, dilation, precision)


Conv = functools.partial(nn.Conv, conv_general_dilated=loop_friendly_conv)
"""``nn.Conv`` with :func:`loop_friendly_conv`; use it for every convolution of a model trained in a scan."""


def group_norm(channels: int, dtype: Dtype, zero_init: bool = False, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``channels``."""
    groups = math.gcd(channels, max_groups)
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    return nn.GroupNorm(num_groups=groups, dtype=dtype, param_dtype=jnp.float32, scale_init=scale_init)


def conv(features: int, kernel: int, stride: int = 1, dilation: int = 1, dtype: Dtype = jnp.float32, name=None):
    """A bias-free convolution with PyTorch-style explicit padding (output = ceil(input / stride))."""
    pad = dilation * (kernel - 1) // 2
    return Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        kernel_dilation=(dilation, dilation),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.kaiming_normal(),
        name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    features: int
    stride: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x):
        out = self.features * self.expansion
        y = conv(self.features, 3, self.stride, self.dilation, self.dtype)(x)
        y = nn.relu(group_norm(self.features, self.dtype)(y))
        y = conv(self.features, 3, 1, self.dilation, self.dtype)(y)
        y = group_norm(out, self.dtype, zero_init=True)(y)
        if x.shape[-1] != out or self.stride != 1:
            x = conv(out, 1, self.stride, 1, self.dtype, name="proj")(x)
            x = group_norm(out, self.dtype)(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 with 4x expansion (ResNet-50/101); stride on the 3x3 as in torchvision."""

    features: int
    stride: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x):
        out = self.features * self.expansion
        y = conv(self.features, 1, 1, 1, self.dtype)(x)
        y = nn.relu(group_norm(self.features, self.dtype)(y))
        y = conv(self.features, 3, self.stride, self.dilation, self.dtype)(y)
        y = nn.relu(group_norm(self.features, self.dtype)(y))
        y = conv(out, 1, 1, 1, self.dtype)(y)
        y = group_norm(out, self.dtype, zero_init=True)(y)
        if x.shape[-1] != out or self.stride != 1:
            x = conv(out, 1, self.stride, 1, self.dtype, name="proj")(x)
            x = group_norm(out, self.dtype)(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet backbone returning the features of every stage.

    Attributes:
      stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
      block: BasicBlock or Bottleneck.
      width: channels of the first stage (64 in the paper's nets).
      output_stride: 32 (plain), 16 (last stage dilated) or 8 (last two dilated),
        as in DeepLab: spatial detail is kept without changing the parameter shapes.
      dtype: compute dtype.

    ``__call__(x)``: x float [B, H, W, 3] (already normalised) ->
    ``{"c2": [B, H/4, W/4, C2], "c3": ..., "c4": ..., "c5": [B, H/os, W/os, C5]}``
    (sizes rounded up).
    """

    stage_sizes: Sequence[int]
    block: type[nn.Module]
    width: int = 64
    output_stride: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        x = conv(self.width, 7, 2, 1, self.dtype, name="stem")(x)
        x = nn.relu(group_norm(self.width, self.dtype)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        strides = [1, 2, 2, 2]
        dilations = [1, 1, 1, 1]
        if self.output_stride <= 16:
            strides[3], dilations[3] = 1, 2
        if self.output_stride == 8:
            strides[2], dilations[2], dilations[3] = 1, 2, 4
        feats = {}
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                x = self.block(
                    self.width * 2**stage,
                    stride=strides[stage] if i == 0 else 1,
                    # DeepLab: the first block of a dilated stage keeps the previous dilation
                    dilation=dilations[stage] if i > 0 else max(1, dilations[stage] // 2),
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{i + 1}",
                )(x)
            feats[f"c{stage + 2}"] = x
        return feats


def resnet18(**kw) -> ResNet:
    return ResNet(stage_sizes=(2, 2, 2, 2), block=BasicBlock, **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(stage_sizes=(3, 4, 6, 3), block=Bottleneck, **kw)
