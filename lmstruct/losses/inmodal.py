"""The paper's base loss L_Con: cross-modal plus in-modal InfoNCE (CyCLIP's `--inmodal` form)."""
import jax

from lmstruct.losses.common import cross_entropy_with_diagonal, scaled_similarity
from lmstruct.losses.term import RingForm, ShardView, Term


def inmodal_contrastive_loss(zv: jax.Array, zt: jax.Array, zv_aug: jax.Array, zt_aug: jax.Array,
                             logit_scale: jax.Array) -> jax.Array:
  """L_Con = ¼[CE(s·Zv·Ztᵀ) + CE(s·Zt·Zvᵀ) + CE(s·Zv·Zv_augᵀ) + CE(s·Zt·Zt_augᵀ)].

  Reading of the paper (§4, L_V2V): the printed denominator Σ_k exp(⟨z_Vj, z_Vk⟩/τ) is a typo; as in CyCLIP's
  code, the negatives of the in-modal terms are the *augmented views* of the other examples, so the in-modal
  logits are s·Zv·Zv_augᵀ with the diagonal as target.
  """
  cross = scaled_similarity(zv, zt, logit_scale)
  image_inmodal = scaled_similarity(zv, zv_aug, logit_scale)
  text_inmodal = scaled_similarity(zt, zt_aug, logit_scale)
  return 0.25 * (cross_entropy_with_diagonal(cross) + cross_entropy_with_diagonal(cross.T)
                 + cross_entropy_with_diagonal(image_inmodal) + cross_entropy_with_diagonal(text_inmodal))


def _inmodal_from_shard(shard: ShardView, option: None, draw: None) -> jax.Array:
  """L_Con = ¼[CE(s·Zv·Ztᵀ) + CE(s·Zt·Zvᵀ) + CE(s·Zv·Zv_augᵀ) + CE(s·Zt·Zt_augᵀ)] from the global cross-entropies."""
  ce = shard.cross_entropy
  return 0.25 * (ce["zv", "zt"] + ce["zt", "zv"] + ce["zv", "zv_aug"] + ce["zt", "zt_aug"])


TERMS = (
    Term(name="inmodal", role="base", reads=("zv", "zt", "zv_aug", "zt_aug", "logit_scale"),
         formula=lambda f, option, draw: inmodal_contrastive_loss(f.zv, f.zt, f.zv_aug, f.zt_aug, f.logit_scale),
         ring=RingForm(combine=_inmodal_from_shard,
                       cross_entropies=(("zv", "zt"), ("zt", "zv"), ("zv", "zv_aug"), ("zt", "zt_aug")))),
)
