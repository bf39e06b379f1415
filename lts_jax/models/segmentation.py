"""Semantic segmentation networks (flax linen, NHWC), selected by name.

Every model maps ``images: float [B, H, W, 3]`` with values in [0, 1] to
``logits: float32 [B, H, W, num_classes]`` at the input resolution (bilinear
upsampling of the decoder's output). Inputs are standardised inside the model
(ImageNet channel statistics) so that a checkpoint carries no preprocessing.

- ``"fcn_small"``: a three-level encoder (strides 2, 4, 8) and a decoder that
  adds back each level's features up to stride 2 (U-Net-like, summed skips). About
  90k parameters; trains in seconds on tiny images on a CPU.
- ``"resnet18"`` / ``"resnet50"``: a ResNet backbone (:mod:`lts_jax.models.resnet`,
  dilated to output stride 16 by default) and a DeepLabv3+-style light decoder:
  the stride-16 features, upsampled to stride 4 and concatenated with projected
  stride-4 features, two 3x3 convolutions, a 1x1 classifier. For GPU runs.

Normalisation is GroupNorm throughout (no BatchNorm: the K candidates train under
vmap / map / loop, and GroupNorm carries no running state and does not depend on
the per-candidate batch size). ``dtype`` is the compute dtype (bf16 on GPUs);
parameters stay float32 and logits come out float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lts_jax.models.resnet import Conv, conv, group_norm, resnet18, resnet50

Dtype = Any

MODELS = ("fcn_small", "resnet18", "resnet50")

# ImageNet statistics; any fixed standardisation works from scratch, these keep
# the door open for ImageNet-initialised backbones loaded from a checkpoint file.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def standardise(images: jax.Array, dtype: Dtype) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> zero-mean, unit-variance channels in ``dtype``."""
    mean = jnp.asarray(_MEAN, jnp.float32)
    std = jnp.asarray(_STD, jnp.float32)
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def upsample(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of [B, h, w, C] to [B, height, width, C]."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="bilinear")


class ConvNormAct(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.norm:
            x = conv(self.features, self.kernel, self.stride, self.dilation, self.dtype)(x)
            x = group_norm(self.features, self.dtype, max_groups=8)(x)
        else:
            pad = self.dilation * (self.kernel - 1) // 2
            x = Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=(self.stride, self.stride),
                kernel_dilation=(self.dilation, self.dilation),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
            )(x)
        return nn.relu(x)


class FCNSmall(nn.Module):
    """A small encoder-decoder FCN for CPU-scale runs (about 90k parameters at ``width`` 16).

    Encoder: levels at strides 2, 4 and 8 with ``width``, 2x and 4x ``width``
    channels, the last with a dilated 3x3 for context. Decoder: from stride 8 up
    to stride 2, each level's 1x1-projected features are added to the upsampled
    coarser map and mixed by a 3x3; the stride-2 logits are upsampled bilinearly
    to the input size. Nothing runs at full resolution, which is where most of the
    cost of a small FCN would otherwise go. Output: [B, H, W, num_classes] float32.
    """

    num_classes: int
    width: int = 16
    norm: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        height, width = images.shape[1:3]
        c = self.width
        block = lambda f, **kw: ConvNormAct(f, norm=self.norm, dtype=self.dtype, **kw)
        x = standardise(images, self.dtype)
        f1 = block(c, stride=2)(x)
        f2 = block(2 * c)(block(2 * c, stride=2)(f1))
        f3 = block(4 * c, dilation=2)(block(4 * c, stride=2)(f2))
        dec = 2 * c
        proj = lambda f, name: Conv(dec, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name=name)(f)
        y = proj(f3, "lateral3")
        for level, f in ((2, f2), (1, f1)):
            y = upsample(y, f.shape[1], f.shape[2]) + proj(f, f"lateral{level}")
            y = block(dec)(y)
        logits = Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="classifier")(y)
        return upsample(logits.astype(jnp.float32), height, width)


class ResNetSeg(nn.Module):
    """ResNet backbone + DeepLabv3+-style light decoder.

    Attributes:
      num_classes: output channels.
      depth: 18 or 50.
      output_stride: of the backbone (8, 16 or 32).
      decoder_width: channels of the decoder convolutions.
      dtype: compute dtype.
    """

    num_classes: int
    depth: int = 50
    output_stride: int = 16
    decoder_width: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        height, width = images.shape[1:3]
        makers = {18: resnet18, 50: resnet50}
        if self.depth not in makers:
            raise ValueError(f"ResNet depth must be one of {sorted(makers)}, got {self.depth}")
        feats = makers[self.depth](output_stride=self.output_stride, dtype=self.dtype, name="backbone")(
            standardise(images, self.dtype)
        )
        d = self.decoder_width
        high = ConvNormAct(d, kernel=3, dtype=self.dtype, name="context")(feats["c5"])
        low = ConvNormAct(max(d // 4, 8), kernel=1, dtype=self.dtype, name="low_proj")(feats["c2"])
        y = jnp.concatenate([upsample(high, low.shape[1], low.shape[2]), low], axis=-1)
        y = ConvNormAct(d, kernel=3, dtype=self.dtype, name="fuse1")(y)
        y = ConvNormAct(d, kernel=3, dtype=self.dtype, name="fuse2")(y)
        logits = Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="classifier")(y)
        return upsample(logits.astype(jnp.float32), height, width)


def make_model(name: str, num_classes: int, dtype: Dtype = jnp.float32, **kwargs) -> nn.Module:
    """A segmentation model by name (:data:`MODELS`); ``kwargs`` go to the module.

    fcn_small takes ``width`` (16) and ``norm`` (True); resnet18 / resnet50 take
    ``output_stride`` (16) and ``decoder_width`` (128).
    """
    if name == "fcn_small":
        return FCNSmall(num_classes=num_classes, dtype=dtype, **kwargs)
    if name == "resnet18":
        return ResNetSeg(num_classes=num_classes, depth=18, dtype=dtype, **kwargs)
    if name == "resnet50":
        return ResNetSeg(num_classes=num_classes, depth=50, dtype=dtype, **kwargs)
    raise ValueError(f"unknown segmentation model {name!r}; choose one of {MODELS}")
