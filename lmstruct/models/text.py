"""CLIP's causal text transformer tower."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.models.layers import Transformer, clip_text_block_init

TEXT_SIZES: dict[str, dict[str, int]] = {
  # name: width, layers, heads
  "test": dict(width=32, layers=2, heads=2),
  "tiny": dict(width=256, layers=6, heads=4),
  "B": dict(width=512, layers=12, heads=8),
  "L": dict(width=768, layers=12, heads=12),
}


def end_of_text_positions(tokens: jax.Array, eot_token_id: int) -> jax.Array:
  """Index of the first end-of-text token of each sequence [B] (the last index when a sequence has none)."""
  is_eot = tokens == eot_token_id
  return jnp.where(is_eot.any(-1), jnp.argmax(is_eot, axis=-1), tokens.shape[-1] - 1)


class TextTransformer(nn.Module):
  """Token ids [B, L] → pooled feature [B, width].

  token embedding + learned positional embedding → causal pre-LN transformer → LN_final → the hidden state at the
  end-of-text token. The projection to the shared space lives in the two-tower model. Initialised as CLIP: token
  embedding ~ N(0, 0.02²), positional ~ N(0, 0.01²), blocks by `clip_text_block_init`.
  """

  width: int
  layers: int
  heads: int
  vocab_size: int = 49408
  context_length: int = 77
  eot_token_id: int = 49407
  activation: str = "gelu"
  remat_policy: str = "none"
  scan_layers: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.context_length:
      raise ValueError(f"token sequences of length {length} exceed the context length {self.context_length}")
    x = nn.Embed(
      self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02), dtype=self.dtype, name="token_embedding"
    )(tokens)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01), (self.context_length, self.width))
    x = x + pos[:length].astype(self.dtype)
    causal = nn.make_causal_mask(jnp.ones(tokens.shape, jnp.bool_), dtype=jnp.bool_)
    x = Transformer(
      self.layers,
      self.heads,
      self.activation,
      self.remat_policy,
      self.scan_layers,
      self.dtype,
      block_init=clip_text_block_init(self.width, self.layers),
      name="transformer",
    )(x, causal)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_final")(x)
    positions = end_of_text_positions(tokens, self.eot_token_id)
    return jnp.take_along_axis(x, positions[:, None, None], axis=1)[:, 0]
