"""Unrolled (`block_<i>`) and scanned (`blocks`, stacked) transformer layouts: the same model either way, the map
between them in both directions (parameters, optimizer state, abstract arrays with shardings), and checkpoints of
either layout restored into the other through orbax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lmstruct.models import build_model, input_shapes, layout
from lmstruct.train import checkpoint
from lmstruct.train.optimizer import make_optimizer
from lmstruct.train.sharding import DEFAULT_RULES, FSDP_RULES, make_mesh
from lmstruct.train.step import init_train_state

UNROLLED, SCANNED = {"preset": "test"}, {"preset": "test", "scan_layers": True}


def inputs(config, batch=3):
  (h, w, c), length = input_shapes(config)
  images = jax.random.normal(jax.random.key(1), (batch, h, w, c))
  texts = jax.random.randint(jax.random.key(2), (batch, length), 1, 300).at[:, -1].set(49407)
  return images, texts


def test_block_i_is_row_i_of_the_stacked_parameters():
  images, texts = inputs(UNROLLED)
  params = jax.jit(build_model(UNROLLED).init)(jax.random.key(0), images, texts)["params"]
  stacked = layout.to_scanned(params)
  blocks = stacked["image_tower"]["transformer"]["blocks"]
  assert set(stacked["image_tower"]["transformer"]) == {"blocks"}
  for i in range(2):
    np.testing.assert_array_equal(
      blocks["attn"]["qkv"]["kernel"][i], params["image_tower"]["transformer"][f"block_{i}"]["attn"]["qkv"]["kernel"]
    )
  back = layout.to_unrolled(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("remat_policy", ["none", "full", "dots_saveable"])
def test_scanned_model_computes_the_unrolled_model(remat_policy):
  """The same parameters in the two layouts give the same features and the same gradients (mapped)."""
  images, texts = inputs(UNROLLED)
  unrolled, scanned = build_model(UNROLLED), build_model({**SCANNED, "remat_policy": remat_policy})
  params = jax.jit(unrolled.init)(jax.random.key(0), images, texts)["params"]

  def loss(model, params):
    out = model.apply({"params": params}, images, texts, train=True)
    return jnp.sum(out["zv"] * out["zt"]) + jnp.sum(out["zv_ind"] ** 3)

  want, want_grads = jax.jit(jax.value_and_grad(lambda p: loss(unrolled, p)))(params)
  got, got_grads = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(layout.to_scanned(params))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), layout.to_unrolled(got_grads), want_grads
  )


def test_scanned_layers_draw_their_own_initial_parameters():
  images, texts = inputs(SCANNED)
  params = jax.jit(build_model(SCANNED).init)(jax.random.key(0), images, texts)["params"]
  kernel = params["text_tower"]["transformer"]["blocks"]["mlp"]["fc"]["kernel"]
  assert kernel.shape[0] == 2 and not np.allclose(kernel[0], kernel[1])


def test_abstract_arrays_move_their_sharding_with_the_layer_axis():
  mesh = make_mesh()
  sharding = NamedSharding(mesh, P(None, "data"))
  tree = {
    "transformer": {
      f"block_{i}": {"kernel": jax.ShapeDtypeStruct((4, 16), jnp.float32, sharding=sharding)} for i in range(3)
    }
  }
  stacked = layout.to_scanned(tree)["transformer"]["blocks"]["kernel"]
  assert stacked.shape == (3, 4, 16) and stacked.sharding.spec == P(None, None, "data")
  row = layout.to_unrolled({"transformer": {"blocks": {"kernel": stacked}}})["transformer"]["block_2"]["kernel"]
  assert row.shape == (4, 16) and row.sharding.spec == P(None, "data")


def test_optimizer_state_of_frozen_blocks_is_mapped_by_the_parameters_layer_count():
  """A frozen tower's moments are optax MaskedNodes, with no array to count layers by."""
  images, texts = inputs(UNROLLED)
  params = jax.jit(build_model(UNROLLED).init)(jax.random.key(0), images, texts)["params"]
  tx = make_optimizer({"learning_rate": 1e-3, "total_steps": 10, "trainable": ["text_tower"]})
  state = {"params": params, "opt_state": tx.init(params)}
  scanned = layout.to_scanned(state)
  assert jax.tree.structure(scanned["opt_state"]) == jax.tree.structure(tx.init(scanned["params"]))
  assert jax.tree.structure(layout.to_unrolled(scanned)) == jax.tree.structure(state)


def _state(model_config, mesh, rules):
  model, tx = build_model(model_config), make_optimizer({"learning_rate": 1e-3, "total_steps": 10})
  shape, length = input_shapes(model_config)
  return init_train_state(model, tx, image_shape=shape, context_length=length, mesh=mesh, rules=rules, seed=0)


@pytest.mark.parametrize(
  "saved,restored", [(UNROLLED, SCANNED), (SCANNED, UNROLLED)], ids=["unrolled→scanned", "scanned→unrolled"]
)
def test_checkpoint_of_one_layout_restores_into_the_other(saved, restored, tmp_path):
  mesh = make_mesh()
  state, _ = _state(saved, mesh, FSDP_RULES)
  state = state.replace(
    step=jnp.asarray(3, jnp.int32),
    opt_state=jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state.opt_state),
  )
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save(manager, state, {"position": 1}, {})
  manager.wait_until_finished()
  fresh, shardings = _state(restored, mesh, DEFAULT_RULES)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
  got, data = checkpoint.restore(manager, 3, abstract, shardings)
  assert data == {"position": 1} and int(got.step) == 3
  assert jax.tree.structure(got) == jax.tree.structure(fresh)
  want = layout.matching_layout(jax.device_get(state), fresh.params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), got, want)
  blocks = lambda tree: tree["text_tower"]["transformer"]
  saved_mu, got_mu = blocks(state.opt_state[1][0].mu), blocks(got.opt_state[1][0].mu)
  for i in range(2):
    stacked, block = (got_mu, saved_mu) if restored is SCANNED else (saved_mu, got_mu)
    np.testing.assert_array_equal(
      np.asarray(stacked["blocks"]["mlp"]["fc"]["kernel"][i]), np.asarray(block[f"block_{i}"]["mlp"]["fc"]["kernel"])
    )
  for leaf, sharding in zip(jax.tree.leaves(got), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
  manager.close()
