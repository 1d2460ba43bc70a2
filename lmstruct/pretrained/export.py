"""Converted pretrained weights on disk, and merging them into a freshly initialised model.

A converted directory holds

    model.json   {"format": "lmstruct-pretrained", "version": 1, "model": <model config>, "source": {...}}
    variables/   an orbax (StandardCheckpointer) checkpoint of {'params': …, 'batch_stats': …} as float32 NumPy

The model config is what ``lmstruct.models.build_model`` takes (preset name plus overrides such as the activation).
The variables may lack some of the model's variables (e.g. the independent heads a CLIP checkpoint does not have):
``merge_pretrained`` fills those from the training initialisation and says which they are. ``check_architecture``
verifies that a run's model config describes the model the directory was converted for.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np
import orbax.checkpoint as ocp

from lmstruct.models import layout
from lmstruct.models.factory import build_model
from lmstruct.pretrained.torch_reader import CheckpointError

FORMAT, VERSION = "lmstruct-pretrained", 1
CONFIG_FILE, VARIABLES_DIR = "model.json", "variables"


def check_output_dir(directory: str | pathlib.Path) -> pathlib.Path:
  """`directory` as an absolute path; FileExistsError when it exists and is not empty."""
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
    raise FileExistsError(f"output directory {directory} already exists and is not empty")
  return directory


def save_pretrained(
  directory: str | pathlib.Path,
  model_config: Mapping[str, Any],
  variables: Mapping[str, Any],
  source: Mapping[str, Any],
) -> pathlib.Path:
  """Writes `variables` (as float32 NumPy) and `model_config` to the new directory `directory`; returns its
  absolute path. `source` (JSON-serialisable) records where the weights came from."""
  directory = check_output_dir(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = flax.traverse_util.unflatten_dict(
    {path: np.asarray(leaf, np.float32) for path, leaf in flax.traverse_util.flatten_dict(dict(variables)).items()}
  )
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / VARIABLES_DIR, arrays)
  meta = {"format": FORMAT, "version": VERSION, "model": dict(model_config), "source": dict(source)}
  (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
  return directory


def load_pretrained(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model config, variables as NumPy arrays) of a directory written by :func:`save_pretrained`."""
  directory = pathlib.Path(directory).absolute()
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(
      f"{directory} is not a converted pretrained model: {CONFIG_FILE} is missing "
      "(write one with `lmstruct convert openclip`)"
    )
  meta = json.loads(config_path.read_text())
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise CheckpointError(
      f"{config_path}: format {meta.get('format')!r} version {meta.get('version')!r}; "
      f"expected {FORMAT!r} version {VERSION}"
    )
  with ocp.StandardCheckpointer() as checkpointer:
    variables = checkpointer.restore(directory / VARIABLES_DIR)
  return meta["model"], variables


def merge_pretrained(initial: Mapping[str, Any], pretrained: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
  """(`initial` with every variable that `pretrained` holds replaced by it, the paths kept from `initial`).

  Both are nested dicts of the same collections (whole variable collections or just ``params``); the transformer
  blocks of `pretrained` are first put in the layout of `initial`'s (unrolled ``block_<i>`` or scanned ``blocks``,
  `lmstruct.models.layout`). A pretrained variable the model lacks, or one of another shape, is an error naming its
  path; values take the initial leaf's dtype.
  """
  init_flat = flax.traverse_util.flatten_dict(dict(initial), sep="/")
  pre_flat = flax.traverse_util.flatten_dict(layout.matching_layout(dict(pretrained), initial), sep="/")
  unknown = sorted(set(pre_flat) - set(init_flat))
  if unknown:
    raise CheckpointError(
      f"pretrained variables the model does not have: {unknown[:12]}"
      + (f" … ({len(unknown) - 12} more)" if len(unknown) > 12 else "")
    )
  merged, fresh = {}, []
  for path, leaf in init_flat.items():
    if path not in pre_flat:
      merged[path] = leaf
      fresh.append(path)
      continue
    value = pre_flat[path]
    if tuple(np.shape(value)) != tuple(leaf.shape):
      raise CheckpointError(
        f"pretrained variable {path!r} has shape {tuple(np.shape(value))} but the model's has {tuple(leaf.shape)}"
      )
    merged[path] = np.asarray(value).astype(leaf.dtype)
  return flax.traverse_util.unflatten_dict(merged, sep="/"), fresh


def _architecture(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The fields of a model config's towers and heads that weights depend on (not dtype, the remat policy or the
  parameter layout, which `merge_pretrained` converts)."""
  model = build_model(model_config)
  fields = {"embed_dim": model.embed_dim, "image_projection_bias": model.image_projection_bias}
  for tower in ("image_tower", "text_tower"):
    module = getattr(model, tower)
    fields[f"{tower}.kind"] = type(module).__name__
    fields.update(
      {
        f"{tower}.{f.name}": getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name", "dtype", "remat_policy", "scan_layers")
      }
    )
  return fields


def check_architecture(pretrained_config: Mapping[str, Any], model_config: Mapping[str, Any]) -> None:
  """Raises CheckpointError naming the first field (tower size, activation, …) in which the model a converted
  directory was written for differs from the run's model; shapes alone would not catch, e.g., QuickGELU weights
  in a GELU model."""
  saved, wanted = _architecture(pretrained_config), _architecture(model_config)
  for field in sorted(set(saved) | set(wanted)):
    if saved.get(field) != wanted.get(field):
      raise CheckpointError(
        f"model {field} is {saved.get(field)!r} in the pretrained model but {wanted.get(field)!r} in the run's config"
      )
