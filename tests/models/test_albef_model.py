"""The ALBEF modules: shapes, which layers cross-attend, the attention masks (padding, causal, text-only layers),
NLVR²'s two-image fusion, and the model-config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.models.albef import AlbefBert, albef_input_shapes, build_albef, causal_padding_mask, resolve_albef_config

MODEL = {"preset": "albef-test", "text": {"vocab_size": 64}}
(SIZE, _, _), LENGTH = albef_input_shapes(MODEL)


def inputs(batch=2, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(batch, SIZE, SIZE, 3)), jnp.float32)
  tokens = rng.integers(5, 64, (batch, LENGTH)).astype(np.int32)
  tokens[:, 0] = 1
  tokens[:, 10:] = 0  # padding
  return images, jnp.asarray(tokens)


@pytest.fixture(scope="module")
def pretrain():
  model = build_albef(MODEL, "pretrain")
  images, tokens = inputs()
  params = model.init(jax.random.key(0), images, tokens)["params"]
  return model, params


def test_pretraining_outputs_and_layer_split(pretrain):
  model, params = pretrain
  images, tokens = inputs()
  out = model.apply({"params": params}, images, tokens)
  patches = (SIZE // 8) ** 2
  assert out["image_tokens"].shape == (2, 1 + patches, 32)
  assert out["zv"].shape == out["zt"].shape == (2, 16)
  np.testing.assert_allclose(np.linalg.norm(out["zv"], axis=-1), 1.0, rtol=1e-5)
  assert out["itm_logits"].shape == (2, 2) and out["mlm_logits"].shape == (2, LENGTH, 64)
  np.testing.assert_allclose(float(out["temperature"]), 0.07, rtol=1e-6)
  layers = params["bert"]["encoder"]
  assert "crossattention" not in layers["layer_0"] and "crossattention" in layers["layer_1"]


def test_text_layers_ignore_the_image_and_fusion_layers_read_it(pretrain):
  model, params = pretrain
  images, tokens = inputs()
  other = images[::-1]
  text = lambda: model.apply({"params": params}, tokens, method=model.encode_text)
  np.testing.assert_array_equal(text()["zt"], text()["zt"])
  states = text()["text_states"]
  fuse = lambda im: model.apply(
    {"params": params},
    states,
    tokens,
    model.apply({"params": params}, im, method=model.encode_image)["image_tokens"],
    method=model.fuse,
  )
  assert float(jnp.max(jnp.abs(fuse(images) - fuse(other)))) > 1e-3


def test_padding_keys_are_masked_in_self_attention(pretrain):
  model, params = pretrain
  images, tokens = inputs()
  changed = tokens.at[:, 12].set(0).at[:, 11].set(0)  # positions ≥ 10 are padding either way
  out = lambda t: model.apply({"params": params}, images, t)["itm_logits"]
  np.testing.assert_allclose(out(tokens), out(changed), atol=1e-6)
  # A non-padding token does change the result.
  assert float(jnp.max(jnp.abs(out(tokens) - out(tokens.at[:, 3].set(7))))) > 1e-6


def test_causal_padding_mask_by_hand():
  mask = np.asarray(causal_padding_mask(jnp.asarray([[1, 5, 0]])))[0, 0]
  np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 1, 0], [1, 1, 0]])


def test_answer_decoder_is_causal():
  model = build_albef(MODEL, "vqa")
  images, tokens = inputs()
  answers = jnp.asarray([[1, 9, 10, 2, 0, 0], [1, 11, 2, 0, 0, 0]], jnp.int32)
  params = model.init(jax.random.key(1), images, tokens, answers)["params"]
  logits = model.apply({"params": params}, images, tokens, answers)
  later = answers.at[:, 3].set(13)
  changed = model.apply({"params": params}, images, tokens, later)
  np.testing.assert_allclose(logits[:, :3], changed[:, :3], atol=1e-6)
  assert float(jnp.max(jnp.abs(logits[:, 3] - changed[:, 3]))) > 1e-6
  assert logits.shape == (2, 6, 64)


def test_nlvr_fusion_blocks_alternate_between_the_two_images():
  model = build_albef(MODEL, "nlvr")
  images, tokens = inputs()
  params = model.init(jax.random.key(2), (images, images[::-1]), tokens)["params"]
  layers = params["bert"]["encoder"]
  assert sorted(layers) == ["layer_0", "layer_1", "layer_2"]
  assert all("crossattention" in layers[name] for name in ("layer_1", "layer_2"))
  out = model.apply({"params": params}, (images, images[::-1]), tokens)
  assert out["logits"].shape == (2, 2) and out["assignment_logits"].shape == (2, 3)
  # Block 1 reads the left image and block 2 the right one, so the two images play different roles.
  swapped = model.apply({"params": params}, (images[::-1], images), tokens)
  assert float(jnp.max(jnp.abs(out["logits"] - swapped["logits"]))) > 1e-6
  with pytest.raises(ValueError, match="fuses 2 image"):
    model.apply({"params": params}, (images,), tokens)


def test_ve_classifier_has_three_classes():
  model = build_albef(MODEL, "ve")
  images, tokens = inputs()
  params = model.init(jax.random.key(3), (images,), tokens)["params"]
  assert model.apply({"params": params}, (images,), tokens)["logits"].shape == (2, 3)


def test_config_errors_name_the_keys():
  with pytest.raises(ValueError, match=r"model.fusion_layers=3 .*model.text.layers=2"):
    resolve_albef_config({**MODEL, "fusion_layers": 3})
  with pytest.raises(ValueError, match=r"unknown model.preset 'albef-tset' \(did you mean 'albef-test'\?\)"):
    resolve_albef_config({"preset": "albef-tset"})
  with pytest.raises(ValueError, match=r"did you mean 'fusion_layers'"):
    resolve_albef_config({**MODEL, "fusion_layer": 1})
  with pytest.raises(ValueError, match=r"unknown albef.task 'vqa2' \(did you mean 'vqa'\?\)"):
    build_albef(MODEL, "vqa2")
  base = resolve_albef_config({"preset": "albef-base"})
  assert (base["text"]["layers"], base["fusion_layers"], base["image"]["width"]) == (12, 6, 768)


def test_albef_bert_layer_count_with_two_images():
  bert = AlbefBert(width=8, text_layers=2, fusion_layers=3, heads=2, mlp_dim=16, vocab_size=10, images=2)
  params = bert.init(
    jax.random.key(0), jnp.ones((1, 4), jnp.int32), ((jnp.ones((1, 3, 8)), None), (jnp.ones((1, 5, 8)), None))
  )["params"]
  assert len(params["encoder"]) == 2 + 2 * 3
