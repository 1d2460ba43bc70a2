"""CLIP's Vision Transformer image tower (Dosovitskiy et al. 2021; Radford et al. 2021 layout)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.models.layers import PatchEmbedding, Transformer

VIT_SIZES: dict[str, dict[str, int]] = {
  # name: width, layers, heads, patch
  "test": dict(width=32, layers=2, heads=2, patch=8),
  "tiny": dict(width=256, layers=6, heads=4, patch=8),
  "S/16": dict(width=384, layers=12, heads=6, patch=16),
  "B/32": dict(width=768, layers=12, heads=12, patch=32),
  "B/16": dict(width=768, layers=12, heads=12, patch=16),
  "L/14": dict(width=1024, layers=24, heads=16, patch=14),
}


class VisionTransformer(nn.Module):
  """Image [B, H, W, 3] → pooled feature [B, width], or with `all_tokens` every token [B, 1 + patches, width].

  conv patch embedding (no bias) → prepend class token → + learned positional embedding → LN_pre → pre-LN
  transformer → LN_post on the class token (on every token with `all_tokens`, as a fusion model reads them; LN is per
  token, so the class token is the same either way). The projection to the shared space lives in the model.
  Initialised as open_clip: class and positional embeddings ~ w^-½·N(0, 1); blocks keep PyTorch's defaults
  (`torch_default_block_init`).
  """

  width: int
  layers: int
  heads: int
  patch: int
  activation: str = "gelu"
  remat_policy: str = "none"
  scan_layers: bool = False
  all_tokens: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    """`train` is part of the image-tower interface (the ResNet's batch norm uses it); the ViT has no
    train-time behaviour."""
    del train
    x = PatchEmbedding(self.width, self.patch, dtype=self.dtype, name="patch_embed")(images.astype(self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.width)
    scale = self.width**-0.5
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), x], axis=1)
    pos = self.param("positional_embedding", nn.initializers.normal(scale), (x.shape[1], self.width))
    x = x + pos.astype(self.dtype)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_pre")(x)
    x = Transformer(
      self.layers, self.heads, self.activation, self.remat_policy, self.scan_layers, self.dtype, name="transformer"
    )(x)
    ln_post = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_post")
    return ln_post(x) if self.all_tokens else ln_post(x[:, 0])
