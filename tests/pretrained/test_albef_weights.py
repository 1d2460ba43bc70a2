"""ALBEF's initial weights moved from the pre-training layout to each task's (hand-built parameter trees), and the
positional-embedding resize."""
import numpy as np
import pytest

from lmstruct.pretrained.albef import resize_positional_embedding, task_layout
from lmstruct.pretrained.torch_reader import CheckpointError


def pretraining_params():
  """Two text layers (0, 1) and two fusion layers (2, 3), each marked by its own value."""
  layer = lambda i: {"attention": {"query": {"kernel": np.full((2, 2), float(i))}}}
  return {"visual": {"w": np.ones(1)}, "vision_proj": {"kernel": np.ones(1)}, "itm_head": {"kernel": np.ones(1)},
          "temp": {"value": np.float32(0.07)},
          "bert": {"embeddings": {"e": np.full(1, 7.0)}, "mlm": {"m": np.full(1, 9.0)},
                   "encoder": {f"layer_{i}": layer(i) for i in range(4)}}}


def marks(encoder):
  return {name: float(value["attention"]["query"]["kernel"][0, 0]) for name, value in encoder.items()}


def test_ve_keeps_the_encoder_and_drops_the_pretraining_heads():
  out = task_layout(pretraining_params(), "ve", text_layers=2, fusion_layers=2)
  assert sorted(out) == ["bert", "visual"] and sorted(out["bert"]) == ["embeddings", "encoder"]
  assert marks(out["bert"]["encoder"]) == {"layer_0": 0, "layer_1": 1, "layer_2": 2, "layer_3": 3}


def test_nlvr_fills_both_blocks_of_every_fusion_layer():
  out = task_layout(pretraining_params(), "nlvr", text_layers=2, fusion_layers=2)
  assert marks(out["bert"]["encoder"]) == {"layer_0": 0, "layer_1": 1, "layer_2": 2, "layer_3": 2, "layer_4": 3,
                                           "layer_5": 3}


def test_vqa_starts_the_answer_decoder_from_the_fusion_layers():
  out = task_layout(pretraining_params(), "vqa", text_layers=2, fusion_layers=2)
  assert marks(out["decoder"]["encoder"]) == {"layer_0": 2, "layer_1": 3}
  assert float(out["decoder"]["mlm"]["m"][0]) == 9.0 and float(out["decoder"]["embeddings"]["e"][0]) == 7.0
  assert marks(out["bert"]["encoder"]) == {"layer_0": 0, "layer_1": 1, "layer_2": 2, "layer_3": 3}


def test_positional_embedding_resize_keeps_the_class_row_and_a_constant_grid():
  embedding = np.concatenate([np.full((1, 3), 5.0), np.full((4, 3), 2.0)])     # class + 2×2 grid
  resized = resize_positional_embedding(embedding, 1 + 16)
  assert resized.shape == (17, 3)
  np.testing.assert_allclose(resized[0], 5.0)
  np.testing.assert_allclose(resized[1:], 2.0, rtol=1e-5)
  with pytest.raises(CheckpointError, match="square patch grid"):
    resize_positional_embedding(embedding, 1 + 5)
