"""Gradient accumulation by feature caching: the loss and gradient of k micro-batches are those of one pass over the
whole batch, on the full objective with global negatives, sharded over 8 devices with the ring objective.

The references are independent of the caching machinery: one `value_and_grad` through towers and objective on the
whole batch (k = 1) and, for batch norm, plain autodiff of a Python loop that encodes each micro-batch on its own.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.losses.objective import ObjectiveConfig, compute_objective
from lmstruct.losses.ring import compute_objective_ring
from lmstruct.losses.term import Features
from lmstruct.models import build_model, input_shapes
from lmstruct.train.sharding import batch_sharding, make_mesh
from lmstruct.train.step import batch_gradients, make_encoder, make_views_objective

FULL = {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}, "bridge_t": "uniform"}


def make_batch(model_config, batch_size, seed):
  (h, w, c), length = input_shapes(model_config)
  rng = np.random.default_rng(seed)
  text = rng.integers(1, 5000, (batch_size, length)).astype(np.int32)
  text[:, -1] = 49407
  text_aug = np.where(rng.random(text.shape) < 0.2, rng.integers(1, 5000, text.shape), text).astype(np.int32)
  images = rng.normal(size=(batch_size, h, w, c)).astype(np.float32)
  return {
    "image": images,
    "image_aug": (images + 0.3 * rng.normal(size=images.shape)).astype(np.float32),
    "text": text,
    "text_aug": text_aug,
  }


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def relative_difference(a, b):
  """‖a − b‖ / ‖b‖ over the whole tree flattened into one vector."""
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


@functools.cache
def setup(model_config_items):
  model_config = dict(model_config_items)
  model = build_model(model_config)
  (h, w, c), length = input_shapes(model_config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32))
  mesh = make_mesh()
  objective_fn = functools.partial(compute_objective_ring, mesh=mesh, data_axis="data")
  objective = make_views_objective(ObjectiveConfig.from_dict(FULL), objective_fn)
  return model, variables, mesh, make_encoder(model, True), objective


def gradients(model_config, batch, count):
  model, variables, mesh, encode, objective = setup(tuple(model_config.items()))
  sharding = batch_sharding(mesh)
  run = jax.jit(lambda p, s, b: batch_gradients(encode, objective, p, s, b, jax.random.key(5), count, sharding))
  return run(variables["params"], variables.get("batch_stats", {}), jax.device_put(batch, sharding))


@pytest.mark.parametrize("count", [2, 4])
def test_accumulated_loss_and_gradient_equal_one_pass_over_the_batch(count):
  assert len(jax.devices()) == 8
  config = {"preset": "test"}
  batch = make_batch(config, 32, seed=1)
  grads, metrics, _ = gradients(config, batch, count)
  want_grads, want_metrics, _ = gradients(config, batch, 1)
  assert set(metrics) == set(want_metrics) and "loss/geometric" in metrics
  for key in want_metrics:
    np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)
  assert relative_difference(grads, want_grads) <= 1e-5

  def close(path, got, want):
    # Per parameter, with a floor relative to its own largest entry: leaves whose gradient is mathematically zero
    # (the attention key bias) hold float32 noise in both.
    np.testing.assert_allclose(
      got, want, rtol=1e-5, atol=1e-5 * max(float(np.abs(want).max()), 1e-6), err_msg=jax.tree_util.keystr(path)
    )

  jax.tree_util.tree_map_with_path(close, grads, want_grads)


def test_local_negatives_would_be_caught():
  """The mean of the micro-batches' own gradients (negatives only within a micro-batch) is another objective:
  the comparison above would fail for it."""
  config = {"preset": "test"}
  batch = make_batch(config, 32, seed=1)
  want_grads, want_metrics, _ = gradients(config, batch, 1)
  halves = [{k: v[m::2] for k, v in batch.items()} for m in range(2)]
  local = [gradients(config, half, 1) for half in halves]
  local_grads = jax.tree.map(lambda a, b: (a + b) / 2, local[0][0], local[1][0])
  assert relative_difference(local_grads, want_grads) > 1e-2
  assert abs(np.mean([m["loss/total"] for _, m, _ in local]) - float(want_metrics["loss/total"])) > 1e-2


def ghost_batch_norm_reference(model, variables, batch, count, rng):
  """(L, ∂L/∂θ, mean of the micro-batches' updated statistics) by plain autodiff: micro-batch m (rows m, m + k, …)
  runs through the towers on its own, views concatenated [x; x′], and the global objective sees all features."""

  def loss(params):
    parts, stats = [], []
    for m in range(count):
      micro = {k: v[m::count] for k, v in batch.items()}
      images = jnp.concatenate([micro["image"], micro["image_aug"]])
      texts = jnp.concatenate([micro["text"], micro["text_aug"]])
      out, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, images, texts, train=True, mutable=["batch_stats"]
      )
      parts.append(out)
      stats.append(updates["batch_stats"])
    n = batch["image"].shape[0] // count

    def rows(key, view):  # row i·count + m of the batch is row i of micro-batch m
      return jnp.stack([p[key][view * n : (view + 1) * n] for p in parts], 1).reshape(count * n, -1)

    features = Features(
      zv=rows("zv", 0),
      zt=rows("zt", 0),
      zv_aug=rows("zv", 1),
      zt_aug=rows("zt", 1),
      zv_ind=rows("zv_ind", 0),
      zt_ind=rows("zt_ind", 0),
      zv_ind_aug=rows("zv_ind", 1),
      zt_ind_aug=rows("zt_ind", 1),
      logit_scale=parts[0]["logit_scale"],
      logit_bias=parts[0]["logit_bias"],
    )
    total, _ = compute_objective(features, FULL, rng)
    return total, jax.tree.map(lambda *s: sum(s) / count, *stats)

  (total, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return total, grads, stats


def test_batch_norm_micro_batches_are_normalised_on_their_own():
  """ResNet tower: each micro-batch is normalised with its own statistics in both passes (ghost batch norm); the
  gradient is that of the global objective of those features, and the first layer's running mean, whose input does
  not depend on other layers, is updated exactly as one pass over the whole batch updates it."""
  config = {"preset": "test-rn"}
  model, variables, _, _, _ = setup(tuple(config.items()))
  batch = make_batch(config, 32, seed=2)
  grads, metrics, stats = gradients(config, batch, 2)
  want_total, want_grads, want_stats = ghost_batch_norm_reference(model, variables, batch, 2, jax.random.key(5))
  np.testing.assert_allclose(metrics["loss/total"], want_total, rtol=1e-5)
  assert relative_difference(grads, want_grads) <= 1e-5
  assert relative_difference(stats, want_stats) <= 1e-6
  _, _, one_pass_stats = gradients(config, batch, 1)
  np.testing.assert_allclose(
    stats["image_tower"]["stem_bn1"]["mean"], one_pass_stats["image_tower"]["stem_bn1"]["mean"], rtol=1e-5, atol=1e-7
  )
  assert relative_difference(stats, one_pass_stats) > 1e-4  # deeper layers see micro-batch statistics


def test_micro_batches_must_divide_over_the_devices():
  config = {"preset": "test"}
  with pytest.raises(ValueError, match=r"micro-batches of 4 rows .* do not divide over the 8 devices"):
    gradients(config, make_batch(config, 16, seed=0), 4)
  with pytest.raises(ValueError, match=r"batch size 16 is not divisible by train.accumulation_steps=3"):
    gradients(config, make_batch(config, 16, seed=0), 3)
