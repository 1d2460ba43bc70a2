"""The ALBEF pre-training update: on 8 devices (ring regularisers) it equals the single-device update (global
regularisers); the EMA of the momentum encoders; the feature queues filled from every device and wrapping around; no
NaN when a batch has no valid ITM negative; the config errors of the queue size and of a base loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.losses.objective import ObjectiveConfig
from lmstruct.models.albef import Albef, albef_input_shapes, build_albef
from lmstruct.train import albef
from lmstruct.train.optimizer import learning_rate_schedule, make_optimizer
from lmstruct.train.sharding import DEFAULT_RULES, batch_sharding, make_mesh, tree_shardings
from lmstruct.train.step import (
  init_sharded_state,
  loss_gradients,
  make_update,
  objective_function,
  state_initializer,
)

MODEL = {
  "preset": "albef-test",
  "image": {"image_size": 16},
  "text": {"vocab_size": 64, "context_length": 8},
  "independent_heads": True,
}
OPTIMIZER = {"learning_rate": 1e-3, "warmup_steps": 0, "total_steps": 10, "weight_decay": 0.02, "grad_clip_norm": 0.0}
OBJECTIVE = ObjectiveConfig.from_dict({"base": "none", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}})
SPECIAL = albef.SpecialTokens(pad=0, cls=1, sep=2, mask=3, vocab_size=64)
OPTIONS = albef.albef_options({"queue_size": 16, "momentum": 0.995})
BATCH = 8


def make_batch(seed, same_image=False):
  (size, _, _), length = albef_input_shapes(MODEL)
  rng = np.random.default_rng(seed)
  text = rng.integers(4, 64, (BATCH, length)).astype(np.int32)
  text[:, 0], text[:, 6], text[:, 7] = 1, 2, 0
  keys = np.zeros(BATCH, np.int32) if same_image else np.arange(BATCH, dtype=np.int32) // 2
  return {"image": rng.normal(size=(BATCH, size, size, 3)).astype(np.float32), "text": text, "image_key": keys}


RULES = (*albef.QUEUE_RULES, *DEFAULT_RULES)


def initializer(model, tx):
  """rng ↦ the initial pre-training state of `model`: parameters, momentum copy and queues, optimizer state."""
  (size, _, _), length = albef_input_shapes(MODEL)

  inputs = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
  return state_initializer(lambda rng: albef.init_pretrain_variables(model, rng, inputs, queue_size=16), tx)


@pytest.fixture(scope="module")
def initial():
  """Host copy of the initial state, initialised once (on one device) and placed on each mesh by `run`."""
  initialize = initializer(build_albef(MODEL, "pretrain"), make_optimizer(OPTIMIZER))
  state, _ = init_sharded_state(initialize, mesh=make_mesh({"data": 1}), rules=RULES, seed=0)
  return jax.device_get(state)


def run(devices, initial):
  """Host copies of the states and metrics of three updates on `devices` devices from the state `initial` (the
  third batch shows one image only), and the model."""
  mesh = make_mesh({"data": devices})
  model = build_albef(MODEL, "pretrain")
  tx = make_optimizer(OPTIMIZER)
  shardings = tree_shardings(jax.eval_shape(initializer(model, tx), jax.random.key(0)), mesh, RULES, ("data",))
  state = jax.device_put(initial, shardings)
  loss_fn = albef.make_pretrain_loss(
    model,
    OPTIONS,
    SPECIAL,
    ramp_examples=16,
    objective=OBJECTIVE,
    objective_fn=objective_function(OBJECTIVE, mesh, ("data",)),
  )
  step = make_update(
    loss_gradients(loss_fn),
    tx,
    mesh=mesh,
    state_shardings=shardings,
    learning_rate=learning_rate_schedule(OPTIMIZER),
    project_params=albef.project_temperature,
  )
  states, metrics = [jax.device_get(state)], []
  for seed, same in ((1, False), (2, False), (3, True)):
    state, m = step(state, jax.device_put(make_batch(seed, same), batch_sharding(mesh)))
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return model, states, metrics


@pytest.fixture(scope="module")
def single(initial):
  return run(1, initial)


@pytest.fixture(scope="module")
def sharded(initial):
  return run(8, initial)


def test_sharded_update_equals_single_device(single, sharded):
  _, states_1, metrics_1 = single
  _, states_8, metrics_8 = sharded
  for key in ("loss/itc", "loss/itm", "loss/mlm", "loss/separation", "loss/bridge", "loss/geometric", "loss/total"):
    np.testing.assert_allclose([m[key] for m in metrics_8], [m[key] for m in metrics_1], rtol=2e-4, err_msg=key)
  # Adam turns a gradient far below its ε (1e-6) into an update of roundoff noise, so parameters are compared to a
  # tenth of one step's update size (lr = 1e-3); a missing or doubled reduction would move them by ~lr.
  for a, b in zip(jax.tree.leaves(states_8[2].params), jax.tree.leaves(states_1[2].params)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  for a, b in zip(jax.tree.leaves(states_8[2].batch_stats), jax.tree.leaves(states_1[2].batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_every_loss_term_is_reported_and_finite(single):
  _, _, metrics = single
  for m in metrics:
    assert int(m["nonfinite"]) == 0
    for key in ("loss/itc", "loss/itm", "loss/mlm", "loss/separation", "loss/bridge", "loss/geometric"):
      assert np.isfinite(m[key]) and m[key] != 0.0, key
    np.testing.assert_allclose(
      m["loss/total"],
      sum(m[k] for k in ("loss/itc", "loss/itm", "loss/mlm", "loss/separation", "loss/bridge", "loss/geometric")),
      rtol=1e-5,
    )


def test_a_batch_of_one_image_has_no_itm_negative_and_stays_finite(single):
  _, states, metrics = single
  assert int(metrics[2]["nonfinite"]) == 0 and np.isfinite(metrics[2]["loss/itm"])
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(states[3].params), jax.tree.leaves(states[2].params)))


def test_momentum_encoders_follow_the_ema_of_the_parameters(single):
  _, states, _ = single
  m = OPTIONS.momentum
  # θ_m,0 = θ_0; each update first sets θ_m ← m·θ_m + (1 − m)·θ with the parameters before the update.
  expected = jax.tree.map(lambda p: np.asarray(p, np.float64), albef.momentum_part(states[0].params))
  for state in states[:3]:
    online = albef.momentum_part(state.params)
    expected = jax.tree.map(lambda e, p: m * e + (1 - m) * np.asarray(p, np.float64), expected, online)
  for got, want in zip(jax.tree.leaves(states[3].batch_stats["momentum"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert "itm_head" not in states[3].batch_stats["momentum"] and "temp" not in states[3].batch_stats["momentum"]


def test_queues_take_every_devices_features_and_wrap_around(sharded):
  model, states, _ = sharded
  momentum = [s.batch_stats["momentum"] for s in states]
  queues = [s.batch_stats["queue"] for s in states]
  assert [int(q["ptr"]) for q in queues] == [0, 8, 0, 8]

  encode_image = jax.jit(lambda params, x: model.apply({"params": params}, x, method=Albef.encode_image)["zv"])
  encode_text = jax.jit(lambda params, x: model.apply({"params": params}, x, method=Albef.encode_text)["zt"])

  def momentum_features(step_index, seed):
    batch = make_batch(seed)
    return np.asarray(encode_image(momentum[step_index], batch["image"])), np.asarray(
      encode_text(momentum[step_index], batch["text"])
    )

  # Step 1 wrote rows 0–7 and step 2 rows 8–15 (the queue is then full); step 3 wrapped around to rows 0–7.
  for step_index, seed, rows in ((1, 1, slice(0, 8)), (2, 2, slice(8, 16)), (3, 3, slice(0, 8))):
    zv, zt = momentum_features(step_index, seed)
    np.testing.assert_allclose(queues[step_index]["image"][rows], zv, atol=2e-5)
    np.testing.assert_allclose(queues[step_index]["text"][rows], zt, atol=2e-5)
  np.testing.assert_array_equal(queues[3]["image"][8:], queues[2]["image"][8:])


def test_alpha_ramps_over_the_first_epoch():
  np.testing.assert_allclose(
    [float(albef.alpha_at(jnp.int32(n), 0.4, 100)) for n in (0, 50, 100, 300)], [0.0, 0.2, 0.4, 0.4]
  )
  assert float(albef.alpha_at(jnp.int32(0), 0.4, 0)) == pytest.approx(0.4)


def test_config_errors_name_both_keys():
  with pytest.raises(ValueError, match=r"albef.queue_size=100 is not divisible by data.global_batch_size=64"):
    albef.check_queue_size(100, 64)
  with pytest.raises(ValueError, match=r"objective.base = 'clip'.*'none'"):
    albef.make_pretrain_loss(
      build_albef(MODEL),
      OPTIONS,
      SPECIAL,
      ramp_examples=0,
      objective=ObjectiveConfig.from_dict({"base": "clip"}),
      objective_fn=None,
    )
  with pytest.raises(ValueError, match=r"unknown config key albef.queue \(did you mean 'queue_size'\?\)"):
    albef.albef_options({"queue": 4})
