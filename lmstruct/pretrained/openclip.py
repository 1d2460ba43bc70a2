"""OpenAI CLIP / open_clip PyTorch checkpoints → lmstruct TwoTower variables.

    lmstruct convert openclip --checkpoint FILE --model ViT-B-32 --out DIR [--activation quick_gelu|gelu]

FILE may be safetensors, a ``torch.save`` file (plain state dict, or an open_clip training checkpoint with a
``state_dict`` entry; ``module.`` prefixes are removed) or OpenAI's TorchScript ``.pt`` release; half-precision
weights are cast to float32, and nothing in the file is executed (see ``lmstruct.pretrained.torch_reader``).
``--model`` names an lmstruct preset with CLIP's towers. The packed attention projection ``in_proj_weight``
[3·width, width] (query, key, value rows) becomes the ``qkv`` kernel [width, 3·width]; ``visual.proj`` and
``text_projection`` (used as ``x @ W``) become the shared projections; a ResNet's ``attnpool.c_proj`` becomes the
image projection (with bias). Batch-norm running statistics go to ``batch_stats``; ``num_batches_tracked``, the
causal ``attn_mask`` and OpenAI's ``input_resolution`` / ``context_length`` / ``vocab_size`` entries are skipped.

CLIP checkpoints have no independent heads (``*_projection_ind``) and usually no ``logit_bias``: those are left
out of the converted variables and keep their random initialisation when ``merge_pretrained`` puts the converted
variables into a freshly initialised model.

OpenAI's weights were trained with QuickGELU (the default ``--activation``); pass ``--activation gelu`` for
open_clip models trained without it (e.g. the LAION ``ViT-B-32`` checkpoints).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.models import layout
from lmstruct.models.factory import PRESETS, build_model, input_shapes, resolve_model_config
from lmstruct.pretrained.export import check_output_dir, save_pretrained
from lmstruct.pretrained.mapping import (
  KeyMap,
  Rule,
  batch_norm,
  convert_state_dict,
  convolution,
  dense,
  layer_norm,
  linear,
  scalar,
)
from lmstruct.pretrained.torch_reader import CheckpointError, read_state_dict

ACTIVATIONS = ("quick_gelu", "gelu")
CLIP_TEXT_KIND = "transformer"


def is_clip_layout(model_config: Mapping[str, Any]) -> bool:
  """Whether a resolved model config has CLIP's towers (ViT or modified ResNet, and CLIP's text transformer)."""
  return model_config["image"]["kind"] in KEYMAPS and model_config["text"].get("kind", CLIP_TEXT_KIND) == CLIP_TEXT_KIND


def clip_presets() -> list[str]:
  """Presets with CLIP's towers: the architectures a CLIP checkpoint can be converted to."""
  return sorted(name for name, preset in PRESETS.items() if is_clip_layout(preset))


def _transformer_blocks(flax_tower: str, torch_prefix: str) -> tuple[Rule, ...]:
  """Rules for the residual blocks of one tower (`torch_prefix` is ``'visual.'`` or ``''``)."""
  block, key = rf"{flax_tower}/transformer/block_(\d+)", rf"{torch_prefix}transformer.resblocks.\1"
  return (
    *layer_norm(f"{block}/ln_1", f"{key}.ln_1"),
    *layer_norm(f"{block}/ln_2", f"{key}.ln_2"),
    Rule(f"params/{block}/attn/qkv/kernel", f"{key}.attn.in_proj_weight", linear),
    Rule(f"params/{block}/attn/qkv/bias", f"{key}.attn.in_proj_bias"),
    *dense(f"{block}/attn/out", f"{key}.attn.out_proj"),
    *dense(f"{block}/mlp/fc", f"{key}.mlp.c_fc"),
    *dense(f"{block}/mlp/proj", f"{key}.mlp.c_proj"),
  )


TEXT_RULES = (
  Rule("params/text_tower/token_embedding/embedding", "token_embedding.weight"),
  Rule("params/text_tower/positional_embedding", "positional_embedding"),
  *_transformer_blocks("text_tower", ""),
  *layer_norm("text_tower/ln_final", "ln_final"),
  Rule("params/text_projection/kernel", "text_projection"),
  Rule("params/log_logit_scale", "logit_scale", scalar),
  Rule("params/logit_bias", "logit_bias", scalar),
)

VIT_RULES = (
  *convolution("image_tower/patch_embed", "visual.conv1"),
  Rule("params/image_tower/class_embedding", "visual.class_embedding"),
  Rule("params/image_tower/positional_embedding", "visual.positional_embedding"),
  *layer_norm("image_tower/ln_pre", "visual.ln_pre"),
  *_transformer_blocks("image_tower", "visual."),
  *layer_norm("image_tower/ln_post", "visual.ln_post"),
  Rule("params/image_projection/kernel", "visual.proj"),
)

_BLOCK, _TORCH_BLOCK = r"image_tower/layer(\d+)_(\d+)", r"visual.layer\1.\2"
RESNET_RULES = (
  *(
    rule
    for i in (1, 2, 3)
    for rule in (
      *convolution(f"image_tower/stem_conv{i}", f"visual.conv{i}"),
      *batch_norm(f"image_tower/stem_bn{i}", f"visual.bn{i}"),
    )
  ),
  *convolution(rf"{_BLOCK}/conv([123])", rf"{_TORCH_BLOCK}.conv\3"),
  *batch_norm(rf"{_BLOCK}/bn([123])", rf"{_TORCH_BLOCK}.bn\3"),
  *convolution(f"{_BLOCK}/downsample_conv", f"{_TORCH_BLOCK}.downsample.0"),
  *batch_norm(f"{_BLOCK}/downsample_bn", f"{_TORCH_BLOCK}.downsample.1"),
  Rule("params/image_tower/attnpool/positional_embedding", "visual.attnpool.positional_embedding"),
  *(
    rule
    for name in ("q_proj", "k_proj", "v_proj")
    for rule in dense(f"image_tower/attnpool/{name}", f"visual.attnpool.{name}")
  ),
  *dense("image_projection", "visual.attnpool.c_proj"),
)

_COMMON = dict(
  ignored=(r".*num_batches_tracked", r"(.*\.)?attn_mask", "input_resolution", "context_length", "vocab_size"),
  fresh=(r"params/(image|text)_projection_ind/.*",),
  optional=("params/logit_bias",),
)
KEYMAPS = {
  "vit": KeyMap(rules=(*VIT_RULES, *TEXT_RULES), **_COMMON),
  "resnet": KeyMap(rules=(*RESNET_RULES, *TEXT_RULES), **_COMMON),
}


def expected_variables(model_config: Mapping[str, Any]) -> Any:
  """Shapes (``ShapeDtypeStruct``) of every variable of the model that `model_config` describes."""
  model = build_model(model_config)
  (height, width, channels), length = input_shapes(model_config)
  return jax.eval_shape(
    model.init,
    jax.random.key(0),
    jnp.zeros((1, height, width, channels), jnp.float32),
    jnp.zeros((1, length), jnp.int32),
  )


def convert_openclip(
  state_dict: Mapping[str, Any], model_config: Mapping[str, Any], source: str = "checkpoint"
) -> dict[str, Any]:
  """lmstruct variables (``{'params': …, 'batch_stats': …}``, float32) of a CLIP state dict for the model
  `model_config` describes; independent heads, and ``logit_bias`` when the checkpoint lacks it, are left out.

  The key map names one torch block per ``block_<i>``; for a model with ``scan_layers`` the converted blocks are
  stacked into its scanned layout (`lmstruct.models.layout.to_scanned`)."""
  resolved = resolve_model_config(model_config)
  if not is_clip_layout(resolved):
    raise CheckpointError(
      f"{source}: a CLIP checkpoint cannot fill a model with a {resolved['image']['kind']!r} "
      f"image tower and a {resolved['text'].get('kind', CLIP_TEXT_KIND)!r} text tower; CLIP "
      f"presets: {clip_presets()}"
    )
  unrolled = {**dict(model_config), "scan_layers": False}
  variables = convert_state_dict(state_dict, expected_variables(unrolled), KEYMAPS[resolved["image"]["kind"]], source)
  return layout.to_scanned(variables) if resolved.get("scan_layers", False) else variables


def model_config_for(model: str, activation: str) -> dict[str, Any]:
  """The lmstruct model config of CLIP preset `model` with `activation` in the transformer towers."""
  if model not in clip_presets():
    raise CheckpointError(f"unsupported architecture {model!r}; valid choices: {clip_presets()}")
  if activation not in ACTIVATIONS:
    raise CheckpointError(f"unknown activation {activation!r}; valid choices: {list(ACTIVATIONS)}")
  config: dict[str, Any] = {"preset": model, "text": {"activation": activation}}
  if PRESETS[model]["image"]["kind"] == "vit":
    config["image"] = {"activation": activation}
  return config


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """Command-line flags of ``lmstruct convert openclip``."""
  parser = argparse.ArgumentParser(
    prog="lmstruct convert openclip",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--checkpoint", required=True, help="safetensors, torch.save or TorchScript file")
  parser.add_argument("--model", required=True, help=f"lmstruct preset: {', '.join(clip_presets())}")
  parser.add_argument("--out", required=True, help="output directory (new or empty)")
  parser.add_argument("--activation", default="quick_gelu", help="quick_gelu (OpenAI weights, default) or gelu")
  return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
  """Converts one checkpoint and writes ``DIR/model.json`` + ``DIR/variables`` (see ``lmstruct.pretrained.export``);
  returns the exit status (0 on success)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config = model_config_for(args.model, args.activation)
    check_output_dir(args.out)
    variables = convert_openclip(read_state_dict(args.checkpoint), config, source=args.checkpoint)
  except (CheckpointError, FileNotFoundError, FileExistsError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  out = save_pretrained(
    args.out,
    config,
    variables,
    source={"checkpoint": str(pathlib.Path(args.checkpoint).resolve()), "format": "openclip"},
  )
  print(
    f"wrote {out}: model {args.model} ({args.activation}); independent heads"
    f"{'' if 'logit_bias' in variables['params'] else ' and logit_bias'} start from the training init"
  )
  return 0
