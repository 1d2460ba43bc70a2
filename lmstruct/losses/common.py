"""Building blocks shared by the contrastive losses.

All losses in this package take L2-normalised features of shape [N, D] and compute in float32, whatever the
compute dtype of the model that produced them.
"""

import jax
import jax.numpy as jnp


def as_float32(*arrays: jax.Array) -> tuple[jax.Array, ...]:
  """Casts every array to float32 (loss math is always float32)."""
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(‖x‖₂, eps) along `axis`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def cross_entropy_with_diagonal(logits: jax.Array) -> jax.Array:
  """CE(M) = −(1/N) Σ_j log softmax(M_j)_j: mean cross-entropy of each row with its diagonal entry as target."""
  logits = jnp.asarray(logits, jnp.float32)
  log_normaliser = jax.nn.logsumexp(logits, axis=-1)
  return jnp.mean(log_normaliser - jnp.diagonal(logits))


def scaled_similarity(a: jax.Array, b: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """s · A · Bᵀ, the [N, N] matrix of scaled cosine similarities."""
  a, b, logit_scale = as_float32(a, b, logit_scale)
  return logit_scale * (a @ b.T)
