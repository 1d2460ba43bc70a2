"""The CPU-specific forms of the transformer's building blocks compute the same function as the plain ones.

References are float64 NumPy on the same (bfloat16-rounded) inputs: a bf16 product with float32 accumulation must
equal the exact product rounded once to bf16, and its gradients the exact gradient products rounded likewise.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.models.layers import Dense, PatchEmbedding, exact_gelu, matmul_einsum

BF16_EPS = 2.0**-8  # bfloat16's unit roundoff (8 significand bits)


def bf16_normal(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(jnp.bfloat16)


def f64(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def assert_rounded_once(got, exact, factor=2.0):
  """|got − exact| ≤ factor · eps_bf16 · |exact| + a small absolute floor (sums that cancel to near zero)."""
  got, exact = f64(got), np.asarray(exact, np.float64)
  floor = factor * BF16_EPS * np.abs(exact).max() * 1e-2
  np.testing.assert_array_less(np.abs(got - exact), factor * BF16_EPS * np.abs(exact) + floor)


@pytest.mark.parametrize(
  "spec, shape_a, shape_b",
  [
    ("bqhd,bkhd->bhqk", (2, 5, 3, 8), (2, 7, 3, 8)),  # attention logits: both operands transposed
    ("bhqk,bkhd->bqhd", (2, 3, 5, 7), (2, 7, 3, 8)),  # attention output: transposed rhs and result
    ("ny,yz->nz", (6, 16), (16, 12)),  # a dense layer
  ],
)
def test_bf16_matmul_einsum_value_and_gradients_are_exact_products_rounded_once(spec, shape_a, shape_b):
  a, b = bf16_normal(0, shape_a), bf16_normal(1, shape_b)
  out = matmul_einsum(spec, a, b)
  assert out.dtype == jnp.bfloat16
  assert_rounded_once(out, np.einsum(spec, f64(a), f64(b)))

  inputs, spec_out = spec.split("->")
  spec_a, spec_b = inputs.split(",")
  g = bf16_normal(2, out.shape)
  grad_a, grad_b = jax.vjp(lambda a, b: matmul_einsum(spec, a, b), a, b)[1](g)
  assert grad_a.dtype == grad_b.dtype == jnp.bfloat16
  assert_rounded_once(grad_a, np.einsum(f"{spec_out},{spec_b}->{spec_a}", f64(g), f64(b)))
  assert_rounded_once(grad_b, np.einsum(f"{spec_a},{spec_out}->{spec_b}", f64(a), f64(g)))


def test_float32_matmul_einsum_is_jnp_einsum():
  a = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
  b = jax.random.normal(jax.random.key(1), (2, 7, 3, 8))
  np.testing.assert_array_equal(matmul_einsum("bqhd,bkhd->bhqk", a, b), jnp.einsum("bqhd,bkhd->bhqk", a, b))


def test_dense_has_flax_dense_parameters_and_function():
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  ours, flax_dense = Dense(12), nn.Dense(12)
  params = ours.init(jax.random.key(1), x)
  reference_params = flax_dense.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference_params)
  np.testing.assert_array_equal(params["params"]["kernel"], reference_params["params"]["kernel"])
  params = {"params": {"kernel": params["params"]["kernel"], "bias": jnp.linspace(-1, 1, 12)}}
  np.testing.assert_allclose(ours.apply(params, x), flax_dense.apply(params, x), rtol=1e-6, atol=1e-6)


def test_bf16_dense_value_and_gradients_including_the_bias():
  x = bf16_normal(0, (3, 4, 16))
  kernel = jax.random.normal(jax.random.key(1), (16, 8))
  bias = jax.random.normal(jax.random.key(2), (8,))
  layer = Dense(8, dtype=jnp.bfloat16)
  params = {"params": {"kernel": kernel, "bias": bias}}
  kernel_16, bias_16 = f64(kernel.astype(jnp.bfloat16)), f64(bias.astype(jnp.bfloat16))

  def loss(params, x):
    return jnp.sum(layer.apply(params, x).astype(jnp.float32) * jnp.arange(8.0))

  out = layer.apply(params, x)
  assert out.dtype == jnp.bfloat16
  product = np.einsum("bly,yz->blz", f64(x), kernel_16)
  # Two roundings: the product (to bf16), then product + bias (to bf16).
  assert_rounded_once(out, product + bias_16, factor=4.0)

  grads, grad_x = jax.grad(loss, argnums=(0, 1))(params, x)
  upstream = np.broadcast_to(np.arange(8.0), (3, 4, 8))
  np.testing.assert_allclose(grads["params"]["bias"], upstream.sum((0, 1)), rtol=2 * BF16_EPS)
  assert_rounded_once(grads["params"]["kernel"], np.einsum("bly,blz->yz", f64(x), upstream))
  assert_rounded_once(grad_x, np.einsum("blz,yz->bly", upstream, kernel_16))


def test_patch_embedding_equals_a_strided_convolution_in_both_dtypes():
  images = jax.random.normal(jax.random.key(0), (2, 18, 18, 3))  # 18 = 2·8 + 2: the ragged border is dropped
  ours, conv = PatchEmbedding(6, 8), nn.Conv(6, (8, 8), strides=(8, 8), padding="VALID", use_bias=False)
  params = ours.init(jax.random.key(1), images)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, conv.init(jax.random.key(1), images))
  reference = conv.apply(params, images)
  np.testing.assert_allclose(ours.apply(params, images), reference, rtol=1e-5, atol=1e-5)

  images_16 = images.astype(jnp.bfloat16)
  out = PatchEmbedding(6, 8, dtype=jnp.bfloat16).apply(params, images_16)
  kernel_16 = f64(params["params"]["kernel"].astype(jnp.bfloat16))
  patches = f64(images_16)[:, :16, :16].reshape(2, 2, 8, 2, 8, 3).transpose(0, 1, 3, 2, 4, 5)
  assert_rounded_once(out, np.einsum("bhwijc,ijcd->bhwd", patches, kernel_16))


def test_exact_gelu_matches_the_error_function_in_float64():
  x = np.linspace(-8.0, 8.0, 2001)
  erf = np.vectorize(math.erf)
  expected = 0.5 * x * (1 + erf(x / math.sqrt(2)))
  slope = 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
  got = exact_gelu(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(exact_gelu))(jnp.asarray(x, jnp.float32)), slope, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, jax.nn.gelu(jnp.asarray(x, jnp.float32), approximate=False), atol=2e-6)
