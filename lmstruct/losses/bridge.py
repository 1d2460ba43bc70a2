"""Brownian-bridge regulariser L_Br (paper §4.2): the augmented image lies on the bridge from image to text."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32, l2_normalize


def bridge_mean(zv: jax.Array, zt: jax.Array, t: float | jax.Array = 0.25) -> jax.Array:
  """μ(zv, zt, t) = (t·zv + (1 − t)·zt) / ‖t·zv + (1 − t)·zt‖; `t` is a scalar or one value per example [N]."""
  zv, zt = as_float32(zv, zt)
  t = jnp.asarray(t, jnp.float32)
  if t.ndim == 1:
    t = t[:, None]
  return l2_normalize(t * zv + (1.0 - t) * zt)


def brownian_bridge_loss(zv: jax.Array, zt: jax.Array, zv_aug: jax.Array, t: float | jax.Array = 0.25) -> jax.Array:
  """L_Br = (1/N) Σ_j ‖zv_aug_j − μ(zv_j, zt_j, t)‖².

  Reading of the paper: its closed form has a sign error and drops a square root, so the squared distance itself is
  minimised. Gradients flow into all three inputs (no end point is detached). The paper fixes t = 0.25 (μ is a
  quarter of the way from the text toward the image); pass t of shape [N], e.g. drawn from U(0, 1), to sample it
  per example.
  """
  (zv_aug,) = as_float32(zv_aug)
  return jnp.mean(jnp.sum(jnp.square(zv_aug - bridge_mean(zv, zt, t)), axis=-1))
