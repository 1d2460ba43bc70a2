"""CyCLIP's cyclic-consistency regulariser (Goel et al. 2022), the baseline the paper compares against."""
import jax

from lmstruct.losses.geometric import crossmodal_symmetry_error, similarity_structure_error


def cyclip_loss(zv: jax.Array, zt: jax.Array, inmodal_weight: float = 0.25,
                crossmodal_weight: float = 0.25) -> jax.Array:
  """λ_cross·(1/N) Σ_jk (⟨zv_j, zt_k⟩ − ⟨zv_k, zt_j⟩)² + λ_in·(1/N) Σ_jk (⟨zv_j, zv_k⟩ − ⟨zt_j, zt_k⟩)².

  The two halves of L_GC, weighted (CyCLIP's defaults λ = 0.25 each).
  """
  return (crossmodal_weight * crossmodal_symmetry_error(zv, zt)
          + inmodal_weight * similarity_structure_error(zv, zt))
