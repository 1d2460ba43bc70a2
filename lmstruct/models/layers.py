"""Transformer building blocks shared by the image and text towers (CLIP layout, pre-LayerNorm)."""
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def quick_gelu(x: jax.Array) -> jax.Array:
  """QuickGELU(x) = x · σ(1.702 x), the approximation OpenAI's CLIP was trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
  """GELU(x) = x · Φ(x) with the exact error function (PyTorch's nn.GELU default)."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"quick_gelu": quick_gelu, "gelu": exact_gelu}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation registered under `name`; unknown names list the valid ones."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid choices: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class MultiHeadAttention(nn.Module):
  """softmax(Q Kᵀ / √d_head + mask) V over `heads` heads, with packed QKV projection and an output projection.

  `qkv` has kernel [width, 3·width] (query, key, value blocks in that order, as in PyTorch's packed `in_proj`).
  The softmax is computed in float32.
  """
  heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    return nn.Dense(width, dtype=self.dtype, name="out")(out)


class MlpBlock(nn.Module):
  """Dense(4·width) → activation → Dense(width)."""
  activation: str = "gelu"
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = nn.Dense(int(width * self.mlp_ratio), dtype=self.dtype, name="fc")(x)
    h = get_activation(self.activation)(h)
    return nn.Dense(width, dtype=self.dtype, name="proj")(h)


class ResidualBlock(nn.Module):
  """x ← x + Attn(LN₁(x)); x ← x + MLP(LN₂(x))."""
  heads: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + MultiHeadAttention(self.heads, dtype=self.dtype, name="attn")(
        nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_1")(x), mask)
    return x + MlpBlock(self.activation, dtype=self.dtype, name="mlp")(
        nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_2")(x))


class Transformer(nn.Module):
  """`layers` residual blocks; with `remat`, each block's activations are recomputed in the backward pass."""
  layers: int
  heads: int
  activation: str = "gelu"
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    block = nn.remat(ResidualBlock) if self.remat else ResidualBlock
    for i in range(self.layers):
      x = block(self.heads, self.activation, dtype=self.dtype, name=f"block_{i}")(x, mask)
    return x
