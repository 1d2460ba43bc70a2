"""The compiled data-parallel update moves no activations between devices: on 8 devices with the ring objective its
only collectives are the gradient all-reduce (plus the objective's scalar sums) and the ring's permutes of [n, D]
feature blocks to the next device. Both views of an example are encoded on the device that holds it."""

import jax
import jax.numpy as jnp
import pytest

from lmstruct.models import build_model, input_shapes
from lmstruct.train import hlo
from lmstruct.train.optimizer import make_optimizer
from lmstruct.train.sharding import DEFAULT_RULES, batch_sharding, make_mesh, tree_shardings
from lmstruct.train.step import make_train_step, train_state_initializer

MODEL = {"preset": "test"}  # embed_dim 16
OBJECTIVE = {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}, "impl": "ring"}
BATCH, DEVICES, DIM = 32, 8, 16


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_data_parallel_update_only_reduces_gradients_and_passes_feature_blocks(accumulation_steps):
  mesh = make_mesh()
  assert mesh.devices.size == DEVICES
  model, tx = build_model(MODEL), make_optimizer({"learning_rate": 1e-3, "total_steps": 10})
  image_shape, length = input_shapes(MODEL)
  initialize = train_state_initializer(model, tx, image_shape=image_shape, context_length=length)
  abstract = jax.eval_shape(initialize, jax.random.key(0))
  shardings = tree_shardings(abstract, mesh, DEFAULT_RULES)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  rows = batch_sharding(mesh)
  images = jax.ShapeDtypeStruct((BATCH, *image_shape), jnp.float32, sharding=rows)
  texts = jax.ShapeDtypeStruct((BATCH, length), jnp.int32, sharding=rows)
  step = make_train_step(
    model, tx, objective=OBJECTIVE, mesh=mesh, state_shardings=shardings, accumulation_steps=accumulation_steps
  )
  text = step.lower(state, {"image": images, "image_aug": images, "text": texts, "text_aug": texts}).compile().as_text()

  found = hlo.collectives(text)
  assert {c.kind for c in found} == {"all-reduce", "collective-permute"}
  ring = tuple((i, (i + 1) % DEVICES) for i in range(DEVICES))
  per_device = BATCH // DEVICES
  for permute in (c for c in found if c.kind == "collective-permute"):
    assert permute.source_target_pairs == ring
    assert all(a.dims == (per_device, DIM) for a in permute.result), permute.result
  # Every all-reduce is a gradient reduction (one f32 per parameter; with accumulation, one per micro-batch: XLA
  # reduces each micro-batch's gradient inside the accumulation loop) or a handful of scalars: no activation.
  parameter_bytes = 4 * sum(leaf.size for leaf in jax.tree.leaves(abstract.params))
  reduced = sum(c.bytes * c.executions for c in found if c.kind == "all-reduce")
  assert accumulation_steps * parameter_bytes <= reduced <= accumulation_steps * parameter_bytes + 256
