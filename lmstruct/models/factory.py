"""Builds a TwoTower model from a config: a named preset plus per-field overrides.

    model.preset = 'tiny'                         # a key of PRESETS
    model.image = {'kind': 'vit', 'size': 'tiny'} # overrides merged into the preset's image tower
    model.text = {'size': 'tiny', 'context_length': 32}
    model.text = {'kind': 'bert', 'size': 'MiniLM-L6'}  # text kinds: 'transformer' (CLIP's, default), 'bert'
    model.embed_dim = 256
    model.independent_heads = True
    model.dtype = 'bfloat16'                       # compute dtype; parameters stay float32
    model.remat = False
"""
import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lmstruct.choices import unknown_choice
from lmstruct.models.bert import BERT_SIZES, BertTextTower
from lmstruct.models.efficientnet import EFFICIENTNET_SIZES, EfficientNetLite
from lmstruct.models.resnet import RESNET_SIZES, ModifiedResNet
from lmstruct.models.text import TEXT_SIZES, TextTransformer
from lmstruct.models.two_tower import TwoTower
from lmstruct.models.vit import VIT_SIZES, VisionTransformer

PRESETS: dict[str, dict[str, Any]] = {
    "test": dict(image=dict(kind="vit", size="test", image_size=32), text=dict(size="test", context_length=16),
                 embed_dim=16),
    "test-rn": dict(image=dict(kind="resnet", size="test", image_size=32), text=dict(size="test", context_length=16),
                    embed_dim=16),
    "tiny": dict(image=dict(kind="vit", size="tiny", image_size=64), text=dict(size="tiny", context_length=32),
                 embed_dim=256),
    "RN50": dict(image=dict(kind="resnet", size="RN50", image_size=224), text=dict(size="B", activation="quick_gelu"),
                 embed_dim=1024),
    "ViT-B-32": dict(image=dict(kind="vit", size="B/32", image_size=224), text=dict(size="B"), embed_dim=512),
    "ViT-B-16": dict(image=dict(kind="vit", size="B/16", image_size=224), text=dict(size="B"), embed_dim=512),
    "ViT-L-14": dict(image=dict(kind="vit", size="L/14", image_size=224), text=dict(size="L"), embed_dim=768),
    # LiT-style towers with pretrained weights from lmstruct.pretrained: EfficientNet-Lite0 + all-MiniLM-L6-v2.
    "LiT-EfficientNetLite0-MiniLM": dict(image=dict(kind="efficientnet", size="lite0", image_size=224),
                                         text=dict(kind="bert", size="MiniLM-L6", context_length=64),
                                         embed_dim=256),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TowerKind:
  """One tower architecture: its Flax module, its named sizes (module fields), the tower keys its module does not
  take (input sizes, options of other kinds), whether it takes `remat`, and whether the image projection above it
  has a bias (CLIP's ResNet)."""

  module: type[nn.Module]
  sizes: Mapping[str, Mapping[str, Any]]
  ignored_keys: tuple[str, ...] = ()
  remat: bool = False
  projection_bias: bool = False

  def build(self, fields: Mapping[str, Any], *, remat: bool, dtype: Any) -> nn.Module:
    """The module with `fields` (its size's fields already merged in) less `ignored_keys`."""
    kwargs = {k: v for k, v in fields.items() if k not in self.ignored_keys}
    return self.module(**kwargs, **({"remat": remat} if self.remat else {}), dtype=dtype)


IMAGE_KINDS: dict[str, TowerKind] = {
    "vit": TowerKind(VisionTransformer, VIT_SIZES, ignored_keys=("image_size",), remat=True),
    "resnet": TowerKind(ModifiedResNet, RESNET_SIZES, ignored_keys=("image_size", "activation"),
                        projection_bias=True),
    "efficientnet": TowerKind(EfficientNetLite, EFFICIENTNET_SIZES, ignored_keys=("image_size",)),
}
TEXT_KINDS: dict[str, TowerKind] = {
    "transformer": TowerKind(TextTransformer, TEXT_SIZES, remat=True),
    "bert": TowerKind(BertTextTower, BERT_SIZES, ignored_keys=("context_length",), remat=True),
}
_MODEL_KEYS = {"preset", "image", "text", "embed_dim", "independent_heads", "dtype", "remat", "init_logit_scale",
               "init_logit_bias"}
_IMAGE_KEYS = {"kind", "size", "image_size", "activation", "width", "layers", "heads", "patch", "stage_blocks"}
_TEXT_KEYS = {"kind", "size", "context_length", "vocab_size", "eot_token_id", "activation", "width", "layers", "heads",
              "mlp_dim", "max_positions", "pooling"}


def _check_keys(given: Mapping[str, Any], valid: set[str], where: str) -> None:
  for key in given:
    if key not in valid:
      raise ValueError(f"unknown key {where}.{key}; valid keys: {sorted(valid)}")


def _lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
  if name not in table:
    raise unknown_choice(what, name, table)
  return table[name]


def resolve_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The preset named by `config.preset` with every other field of `config` merged over it, validated."""
  config = dict(config)
  _check_keys(config, _MODEL_KEYS, "model")
  resolved = copy.deepcopy(_lookup(PRESETS, config.get("preset", "tiny"), "model preset"))
  for key, value in config.items():
    if key in ("image", "text"):
      resolved[key] = {**resolved[key], **dict(value)}
    elif key != "preset":
      resolved[key] = value
  _check_keys(resolved["image"], _IMAGE_KEYS, "model.image")
  _check_keys(resolved["text"], _TEXT_KEYS, "model.text")
  _lookup(DTYPES, resolved.get("dtype", "float32"), "model.dtype")
  return resolved


def _tower(kinds: Mapping[str, TowerKind], fields: Mapping[str, Any], default_kind: str, where: str, *, remat: bool,
           dtype: Any) -> tuple[nn.Module, TowerKind]:
  """The tower `fields` describe: `kind` (default `default_kind`) looked up in `kinds`, its named `size` with the
  remaining fields merged over it."""
  fields = dict(fields)
  kind_name = fields.pop("kind", default_kind)
  kind = _lookup(kinds, kind_name, f"{where}.kind")
  size = _lookup(kind.sizes, fields.pop("size"), f"{where}.size")
  return kind.build({**size, **fields}, remat=remat, dtype=dtype), kind


def build_model(config: Mapping[str, Any]) -> TwoTower:
  """The TwoTower described by `config` (see the module docstring)."""
  cfg = resolve_model_config(config)
  dtype = DTYPES[cfg.get("dtype", "float32")]
  remat = bool(cfg.get("remat", False))
  image_tower, image_kind = _tower(IMAGE_KINDS, cfg["image"], "vit", "model.image", remat=remat, dtype=dtype)
  text_tower, _ = _tower(TEXT_KINDS, cfg["text"], "transformer", "model.text", remat=remat, dtype=dtype)
  return TwoTower(
      image_tower=image_tower, text_tower=text_tower,
      embed_dim=cfg["embed_dim"], independent_heads=bool(cfg.get("independent_heads", True)),
      image_projection_bias=image_kind.projection_bias, init_logit_scale=cfg.get("init_logit_scale", 1 / 0.07),
      init_logit_bias=cfg.get("init_logit_bias", 0.0), dtype=dtype)


def input_shapes(config: Mapping[str, Any]) -> tuple[tuple[int, int, int], int]:
  """((H, W, 3), context_length) that the configured model expects."""
  cfg = resolve_model_config(config)
  size = cfg["image"].get("image_size", 224)
  return (size, size, 3), cfg["text"].get("context_length", 77)
