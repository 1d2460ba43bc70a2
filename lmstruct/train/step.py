"""The single jitted training update: both views through both towers, every loss term, gradients, clipping,
the AdamW update and the metrics, sharded over a mesh.

The batch is a global array sharded on its leading axis over the data axes, and the losses see the whole global
batch: the B×B similarity terms take their negatives from every device (GSPMD inserts the collectives; the ring
objective in lmstruct.losses.ring does it without materialising B×B).
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


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, *, image_shape: tuple[int, int, int],
                     context_length: int, mesh: Mesh, rules: Sequence[tuple[str, Any]], seed: int,
                     data_axes: Sequence[str] = ("data",)) -> tuple[TrainState, TrainState]:
  """(state, state shardings) of a two-tower model: `init_state` with the model's own initialisation."""
  return init_state(lambda rng: model.init(rng, jnp.zeros((1, *image_shape), jnp.float32),
                                           jnp.zeros((1, context_length), jnp.int32)),
                    tx, mesh=mesh, rules=rules, seed=seed, data_axes=data_axes)


def init_state(init_variables: Callable[[jax.Array], Mapping[str, Any]], tx: optax.GradientTransformation, *,
               mesh: Mesh, rules: Sequence[tuple[str, Any]], seed: int,
               data_axes: Sequence[str] = ("data",)) -> tuple[TrainState, TrainState]:
  """(state, state shardings): `init_variables(rng)` → {'params', optional 'batch_stats'} initialised directly into
  the sharded layout the `rules` give every path ('params/…', 'batch_stats/…', 'opt_state/…')."""
  def init(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(init_rng)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=jax.random.key_data(state_rng))

  key = jax.random.key(seed)
  shardings = tree_shardings(jax.eval_shape(init, key), mesh, rules, data_axes)
  return jax.jit(init, out_shardings=shardings)(key), shardings


def clamp_log_logit_scale(params: Any, max_scale: float = MAX_LOGIT_SCALE) -> Any:
  """Projects log s back to ≤ log 100 after the update (as CLIP does), so the clamp never stalls its gradient."""
  return {**params, "log_logit_scale": jnp.minimum(params["log_logit_scale"], math.log(max_scale))}


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def features_from_outputs(outputs: Mapping[str, jax.Array], batch_size: int, with_augmented: bool) -> Features:
  """Splits the towers' outputs on [original; augmented] rows into the Features the objective reads."""
  def split(key: str) -> tuple[jax.Array | None, jax.Array | None]:
    if key not in outputs:
      return None, None
    value = outputs[key]
    return (value[:batch_size], value[batch_size:]) if with_augmented else (value, None)

  zv, zv_aug = split("zv")
  zt, zt_aug = split("zt")
  zv_ind, zv_ind_aug = split("zv_ind")
  zt_ind, zt_ind_aug = split("zt_ind")
  return Features(zv=zv, zt=zt, zv_aug=zv_aug, zt_aug=zt_aug, zv_ind=zv_ind, zt_ind=zt_ind, zv_ind_aug=zv_ind_aug,
                  zt_ind_aug=zt_ind_aug, logit_scale=outputs["logit_scale"], logit_bias=outputs["logit_bias"])


ObjectiveFn = Callable[[Features, ObjectiveConfig, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


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


def make_loss_fn(model: nn.Module, objective: ObjectiveConfig | Mapping[str, Any], *,
                 objective_fn: ObjectiveFn = compute_objective, trainable: Sequence[str] = ()) -> Callable:
  """loss(params, batch_stats, batch, rng) → (L, (metrics, new batch_stats)).

  Original and augmented views are concatenated on the batch axis (when an active term reads the augmented view),
  so each tower runs once on [2B] inputs. With `trainable` patterns, the other parameters are treated as constants
  (`stop_frozen_gradients`).
  """
  objective = ObjectiveConfig.from_dict(objective)
  with_augmented = objective.needs_augmented_view

  def loss_fn(params, batch_stats, batch: Batch, rng: jax.Array):
    if trainable:
      params = stop_frozen_gradients(params, trainable)
    images, texts = batch["image"], batch["text"]
    if with_augmented:
      images = jnp.concatenate([images, batch["image_aug"]], axis=0)
      texts = jnp.concatenate([texts, batch["text_aug"]], axis=0)
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      outputs, updates = model.apply(variables, images, texts, train=True, mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      outputs = model.apply(variables, images, texts, train=True)
    features = features_from_outputs(outputs, batch["image"].shape[0], with_augmented)
    total, metrics = objective_fn(features, objective, rng)
    metrics["logit_scale"] = outputs["logit_scale"]
    return total, (metrics, batch_stats)

  return loss_fn


def split_micro_batches(batch: Batch, count: int, sharding: jax.sharding.NamedSharding) -> Batch:
  """[B, ...] → [count, B/count, ...] where micro-batch m holds rows m, m + count, m + 2·count, …

  Strided rather than contiguous, so that every micro-batch keeps rows on every device of the data axes.
  """
  def split(x: jax.Array) -> jax.Array:
    if x.shape[0] % count:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by accumulation_steps={count}")
    micro = jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)
    spec = jax.sharding.PartitionSpec(None, *sharding.spec)
    return jax.lax.with_sharding_constraint(micro, jax.sharding.NamedSharding(sharding.mesh, spec))
  return {k: split(v) for k, v in batch.items()}


def accumulated_gradients(loss_fn: Callable, params: Any, batch_stats: Any, batch: Batch, rng: jax.Array,
                          count: int, sharding: jax.sharding.NamedSharding):
  """Mean gradient and mean metrics over `count` micro-batches (a `lax.scan`); batch statistics are threaded.

  The contrastive negatives of each micro-batch are only that micro-batch's examples: accumulation saves memory
  but is not the same objective as one step on the whole batch.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if count == 1:
    (_, (metrics, batch_stats)), grads = grad_fn(params, batch_stats, batch, rng)
    return grads, metrics, batch_stats

  def body(carry, micro_batch_and_index):
    grads_sum, stats = carry
    micro_batch, index = micro_batch_and_index
    (_, (metrics, stats)), grads = grad_fn(params, stats, micro_batch, jax.random.fold_in(rng, index))
    return (jax.tree.map(jnp.add, grads_sum, grads), stats), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads, batch_stats), metrics = jax.lax.scan(
      body, (zeros, batch_stats), (split_micro_batches(batch, count, sharding), jnp.arange(count)))
  return (jax.tree.map(lambda g: g / count, grads), jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics),
          batch_stats)


def _is_schedule_count(path: tuple[Any, ...], value: Any) -> bool:
  """Whether the optax state entry at `path` is the count of a learning-rate schedule's state."""
  return getattr(path[-1], "tuple_name", None) == "ScaleByScheduleState"


def schedule_count(opt_state: Any) -> Any:
  """The count at which the optimizer evaluates its learning-rate schedule (optax's `ScaleByScheduleState.count`):
  the number of updates it has applied. None when the optimizer has no schedule state."""
  return optax.tree_utils.tree_get(opt_state, "count", filtering=_is_schedule_count)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    objective: ObjectiveConfig | Mapping[str, Any], mesh: Mesh, state_shardings: TrainState,
                    learning_rate: optax.Schedule | None = None, data_axes: Sequence[str] = ("data",),
                    accumulation_steps: int = 1, trainable: Sequence[str] = ()) -> Callable:
  """The jitted two-tower update (state, batch) → (state, metrics): `make_update_step` with the loss of
  `make_loss_fn`, whose objective is computed by the implementation `objective.impl` selects on this mesh
  (`objective_function`). `trainable` is the optimizer's pattern list: locked parameters get no gradient computation
  at all; the other arguments are `make_update_step`'s.
  """
  objective = ObjectiveConfig.from_dict(objective)
  loss_fn = make_loss_fn(model, objective, objective_fn=objective_function(objective, mesh, data_axes),
                         trainable=trainable)
  return make_update_step(loss_fn, tx, mesh=mesh, state_shardings=state_shardings, learning_rate=learning_rate,
                          data_axes=data_axes, accumulation_steps=accumulation_steps)


LossFn = Callable[[Any, Any, Batch, jax.Array], tuple[jax.Array, tuple[dict[str, jax.Array], Any]]]


def make_update_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, mesh: Mesh, state_shardings: TrainState,
                     learning_rate: optax.Schedule | None = None, data_axes: Sequence[str] = ("data",),
                     accumulation_steps: int = 1,
                     project_params: Callable[[Any], Any] = clamp_log_logit_scale) -> Callable:
  """The jitted update (state, batch) → (state, metrics) of any model; the state is donated.

  `loss_fn(params, batch_stats, batch, rng)` → (L, (metrics with 'loss/total', new batch_stats)): `batch_stats` is
  the state the update carries besides the parameters (batch-norm statistics; ALBEF's momentum encoders and
  queues). After the optimizer step `project_params` maps the parameters back into their domain (the logit-scale
  clamp of the two-tower model).

  A non-finite loss or gradient rejects the update: parameters, batch_stats and optimizer state stay as they were,
  the step counter advances, and `nonfinite` = 1 in the metrics (the loop decides whether to stop or count).

  `learning_rate` (the optimizer's schedule) adds the metric `learning_rate` = schedule(c), where c is the
  optimizer's own count of applied updates, read from its state before this update: the rate this update applies,
  or would have applied when it is rejected. A rejected update leaves the whole optimizer state, its count
  included, as it was (as optax's `apply_if_finite` does), so the next update applies that same rate and the log
  shows it; the schedule follows applied updates, so each rejection delays the rest of it by one step. (Counting
  the step instead would have the log run ahead of the applied rate after the first rejection.)

  With `accumulation_steps` > 1 the gradient is the mean over that many micro-batches (see
  `accumulated_gradients`).
  """
  if learning_rate is not None and schedule_count(state_shardings.opt_state) is None:
    raise ValueError("make_update_step: learning_rate is given but the optimizer state has no schedule count "
                     "(optax ScaleByScheduleState); pass the schedule the optimizer was built with")
  data_sharding = batch_sharding(mesh, data_axes)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grads, metrics, batch_stats = accumulated_gradients(loss_fn, state.params, state.batch_stats, batch, rng,
                                                        accumulation_steps, data_sharding)
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
        finite, apply_update, keep_state, (grads, state.params, state.opt_state, batch_stats, state.batch_stats))
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                           rng=state.rng)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["nonfinite"] = 1 - finite.astype(jnp.int32)
    if learning_rate is not None:
      metrics["learning_rate"] = learning_rate(schedule_count(state.opt_state))
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_shardings, data_sharding),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)
