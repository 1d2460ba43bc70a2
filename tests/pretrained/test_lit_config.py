"""configs/lit_coco.py: locked towers with trainable heads, real COCO-mini sources, the MiniLM tokenizer."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from lmstruct.data import sources
from lmstruct.data.tokenize import get_tokenizer
from lmstruct.models import build_model, input_shapes
from lmstruct.pretrained.mapping import flatten
from lmstruct.train.optimizer import trainable_labels

CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "lit_coco.py"


@pytest.fixture(scope="module")
def lit_config():
  spec = importlib.util.spec_from_file_location("lit_coco", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_only_heads_and_logit_parameters_train(lit_config):
  config = lit_config.get_config()
  model_config = config.model.to_dict()
  (h, w, c), length = input_shapes(model_config)
  shapes = jax.eval_shape(
    build_model(model_config).init, jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32)
  )
  labels = flatten(trainable_labels(shapes["params"], tuple(config.optimizer.trainable)))
  trained = {path for path, label in labels.items() if label == "train"}
  assert trained == {
    "image_projection/kernel",
    "image_projection_ind/kernel",
    "text_projection/kernel",
    "text_projection_ind/kernel",
    "log_logit_scale",
    "logit_bias",
  }
  assert all(path.startswith(("image_tower/", "text_tower/")) for path in set(labels) - trained)
  assert tuple(config.init.towers) == ("efficientnet_lite0", "all-MiniLM-L6-v2")


def test_sources_open_the_coco_mini_splits(lit_config, shared_data, tmp_path):
  config = lit_config.get_config(f"coco={shared_data / 'coco-mini'},imagefolder={tmp_path}")
  assert len(sources.build_source(config.data.train.to_dict())) == 80
  retrieval = config.evals.retrieval_coco_val
  assert retrieval.captions == 5 and len(sources.build_source(retrieval.data.to_dict())) == 159
  sources.validate_source_config(config.evals.zeroshot.data.to_dict())
  assert "zeroshot" not in lit_config.get_config(f"coco={shared_data / 'coco-mini'}").evals
  with pytest.raises(ValueError, match="unknown objective 'sigmoid'"):
    lit_config.get_config("objective=sigmoid")


def test_tokenizer_is_minilm_wordpiece(lit_config):
  config = lit_config.get_config()
  _, length = input_shapes(config.model.to_dict())
  tokens = get_tokenizer(config.data.tokenizer, path=config.data.tokenizer_path, context_length=length)(
    ["A man riding a wave."]
  )
  assert tokens.shape == (1, 64) and tokens[0, 0] == 101 and 102 in tokens[0]  # [CLS] … [SEP]
