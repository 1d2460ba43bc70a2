"""CLIP's modified ResNet image tower (Radford et al. 2021, RN50 layout).

Differences from torchvision's ResNet: a 3-convolution stem with an average pool instead of a max pool;
anti-aliased strided blocks (a 2×2 average pool performs the stride, all convolutions have stride 1); and an
attention-pooling head in place of global average pooling.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.models.layers import fan_in_normal

RESNET_SIZES: dict[str, dict] = {
  # name: blocks per stage, base width
  "test": dict(stage_blocks=(1, 1, 1, 1), width=8),
  "RN50": dict(stage_blocks=(3, 4, 6, 3), width=64),
  "RN101": dict(stage_blocks=(3, 4, 23, 3), width=64),
}


def _batch_norm(train: bool, dtype, name: str, scale_init=nn.initializers.ones) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name
  )


def _avg_pool(x: jax.Array, stride: int) -> jax.Array:
  return nn.avg_pool(x, (stride, stride), strides=(stride, stride)) if stride > 1 else x


class Bottleneck(nn.Module):
  """1×1 → 3×3 → (avg-pool stride) → 1×1·4 with batch norm; shortcut avg-pool → 1×1 conv → BN when shapes change.

  The last batch norm's scale starts at zero (open_clip's `init_parameters`), so every block starts as the identity.
  """

  planes: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda f, k, name: nn.Conv(
      f, (k, k), padding="SAME" if k > 1 else "VALID", use_bias=False, dtype=self.dtype, name=name
    )
    out = nn.relu(_batch_norm(train, self.dtype, "bn1")(conv(self.planes, 1, "conv1")(x)))
    out = nn.relu(_batch_norm(train, self.dtype, "bn2")(conv(self.planes, 3, "conv2")(out)))
    out = _avg_pool(out, self.stride)
    out = _batch_norm(train, self.dtype, "bn3", nn.initializers.zeros)(conv(self.planes * 4, 1, "conv3")(out))
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      x = _batch_norm(train, self.dtype, "downsample_bn")(
        conv(self.planes * 4, 1, "downsample_conv")(_avg_pool(x, self.stride))
      )
    return nn.relu(out + x)


class AttentionPool(nn.Module):
  """Multi-head attention of the mean token over [mean; all positions] + learned positional embedding.

  Returns the concatenated head outputs [B, C]; CLIP's output projection (`c_proj`) is the two-tower model's image
  projection. q, k and v start at N(0, 1/C) (`fan_in_normal`).
  """

  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height * width, channels)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    pos = self.param("positional_embedding", nn.initializers.normal(channels**-0.5), (x.shape[1], channels))
    x = x + pos.astype(x.dtype)
    head_dim = channels // self.heads
    split = lambda t: t.reshape(batch, -1, self.heads, head_dim)
    dense = lambda name: nn.Dense(channels, dtype=self.dtype, kernel_init=fan_in_normal, name=name)
    q = split(dense("q_proj")(x[:, :1]))
    k = split(dense("k_proj")(x))
    v = split(dense("v_proj")(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, channels)


class ModifiedResNet(nn.Module):
  """Image [B, H, W, 3] → attention-pooled feature [B, 32·width]."""

  stage_blocks: Sequence[int]
  width: int = 64
  heads: int | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = images.astype(self.dtype)
    for i, (features, stride) in enumerate([(self.width // 2, 2), (self.width // 2, 1), (self.width, 1)], 1):
      x = nn.Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=self.dtype,
        name=f"stem_conv{i}",
      )(x)
      x = nn.relu(_batch_norm(train, self.dtype, f"stem_bn{i}")(x))
    x = _avg_pool(x, 2)
    for stage, blocks in enumerate(self.stage_blocks):
      for block in range(blocks):
        stride = 2 if (stage > 0 and block == 0) else 1
        x = Bottleneck(self.width * 2**stage, stride, self.dtype, name=f"layer{stage + 1}_{block}")(x, train)
    heads = self.heads or self.width * 32 // 64
    return AttentionPool(heads, self.dtype, name="attnpool")(x)
