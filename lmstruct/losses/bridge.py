"""Brownian-bridge regulariser L_Br (paper §4.2): the augmented image lies on the bridge from image to text."""
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32, l2_normalize
from lmstruct.losses.term import Option, RingForm, ShardView, Term


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


def parse_bridge_time(value: Any) -> float | str:
  """`objective.bridge_t`: a number in [0, 1] (the paper's 0.25), or 'uniform' for t ~ U(0, 1) per example."""
  if value == "uniform":
    return "uniform"
  if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
    return float(value)
  raise ValueError(f"objective.bridge_t must be a number in [0, 1] or 'uniform', got {value!r}")


def bridge_times(t: float | str, batch_size: int, rng: jax.Array) -> float | jax.Array:
  """The bridge time of every example: the constant `t`, or one draw from U(0, 1) per example when 'uniform'."""
  if t == "uniform":
    return jax.random.uniform(rng, (batch_size,))
  return float(t)


def _bridge_from_shard(shard: ShardView, option: float | str, draw: jax.Array) -> jax.Array:
  """L_Br = (1/B) Σ_j ‖zv_aug_j − μ(zv_j, zt_j, t_j)‖², a global mean; `draw` holds this device's rows of t."""
  f = shard.local
  return shard.mean(brownian_bridge_loss(f["zv"], f["zt"], f["zv_aug"], draw))


TERMS = (
    Term(name="bridge", role="regularizer", reads=("zv", "zt", "zv_aug"),
         formula=lambda f, option, draw: brownian_bridge_loss(f.zv, f.zt, f.zv_aug, draw),
         ring=RingForm(combine=_bridge_from_shard),
         option=Option(key="bridge_t", default=0.25, parse=parse_bridge_time), draw=bridge_times),
)
