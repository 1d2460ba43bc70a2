"""ALBEF's initial weights: a BERT decoder checkpoint into the answer decoder (against Hugging Face's logits), the
pre-training layout moved to each task's (hand-built parameter trees), and the positional-embedding resize."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.models.albef import AlbefBert
from lmstruct.pretrained.albef import bert_params, resize_positional_embedding, task_layout
from lmstruct.pretrained.torch_reader import CheckpointError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def pretraining_params():
  """Two text layers (0, 1) and two fusion layers (2, 3), each marked by its own value."""
  layer = lambda i: {"attention": {"query": {"kernel": np.full((2, 2), float(i))}}}
  return {
    "visual": {"w": np.ones(1)},
    "vision_proj": {"kernel": np.ones(1)},
    "itm_head": {"kernel": np.ones(1)},
    "temp": {"value": np.float32(0.07)},
    "bert": {
      "embeddings": {"e": np.full(1, 7.0)},
      "mlm": {"m": np.full(1, 9.0)},
      "encoder": {f"layer_{i}": layer(i) for i in range(4)},
    },
  }


def marks(encoder):
  return {name: float(value["attention"]["query"]["kernel"][0, 0]) for name, value in encoder.items()}


def test_ve_keeps_the_encoder_and_drops_the_pretraining_heads():
  out = task_layout(pretraining_params(), "ve", text_layers=2, fusion_layers=2)
  assert sorted(out) == ["bert", "visual"] and sorted(out["bert"]) == ["embeddings", "encoder"]
  assert marks(out["bert"]["encoder"]) == {"layer_0": 0, "layer_1": 1, "layer_2": 2, "layer_3": 3}


def test_nlvr_fills_both_blocks_of_every_fusion_layer():
  out = task_layout(pretraining_params(), "nlvr", text_layers=2, fusion_layers=2)
  assert marks(out["bert"]["encoder"]) == {
    "layer_0": 0,
    "layer_1": 1,
    "layer_2": 2,
    "layer_3": 2,
    "layer_4": 3,
    "layer_5": 3,
  }


def test_vqa_starts_the_answer_decoder_from_the_fusion_layers():
  out = task_layout(pretraining_params(), "vqa", text_layers=2, fusion_layers=2)
  assert marks(out["decoder"]["encoder"]) == {"layer_0": 2, "layer_1": 3}
  assert float(out["decoder"]["mlm"]["m"][0]) == 9.0 and float(out["decoder"]["embeddings"]["e"][0]) == 7.0
  assert marks(out["bert"]["encoder"]) == {"layer_0": 0, "layer_1": 1, "layer_2": 2, "layer_3": 3}


def test_positional_embedding_resize_keeps_the_class_row_and_a_constant_grid():
  embedding = np.concatenate([np.full((1, 3), 5.0), np.full((4, 3), 2.0)])  # class + 2×2 grid
  resized = resize_positional_embedding(embedding, 1 + 16)
  assert resized.shape == (17, 3)
  np.testing.assert_allclose(resized[0], 5.0)
  np.testing.assert_allclose(resized[1:], 2.0, rtol=1e-5)
  with pytest.raises(CheckpointError, match="square patch grid"):
    resize_positional_embedding(embedding, 1 + 5)


def test_the_answer_decoder_from_a_bert_decoder_checkpoint_matches_hugging_face():
  # The fixture is a random Hugging Face BertLMHeadModel (is_decoder, cross-attention, 2 layers, 4 heads, width 32);
  # its logits on these inputs were computed by Hugging Face (scripts/make_pretrained_golden.py). ALBEF's answer
  # decoder is that architecture: causal self-attention, cross-attention to the fused question, the tied LM head.
  golden = dict(np.load(FIXTURES / "pretrained_golden.npz"))
  config = json.loads((FIXTURES / "pretrained_golden.json").read_text())["bert_config"]
  decoder = AlbefBert(
    width=config["hidden_size"],
    text_layers=0,
    fusion_layers=config["num_hidden_layers"],
    heads=config["num_attention_heads"],
    mlp_dim=config["intermediate_size"],
    vocab_size=config["vocab_size"],
    max_positions=config["max_position_embeddings"],
    causal=True,
  )
  tokens = jnp.asarray(golden["bert/tokens"], jnp.int32)
  contexts = ((jnp.asarray(golden["bert/encoder_states"]), jnp.asarray(golden["bert/encoder_mask"])[:, None, None]),)
  expected = jax.eval_shape(decoder.init, jax.random.key(0), tokens, contexts)["params"]
  params = bert_params(str(FIXTURES / "bert_random_lmhead.safetensors"), expected)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, expected)
  logits = decoder.apply({"params": params}, tokens, contexts)
  np.testing.assert_allclose(logits, golden["bert/logits"], atol=1e-5)
