"""The single jitted training update: both views through both towers, every loss term, gradients, clipping,
the AdamW update and the metrics, sharded over a mesh.

The batch is a global array sharded on its leading axis over the data axes, and the losses see the whole global
batch: the B×B similarity terms take their negatives from every device (GSPMD inserts the collectives; the ring
objective in lmstruct.losses.ring does it without materialising B×B). Each device encodes the two views of its own
examples (`interleave_views`): the only collectives of a data-parallel update are the gradient reductions and the
objective's. With gradient accumulation the objective and its gradient are still those of the whole batch
(`batch_gradients`: feature caching).

`make_update` is the part every model family shares (gradients → rejection of non-finite updates → optimizer step
→ projection of the parameters → metrics); `make_train_step` is the two-tower family's, and ALBEF
(`lmstruct.train.albef`) gives it the gradients of its own loss (`loss_gradients`).
"""

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lmstruct.losses.objective import ObjectiveConfig, compute_objective
from lmstruct.losses.ring import compute_objective_ring
from lmstruct.losses.term import Features
from lmstruct.models.two_tower import MAX_LOGIT_SCALE
from lmstruct.train.optimizer import trainable_labels
from lmstruct.train.sharding import batch_sharding, replicated, tree_shardings
from lmstruct.train.state import TrainState

Batch = Mapping[str, jax.Array]


def state_initializer(
  init_variables: Callable[[jax.Array], Mapping[str, Any]], tx: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
  """rng ↦ the initial TrainState of any model family: `init_variables(rng)` → {'params', optional 'batch_stats'},
  the optimizer state, a step counter at 0 and the base RNG key. `jax.eval_shape` of it gives the state's shapes
  without allocating them."""

  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(init_rng)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      rng=jax.random.key_data(state_rng),
    )

  return init


def train_state_initializer(
  model: nn.Module, tx: optax.GradientTransformation, *, image_shape: tuple[int, int, int], context_length: int
) -> Callable[[jax.Array], TrainState]:
  """rng ↦ the initial TrainState of a two-tower model (`state_initializer`): its variables from a one-example
  input."""
  return state_initializer(
    lambda rng: model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), jnp.zeros((1, context_length), jnp.int32)),
    tx,
  )


def init_sharded_state(
  initialize: Callable[[jax.Array], TrainState],
  *,
  mesh: Mesh,
  rules: Sequence[tuple[str, Any]],
  seed: int,
  data_axes: Sequence[str] = ("data",),
) -> tuple[TrainState, TrainState]:
  """(state, state shardings): `initialize(key(seed))` computed directly into the sharded layout that the `rules`
  give every path ('params/…', 'batch_stats/…', 'opt_state/…')."""
  key = jax.random.key(seed)
  shardings = tree_shardings(jax.eval_shape(initialize, key), mesh, rules, data_axes)
  return jax.jit(initialize, out_shardings=shardings)(key), shardings


def init_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  *,
  image_shape: tuple[int, int, int],
  context_length: int,
  mesh: Mesh,
  rules: Sequence[tuple[str, Any]],
  seed: int,
  data_axes: Sequence[str] = ("data",),
) -> tuple[TrainState, TrainState]:
  """(state, state shardings) of a two-tower model: parameters initialised directly into their sharded layout."""
  initialize = train_state_initializer(model, tx, image_shape=image_shape, context_length=context_length)
  return init_sharded_state(initialize, mesh=mesh, rules=rules, seed=seed, data_axes=data_axes)


def clamp_log_logit_scale(params: Any, max_scale: float = MAX_LOGIT_SCALE) -> Any:
  """Projects log s back to ≤ log 100 after the update (as CLIP does), so the clamp never stalls its gradient."""
  return {**params, "log_logit_scale": jnp.minimum(params["log_logit_scale"], math.log(max_scale))}


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# ---------------------------------------------------------------------------------------------------------------
# Encoding both views: every device keeps its own examples.

#: The towers' outputs in the objective's terms, as a dict (a pytree): the fields of `Features` that are present.
Views = dict[str, jax.Array]
_PER_EXAMPLE_OUTPUTS = ("zv", "zt", "zv_ind", "zt_ind")
_SCALAR_OUTPUTS = ("logit_scale", "logit_bias")


def interleave_views(original: jax.Array, augmented: jax.Array) -> jax.Array:
  """[B, …] twice → [2B, …] with rows (x₀, x₀′, x₁, x₁′, …): example j's two views are rows 2j and 2j + 1.

  Stacking on a new axis after the batch axis and merging the two keeps each example on the device that holds it
  (the batch axis is the major one of the merge), so the towers run once on both views without moving any image
  between devices; concatenating [x; x′] on the sharded batch axis instead makes XLA exchange half of every
  device's rows (all-to-all).
  """
  return jnp.stack([original, augmented], axis=1).reshape(2 * original.shape[0], *original.shape[1:])


def split_views(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The inverse of `interleave_views`: [2B, …] → (rows 0, 2, 4, …; rows 1, 3, 5, …), each [B, …], on the devices
  that hold them."""
  pairs = rows.reshape(rows.shape[0] // 2, 2, *rows.shape[1:])
  return pairs[:, 0], pairs[:, 1]


def views_from_outputs(outputs: Mapping[str, jax.Array], with_augmented: bool) -> Views:
  """The towers' outputs on interleaved rows (`interleave_views`) as the Features fields the objective reads."""
  views = {key: outputs[key] for key in _SCALAR_OUTPUTS}
  for key in _PER_EXAMPLE_OUTPUTS:
    if key in outputs:
      if with_augmented:
        views[key], views[f"{key}_aug"] = split_views(outputs[key])
      else:
        views[key] = outputs[key]
  return views


ObjectiveFn = Callable[[Features, ObjectiveConfig, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
Encoder = Callable[[Any, Any, Batch], tuple[Views, Any]]


def objective_function(objective: ObjectiveConfig, mesh: Mesh, data_axes: Sequence[str]) -> ObjectiveFn:
  """The implementation `objective.impl` selects: 'global' (`compute_objective`, GSPMD over the whole batch) or
  'ring' (`compute_objective_ring` over the data axes); 'auto' takes the ring when they span several devices."""
  devices = math.prod(mesh.shape[axis] for axis in data_axes)
  if objective.impl == "global" or (objective.impl == "auto" and devices == 1):
    return compute_objective
  data_axis = data_axes[0] if len(data_axes) == 1 else tuple(data_axes)
  return functools.partial(compute_objective_ring, mesh=mesh, data_axis=data_axis)


def stop_frozen_gradients(params: Any, trainable: Sequence[str]) -> Any:
  """Wraps every parameter whose path matches none of the `trainable` regexes in `stop_gradient`, so XLA skips
  the backward pass through locked towers (their optimizer updates are zero anyway)."""
  labels = trainable_labels(params, tuple(trainable))
  return jax.tree.map(lambda p, label: p if label == "train" else jax.lax.stop_gradient(p), params, labels)


def make_encoder(model: nn.Module, with_augmented: bool, trainable: Sequence[str] = ()) -> Encoder:
  """encode(params, batch_stats, batch) → (views, new batch_stats): both towers on the batch's rows in training
  mode, the original and augmented views interleaved (`interleave_views`) so each tower runs once on [2B] rows.

  With `trainable` patterns, the other parameters are treated as constants (`stop_frozen_gradients`). Batch norm
  (the ResNet tower) normalises with the statistics of the rows it is given and returns its updated running
  averages.
  """

  def encode(params: Any, batch_stats: Any, batch: Batch) -> tuple[Views, Any]:
    if trainable:
      params = stop_frozen_gradients(params, trainable)
    images, texts = batch["image"], batch["text"]
    if with_augmented:
      images = interleave_views(images, batch["image_aug"])
      texts = interleave_views(texts, batch["text_aug"])
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      outputs, updates = model.apply(variables, images, texts, train=True, mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      outputs = model.apply(variables, images, texts, train=True)
    return views_from_outputs(outputs, with_augmented), batch_stats

  return encode


def make_views_objective(objective_config: ObjectiveConfig, objective_fn: ObjectiveFn = compute_objective) -> Callable:
  """objective(views, rng) → (L, metrics): the objective on the views, with the logit scale among the metrics."""

  def objective(views: Views, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    total, metrics = objective_fn(Features(**views), objective_config, rng)
    return total, {**metrics, "logit_scale": views["logit_scale"]}

  return objective


# ---------------------------------------------------------------------------------------------------------------
# Gradients of the whole batch, in one pass or accumulated over micro-batches.


def split_micro_batches(batch: Batch, count: int, sharding: jax.sharding.NamedSharding) -> Batch:
  """[B, ...] → [count, B/count, ...] where micro-batch m holds rows m, m + count, m + 2·count, …

  Strided rather than contiguous, so that every micro-batch keeps rows on every device of the data axes: the
  reshape [B] → [B/count, count] splits the sharded batch axis into a sharded major axis and a local minor one.
  """
  axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
  devices = math.prod(sharding.mesh.shape[axis] for axis in axes)

  def split(x: jax.Array) -> jax.Array:
    if x.shape[0] % count:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by train.accumulation_steps={count}")
    if (x.shape[0] // count) % devices:
      raise ValueError(
        f"micro-batches of {x.shape[0] // count} rows (batch {x.shape[0]} / "
        f"train.accumulation_steps={count}) do not divide over the {devices} devices of the data axes"
      )
    micro = jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)
    spec = jax.sharding.PartitionSpec(None, *sharding.spec)
    return jax.lax.with_sharding_constraint(micro, jax.sharding.NamedSharding(sharding.mesh, spec))

  return {k: split(v) for k, v in batch.items()}


def merge_micro_batches(stacked: Views, sharding: jax.sharding.NamedSharding) -> Views:
  """The inverse of `split_micro_batches` for the views: [count, B/count, …] → [B, …] in the batch's row order
  (row i·count + m is row i of micro-batch m), sharded like the batch. The scalars [count], the same in every
  micro-batch, become their mean, so the gradient of each micro-batch's copy is 1/count of the scalar's."""

  def merge(key: str, x: jax.Array) -> jax.Array:
    if key in _SCALAR_OUTPUTS:
      return jnp.mean(x, axis=0)
    merged = jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return jax.lax.with_sharding_constraint(merged, sharding)

  return {key: merge(key, x) for key, x in stacked.items()}


def _add(a: Any, b: Any) -> Any:
  return jax.tree.map(jnp.add, a, b)


#: (params, batch_stats, batch, rng) → (∂L/∂θ, metrics with 'loss/total', new batch_stats).
GradientFn = Callable[[Any, Any, Batch, jax.Array], tuple[Any, dict[str, jax.Array], Any]]
#: (params, batch_stats, batch, rng) → (L, (metrics with 'loss/total', new batch_stats)).
LossFn = Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, tuple[dict[str, jax.Array], Any]]]


def loss_gradients(loss_fn: LossFn) -> GradientFn:
  """The GradientFn of a loss over the whole batch in one pass: (∂L/∂θ, metrics, batch_stats') of
  (L, (metrics, batch_stats')) = loss_fn(θ, batch_stats, batch, rng), by one `value_and_grad` in θ."""

  def gradients(params: Any, batch_stats: Any, batch: Batch, rng: jax.Array) -> tuple[Any, dict, Any]:
    (_, (metrics, new_stats)), grads = jax.value_and_grad(lambda p: loss_fn(p, batch_stats, batch, rng), has_aux=True)(
      params
    )
    return grads, metrics, new_stats

  return gradients


def batch_gradients(
  encode: Encoder,
  objective: Callable,
  params: Any,
  batch_stats: Any,
  batch: Batch,
  rng: jax.Array,
  count: int,
  sharding: jax.sharding.NamedSharding,
) -> tuple[Any, dict, Any]:
  """(∂L/∂θ, metrics, new batch_stats) of L(θ) = objective(encode(θ, batch)) over the whole global batch.

  count = 1: one `value_and_grad` through towers and objective. count = k > 1, feature caching (Gao et al.
  2021, GradCache), which holds the towers' activations of one micro-batch at a time:
    1. V_m = encode(θ, micro-batch m) for m = 1 … k, without gradient (`lax.map`), and V = merge(V_1 … V_k);
    2. (L, metrics) = objective(V) and G_m = ∂L/∂V_m, over the global batch: every term's negatives are global;
    3. ∂L/∂θ = Σ_m (∂V_m/∂θ)ᵀ G_m, one VJP of the re-encoded micro-batch m at a time (`lax.scan`).
  L depends on θ only through V (the logit scale and bias are among the views), so 3 is the chain rule and the
  loss and gradient are those of the count = 1 step, up to float summation order.

  Batch norm is where micro-batches differ from one pass: each micro-batch is normalised with its own statistics
  (B/k rows; "ghost" batch norm), in steps 1 and 3 alike, so the result is the exact gradient of the global
  objective of features computed that way, not of features normalised over all B rows (which would need every
  micro-batch's activations at once). The running averages take one update with the micro-batches' mean statistics:
  r ← μ·r + (1 − μ)·mean_m(s_m), whose means equal the global batch's and whose variances are the mean
  within-micro-batch variance.
  """
  if count == 1:

    def loss(params, batch_stats, batch, rng):
      views, new_stats = encode(params, batch_stats, batch)
      total, metrics = objective(views, rng)
      return total, (metrics, new_stats)

    return loss_gradients(loss)(params, batch_stats, batch, rng)

  micro_batches = split_micro_batches(batch, count, sharding)
  stacked_views, stacked_stats = jax.lax.map(lambda micro: encode(params, batch_stats, micro), micro_batches)
  (_, metrics), view_grads = jax.value_and_grad(
    lambda views: objective(merge_micro_batches(views, sharding), rng), has_aux=True
  )(stacked_views)

  def backward(grads, micro_and_cotangent):
    micro, cotangent = micro_and_cotangent
    _, vjp = jax.vjp(lambda p: encode(p, batch_stats, micro)[0], params)
    return _add(grads, vjp(cotangent)[0]), None

  grads, _ = jax.lax.scan(backward, jax.tree.map(jnp.zeros_like, params), (micro_batches, view_grads))
  return grads, metrics, jax.tree.map(lambda stats: jnp.mean(stats, axis=0), stacked_stats)


def _is_schedule_count(path: tuple[Any, ...], value: Any) -> bool:
  """Whether the optax state entry at `path` is the count of a learning-rate schedule's state."""
  return getattr(path[-1], "tuple_name", None) == "ScaleByScheduleState"


def schedule_count(opt_state: Any) -> Any:
  """The count at which the optimizer evaluates its learning-rate schedule (optax's `ScaleByScheduleState.count`):
  the number of updates it has applied. None when the optimizer has no schedule state."""
  return optax.tree_utils.tree_get(opt_state, "count", filtering=_is_schedule_count)


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  *,
  objective: ObjectiveConfig | Mapping[str, Any],
  mesh: Mesh,
  state_shardings: TrainState,
  learning_rate: optax.Schedule | None = None,
  data_axes: Sequence[str] = ("data",),
  accumulation_steps: int = 1,
  trainable: Sequence[str] = (),
) -> Callable:
  """The jitted two-tower update (state, batch) → (state, metrics): `make_update` with the gradients of
  `batch_gradients` and the logit-scale clamp (`clamp_log_logit_scale`).

  The objective is computed by the implementation `objective.impl` selects on this mesh (`objective_function`).
  With `accumulation_steps` = k > 1 the towers hold the activations of B/k examples at a time and the loss and
  gradient are still those of the whole batch (`batch_gradients`). `trainable` is the optimizer's pattern list:
  locked parameters get no gradient computation at all. The other arguments are `make_update`'s.
  """
  objective = ObjectiveConfig.from_dict(objective)
  encode = make_encoder(model, objective.needs_augmented_view, trainable)
  views_objective = make_views_objective(objective, objective_function(objective, mesh, data_axes))
  data_sharding = batch_sharding(mesh, data_axes)

  def gradients(params: Any, batch_stats: Any, batch: Batch, rng: jax.Array) -> tuple[Any, dict, Any]:
    return batch_gradients(encode, views_objective, params, batch_stats, batch, rng, accumulation_steps, data_sharding)

  return make_update(
    gradients,
    tx,
    mesh=mesh,
    state_shardings=state_shardings,
    learning_rate=learning_rate,
    data_axes=data_axes,
    project_params=clamp_log_logit_scale,
  )


def make_update(
  gradients: GradientFn,
  tx: optax.GradientTransformation,
  *,
  mesh: Mesh,
  state_shardings: TrainState,
  learning_rate: optax.Schedule | None = None,
  data_axes: Sequence[str] = ("data",),
  project_params: Callable[[Any], Any],
) -> Callable:
  """The jitted update (state, batch) → (state, metrics) of any model family; the state is donated.

  `gradients` gives (∂L/∂θ, metrics, new batch_stats) of the batch (`GradientFn`): `batch_stats` is the state the
  update carries besides the parameters (batch-norm statistics; ALBEF's momentum encoders and queues). After the
  optimizer step `project_params` maps the parameters back into their domain (the two-tower logit-scale clamp,
  ALBEF's temperature clamp).

  A non-finite loss or gradient rejects the update: parameters, batch_stats and optimizer state stay as they were,
  the step counter advances, and `nonfinite` = 1 in the metrics (the loop decides whether to stop or count).

  `learning_rate` (the optimizer's schedule) adds the metric `learning_rate` = schedule(c), where c is the
  optimizer's own count of applied updates, read from its state before this update: the rate this update applies,
  or would have applied when it is rejected. A rejected update leaves the whole optimizer state, its count
  included, as it was (as optax's `apply_if_finite` does), so the next update applies that same rate and the log
  shows it; the schedule follows applied updates, so each rejection delays the rest of it by one step. (Counting
  the step instead would have the log run ahead of the applied rate after the first rejection.)
  """
  if learning_rate is not None and schedule_count(state_shardings.opt_state) is None:
    raise ValueError(
      "make_update: learning_rate is given but the optimizer state has no schedule count "
      "(optax ScaleByScheduleState); pass the schedule the optimizer was built with"
    )
  data_sharding = batch_sharding(mesh, data_axes)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grads, metrics, batch_stats = gradients(state.params, state.batch_stats, batch, rng)
    finite = jnp.isfinite(metrics["loss/total"]) & _all_finite(grads)

    # The update is applied under lax.cond rather than computed and then selected element by element: XLA can then
    # write parameters and moments in place into the donated buffers, instead of holding a second copy of all of
    # them and copying between the two (same values; on the ViT-B/32 update, 0.6 GB less temporary memory and
    # ~6× less compile time, see benchmarks/RESULTS.md).
    def apply_update(operands):
      grads, params, opt_state, new_batch_stats, _ = operands
      updates, opt_state = tx.update(grads, opt_state, params)
      return project_params(optax.apply_updates(params, updates)), opt_state, new_batch_stats

    def keep_state(operands):
      _, params, opt_state, _, old_batch_stats = operands
      return params, opt_state, old_batch_stats

    params, opt_state, batch_stats = jax.lax.cond(
      finite, apply_update, keep_state, (grads, state.params, state.opt_state, batch_stats, state.batch_stats)
    )
    new_state = TrainState(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, rng=state.rng
    )
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["nonfinite"] = 1 - finite.astype(jnp.int32)
    if learning_rate is not None:
      metrics["learning_rate"] = learning_rate(schedule_count(state.opt_state))
    return new_state, metrics

  return jax.jit(
    step,
    in_shardings=(state_shardings, data_sharding),
    out_shardings=(state_shardings, replicated(mesh)),
    donate_argnums=0,
  )
