"""Model shapes, normalisation, end-of-text pooling, the logit-scale clamp, dtype and remat behaviour."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.models import build_model, input_shapes
from lmstruct.models.text import end_of_text_positions

EOT = 49407


def tokens(batch, length, eot_at, seed=0):
  rng = np.random.default_rng(seed)
  t = rng.integers(1, 1000, (batch, length)).astype(np.int32)
  for row, pos in enumerate(eot_at):
    t[row, pos] = EOT
    t[row, pos + 1:] = 0
  return jnp.asarray(t)


@pytest.fixture(scope="module", params=["test", "test-rn"])
def model_and_vars(request):
  config = {"preset": request.param}
  model = build_model(config)
  (h, w, c), length = input_shapes(config)
  images = jax.random.normal(jax.random.key(1), (3, h, w, c))
  texts = tokens(3, length, [2, 5, length - 1])
  variables = jax.jit(model.init)(jax.random.key(0), images, texts)
  return jax.jit(model.apply), variables, images, texts


def test_output_shapes_and_unit_norm(model_and_vars):
  apply, variables, images, texts = model_and_vars
  out = apply(variables, images, texts)
  for key in ("zv", "zt", "zv_ind", "zt_ind"):
    assert out[key].shape == (3, 16) and out[key].dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)
  assert out["logit_scale"].shape == () and float(out["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)


def test_either_modality_may_be_absent(model_and_vars):
  apply, variables, images, texts = model_and_vars
  assert set(apply(variables, images=images)) == {"zv", "zv_ind", "hv", "logit_scale", "logit_bias"}
  assert set(apply(variables, texts=texts)) == {"zt", "zt_ind", "logit_scale", "logit_bias"}
  with pytest.raises(ValueError, match="images, texts or both"):
    apply(variables)


def test_text_is_pooled_at_end_of_text_token(model_and_vars):
  apply, variables, _, texts = model_and_vars
  base = apply(variables, texts=texts)["zt"]
  # Tokens after the end-of-text token cannot reach it through the causal mask: changing them changes nothing.
  after = texts.at[0, 3:].set(7).at[1, 6:].set(9)
  np.testing.assert_allclose(apply(variables, texts=after)["zt"], base, atol=1e-6)
  # A token before it does change the feature of that row only.
  before = texts.at[1, 0].set(texts[1, 0] + 1)
  changed = apply(variables, texts=before)["zt"]
  assert np.abs(np.asarray(changed[1] - base[1])).max() > 1e-4
  np.testing.assert_allclose(np.asarray(changed)[[0, 2]], np.asarray(base)[[0, 2]], atol=1e-6)


def test_end_of_text_positions_takes_first_occurrence_and_falls_back_to_last():
  t = jnp.asarray([[5, EOT, 0, EOT], [1, 2, 3, 4]])
  np.testing.assert_array_equal(end_of_text_positions(t, EOT), [1, 3])


def test_logit_scale_is_clamped_at_100(model_and_vars):
  apply, variables, images, _ = model_and_vars
  params = {**variables["params"], "log_logit_scale": jnp.asarray(math.log(1000.0))}
  out = apply({**variables, "params": params}, images=images)
  assert float(out["logit_scale"]) == pytest.approx(100.0, rel=1e-6)


def test_independent_heads_are_switchable():
  config = {"preset": "test", "independent_heads": False}
  model = build_model(config)
  (h, w, c), length = input_shapes(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32))
  assert "image_projection_ind" not in variables["params"]
  out = jax.jit(model.apply)(variables, jnp.zeros((2, h, w, c)), tokens(2, length, [1, 2]))
  assert "zv_ind" not in out and "zt_ind" not in out


def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
  config = {"preset": "test", "dtype": "bfloat16"}
  model = build_model(config)
  (h, w, c), length = input_shapes(config)
  images, texts = jax.random.normal(jax.random.key(2), (2, h, w, c)), tokens(2, length, [3, 4])
  variables = jax.jit(model.init)(jax.random.key(0), images, texts)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(model.apply)(variables, images, texts)
  reference = jax.jit(build_model({"preset": "test"}).apply)(variables, images, texts)
  assert out["zv"].dtype == jnp.float32
  # bf16 has ~3 significant digits: the features agree with the float32 model to that precision.
  np.testing.assert_allclose(out["zv"], reference["zv"], atol=5e-2)
  assert not np.allclose(out["zv"], reference["zv"], atol=1e-7)


def test_remat_changes_neither_outputs_nor_gradients():
  (h, w, c), length = input_shapes({"preset": "test"})
  images, texts = jax.random.normal(jax.random.key(3), (2, h, w, c)), tokens(2, length, [3, 4])
  plain, remat = build_model({"preset": "test"}), build_model({"preset": "test", "remat": True})
  variables = jax.jit(plain.init)(jax.random.key(0), images, texts)

  def loss(model, params):
    out = model.apply({"params": params}, images, texts)
    return jnp.sum(out["zv"] * out["zt"])

  g_plain = jax.jit(jax.grad(lambda p: loss(plain, p)))(variables["params"])
  g_remat = jax.jit(jax.grad(lambda p: loss(remat, p)))(variables["params"])
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)  # float32 summation order differs under remat


def test_unknown_config_keys_and_values_are_named():
  with pytest.raises(ValueError, match=r"model\.widht.*valid keys"):
    build_model({"preset": "test", "widht": 3})
  with pytest.raises(ValueError, match=r"unknown model preset 'ViT-X'.*ViT-B-32"):
    build_model({"preset": "ViT-X"})
  with pytest.raises(ValueError, match=r"model\.image\.patches"):
    build_model({"preset": "test", "image": {"patches": 4}})
  with pytest.raises(ValueError, match=r"unknown activation 'relu6'"):
    m = build_model({"preset": "test", "text": {"activation": "relu6"}})
    m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16), jnp.int32))
  with pytest.raises(ValueError, match=r"unknown model\.image\.kind 'vti' \(did you mean 'vit'\?\); valid choices: "
                                       r"\['efficientnet', 'resnet', 'vit'\]"):
    build_model({"preset": "test", "image": {"kind": "vti"}})
  with pytest.raises(ValueError, match=r"unknown model\.text\.size 'tset' \(did you mean 'test'\?\)"):
    build_model({"preset": "test", "text": {"size": "tset"}})


def test_every_tower_kind_is_built_from_its_registry_entry():
  """Each image kind becomes its module (a bias on the image projection only for CLIP's ResNet); BERT drops the
  context length, which the CLIP text transformer keeps; both text towers take remat."""
  image = {"vit": {"size": "test"}, "resnet": {"size": "test"}, "efficientnet": {"size": "lite0"}}
  modules = {"vit": "VisionTransformer", "resnet": "ModifiedResNet", "efficientnet": "EfficientNetLite"}
  for kind, fields in image.items():
    model = build_model({"preset": "test", "image": {"kind": kind, **fields}, "remat": True})
    assert type(model.image_tower).__name__ == modules[kind]
    assert model.image_projection_bias == (kind == "resnet")
  bert = build_model({"preset": "test", "text": {"kind": "bert", "size": "MiniLM-L6"}, "remat": True})
  assert type(bert.text_tower).__name__ == "BertTextTower" and bert.text_tower.remat
  clip_text = build_model({"preset": "test", "remat": True}).text_tower
  assert type(clip_text).__name__ == "TextTransformer" and clip_text.remat and clip_text.context_length == 16


@pytest.mark.parametrize("preset,params_millions", [("RN50", 102.01), ("ViT-B-32", 151.28), ("ViT-L-14", 427.62)])
def test_reference_architectures_have_open_clip_parameter_counts(preset, params_millions):
  """Parameter counts (without the independent heads) equal open_clip's published model sizes."""
  config = {"preset": preset, "independent_heads": False}
  model = build_model(config)
  shape, length = input_shapes(config)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1, length), jnp.int32))
  count = sum(x.size for x in jax.tree.leaves(abstract["params"])) - 1  # minus the sigmoid loss's logit bias
  assert count / 1e6 == pytest.approx(params_millions, abs=0.01)
