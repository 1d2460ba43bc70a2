"""The training objective computed ring-sharded: the same global L as `compute_objective`, without the B×B matrix.

The global batch of B = P·n examples is sharded over the P devices of the mesh's data axis, n rows per device.
Every term over all pairs (j, k) of the batch is a sum over the P×P grid of n×n blocks. Device i keeps its own rows
and sees the P column blocks one after another, as they travel around the ring i → i + 1 with `jax.lax.ppermute`
(block i − r arrives at hop r):

    Σ_j Σ_k φ(x_j, y_k) = Σ_i Σ_r Σ_{j ∈ rows(i)} Σ_{k ∈ rows(i − r)} φ(x_j, y_k)   (sigmoid, uniformity, L_GC, CyCLIP)
    ℓ_j = log Σ_k exp(s·⟨a_j, b_k⟩) − s·⟨a_j, b_j⟩, accumulated with a running max      (every InfoNCE term)

Per-example terms (orthogonality, bridge, paired similarity, alignment) are local means followed by `pmean`. Each
term's module states which of these statistics it needs and how it combines them (its `RingForm`,
`losses/term.py`); this module computes them, each once, for the active terms.

Gradients are custom VJPs that travel the ring again: each visiting block's cotangent rides along with the block and
is shifted home after the last hop. Per-device memory is O(n·D + n²) for any P; plain autodiff through the ring loop
would keep every visiting block for the backward pass, O(B·D) per device.
"""
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmstruct.losses.objective import ObjectiveConfig, check_features, term_draws, weighted_total
from lmstruct.losses.term import AxisName, Features, PairSum, ShardView, Term, Tree, feature_fields

BlockFn = Callable[[Tree, Tree, Tree, bool], Tree]


# ---------------------------------------------------------------------------------------------------------------
# The ring.

def _shift(tree: Tree, axis_name: AxisName, axis_size: int) -> Tree:
  """Moves every leaf one hop along the ring: device i sends its value to device (i + 1) mod P."""
  if axis_size == 1:
    return tree
  perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, axis_name, perm), tree)


def _over_arriving_blocks(step: Callable[[Tree, Tree], tuple[Tree, Tree]], carry: Tree, travel: Tree,
                          axis_name: AxisName, axis_size: int) -> tuple[Tree, Tree]:
  """For hops r = 1 … P − 1: travel ← shift(travel), then (carry, travel) ← step(carry, travel).

  `travel` starts as this device's own block, so at hop r it holds the block of device i − r; at the end it holds
  the block of device i + 1, one hop short of home.
  """
  def body(_, state):
    carry, travel = state
    return step(carry, _shift(travel, axis_name, axis_size))
  return jax.lax.fori_loop(1, axis_size, body, (carry, travel))


def _add(a: Tree, b: Tree) -> Tree:
  """Leafwise a + b."""
  return jax.tree.map(jnp.add, a, b)


def _ring_block_sums_grad(block_fn: BlockFn, rows: Tree, cols: Tree, params: Tree, cotangent: Tree,
                          axis_name: AxisName, axis_size: int) -> tuple[Tree, Tree, Tree]:
  """The VJP of S = Σ_r block_fn(rows, cols_{i−r}, params, own=(r = 0)) on every device, summed over devices.

  Returns (∂/∂rows, ∂/∂cols, ∂/∂params) of Σ_devices ⟨cotangent, S⟩ on this device: the row and parameter
  cotangents are accumulated locally, each column block's cotangent is accumulated by every device it visits and
  is shifted home after the last hop. The parameter cotangent is this device's share (the caller's pcast psums it).
  """
  def block_vjp(cols_block, own):
    _, vjp = jax.vjp(lambda r, c, p: block_fn(r, c, p, own), rows, cols_block, params)
    return vjp(cotangent)

  def step(acc, travel):
    block, d_block = travel
    d_rows, d_cols, d_params = block_vjp(block, False)
    return _add(acc, (d_rows, d_params)), (block, _add(d_block, d_cols))

  d_rows, d_cols, d_params = block_vjp(cols, True)
  (d_rows, d_params), (_, d_cols) = _over_arriving_blocks(step, (d_rows, d_params), (cols, d_cols), axis_name,
                                                          axis_size)
  return d_rows, _shift(d_cols, axis_name, axis_size), d_params


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5))
def ring_block_sums(block_fn: BlockFn, rows: Tree, cols: Tree, params: Tree, axis_name: AxisName,
                    axis_size: int) -> Tree:
  """S_i = Σ_{r=0}^{P−1} block_fn(rows_i, cols_{i−r}, params, own=(r = 0)): device i's share of a sum over all pairs.

  Call inside `shard_map`; `rows` and `cols` are this device's shards, `params` must be varying over `axis_name`
  (`jax.lax.pcast(p, axis_name, to='varying')`), and `block_fn` returns a pytree of sums over one n×n block (its
  `own` flag is True only for the block on the diagonal of the global grid). psum the result for the global sum.
  """
  def step(total, block):
    return _add(total, block_fn(rows, block, params, False)), block
  total, _ = _over_arriving_blocks(step, block_fn(rows, cols, params, True), cols, axis_name, axis_size)
  return total


def _ring_block_sums_fwd(block_fn, rows, cols, params, axis_name, axis_size):
  return ring_block_sums(block_fn, rows, cols, params, axis_name, axis_size), (rows, cols, params)


def _ring_block_sums_bwd(block_fn, axis_name, axis_size, residuals, cotangent):
  rows, cols, params = residuals
  return _ring_block_sums_grad(block_fn, rows, cols, params, cotangent, axis_name, axis_size)


ring_block_sums.defvjp(_ring_block_sums_fwd, _ring_block_sums_bwd)


class _RowStats(NamedTuple):
  """Softmax statistics of rows x_j· = s·⟨a_j, b_·⟩ over the global batch, relative to the running max m_j."""
  max: jax.Array            # m_j = max_k x_jk
  target_mass: jax.Array    # exp(x_jj − m_j)
  other_mass: jax.Array     # Σ_{k≠j} exp(x_jk − m_j)
  target_logit: jax.Array   # x_jj


def _own_block_stats(logits: jax.Array) -> _RowStats:
  """The statistics of the own block, whose diagonal holds each row's target."""
  row_max = jnp.max(logits, axis=-1)
  weights = jnp.exp(logits - row_max[:, None])
  target = jnp.diagonal(weights)
  return _RowStats(row_max, target, jnp.sum(weights, -1) - target, jnp.diagonal(logits))


def _add_block(stats: _RowStats, logits: jax.Array) -> _RowStats:
  """Online softmax: m' = max(m, max_k x_jk); both masses are rescaled by e^{m − m'}, the block's e^{x_jk − m'} are
  added to the other (non-target) mass."""
  new_max = jnp.maximum(stats.max, jnp.max(logits, axis=-1))
  rescale = jnp.exp(stats.max - new_max)
  other = stats.other_mass * rescale + jnp.sum(jnp.exp(logits - new_max[:, None]), -1)
  return _RowStats(new_max, stats.target_mass * rescale, other, stats.target_logit)


def _ring_row_stats(rows: tuple[jax.Array, ...], cols: tuple[jax.Array, ...], scale: jax.Array,
                    axis_name: AxisName, axis_size: int) -> tuple[_RowStats, ...]:
  """For each pair (A, B), the softmax statistics of x = s·A·Bᵀ over all global columns, in one trip of B."""
  def step(stats, blocks):
    return tuple(_add_block(st, scale * (a @ b.T)) for st, a, b in zip(stats, rows, blocks)), blocks

  initial = tuple(_own_block_stats(scale * (a @ b.T)) for a, b in zip(rows, cols))
  stats, _ = _over_arriving_blocks(step, initial, cols, axis_name, axis_size)
  return stats


def _row_cross_entropy(stats: _RowStats) -> jax.Array:
  """ℓ_j = log Σ_k exp(x_jk) − x_jj = (m_j − x_jj) + log(exp(x_jj − m_j) + Σ_{k≠j} exp(x_jk − m_j))."""
  return stats.max - stats.target_logit + jnp.log(stats.target_mass + stats.other_mass)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def ring_cross_entropy(rows: tuple[jax.Array, ...], cols: tuple[jax.Array, ...], scale: jax.Array,
                       axis_name: AxisName, axis_size: int) -> tuple[jax.Array, ...]:
  """For each pair (A, B) of `rows`, `cols`: ℓ_j = log Σ_k exp(x_jk) − x_jj with x = s·A·Bᵀ, k over the global batch.

  The per-row InfoNCE loss with row j's own column as target. Call inside `shard_map` with this device's shards
  ([n, D] each, row j of A paired with row j of B) and a varying scale; returns one [n] array per pair.
  """
  return tuple(_row_cross_entropy(st) for st in _ring_row_stats(rows, cols, scale, axis_name, axis_size))


def _ring_cross_entropy_fwd(rows, cols, scale, axis_name, axis_size):
  stats = _ring_row_stats(rows, cols, scale, axis_name, axis_size)
  return tuple(_row_cross_entropy(st) for st in stats), (rows, cols, scale, stats)


def _ring_cross_entropy_bwd(axis_name, axis_size, residuals, cotangent):
  """∂ℓ_j/∂x_jk = p_jk for k ≠ j and p_jj − 1 = −Σ_{k≠j} p_jk, with p_jk = exp(x_jk − m_j)/Z_j, Z_j from the forward.

  The backward recomputes the logits; a recomputed logit may differ from the forward's by rounding (XLA need not
  emit the same code twice). Forming p_jj − 1 from the recomputed p_jj would turn that rounding, relative to 1,
  into an error of the whole row's gradient; taking it as −(other mass)/Z_j from the forward keeps every error
  relative to the negatives' own (small) probabilities, as in autodiff of the global loss.
  """
  rows, cols, scale, stats = residuals

  def softmax_minus_target(rows_, cols_, scale_, own):
    sums = []
    for a, b, st in zip(rows_, cols_, stats):
      logits = scale_ * (a @ b.T)
      total = st.target_mass + st.other_mass
      weights = jnp.exp(logits - st.max[:, None]) / total[:, None]
      if own:
        off_target = jnp.where(jnp.eye(logits.shape[0], dtype=bool), 0.0, weights)
        sums.append(jnp.sum(off_target, -1) - jnp.diagonal(logits) * (st.other_mass / total))
      else:
        sums.append(jnp.sum(weights, -1))
    return tuple(sums)

  return _ring_block_sums_grad(softmax_minus_target, rows, cols, scale, cotangent, axis_name, axis_size)


ring_cross_entropy.defvjp(_ring_cross_entropy_fwd, _ring_cross_entropy_bwd)


# ---------------------------------------------------------------------------------------------------------------
# The objective: each active term's ring form (losses/term.py) from the global statistics it needs.

def _global_cross_entropies(pairs: tuple[tuple[str, str], ...], local: Mapping[str, jax.Array], scale: jax.Array,
                            axis_name: AxisName, axis_size: int,
                            batch_size: int) -> dict[tuple[str, str], jax.Array]:
  """CE(s·A·Bᵀ) = (1/B) Σ_j ℓ_j for each named pair (A, B), over the global batch, in one trip around the ring."""
  if not pairs:
    return {}
  losses = ring_cross_entropy(tuple(local[a] for a, _ in pairs), tuple(local[b] for _, b in pairs), scale,
                              axis_name, axis_size)
  local_sums = {pair: jnp.sum(row_losses) for pair, row_losses in zip(pairs, losses)}
  return {pair: value / batch_size for pair, value in jax.lax.psum(local_sums, axis_name).items()}


def _block_sums(pair_sums: tuple[PairSum, ...], rows: Tree, cols: Tree, params: Tree,
                own: bool) -> dict[str, jax.Array]:
  """{name: its sum over one block} for each pair sum."""
  return {pair_sum.name: pair_sum.block(rows, cols, params, own) for pair_sum in pair_sums}


def _global_pair_sums(pair_sums: tuple[PairSum, ...], local: Mapping[str, jax.Array], params: Mapping[str, jax.Array],
                      axis_name: AxisName, axis_size: int) -> dict[str, jax.Array]:
  """Σ_j Σ_k over the global batch for each pair sum, in one trip of the features they visit around the ring."""
  if not pair_sums:
    return {}
  visiting = sorted({key for pair_sum in pair_sums for key in pair_sum.visiting})
  cols = {key: local[key] for key in visiting}
  sums = ring_block_sums(functools.partial(_block_sums, pair_sums), local, cols, params, axis_name, axis_size)
  return jax.lax.psum(sums, axis_name)


def _draw_key(term: Term) -> str:
  """The key under which a term's per-example draw travels with the features."""
  return f"draw/{term.name}"


def _objective_on_device(local: dict[str, jax.Array], params: dict[str, jax.Array], *, config: ObjectiveConfig,
                         axis_name: AxisName, axis_size: int, batch_size: int) -> dict[str, jax.Array]:
  """The shard_map body: {term name: its global value}, identical on every device."""
  local = {key: jnp.asarray(value, jnp.float32) for key, value in local.items()}
  params = {key: jax.lax.pcast(jnp.asarray(value, jnp.float32), axis_name, to="varying")
            for key, value in params.items()}
  terms = config.terms
  pair_sums = tuple({p.name: p for term in terms for p in term.ring.pair_sums}.values())
  pairs = tuple(dict.fromkeys(pair for term in terms for pair in term.ring.cross_entropies))
  shard = ShardView(
      local=local,
      pair_sums=_global_pair_sums(pair_sums, local, params, axis_name, axis_size),
      cross_entropy=_global_cross_entropies(pairs, local, params["logit_scale"], axis_name, axis_size, batch_size),
      batch_size=batch_size,
      axis_name=axis_name)
  return {term.name: term.ring.combine(shard, config.option(term), local.get(_draw_key(term))) for term in terms}


def _laid_out(tree: Tree, mesh: Mesh, spec: P) -> Tree:
  """`tree` with the layout `spec` on `mesh`: on a mesh with Explicit axes shard_map takes inputs only in its
  in_specs' layout, so they are `jax.reshard`ed; with Auto axes shard_map reshards them itself."""
  if any(axis_type == AxisType.Explicit for axis_type in mesh.axis_types):
    return jax.reshard(tree, NamedSharding(mesh, spec))
  return tree


def compute_objective_ring(features: Features, config: ObjectiveConfig | Mapping[str, Any], rng: jax.Array,
                           mesh: Mesh, data_axis: AxisName = "data") -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = L_base + Σ_r λ_r·L_r over the global batch, as `compute_objective`, from each term's ring form, computed
  ring-sharded over `data_axis`.

  `features` are global arrays whose leading (batch) axis B is divisible by the size of `data_axis` (a mesh axis
  name, or a tuple of names that together shard the batch). Call it inside `jax.jit`; it runs a `jax.shard_map`
  over `mesh`, so the features are resharded on their leading axis if they are not already. The terms' random
  draws (the bridge's 'uniform' times) are drawn globally exactly as `compute_objective` draws them, then sharded
  with the features. Returns (L, metrics) with the same keys: `loss/<term>` for the base and each active
  regulariser, and `loss/total`. In a jitted train step, with the batch sharded as NamedSharding(mesh, P('data')):

      loss, metrics = compute_objective_ring(Features(zv=..., zt=..., logit_scale=...), config, rng, mesh)

  and differentiate it like `compute_objective` (jax.grad / value_and_grad with has_aux=True).
  """
  config = ObjectiveConfig.from_dict(config)
  check_features(features, config)
  axis_names = (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
  axis_size = 1
  for name in axis_names:
    axis_size *= mesh.shape[name]
  batch_size = features.zv.shape[0]
  if batch_size % axis_size:
    raise ValueError(f"global batch {batch_size} is not divisible by the {axis_size} devices of axis {data_axis!r}")

  scalars = feature_fields("scalar")
  local = {name: getattr(features, name) for name in feature_fields()
           if name not in scalars and getattr(features, name) is not None}
  draws = term_draws(config, batch_size, rng)
  for term in config.terms:
    if term.name in draws:
      local[_draw_key(term)] = jnp.broadcast_to(jnp.asarray(draws[term.name], jnp.float32), (batch_size,))
  params = {name: getattr(features, name) for name in scalars if getattr(features, name) is not None}

  body = functools.partial(_objective_on_device, config=config, axis_name=data_axis, axis_size=axis_size,
                           batch_size=batch_size)
  local, params = _laid_out(local, mesh, P(data_axis)), _laid_out(params, mesh, P())
  values = jax.shard_map(body, mesh=mesh, in_specs=(P(data_axis), P()), out_specs=P())(local, params)
  return weighted_total(values, config)
