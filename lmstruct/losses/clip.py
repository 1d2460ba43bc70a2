"""CLIP's symmetric InfoNCE loss (Radford et al. 2021)."""
import jax

from lmstruct.losses.common import cross_entropy_with_diagonal, scaled_similarity


def clip_loss(zv: jax.Array, zt: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """L_CLIP = ½[CE(s·Zv·Ztᵀ) + CE(s·Zt·Zvᵀ)].

  Each image's positive is its own caption and its negatives are every other caption of the (global) batch, and
  vice versa.
  """
  logits = scaled_similarity(zv, zt, logit_scale)
  return 0.5 * (cross_entropy_with_diagonal(logits) + cross_entropy_with_diagonal(logits.T))
