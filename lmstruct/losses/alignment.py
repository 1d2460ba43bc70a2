"""Alignment losses for the gap study (paper §3.1): the paper's printed L_Align, and a well-posed reading of it.

The study adds λ·L_Align to the objective to shrink the modality gap, measured as the mean distance between paired
features, (1/N) Σ_j ‖zv_j − zt_j‖.
"""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32
from lmstruct.losses.term import RingForm, Term


def alignment_loss(zv: jax.Array, zt: jax.Array) -> jax.Array:
  """L_Align = (1/N) Σ_j 1/⟨zv_j, zt_j⟩², as printed: large while paired features are far from (anti-)parallel."""
  zv, zt = as_float32(zv, zt)
  return jnp.mean(1.0 / jnp.square(jnp.sum(zv * zt, -1)))


def gap_alignment_loss(zv: jax.Array, zt: jax.Array) -> jax.Array:
  """L_gap = (1/N) Σ_j ‖zv_j − zt_j‖² = (2/N) Σ_j (1 − ⟨zv_j, zt_j⟩) for unit features, in [0, 4].

  The well-posed reading of L_Align used by the gap study. The printed (1/N) Σ 1/⟨zv_j, zt_j⟩² is ill-posed as a
  training objective:
  - it is unbounded near ⟨zv_j, zt_j⟩ = 0, which is where training starts: at initialisation in D = 1024
    dimensions ⟨zv_j, zt_j⟩ ~ N(0, 1/D), the expectation of 1/⟨⟩² is infinite, and a batch of 128 random pairs
    gives values from 10⁴ to 10⁷ (five seeds), set by the one pair closest to orthogonal, with gradients to match;
  - it is minimised at ⟨zv_j, zt_j⟩ = −1 as well as at +1, so it can pull captions to the antipode of their image,
    which widens the paired distance it is meant to shrink.
  The mean squared paired distance is finite everywhere (2 at initialisation, where ⟨⟩ ≈ 0), has its only
  minimum at ⟨zv_j, zt_j⟩ = 1 (zv_j = zt_j) and grows monotonically with the angle between the pair. It is the
  mean of the squares of the distances whose mean is the paper's gap measure, so its square root bounds that gap
  from above (Jensen) and both vanish together.
  """
  zv, zt = as_float32(zv, zt)
  return jnp.mean(jnp.sum(jnp.square(zv - zt), axis=-1))


TERMS = (
    Term(name="alignment", role="regularizer", reads=("zv", "zt"),
         formula=lambda f, option, draw: alignment_loss(f.zv, f.zt),
         ring=RingForm(combine=lambda shard, option, draw: shard.mean(
             alignment_loss(shard.local["zv"], shard.local["zt"])))),
    Term(name="gap_alignment", role="regularizer", reads=("zv", "zt"),
         formula=lambda f, option, draw: gap_alignment_loss(f.zv, f.zt),
         ring=RingForm(combine=lambda shard, option, draw: shard.mean(
             gap_alignment_loss(shard.local["zv"], shard.local["zt"])))),
)
