"""Deep feature separation L_Sep (paper §4.1): independent features that are orthogonal, contrastive and uniform."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32, cross_entropy_with_diagonal, scaled_similarity
from lmstruct.losses.term import PairSum, RingForm, ShardView, Term


def orthogonality_loss(zv: jax.Array, zt: jax.Array, zv_ind: jax.Array, zt_ind: jax.Array) -> jax.Array:
  """L_ortho = (1/N) Σ_j (⟨zv_j, zv_ind_j⟩² + ⟨zt_j, zt_ind_j⟩²)."""
  zv, zt, zv_ind, zt_ind = as_float32(zv, zt, zv_ind, zt_ind)
  return jnp.mean(jnp.sum(zv * zv_ind, -1) ** 2 + jnp.sum(zt * zt_ind, -1) ** 2)


def independent_contrastive_loss(zv_ind: jax.Array, zt_ind: jax.Array, zv_ind_aug: jax.Array,
                                 zt_ind_aug: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """L_con_i = CE(s·Zv_ind·Zv_ind_augᵀ) + CE(s·Zt_ind·Zt_ind_augᵀ).

  Reading of the paper: its numerator ⟨z_i_Vj, z_i_Vj⟩ is a self-similarity (a constant for unit vectors), a typo;
  the positive is the independent feature of the same example's augmented view and the negatives are the other
  examples' augmented independent features.
  """
  return (cross_entropy_with_diagonal(scaled_similarity(zv_ind, zv_ind_aug, logit_scale))
          + cross_entropy_with_diagonal(scaled_similarity(zt_ind, zt_ind_aug, logit_scale)))


def gaussian_potential_between(a: jax.Array, b: jax.Array, t: float = 2.0) -> jax.Array:
  """Σ_j Σ_k G(a_j, b_k) with G(u, v) = exp(−t‖u − v‖²); for unit vectors ‖u − v‖² = max(2 − 2⟨u, v⟩, 0)."""
  squared_distances = jnp.maximum(2.0 - 2.0 * (a @ b.T), 0.0)
  return jnp.sum(jnp.exp(-t * squared_distances))


def gaussian_potential_sum(z: jax.Array, t: float = 2.0) -> jax.Array:
  """Σ_j Σ_k G(z_j, z_k) with G(u, v) = exp(−t‖u − v‖²) over all pairs of the batch."""
  (z,) = as_float32(z)
  return gaussian_potential_between(z, z, t)


def independent_uniformity_loss(zv_ind: jax.Array, zt_ind: jax.Array, t: float = 2.0) -> jax.Array:
  """L_uni_i = log[(1/N²) Σ_j Σ_k (G(zv_ind_j, zv_ind_k) + G(zt_ind_j, zt_ind_k))], G(u, v) = exp(−2‖u − v‖²).

  The paper writes 1/N; 1/N² (Wang & Isola's mean) only shifts the value by log N and leaves gradients unchanged.
  """
  n = zv_ind.shape[0]
  return jnp.log((gaussian_potential_sum(zv_ind, t) + gaussian_potential_sum(zt_ind, t)) / (n * n))


def separation_loss(zv: jax.Array, zt: jax.Array, zv_ind: jax.Array, zt_ind: jax.Array, zv_ind_aug: jax.Array,
                    zt_ind_aug: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """L_Sep = L_ortho + L_con_i + L_uni_i (unit weights inside, as in the paper)."""
  return (orthogonality_loss(zv, zt, zv_ind, zt_ind)
          + independent_contrastive_loss(zv_ind, zt_ind, zv_ind_aug, zt_ind_aug, logit_scale)
          + independent_uniformity_loss(zv_ind, zt_ind))


def _potential_pairs(key: str) -> PairSum:
  """Σ_j Σ_k G(z_j, z_k) over the global batch for z = features[key], block by block."""
  return PairSum(name=f"gaussian_potential_{key}", visiting=(key,),
                 block=lambda rows, cols, params, own: gaussian_potential_between(rows[key], cols[key]))


def _separation_from_shard(shard: ShardView, option: None, draw: None) -> jax.Array:
  """L_Sep = L_ortho + CE(s·Zv_ind·Zv_ind_augᵀ) + CE(s·Zt_ind·Zt_ind_augᵀ) + log[(1/B²) Σ_jk (G_v + G_t)]: the
  orthogonality as a global mean, the rest from the global cross-entropies and potential sums."""
  f, ce, sums = shard.local, shard.cross_entropy, shard.pair_sums
  orthogonality = shard.mean(orthogonality_loss(f["zv"], f["zt"], f["zv_ind"], f["zt_ind"]))
  potential = sums["gaussian_potential_zv_ind"] + sums["gaussian_potential_zt_ind"]
  uniformity = jnp.log(potential / shard.batch_size ** 2)
  return orthogonality + ce["zv_ind", "zv_ind_aug"] + ce["zt_ind", "zt_ind_aug"] + uniformity


TERMS = (
    Term(name="separation", role="regularizer",
         reads=("zv", "zt", "zv_ind", "zt_ind", "zv_ind_aug", "zt_ind_aug", "logit_scale"),
         formula=lambda f, option, draw: separation_loss(f.zv, f.zt, f.zv_ind, f.zt_ind, f.zv_ind_aug, f.zt_ind_aug,
                                                         f.logit_scale),
         ring=RingForm(combine=_separation_from_shard,
                       cross_entropies=(("zv_ind", "zv_ind_aug"), ("zt_ind", "zt_ind_aug")),
                       pair_sums=(_potential_pairs("zv_ind"), _potential_pairs("zt_ind")))),
)
