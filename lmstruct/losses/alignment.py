"""The paper's alignment loss L_Align (§3.1), used to shrink the modality gap in its gap study."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32


def alignment_loss(zv: jax.Array, zt: jax.Array) -> jax.Array:
  """L_Align = (1/N) Σ_j 1/⟨zv_j, zt_j⟩²: large while paired features are far from (anti-)parallel."""
  zv, zt = as_float32(zv, zt)
  return jnp.mean(1.0 / jnp.square(jnp.sum(zv * zt, -1)))
