"""CLIP's symmetric InfoNCE loss (Radford et al. 2021)."""
import jax

from lmstruct.losses.common import cross_entropy_with_diagonal, scaled_similarity
from lmstruct.losses.term import RingForm, ShardView, Term


def clip_loss(zv: jax.Array, zt: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """L_CLIP = ½[CE(s·Zv·Ztᵀ) + CE(s·Zt·Zvᵀ)].

  Each image's positive is its own caption and its negatives are every other caption of the (global) batch, and
  vice versa.
  """
  logits = scaled_similarity(zv, zt, logit_scale)
  return 0.5 * (cross_entropy_with_diagonal(logits) + cross_entropy_with_diagonal(logits.T))


def _clip_from_shard(shard: ShardView, option: None, draw: None) -> jax.Array:
  """L_CLIP = ½[CE(s·Zv·Ztᵀ) + CE(s·Zt·Zvᵀ)] from the two global cross-entropies."""
  ce = shard.cross_entropy
  return 0.5 * (ce["zv", "zt"] + ce["zt", "zv"])


TERMS = (
    Term(name="clip", role="base", reads=("zv", "zt", "logit_scale"),
         formula=lambda f, option, draw: clip_loss(f.zv, f.zt, f.logit_scale),
         ring=RingForm(combine=_clip_from_shard, cross_entropies=(("zv", "zt"), ("zt", "zv")))),
)
