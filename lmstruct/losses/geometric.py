"""Geometric consistency L_GC + L_GC^a (paper §4.3), a generalisation of CyCLIP's symmetry regularisers."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32
from lmstruct.losses.term import PairSum, RingForm, ShardView, Term


def crossmodal_symmetry_error(zv: jax.Array, zt: jax.Array) -> jax.Array:
  """(1/N) Σ_j Σ_k (⟨zv_j, zt_k⟩ − ⟨zv_k, zt_j⟩)²: asymmetry of the cross-modal similarity matrix."""
  zv, zt = as_float32(zv, zt)
  cross = zv @ zt.T
  return jnp.sum(jnp.square(cross - cross.T)) / zv.shape[0]


def similarity_structure_sum(a_rows: jax.Array, a_cols: jax.Array, b_rows: jax.Array, b_cols: jax.Array) -> jax.Array:
  """Σ_j Σ_k (⟨a_j, a_k⟩ − ⟨b_j, b_k⟩)² over the block of rows j and columns k."""
  return jnp.sum(jnp.square(a_rows @ a_cols.T - b_rows @ b_cols.T))


def similarity_structure_error(a: jax.Array, b: jax.Array) -> jax.Array:
  """(1/N) Σ_j Σ_k (⟨a_j, a_k⟩ − ⟨b_j, b_k⟩)²: difference of the two in-set similarity structures."""
  a, b = as_float32(a, b)
  return similarity_structure_sum(a, a, b, b) / a.shape[0]


def paired_similarity_error(zv: jax.Array, zt: jax.Array, zv_aug: jax.Array, zt_aug: jax.Array) -> jax.Array:
  """(1/N) Σ_j (⟨zv_j, zt_j⟩ − ⟨zv_aug_j, zt_aug_j⟩)²."""
  zv, zt, zv_aug, zt_aug = as_float32(zv, zt, zv_aug, zt_aug)
  return jnp.mean(jnp.square(jnp.sum(zv * zt, -1) - jnp.sum(zv_aug * zt_aug, -1)))


def geometric_consistency_loss(zv: jax.Array, zt: jax.Array, zv_aug: jax.Array, zt_aug: jax.Array) -> jax.Array:
  """L_GC + L_GC^a with

  L_GC   = (1/N) Σ_j Σ_k [(⟨zv_j, zt_k⟩ − ⟨zv_k, zt_j⟩)² + (⟨zv_j, zv_k⟩ − ⟨zt_j, zt_k⟩)²],
  L_GC^a = (1/N) Σ_j Σ_k [(⟨zv_j, zv_k⟩ − ⟨zv_aug_j, zv_aug_k⟩)² + (⟨zt_j, zt_k⟩ − ⟨zt_aug_j, zt_aug_k⟩)²]
           + (1/N) Σ_j (⟨zv_j, zt_j⟩ − ⟨zv_aug_j, zt_aug_j⟩)².
  """
  consistency = crossmodal_symmetry_error(zv, zt) + similarity_structure_error(zv, zt)
  augmented = (similarity_structure_error(zv, zv_aug) + similarity_structure_error(zt, zt_aug)
               + paired_similarity_error(zv, zt, zv_aug, zt_aug))
  return consistency + augmented


# The pair sums of the ring form, block by block (rows: this device's features, cols: a visiting block).
CROSSMODAL_SYMMETRY_PAIRS = PairSum(
    name="crossmodal_symmetry", visiting=("zv", "zt"),
    block=lambda rows, cols, params, own: jnp.sum(jnp.square(rows["zv"] @ cols["zt"].T - rows["zt"] @ cols["zv"].T)))


def structure_pairs(a: str, b: str) -> PairSum:
  """Σ_j Σ_k (⟨a_j, a_k⟩ − ⟨b_j, b_k⟩)² over the global batch for a = features[a], b = features[b]."""
  return PairSum(name=f"structure_{a}_{b}", visiting=(a, b),
                 block=lambda rows, cols, params, own: similarity_structure_sum(rows[a], cols[a], rows[b], cols[b]))


STRUCTURE_PAIRS = structure_pairs("zv", "zt")


def _geometric_from_shard(shard: ShardView, option: None, draw: None) -> jax.Array:
  """L_GC + L_GC^a: the four pair sums over B, plus the global mean paired similarity error."""
  s, f = shard.pair_sums, shard.local
  consistency = (s["crossmodal_symmetry"] + s["structure_zv_zt"]) / shard.batch_size
  augmented = (s["structure_zv_zv_aug"] + s["structure_zt_zt_aug"]) / shard.batch_size + shard.mean(
      paired_similarity_error(f["zv"], f["zt"], f["zv_aug"], f["zt_aug"]))
  return consistency + augmented


TERMS = (
    Term(name="geometric", role="regularizer", reads=("zv", "zt", "zv_aug", "zt_aug"),
         formula=lambda f, option, draw: geometric_consistency_loss(f.zv, f.zt, f.zv_aug, f.zt_aug),
         ring=RingForm(combine=_geometric_from_shard,
                       pair_sums=(CROSSMODAL_SYMMETRY_PAIRS, STRUCTURE_PAIRS, structure_pairs("zv", "zv_aug"),
                                  structure_pairs("zt", "zt_aug")))),
)
