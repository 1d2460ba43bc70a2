"""From-scratch initialisation follows open_clip's `init_parameters`, checked group by group on the full presets.

The expected standard deviations are written out from open_clip's formulas (w = tower width, L = text layers), not
taken from lmstruct: the empirical std of every group must lie within 5 % of its formula.
"""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lmstruct.models import build_model, input_shapes


@functools.cache
def initial_params(preset):
  """{path: value} of a fresh initialisation of `preset`."""
  config = {"preset": preset}
  model = build_model(config)
  (h, w, c), length = input_shapes(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32))
  return traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")


def group(flat, *patterns):
  """All values of the parameters whose path ends with one of `patterns` (after any block index), as one vector."""
  values = [np.ravel(v) for path, v in flat.items() if any(path.endswith(p) for p in patterns)]
  assert values, f"no parameter matches {patterns}"
  return np.concatenate(values).astype(np.float64)


def empirical_std(x):
  return float(np.sqrt(np.mean(np.square(x))))


def text_expectations(width, layers):
  proj_std = width ** -0.5 * (2 * layers) ** -0.5
  return {
      ("text_tower/token_embedding/embedding",): 0.02,
      ("text_tower/positional_embedding",): 0.01,
      ("attn/qkv/kernel",): width ** -0.5,
      ("attn/out/kernel", "mlp/proj/kernel"): proj_std,
      ("mlp/fc/kernel",): (2 * width) ** -0.5,
      ("text_projection/kernel", "text_projection_ind/kernel"): width ** -0.5,
  }


@pytest.mark.parametrize("preset", ["ViT-B-32", "RN50"])
def test_text_tower_follows_clip_formulas(preset):
  flat = initial_params(preset)
  text = {k: v for k, v in flat.items() if k.startswith("text")}
  for patterns, expected in text_expectations(width=512, layers=12).items():
    std = empirical_std(group(text, *patterns))
    assert std == pytest.approx(expected, rel=0.05), (patterns, std, expected)


@pytest.mark.parametrize("preset", ["ViT-B-32", "RN50"])
def test_vision_tower_follows_clip_formulas(preset):
  flat = initial_params(preset)
  if preset == "ViT-B-32":
    width = 768
    expectations = {
        ("image_tower/class_embedding", "image_tower/positional_embedding"): width ** -0.5,
        ("image_projection/kernel", "image_projection_ind/kernel"): width ** -0.5,
        # Blocks keep PyTorch's defaults: Xavier-uniform packed in-projection [w, 3w], kaiming_uniform(a=√5) linears.
        ("image_tower/transformer/block_0/attn/qkv/kernel",): math.sqrt(2 / (width + 3 * width)),
        ("image_tower/transformer/block_0/attn/out/kernel",): 1 / math.sqrt(3 * width),
        ("image_tower/transformer/block_0/mlp/fc/kernel",): 1 / math.sqrt(3 * width),
        ("image_tower/transformer/block_0/mlp/proj/kernel",): 1 / math.sqrt(3 * 4 * width),
    }
  else:
    in_features = 2048  # the attention pool's embedding width, 32 × 64
    expectations = {
        ("attnpool/q_proj/kernel", "attnpool/k_proj/kernel", "attnpool/v_proj/kernel"): in_features ** -0.5,
        ("image_projection/kernel", "image_projection_ind/kernel"): in_features ** -0.5,
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
