"""Geometric consistency L_GC + L_GC^a (paper §4.3), a generalisation of CyCLIP's symmetry regularisers."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32


def crossmodal_symmetry_error(zv: jax.Array, zt: jax.Array) -> jax.Array:
  """(1/N) Σ_j Σ_k (⟨zv_j, zt_k⟩ − ⟨zv_k, zt_j⟩)²: asymmetry of the cross-modal similarity matrix."""
  zv, zt = as_float32(zv, zt)
  cross = zv @ zt.T
  return jnp.sum(jnp.square(cross - cross.T)) / zv.shape[0]


def similarity_structure_error(a: jax.Array, b: jax.Array) -> jax.Array:
  """(1/N) Σ_j Σ_k (⟨a_j, a_k⟩ − ⟨b_j, b_k⟩)²: difference of the two in-set similarity structures."""
  a, b = as_float32(a, b)
  return jnp.sum(jnp.square(a @ a.T - b @ b.T)) / a.shape[0]


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
