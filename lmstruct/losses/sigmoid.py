"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), an alternative base loss."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32


def sigmoid_loss(zv: jax.Array, zt: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array) -> jax.Array:
  """L_sig = −(1/N) Σ_j Σ_k log σ(y_jk · (s·⟨zv_j, zt_k⟩ + b)), y_jk = +1 if j = k else −1."""
  zv, zt, logit_scale, logit_bias = as_float32(zv, zt, logit_scale, logit_bias)
  logits = logit_scale * (zv @ zt.T) + logit_bias
  signs = 2.0 * jnp.eye(zv.shape[0], dtype=jnp.float32) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / zv.shape[0]
