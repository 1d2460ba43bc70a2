"""The CLIP-style two-tower model with shared and independent projection heads."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.losses.common import l2_normalize
from lmstruct.models.layers import fan_in_normal

MAX_LOGIT_SCALE = 100.0


def clamped_logit_scale(log_logit_scale: jax.Array, max_scale: float = MAX_LOGIT_SCALE) -> jax.Array:
  """s = exp(min(log s, log s_max)): CLIP's learnable inverse temperature, clamped to at most s_max = 100."""
  return jnp.exp(jnp.minimum(log_logit_scale, math.log(max_scale)))


class TwoTower(nn.Module):
  """Embeds images and/or texts into one L2-normalised space (see docs/contracts.md for the output keys).

  image features zv = normalize(P_v · f_v(image)), text features zt = normalize(P_t · f_t(text)); with
  `independent_heads`, parallel projections Q_v, Q_t on the same pooled features give the independent features
  zv_ind = normalize(Q_v · f_v(image)), zt_ind = normalize(Q_t · f_t(text)) of the paper's deep feature separation.
  Every projection starts at N(0, 1/fan_in), as CLIP's (ViT `proj` and `text_projection` at width^-½, a ResNet's
  attention-pool `c_proj` at in_features^-½); biases at zero.
  """
  image_tower: nn.Module
  text_tower: nn.Module
  embed_dim: int
  independent_heads: bool = True
  image_projection_bias: bool = False
  init_logit_scale: float = 1 / 0.07
  init_logit_bias: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    dense = lambda bias, name: nn.Dense(self.embed_dim, use_bias=bias, dtype=self.dtype, name=name,
                                        kernel_init=fan_in_normal)
    self.image_projection = dense(self.image_projection_bias, "image_projection")
    self.text_projection = dense(False, "text_projection")
    if self.independent_heads:
      self.image_projection_ind = dense(self.image_projection_bias, "image_projection_ind")
      self.text_projection_ind = dense(False, "text_projection_ind")
    self.log_logit_scale = self.param("log_logit_scale", nn.initializers.constant(math.log(self.init_logit_scale)),
                                      ())
    self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.init_logit_bias), ())

  def encode_image(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """{'zv': [N, D]} and, with independent heads, {'zv_ind': [N, D]} (float32, unit norm), plus the pooled
    image-tower output before any projection, {'hv': [N, W]} (float32, not normalised): the "learned visual
    encoder" features that linear probes read."""
    pooled = self.image_tower(images, train=train)
    out = {"zv": l2_normalize(self.image_projection(pooled).astype(jnp.float32)), "hv": pooled.astype(jnp.float32)}
    if self.independent_heads:
      out["zv_ind"] = l2_normalize(self.image_projection_ind(pooled).astype(jnp.float32))
    return out

  def encode_text(self, tokens: jax.Array) -> dict[str, jax.Array]:
    """{'zt': [N, D]} and, with independent heads, {'zt_ind': [N, D]}; float32, unit norm."""
    pooled = self.text_tower(tokens)
    out = {"zt": l2_normalize(self.text_projection(pooled).astype(jnp.float32))}
    if self.independent_heads:
      out["zt_ind"] = l2_normalize(self.text_projection_ind(pooled).astype(jnp.float32))
    return out

  def __call__(self, images: jax.Array | None = None, texts: jax.Array | None = None,
               train: bool = False) -> dict[str, jax.Array]:
    """Features of whichever modalities are given, plus `logit_scale` (clamped) and `logit_bias`."""
    if images is None and texts is None:
      raise ValueError("TwoTower needs images, texts or both")
    out = {"logit_scale": clamped_logit_scale(self.log_logit_scale), "logit_bias": self.logit_bias}
    if images is not None:
      out.update(self.encode_image(images, train=train))
    if texts is not None:
      out.update(self.encode_text(texts))
    return out
