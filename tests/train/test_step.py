"""The jitted update: sharded (GSPMD and ring objective) equals single-device, global-batch loss, convergence, the
non-finite guard and the schedule after a rejected update."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.losses.objective import compute_objective
from lmstruct.losses.term import Features
from lmstruct.models import build_model, input_shapes
from lmstruct.train.optimizer import learning_rate_schedule, make_optimizer, weight_decay_mask
from lmstruct.train.sharding import DEFAULT_RULES, FSDP_RULES, batch_sharding, make_mesh
from lmstruct.train.step import init_train_state, make_train_step

MODEL = {"preset": "test"}
OBJECTIVE = {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}}
OPTIMIZER = {"learning_rate": 1e-3, "warmup_steps": 2, "total_steps": 60, "weight_decay": 0.1}


def make_batch(batch_size, seed=0):
  (h, w, c), length = input_shapes(MODEL)
  rng = np.random.default_rng(seed)
  text = rng.integers(1, 5000, (batch_size, length)).astype(np.int32)
  text[:, -1] = 49407
  text_aug = text.copy()
  text_aug[:, 0] = rng.integers(1, 5000, batch_size)
  return {"image": rng.normal(size=(batch_size, h, w, c)).astype(np.float32),
          "image_aug": rng.normal(size=(batch_size, h, w, c)).astype(np.float32),
          "text": text, "text_aug": text_aug}


def new_state(model_config, tx, mesh, rules=DEFAULT_RULES):
  model = build_model(model_config)
  shape, length = input_shapes(model_config)
  state, shardings = init_train_state(model, tx, image_shape=shape, context_length=length, mesh=mesh, rules=rules,
                                      seed=0)
  return model, state, shardings


def train(mesh, rules, steps, batch, objective=OBJECTIVE):
  """(final state, metrics of every step, the jitted update): `steps` updates on one batch."""
  tx = make_optimizer(OPTIMIZER)
  model, state, shardings = new_state(MODEL, tx, mesh, rules)
  step = make_train_step(model, tx, objective=objective, mesh=mesh, state_shardings=shardings,
                         learning_rate=learning_rate_schedule(OPTIMIZER))
  batch = jax.device_put(batch, batch_sharding(mesh))
  history = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return state, history, step


def relative_difference(a, b):
  """‖a − b‖ / ‖b‖ over the whole tree flattened into one vector."""
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(t)])
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def max_abs_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                              jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def single_device_run():
  """Three updates of the global objective on one device: the reference of every sharded update."""
  return train(make_mesh(devices=jax.devices()[:1]), DEFAULT_RULES, 3, make_batch(16),
               objective={**OBJECTIVE, "impl": "global"})


@pytest.mark.parametrize("impl,rules", [("global", DEFAULT_RULES), ("global", FSDP_RULES), ("ring", DEFAULT_RULES)],
                         ids=["gspmd-data_parallel", "gspmd-fsdp", "ring-data_parallel"])
def test_sharded_update_equals_single_device_after_three_steps(single_device_run, impl, rules):
  """The full objective (in-modal + separation + bridge + geometric) on 8 devices, its B×B terms through GSPMD or
  through the ring objective inside the update, against the global objective on one device: every metric of every
  step, the parameters and the optimizer state after three updates."""
  assert len(jax.devices()) == 8
  state, history, step = train(make_mesh(), rules, 3, make_batch(16), objective={**OBJECTIVE, "impl": impl})
  reference_state, reference_history, _ = single_device_run
  # Relative over the whole parameter vector, plus an absolute bound per element: zero-initialised leaves whose
  # gradient is mathematically zero (the attention key bias) receive rounding noise that Adam normalises into
  # updates of ~lr·1e-3, so a per-leaf *relative* bound would measure that noise, not the sharding.
  assert relative_difference(state.params, reference_state.params) <= 1e-5
  assert max_abs_difference(state.params, reference_state.params) <= 1e-5
  assert relative_difference(state.opt_state, reference_state.opt_state) <= 1e-5
  for got, want in zip(history, reference_history):
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7, err_msg=key)
  compiled = step.lower(state, jax.device_put(make_batch(16), batch_sharding(make_mesh()))).compile().as_text()
  if impl == "ring":  # the ring objective really ran: feature blocks pass between neighbours
    assert "collective-permute" in compiled
  if rules is FSDP_RULES:
    kernel = state.params["text_tower"]["transformer"]["block_0"]["mlp"]["fc"]["kernel"]
    assert kernel.sharding.spec != jax.sharding.PartitionSpec()  # really sharded, not replicated


def test_loss_of_batch_split_over_eight_devices_equals_one_device_loss():
  """Every pairwise term takes its negatives from the global batch: sharding the batch changes nothing."""
  rng = np.random.default_rng(3)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  arrays = {k: unit(rng.normal(size=(32, 8))).astype(np.float32)
            for k in ("zv", "zt", "zv_aug", "zt_aug", "zv_ind", "zt_ind", "zv_ind_aug", "zt_ind_aug")}
  config = {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0, "cyclip": 0.5,
                                           "alignment": 0.1, "gap_alignment": 0.3}}
  # The printed alignment term 1/⟨zv_j, zt_j⟩² turns the rounding of a near-orthogonal pair's ⟨zv_j, zt_j⟩ (8
  # products summed in another order when sharded), relative to that small ⟨⟩, into its own error: 1e-5 for it and
  # for the total it enters; 1e-6 for every other term.
  rtol = {"loss/alignment": 1e-5, "loss/total": 1e-5}

  def objective(arrays):
    return compute_objective(Features(**arrays, logit_scale=jnp.float32(10.0)), config, jax.random.key(0))[1]

  one = jax.jit(objective)(jax.device_put(arrays, jax.devices()[0]))
  mesh = make_mesh()
  eight = jax.jit(objective)(jax.device_put(arrays, batch_sharding(mesh)))
  for key in one:
    np.testing.assert_allclose(eight[key], one[key], rtol=rtol.get(key, 1e-6), err_msg=key)
  # A loss computed per device (8 local batches of 4) differs: the test would catch that bug.
  local = np.mean([objective({k: v[i * 4:(i + 1) * 4] for k, v in arrays.items()})["loss/inmodal"]
                   for i in range(8)])
  assert abs(local - float(one["loss/inmodal"])) > 0.1


def test_fifty_updates_decrease_the_objective():
  _, history, _ = train(make_mesh(), DEFAULT_RULES, 50, make_batch(16, seed=1))
  first, last = history[0]["loss/total"], history[-1]["loss/total"]
  assert last < first - 1.0
  assert all(h["nonfinite"] == 0 for h in history)


def test_nonfinite_batch_rejects_the_update():
  """A ResNet model (batch norm): after one good update, a NaN image rejects the next one, which leaves the
  parameters, the optimizer state (moments and counts) and the batch statistics exactly as they were. (The guard
  reads only the loss and the gradients, so the plain CLIP objective keeps the compile short.)"""
  tx = make_optimizer(OPTIMIZER)
  mesh = make_mesh()
  model, state, shardings = new_state({"preset": "test-rn"}, tx, mesh)
  step = make_train_step(model, tx, objective={"base": "clip", "weights": {}}, mesh=mesh, state_shardings=shardings)
  state, metrics = step(state, jax.device_put(make_batch(8), batch_sharding(mesh)))
  assert int(metrics["nonfinite"]) == 0
  before = jax.device_get({"params": state.params, "opt_state": state.opt_state, "batch_stats": state.batch_stats})
  assert jax.tree.leaves(before["batch_stats"])
  batch = make_batch(8, seed=1)
  batch["image"][0, 0, 0, 0] = np.nan
  state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
  assert int(metrics["nonfinite"]) == 1 and int(state.step) == 2
  after = jax.device_get({"params": state.params, "opt_state": state.opt_state, "batch_stats": state.batch_stats})
  assert jax.tree.structure(after) == jax.tree.structure(before)
  for name in before:
    assert max_abs_difference(after[name], before[name]) == 0.0, name


def test_a_rejected_update_leaves_the_schedule_where_it_was():
  """Updates on batches (A, NaN, B) against (A, B): the rejected update changes nothing, so the parameters end
  equal and the update on B applies, and logs, lr(1), the schedule at the optimizer's count of applied updates.
  (Logging lr(step) would show lr(2) for an update that applies lr(1).)"""
  tx = make_optimizer(OPTIMIZER)
  schedule = learning_rate_schedule(OPTIMIZER)
  mesh = make_mesh(devices=jax.devices()[:1])
  model, _, shardings = new_state(MODEL, tx, mesh)
  step = make_train_step(model, tx, objective=OBJECTIVE, mesh=mesh, state_shardings=shardings,
                         learning_rate=schedule)
  poisoned = make_batch(8, seed=2)
  poisoned["image"][0, 0, 0, 0] = np.nan
  runs = {}
  for name, batches in {"with_rejection": [make_batch(8, seed=0), poisoned, make_batch(8, seed=1)],
                        "without": [make_batch(8, seed=0), make_batch(8, seed=1)]}.items():
    _, state, _ = new_state(MODEL, tx, mesh)
    rates, rejected = [], []
    for batch in batches:
      state, metrics = step(state, jax.device_put(batch, batch_sharding(mesh)))
      rates.append(float(metrics["learning_rate"]))
      rejected.append(int(metrics["nonfinite"]))
    runs[name] = (jax.device_get(state.params), rates, rejected)
  (params, rates, rejected), (reference_params, reference_rates, _) = runs["with_rejection"], runs["without"]
  assert rejected == [0, 1, 0]
  assert float(schedule(1)) != float(schedule(2))
  assert rates == pytest.approx([float(schedule(0)), float(schedule(1)), float(schedule(1))], rel=1e-6)
  assert reference_rates == pytest.approx([float(schedule(0)), float(schedule(1))], rel=1e-6)
  assert max_abs_difference(params, reference_params) == 0.0


def test_weight_decay_mask_skips_biases_norms_embeddings_and_scalars():
  model = build_model(MODEL)
  shape, length = input_shapes(MODEL)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)),
                          jnp.zeros((1, length), jnp.int32))["params"]
  mask = weight_decay_mask(params)
  assert mask["log_logit_scale"] is False and mask["logit_bias"] is False
  assert mask["text_tower"]["token_embedding"]["embedding"] is False
  assert mask["text_tower"]["positional_embedding"] is False
  assert mask["image_tower"]["class_embedding"] is False
  assert mask["image_tower"]["ln_pre"]["scale"] is False
  assert mask["image_tower"]["transformer"]["block_0"]["attn"]["qkv"]["bias"] is False
  assert mask["image_tower"]["transformer"]["block_0"]["attn"]["qkv"]["kernel"] is True
  assert mask["image_tower"]["patch_embed"]["kernel"] is True
  assert mask["image_projection"]["kernel"] is True


def test_learning_rate_schedule_warms_up_linearly_then_decays_by_cosine():
  schedule = learning_rate_schedule({"learning_rate": 1.0, "warmup_steps": 10, "total_steps": 110})
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)), abs=1e-6)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_mesh_errors_name_the_problem():
  with pytest.raises(ValueError, match="does not fit the 8"):
    make_mesh({"data": 16})
  with pytest.raises(ValueError, match="does not fit the 8"):
    make_mesh({"data": -1, "model": 3})
  assert make_mesh({"data": 2}).devices.size == 2
  with pytest.raises(ValueError, match="at most one -1"):
    make_mesh({"data": -1, "model": -1})
  mesh = make_mesh({"data": 4, "model": -1})
  assert dict(mesh.shape) == {"data": 4, "model": 2}


def test_trainable_patterns_freeze_everything_else():
  config = {**OPTIMIZER, "learning_rate": 1e-2, "warmup_steps": 0, "trainable": ["projection", "log_logit_scale"]}
  tx = make_optimizer(config)
  mesh = make_mesh()
  model, state, shardings = new_state(MODEL, tx, mesh)
  before = jax.device_get(state.params)
  step = make_train_step(model, tx, objective=OBJECTIVE, mesh=mesh, state_shardings=shardings,
                         trainable=config["trainable"])
  state, metrics = step(state, jax.device_put(make_batch(8), batch_sharding(mesh)))
  after = jax.device_get(state.params)
  # The same update without stop_gradient on the locked towers gives the same trainable parameters.
  _, reference_state, _ = new_state(MODEL, tx, mesh)
  reference_state, _ = make_train_step(model, tx, objective=OBJECTIVE, mesh=mesh, state_shardings=shardings)(
      reference_state, jax.device_put(make_batch(8), batch_sharding(mesh)))
  assert relative_difference(after, jax.device_get(reference_state.params)) <= 1e-6
  assert max_abs_difference(after["image_tower"], before["image_tower"]) == 0.0
  assert max_abs_difference(after["text_tower"], before["text_tower"]) == 0.0
  assert max_abs_difference(after["image_projection"], before["image_projection"]) > 1e-4
  assert max_abs_difference(after["text_projection_ind"], before["text_projection_ind"]) > 1e-4


def test_accumulated_gradient_is_the_mean_over_strided_micro_batches():
  from lmstruct.train.step import accumulated_gradients, make_loss_fn
  model = build_model(MODEL)
  shape, length = input_shapes(MODEL)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1, length), jnp.int32))["params"]
  batch = make_batch(8, seed=4)
  mesh = make_mesh()
  loss_fn = make_loss_fn(model, {"base": "clip", "weights": {}})
  rng = jax.random.key(1)
  grads, metrics, _ = jax.jit(lambda p, b: accumulated_gradients(loss_fn, p, {}, b, rng, 2, batch_sharding(mesh)))(
      params, jax.device_put(batch, batch_sharding(mesh)))
  halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
  separate = [jax.jit(jax.grad(lambda p, b: loss_fn(p, {}, b, rng)[0]))(params, h) for h in halves]
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *separate)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())))
  losses = [float(loss_fn(params, {}, h, rng)[0]) for h in halves]
  assert float(metrics["loss/total"]) == pytest.approx(np.mean(losses), rel=1e-5)
