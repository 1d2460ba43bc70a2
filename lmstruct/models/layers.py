"""Transformer building blocks shared by the image and text towers (CLIP layout, pre-LayerNorm)."""

import dataclasses
import functools
import string
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lmstruct.choices import unknown_choice

Dtype = jnp.dtype
_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _product_f32_accumulate(spec_a: str, spec_b: str, spec_out: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum(f"{spec_a},{spec_b}->{spec_out}", a, b) as one dot with float32 accumulation, rounded to a.dtype.

  The operands are first put in the one layout every XLA:CPU GEMM kernel takes — lhs [batch…, free…, contracted…],
  rhs [batch…, contracted…, free…] or [batch…, free…, contracted…] — and a transposed operand is fenced with an
  optimization barrier so that XLA cannot fold the transpose back into the dot: a bf16×bf16→f32 dot with a
  transposed lhs is not taken by XLA:CPU's YNNPACK kernels, and its generic dot runtime has no bf16×bf16→f32 kernel.
  (A transposed result is fenced likewise, so that the transpose is not swapped into the operands.)
  """
  batch = [c for c in spec_a if c in spec_b and c in spec_out]
  contract = [c for c in spec_a if c in spec_b and c not in spec_out]
  free_a = [c for c in spec_a if c not in spec_b]
  free_b = [c for c in spec_b if c not in spec_a]

  def arrange(x: jax.Array, spec: str, order: list[str]) -> jax.Array:
    if list(spec) == order:
      return x
    return lax.optimization_barrier(jnp.transpose(x, [spec.index(c) for c in order]))

  a = arrange(a, spec_a, batch + free_a + contract)
  b_order = batch + free_b + contract if list(spec_b) == batch + free_b + contract else batch + contract + free_b
  b = arrange(b, spec_b, b_order)
  nb, nf, nc = len(batch), len(free_a), len(contract)
  b_contract = [b_order.index(c) for c in contract]
  out = lax.dot_general(
    a,
    b,
    ((tuple(range(nb + nf, nb + nf + nc)), tuple(b_contract)), (tuple(range(nb)), tuple(range(nb)))),
    preferred_element_type=jnp.float32,
  )
  produced = batch + free_a + [c for c in b_order if c in free_b]
  out = out.astype(a.dtype)
  if produced == list(spec_out):
    return out
  return jnp.transpose(lax.optimization_barrier(out), [produced.index(c) for c in spec_out])


def _split_spec(spec: str) -> tuple[str, str, str]:
  inputs, out = spec.split("->")
  spec_a, spec_b = inputs.split(",")
  return spec_a, spec_b, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32_accumulate(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  return _product_f32_accumulate(*_split_spec(spec), a, b)


def _einsum_f32_accumulate_fwd(spec: str, a: jax.Array, b: jax.Array):
  return _einsum_f32_accumulate(spec, a, b), (a, b)


def _einsum_f32_accumulate_bwd(spec: str, residuals, g: jax.Array):
  a, b = residuals
  spec_a, spec_b, out = _split_spec(spec)
  return (
    _product_f32_accumulate(out, spec_b, spec_a, g.astype(a.dtype), b),
    _product_f32_accumulate(spec_a, out, spec_b, a, g.astype(b.dtype)),
  )


_einsum_f32_accumulate.defvjp(_einsum_f32_accumulate_fwd, _einsum_f32_accumulate_bwd)


def _use_f32_accumulate(a: jax.Array, b: jax.Array) -> bool:
  return a.dtype == b.dtype and a.dtype in _LOW_PRECISION and jax.default_backend() == "cpu"


def matmul_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """`jnp.einsum(spec, a, b)` for a two-operand contraction whose every input index also appears in the other
  operand or the output (a matrix product, possibly batched).

  In float32 this is exactly `jnp.einsum`. With bfloat16/float16 operands on the CPU backend, the product — and
  both products of its gradient — is written as "low-precision inputs, float32 accumulation, one rounding to the
  operand dtype", which is what a bf16 dot computes anyway; XLA:CPU then runs its native bf16 GEMM (AVX512-BF16 /
  AMX) instead of converting both operands and the result of a bf16-output dot to float32 around a float32 GEMM.
  (GPU and TPU backends already run bf16 dots natively and keep the plain form.)
  """
  if _use_f32_accumulate(a, b):
    return _einsum_f32_accumulate(spec, a, b)
  return jnp.einsum(spec, a, b)


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  return y + bias


def _add_bias_fwd(y: jax.Array, bias: jax.Array):
  return y + bias, None


def _add_bias_bwd(_, g: jax.Array):
  # ∂bias = Σ over rows of g, as one [1, N] × [N, F] product with float32 accumulation (XLA:CPU otherwise lowers
  # this reduction to a cascade of unfused reduce-windows with a float32 copy of g in front).
  rows = g.reshape(-1, g.shape[-1])
  # The barrier keeps XLA from seeing a constant operand (it would rewrite the product back into that reduction).
  ones = lax.optimization_barrier(jnp.ones((1, rows.shape[0]), rows.dtype))
  grad_bias = lax.dot_general(ones, rows, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return g, grad_bias[0].astype(g.dtype)  # the bias was promoted to y's dtype


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


Initializer = Callable[..., jax.Array]

#: N(0, 1/fan_in), untruncated: CLIP's initialisation of its projections (std = in_features^-½).
fan_in_normal: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class Dense(nn.Module):
  """flax.linen.Dense (same parameters, initialisers and float32 computation), whose low-precision CPU form
  accumulates in float32 as `matmul_einsum` does, bias gradient included (`_add_bias`)."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32) if self.use_bias else None
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    if _use_f32_accumulate(inputs, kernel):
      letters = string.ascii_lowercase[: inputs.ndim - 1]
      y = _einsum_f32_accumulate(f"{letters}y,yz->{letters}z", inputs, kernel)
      return y if bias is None else _add_bias(y, bias)
    y = lax.dot_general(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


class PatchEmbedding(nn.Module):
  """Non-overlapping p×p patches → `features`: flax.linen.Conv(features, (p, p), strides=(p, p), padding='VALID',
  use_bias=False) — same `kernel` [p, p, C, features], initialiser and float32 computation. In low precision on CPU
  the patches are gathered and multiplied with float32 accumulation (`matmul_einsum`), the same sum as the
  convolution."""

  features: int
  patch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch
    kernel = self.param("kernel", nn.linear.default_kernel_init, (p, p, images.shape[-1], self.features), jnp.float32)
    images, kernel = nn.dtypes.promote_dtype(images, kernel, dtype=self.dtype)
    if _use_f32_accumulate(images, kernel):
      b, h, w, c = images.shape
      patches = images[:, : h - h % p, : w - w % p].reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
      patches = patches.reshape(b, h // p, w // p, p * p * c)
      return _einsum_f32_accumulate("bhwk,kd->bhwd", patches, kernel.reshape(p * p * c, self.features))
    return lax.conv_general_dilated(images, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def quick_gelu(x: jax.Array) -> jax.Array:
  """QuickGELU(x) = x · σ(1.702 x), the approximation OpenAI's CLIP was trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
  """GELU(x) = x · Φ(x) = ½ x (1 + erf(x / √2)), with the exact error function (PyTorch's nn.GELU default).

  Written with erf, as PyTorch computes it, rather than `jax.nn.gelu(approximate=False)`'s erfc form: the two
  agree to float32 rounding (≤ 1e-6 here), and XLA:CPU evaluates erf as a short rational polynomial but erfc with
  an exponential, which made the activation about 2× and its gradient about 1.3× slower (benchmarks/RESULTS.md).
  """
  return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(2**-0.5, x.dtype)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"quick_gelu": quick_gelu, "gelu": exact_gelu}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation registered under `name`; unknown names list the valid ones."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid choices: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class BlockInit:
  """Kernel initialisers of a residual block's four products: packed QKV, attention output, MLP in and MLP out.
  Biases start at zero."""

  qkv: Initializer
  out: Initializer
  fc: Initializer
  proj: Initializer


def clip_text_block_init(width: int, layers: int) -> BlockInit:
  """CLIP's text-tower initialisation (open_clip `TextTransformer.init_parameters`), all normal:
  QKV ~ N(0, w⁻¹), attention out and MLP out ~ N(0, w⁻¹·(2L)⁻¹), MLP in ~ N(0, (2w)⁻¹)."""
  out_std = width**-0.5 * (2 * layers) ** -0.5
  return BlockInit(
    qkv=nn.initializers.normal(width**-0.5),
    out=nn.initializers.normal(out_std),
    fc=nn.initializers.normal((2 * width) ** -0.5),
    proj=nn.initializers.normal(out_std),
  )


def torch_default_block_init() -> BlockInit:
  """PyTorch's default initialisation, which open_clip's vision transformer keeps for its blocks (OpenAI's CLIP
  defines none for them): packed QKV Xavier-uniform, U(±√(6/(fan_in + fan_out))) as `nn.MultiheadAttention`
  does; every other product `nn.Linear`'s kaiming_uniform(a=√5), i.e. U(±1/√fan_in), std 1/√(3·fan_in)."""
  linear = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  return BlockInit(qkv=nn.initializers.xavier_uniform(), out=linear, fc=linear, proj=linear)


class MultiHeadAttention(nn.Module):
  """softmax(Q Kᵀ / √d_head + mask) V over `heads` heads, with packed QKV projection and an output projection.

  `qkv` has kernel [width, 3·width] (query, key, value blocks in that order, as in PyTorch's packed `in_proj`).
  The softmax is computed in float32.
  """

  heads: int
  dtype: Dtype = jnp.float32
  block_init: BlockInit = dataclasses.field(default_factory=torch_default_block_init)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.heads
    qkv = Dense(3 * width, dtype=self.dtype, kernel_init=self.block_init.qkv, name="qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.heads, head_dim)
    # A split (its gradient is one concatenation) rather than three index slices (three zero-padded adds).
    q, k, v = (part[:, :, 0] for part in jnp.split(qkv, 3, axis=2))
    # The 1/√d_head scale is applied to Q (B·L·D values, fused into the split) rather than to the B·H·L·L logits.
    q = q * jnp.asarray(head_dim**-0.5, q.dtype)
    logits = matmul_einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = matmul_einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    return Dense(width, dtype=self.dtype, kernel_init=self.block_init.out, name="out")(out)


class MlpBlock(nn.Module):
  """Dense(4·width) → activation → Dense(width)."""

  activation: str = "gelu"
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  block_init: BlockInit = dataclasses.field(default_factory=torch_default_block_init)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = Dense(int(width * self.mlp_ratio), dtype=self.dtype, kernel_init=self.block_init.fc, name="fc")(x)
    h = get_activation(self.activation)(h)
    return Dense(width, dtype=self.dtype, kernel_init=self.block_init.proj, name="proj")(h)


class ResidualBlock(nn.Module):
  """x ← x + Attn(LN₁(x)); x ← x + MLP(LN₂(x))."""

  heads: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  block_init: BlockInit = dataclasses.field(default_factory=torch_default_block_init)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + MultiHeadAttention(self.heads, dtype=self.dtype, block_init=self.block_init, name="attn")(
      nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_1")(x), mask
    )
    return x + MlpBlock(self.activation, dtype=self.dtype, block_init=self.block_init, name="mlp")(
      nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_2")(x)
    )


#: `model.remat_policy`: what a rematerialised block keeps from its forward pass for the backward pass. 'none' keeps
#: everything (no rematerialisation); 'full' keeps only the block's input and recomputes the rest; 'dots_saveable'
#: keeps the results of every matrix product and recomputes the element-wise work (norms, activations, softmax);
#: 'dots_with_no_batch_dims_saveable' keeps only the products with the weights (not QKᵀ and AV, whose size grows with
#: the sequence length squared).
REMAT_POLICIES: dict[str, Callable | None] = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_POLICY_NAMES = ("none", *REMAT_POLICIES)


def check_remat_policy(name: str) -> None:
  """Raises a ValueError naming the valid choices and the closest one unless `name` is in `REMAT_POLICY_NAMES`."""
  if name not in REMAT_POLICY_NAMES:
    raise unknown_choice("model.remat_policy", name, REMAT_POLICY_NAMES)


def rematerialised(block: type[nn.Module], policy: str, prevent_cse: bool = True) -> type[nn.Module]:
  """`block` itself for policy 'none', else `nn.remat(block)` saving what the named policy keeps (`REMAT_POLICIES`).

  `prevent_cse` may be False inside a scan, where XLA cannot merge the recomputation with the forward pass.
  """
  check_remat_policy(policy)
  if policy == "none":
    return block
  return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse)


#: The name of the stacked blocks in the scanned layout (`scan_layers=True`): every parameter of block i of the
#: unrolled layout (`block_<i>/…`) is row i of the parameter `blocks/…` with a leading layer axis.
SCANNED_BLOCKS = "blocks"


class _CarriedResidualBlock(ResidualBlock):
  """ResidualBlock in `nn.scan`'s (carry, mask) → (carry, output) form: x is the carry, there is no per-layer output."""

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, None]:
    return super().__call__(x, mask), None


class Transformer(nn.Module):
  """`layers` residual blocks initialised by `block_init`.

  Unrolled (default), block i is the submodule `block_<i>`; with `scan_layers`, one block is scanned `layers` times
  over parameters stacked on a leading layer axis (`blocks/…` [layers, …], see `lmstruct.models.layout`), so the
  compiled program, and the compile time, does not grow with depth. Each layer draws its own initial parameters from
  `block_init`, in both layouts. `remat_policy` names what each block keeps for the backward pass
  (`REMAT_POLICIES`).
  """

  layers: int
  heads: int
  activation: str = "gelu"
  remat_policy: str = "none"
  scan_layers: bool = False
  dtype: Dtype = jnp.float32
  block_init: BlockInit = dataclasses.field(default_factory=torch_default_block_init)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if self.scan_layers:
      block = rematerialised(_CarriedResidualBlock, self.remat_policy, prevent_cse=False)
      scanned = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast, length=self.layers
      )
      x, _ = scanned(self.heads, self.activation, dtype=self.dtype, block_init=self.block_init, name=SCANNED_BLOCKS)(
        x, mask
      )
      return x
    block = rematerialised(ResidualBlock, self.remat_policy)
    for i in range(self.layers):
      x = block(self.heads, self.activation, dtype=self.dtype, block_init=self.block_init, name=f"block_{i}")(x, mask)
    return x
