"""Builds a TwoTower model from a config: a named preset plus per-field overrides.

    model.preset = 'tiny'                         # a key of PRESETS
    model.image = {'kind': 'vit', 'size': 'tiny'} # overrides merged into the preset's image tower
    model.text = {'size': 'tiny', 'context_length': 32}
    model.text = {'kind': 'bert', 'size': 'MiniLM-L6'}  # text kinds: 'transformer' (CLIP's, default), 'bert'
    model.embed_dim = 256
    model.independent_heads = True
    model.dtype = 'bfloat16'                       # compute dtype; parameters stay float32
    model.remat_policy = 'none'                    # none | full | dots_saveable | dots_with_no_batch_dims_saveable
    model.scan_layers = False                      # scan the transformer blocks over stacked parameters
"""
import copy
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lmstruct.models.bert import BERT_SIZES, BertTextTower
from lmstruct.models.efficientnet import EFFICIENTNET_SIZES, EfficientNetLite
from lmstruct.models.layers import check_remat_policy
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
IMAGE_KINDS = {"vit": VIT_SIZES, "resnet": RESNET_SIZES, "efficientnet": EFFICIENTNET_SIZES}
TEXT_KINDS = {"transformer": TEXT_SIZES, "bert": BERT_SIZES}
_MODEL_KEYS = {"preset", "image", "text", "embed_dim", "independent_heads", "dtype", "remat_policy", "scan_layers",
               "init_logit_scale", "init_logit_bias"}
SCANNABLE_TEXT_KINDS = ("transformer",)
_IMAGE_KEYS = {"kind", "size", "image_size", "activation", "width", "layers", "heads", "patch", "stage_blocks"}
_TEXT_KEYS = {"kind", "size", "context_length", "vocab_size", "eot_token_id", "activation", "width", "layers", "heads",
              "mlp_dim", "max_positions", "pooling"}


def _check_keys(given: Mapping[str, Any], valid: set[str], where: str) -> None:
  for key in given:
    if key not in valid:
      raise ValueError(f"unknown key {where}.{key}; valid keys: {sorted(valid)}")


def _lookup(table: Mapping[str, Any], name: str, what: str) -> Any:
  if name not in table:
    raise ValueError(f"unknown {what} {name!r}; valid choices: {sorted(table)}")
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
  check_remat_policy(resolved.get("remat_policy", "none"))
  text_kind = resolved["text"].get("kind", "transformer")
  if resolved.get("scan_layers", False) and text_kind not in SCANNABLE_TEXT_KINDS:
    raise ValueError(f"model.scan_layers=True needs a text tower of kind {list(SCANNABLE_TEXT_KINDS)}; the "
                     f"{text_kind!r} tower has unrolled layers only")
  return resolved


def build_model(config: Mapping[str, Any]) -> TwoTower:
  """The TwoTower described by `config` (see the module docstring)."""
  cfg = resolve_model_config(config)
  dtype = DTYPES[cfg.get("dtype", "float32")]
  layers = {"remat_policy": cfg.get("remat_policy", "none"), "scan_layers": bool(cfg.get("scan_layers", False))}
  image = dict(cfg["image"])
  kind = image.pop("kind")
  image.pop("image_size", None)
  sizes = _lookup(IMAGE_KINDS, kind, "model.image.kind")
  image = {**_lookup(sizes, image.pop("size"), f"{kind} size"), **image}
  if kind == "vit":
    image_tower: nn.Module = VisionTransformer(**image, **layers, dtype=dtype)
  elif kind == "resnet":
    image.pop("activation", None)
    image_tower = ModifiedResNet(**image, dtype=dtype)
  else:
    image_tower = EfficientNetLite(**image, dtype=dtype)
  text = dict(cfg["text"])
  text_kind = text.pop("kind", "transformer")
  text = {**_lookup(_lookup(TEXT_KINDS, text_kind, "model.text.kind"), text.pop("size"), f"{text_kind} size"), **text}
  if text_kind == "bert":
    text.pop("context_length", None)
    text_tower: nn.Module = BertTextTower(**text, remat_policy=layers["remat_policy"], dtype=dtype)
  else:
    text_tower = TextTransformer(**text, **layers, dtype=dtype)
  return TwoTower(
      image_tower=image_tower, text_tower=text_tower,
      embed_dim=cfg["embed_dim"], independent_heads=bool(cfg.get("independent_heads", True)),
      image_projection_bias=(kind == "resnet"), init_logit_scale=cfg.get("init_logit_scale", 1 / 0.07),
      init_logit_bias=cfg.get("init_logit_bias", 0.0), dtype=dtype)


def input_shapes(config: Mapping[str, Any]) -> tuple[tuple[int, int, int], int]:
  """((H, W, 3), context_length) that the configured model expects."""
  cfg = resolve_model_config(config)
  size = cfg["image"].get("image_size", 224)
  return (size, size, 3), cfg["text"].get("context_length", 77)
