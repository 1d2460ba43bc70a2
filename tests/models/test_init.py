"""From-scratch initialisation follows open_clip's `init_parameters`, checked group by group on the full presets.

The expected standard deviations are written out from open_clip's formulas (w = tower width, L = text layers), not
taken from lmstruct: the empirical std of every group must lie within 5 % of its formula. Both parameter layouts are
checked: unrolled blocks and scanned blocks (`model.scan_layers`, one stacked parameter per kind, whose rows are put
back into `block_<i>` by `lmstruct.models.layout` so that every layer is checked on its own).
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lmstruct.models import build_model, input_shapes, layout

CASES = [(preset, params_layout) for preset in ("ViT-B-32", "RN50") for params_layout in ("unrolled", "scanned")]


@functools.cache
def initial_params(preset, params_layout="unrolled"):
  """{path: value} of a fresh initialisation of `preset` in `params_layout`, with paths of the unrolled layout."""
  config = {"preset": preset, "scan_layers": params_layout == "scanned"}
  model = build_model(config)
  (h, w, c), length = input_shapes(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32))
  params = jax.device_get(variables["params"])
  assert layout.is_scanned(params) == (params_layout == "scanned")
  return traverse_util.flatten_dict(layout.to_unrolled(params), sep="/")


def group(flat, *patterns):
  """All values of the parameters whose path ends with one of `patterns` (after any block index), as one vector."""
  values = [np.ravel(v) for path, v in flat.items() if any(path.endswith(p) for p in patterns)]
  assert values, f"no parameter matches {patterns}"
  return np.concatenate(values).astype(np.float64)


def empirical_std(x):
  return float(np.sqrt(np.mean(np.square(x))))


def text_expectations(width, layers):
  proj_std = width**-0.5 * (2 * layers) ** -0.5
  return {
    ("text_tower/token_embedding/embedding",): 0.02,
    ("text_tower/positional_embedding",): 0.01,
    ("attn/qkv/kernel",): width**-0.5,
    ("attn/out/kernel", "mlp/proj/kernel"): proj_std,
    ("mlp/fc/kernel",): (2 * width) ** -0.5,
    ("text_projection/kernel", "text_projection_ind/kernel"): width**-0.5,
  }


@pytest.mark.parametrize("preset,params_layout", CASES)
def test_text_tower_follows_clip_formulas(preset, params_layout):
  flat = initial_params(preset, params_layout)
  text = {k: v for k, v in flat.items() if k.startswith("text")}
  for patterns, expected in text_expectations(width=512, layers=12).items():
    std = empirical_std(group(text, *patterns))
    assert std == pytest.approx(expected, rel=0.05), (patterns, std, expected)
  for layer in (0, 11):  # every layer on its own, not only their pool
    block = {k: v for k, v in text.items() if f"/block_{layer}/" in k}
    std = empirical_std(group(block, "attn/qkv/kernel"))
    assert std == pytest.approx(512**-0.5, rel=0.05), (layer, std)


@pytest.mark.parametrize("preset,params_layout", CASES)
def test_vision_tower_follows_clip_formulas(preset, params_layout):
  flat = initial_params(preset, params_layout)
  if preset == "ViT-B-32":
    width = 768
    expectations = {
      ("image_tower/class_embedding", "image_tower/positional_embedding"): width**-0.5,
      ("image_projection/kernel", "image_projection_ind/kernel"): width**-0.5,
    }
    for layer in (0, 11):
      # Blocks keep PyTorch's defaults: Xavier-uniform packed in-projection [w, 3w], kaiming_uniform(a=√5) linears.
      expectations.update(
        {
          (f"image_tower/transformer/block_{layer}/attn/qkv/kernel",): math.sqrt(2 / (width + 3 * width)),
          (f"image_tower/transformer/block_{layer}/attn/out/kernel",): 1 / math.sqrt(3 * width),
          (f"image_tower/transformer/block_{layer}/mlp/fc/kernel",): 1 / math.sqrt(3 * width),
          (f"image_tower/transformer/block_{layer}/mlp/proj/kernel",): 1 / math.sqrt(3 * 4 * width),
        }
      )
  else:
    in_features = 2048  # the attention pool's embedding width, 32 × 64
    expectations = {
      ("attnpool/q_proj/kernel", "attnpool/k_proj/kernel", "attnpool/v_proj/kernel"): in_features**-0.5,
      ("image_projection/kernel", "image_projection_ind/kernel"): in_features**-0.5,
    }
  for patterns, expected in expectations.items():
    std = empirical_std(group(flat, *patterns))
    assert std == pytest.approx(expected, rel=0.05), (patterns, std, expected)


def test_resnet_blocks_start_as_identity():
  flat = initial_params("RN50")
  last_scales = {k: v for k, v in flat.items() if re.fullmatch(r"image_tower/layer\d_\d+/bn3/scale", k)}
  assert len(last_scales) == 3 + 4 + 6 + 3
  assert all(np.all(v == 0) for v in last_scales.values())
  other_scales = group({k: v for k, v in flat.items() if k not in last_scales}, "bn1/scale", "bn2/scale", "bn3/scale")
  assert np.all(other_scales == 1)
