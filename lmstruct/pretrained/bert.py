"""Hugging Face BERT checkpoints (``BertModel``, ``BertForMaskedLM``, ``BertLMHeadModel``) → lmstruct BERT
variables.

The rules fill any module whose BERT parts are named ``embeddings`` (``BertEmbeddings``), ``encoder``
(``BertEncoder``, cross-attention included) and ``mlm`` (``BertMLMHead``) — the layout of ``BertTextTower`` and of
models composed from those parts. A ``bert.`` prefix (models with heads) is removed. Skipped: the pooler (towers
pool the hidden states themselves), the ``position_ids`` buffer, and the MLM decoder's weight and bias, which are
tied to the word embeddings and ``cls.predictions.bias``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.models.bert import BERT_SIZES, BertTextTower
from lmstruct.pretrained import assets
from lmstruct.pretrained.mapping import KeyMap, Rule, convert_state_dict, dense, layer_norm
from lmstruct.pretrained.torch_reader import read_state_dict

_LAYER, _TORCH_LAYER = r"encoder/layer_(\d+)", r"encoder.layer.\1"


def _attention(kind: str) -> tuple[Rule, ...]:
  """Rules for the self- (`kind` 'attention') or cross- ('crossattention') attention of every layer."""
  flax, torch = f"{_LAYER}/{kind}", f"{_TORCH_LAYER}.{kind}"
  return (
    *(rule for name in ("query", "key", "value") for rule in dense(f"{flax}/{name}", f"{torch}.self.{name}")),
    *dense(f"{flax}/output", f"{torch}.output.dense"),
    *layer_norm(f"{flax}/layer_norm", f"{torch}.output.LayerNorm"),
  )


KEYMAP = KeyMap(
  rules=(
    *(
      Rule(f"params/embeddings/{name}/embedding", f"embeddings.{name}.weight")
      for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ),
    *layer_norm("embeddings/layer_norm", "embeddings.LayerNorm"),
    *_attention("attention"),
    *_attention("crossattention"),
    *dense(f"{_LAYER}/intermediate", f"{_TORCH_LAYER}.intermediate.dense"),
    *dense(f"{_LAYER}/output", f"{_TORCH_LAYER}.output.dense"),
    *layer_norm(f"{_LAYER}/output_layer_norm", f"{_TORCH_LAYER}.output.LayerNorm"),
    *dense("mlm/transform", "cls.predictions.transform.dense"),
    *layer_norm("mlm/layer_norm", "cls.predictions.transform.LayerNorm"),
    Rule("params/mlm/bias", "cls.predictions.bias"),
  ),
  ignored=("embeddings.position_ids", r"pooler\..*", r"cls\.predictions\.decoder\.(weight|bias)"),
)


def convert_bert(
  state_dict: Mapping[str, Any], expected: Mapping[str, Any], source: str = "checkpoint", keymap: KeyMap = KEYMAP
) -> dict:
  """Variables of the module whose variable shapes are `expected`, from a Hugging Face BERT state dict (`keymap`:
  KEYMAP, or a variant of it that marks variables the checkpoint cannot hold as fresh or optional)."""
  state_dict = {name.removeprefix("bert."): value for name, value in state_dict.items()}
  return convert_state_dict(state_dict, expected, keymap, source)


def minilm_variables(path: str | pathlib.Path | None = None) -> dict[str, Any]:
  """all-MiniLM-L6-v2 as ``BertTextTower`` variables, from `path` (default: the fetched asset)."""
  path = path or assets.require("all-MiniLM-L6-v2", "model.safetensors")
  tower = BertTextTower(**BERT_SIZES["MiniLM-L6"])
  expected = jax.eval_shape(tower.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  return convert_bert(read_state_dict(path), expected, str(path))


def minilm_tokenizer_path() -> pathlib.Path:
  """all-MiniLM-L6-v2's ``tokenizer.json`` (for ``get_tokenizer('wordpiece', path=...)``)."""
  return assets.require("all-MiniLM-L6-v2", "tokenizer.json")
