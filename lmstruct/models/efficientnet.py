"""EfficientNet-Lite image tower (Tan & Le 2019; the "Lite" variants of the TensorFlow TPU model zoo, 2020).

Lite differs from EfficientNet: no squeeze-and-excitation, ReLU6 instead of swish, and a stem and head that are not
scaled with the width multiplier. Convolutions use TensorFlow's SAME padding (for a stride-2 layer the extra pixel
of padding goes after the image), batch norm has ε = 1e-3, and the classifier is omitted: the tower returns the
global average of the head's 1280 channels.

The tower reads lmstruct's CLIP-normalised images and maps them to the input range the ImageNet weights were
trained with, (255·pixel − 127) / 128. Batch norm always uses the stored statistics: the tower exists to carry
pretrained weights, locked (LiT) or fine-tuned.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.data.augment import CLIP_MEAN, CLIP_STD

# One stage per row: (blocks, kernel size, stride of the first block, expansion ratio, output channels).
LITE0_STAGES = (
  (1, 3, 1, 1, 16),
  (2, 3, 2, 6, 24),
  (2, 5, 2, 6, 40),
  (3, 3, 2, 6, 80),
  (3, 5, 1, 6, 112),
  (4, 5, 2, 6, 192),
  (1, 3, 1, 6, 320),
)

EFFICIENTNET_SIZES: dict[str, dict] = {
  "lite0": dict(stages=LITE0_STAGES, stem_width=32, head_width=1280),
}

BATCH_NORM_EPSILON = 1e-3
PIXEL_MEAN, PIXEL_SCALE = 127.0, 128.0


def relu6(x: jax.Array) -> jax.Array:
  """min(max(x, 0), 6)."""
  return jnp.clip(x, 0.0, 6.0)


def from_clip_normalised(images: jax.Array) -> jax.Array:
  """CLIP-normalised images → (255·pixel − 127) / 128, the EfficientNet-Lite input range."""
  pixels = images * jnp.asarray(CLIP_STD) + jnp.asarray(CLIP_MEAN)
  return (pixels * 255.0 - PIXEL_MEAN) / PIXEL_SCALE


class ConvBN(nn.Module):
  """Convolution (SAME padding, no bias) → batch norm with stored statistics → optional ReLU6."""

  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  activation: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=(self.stride, self.stride),
      padding="SAME",
      feature_group_count=self.groups,
      use_bias=False,
      dtype=self.dtype,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPSILON, dtype=self.dtype, name="bn")(x)
    return relu6(x) if self.activation else x


class MBConv(nn.Module):
  """Inverted residual: 1×1 expansion (when `expand` > 1) → k×k depthwise (stride) → 1×1 projection, with an
  identity shortcut when the stride is 1 and the channel count is kept."""

  features: int
  kernel: int
  stride: int
  expand: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = channels * self.expand
    h = ConvBN(hidden, dtype=self.dtype, name="expand")(x) if self.expand != 1 else x
    h = ConvBN(hidden, self.kernel, self.stride, groups=hidden, dtype=self.dtype, name="depthwise")(h)
    h = ConvBN(self.features, activation=False, dtype=self.dtype, name="project")(h)
    return x + h if self.stride == 1 and channels == self.features else h


class EfficientNetLite(nn.Module):
  """CLIP-normalised image [B, H, W, 3] → pooled feature [B, head_width]."""

  stages: Sequence[Sequence[int]]
  stem_width: int = 32
  head_width: int = 1280
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """`train` is part of the image-tower interface; this tower has no train-time behaviour."""
    del train
    x = from_clip_normalised(images.astype(jnp.float32)).astype(self.dtype)
    x = ConvBN(self.stem_width, 3, 2, dtype=self.dtype, name="stem")(x)
    index = 0
    for blocks, kernel, stride, expand, features in self.stages:
      for block in range(blocks):
        x = MBConv(features, kernel, stride if block == 0 else 1, expand, self.dtype, name=f"block_{index}")(x)
        index += 1
    x = ConvBN(self.head_width, dtype=self.dtype, name="head")(x)
    return x.mean(axis=(1, 2))
