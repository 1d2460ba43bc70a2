"""Configs: big_vision-style `get_config(arg)` files over one base schema, validated before anything runs.

A config file (`configs/*.py`) defines `get_config(arg: str | None)`; `arg` is a short comma-separated string of
`key=value` pairs (`configs/clip_scenes.py:variant=tiny,steps=300`) parsed by `parse_arg`. Every config starts
from `base_config()`, the one place where each training key, its default and its type are defined;
`validate_config` rejects unknown keys (naming the key and the valid keys, with a close match) and values of the
wrong type (naming the key and the expected type). `task` picks the model family's trainer (`train.loop.TRAINERS`:
'clip', the two-tower family, or 'albef'). Open-ended sections are validated by their owners: `model` by
`lmstruct.models.factory` (ALBEF's by `lmstruct.models.albef`), `objective` by its schema
`lmstruct.losses.objective.ObjectiveConfig` (which also holds its defaults), data sources by
`lmstruct.data.sources`, `evals` by `lmstruct.eval.registry`, `albef` by `lmstruct.train.albef`.

`load_config` is what the CLI runs: a config file (or a run's saved `config.json`), then `--config.KEY=VALUE`
overrides (`apply_overrides`), then `validate_config`.
"""

import ast
import importlib.util
import json
import os
import pathlib
import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from lmstruct.choices import did_you_mean, unknown_choice
from lmstruct.losses.objective import NO_BASE, ObjectiveConfig
from lmstruct.losses.registry import names
from lmstruct.models import build_model

OPEN_SECTIONS = ("model", "objective", "evals", "data.train", "data.augment", "data.eda", "albef")
#: Model families (`task`), each with its trainer in `lmstruct.train.loop.TRAINERS`.
TASKS = ("clip", "albef")


BOOLEAN_WORDS = {"true": True, "True": True, "1": True, "false": False, "False": False, "0": False}


def parse_arg_value(key: str, text: str, default: Any, what: str = "config argument") -> Any:
  """The value of `key` (a `what`: config argument or config key) written as `text`, of the type of its default.

  bool: one of true/false/True/False/1/0. int: an integer literal. float: a number. str: the text itself (quotes
  optional). None: any Python literal, else the text. Mappings: a dict literal. Tuples and lists: either literal.
  Other types: a literal of that type. Anything else is a ValueError naming the argument and what it accepts.
  """
  try:
    literal = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    literal = text
  if isinstance(default, bool):
    if text not in BOOLEAN_WORDS:
      raise ValueError(f"{what} {key!r} is a bool: use one of {list(BOOLEAN_WORDS)}, got {text!r}")
    return BOOLEAN_WORDS[text]
  if isinstance(default, str):
    return literal if isinstance(literal, str) else text
  if default is None:
    return literal
  if isinstance(default, float) and isinstance(literal, int) and not isinstance(literal, bool):
    return float(literal)
  if isinstance(default, (Mapping, ml_collections.ConfigDict)) and isinstance(literal, Mapping):
    return dict(literal)
  if isinstance(default, (list, tuple)) and isinstance(literal, (list, tuple)):
    return type(default)(literal)
  if isinstance(literal, type(default)) and not isinstance(literal, bool):
    return literal
  raise ValueError(
    f"{what} {key!r} must be of type {type(default).__name__} like its default {default!r}, got {text!r}"
  )


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'a=1,b=x' → ConfigDict(a=1, b='x') over `defaults`; each value is parsed to its default's type by
  `parse_arg_value`. Unknown names are an error listing the valid ones and the closest match.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not of the form key=value")
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise unknown_choice("config argument", key, defaults)
    result[key] = parse_arg_value(key, value, defaults[key])
  return result


def base_config() -> ml_collections.ConfigDict:
  """Every training key with its default; see README 'Configs' for what each means."""
  return ml_collections.ConfigDict(
    {
      "seed": 0,
      "task": "clip",
      "model": {"preset": "tiny"},
      "objective": ObjectiveConfig().to_dict(),
      "optimizer": {
        "learning_rate": 5e-4,
        "end_learning_rate": 0.0,
        "warmup_steps": 0,
        "total_steps": 0,
        "weight_decay": 0.1,
        "b1": 0.9,
        "b2": 0.98,
        "eps": 1e-6,
        "grad_clip_norm": 1.0,
        "trainable": (),
      },
      "mesh": {"shape": {"data": -1}},
      "sharding": {"rules": "replicate"},
      "data": {
        "train": {"kind": "scenes", "split": "train", "preset": "default"},
        "data_dir": "data",
        "global_batch_size": 128,
        "tokenizer": "clip",
        "worker_count": 0,
        "read_threads": 2,
        "augment": {},
        "eda": {},
        "caption_choice": "random",
        "eval_batch_size": 256,
        "tokenizer_path": "",
      },
      "train": {
        "steps": 1000,
        "log_every": 50,
        "checkpoint_every": 500,
        "keep_checkpoints": 2,
        "best_metric": "",
        "best_mode": "max",
        "accumulation_steps": 1,
        "nonfinite": "stop",
        "profile_start_step": -1,
        "profile_steps": 5,
        "progress_bar": "auto",
      },
      "init": {"pretrained": "", "towers": ()},
      "evals": {},
      "albef": {},
    }
  )


def _is_open(path: str) -> bool:
  return any(path == s or path.startswith(s + ".") for s in OPEN_SECTIONS)


def _check(value: Any, schema: Any, path: str) -> None:
  if _is_open(path):
    return
  if isinstance(schema, Mapping) and path != "mesh.shape":
    if not isinstance(value, Mapping):
      raise TypeError(f"config key {path!r} must be a mapping, got {type(value).__name__}")
    valid = sorted(schema)
    for key in value:
      if key not in schema:
        raise ValueError(
          f"unknown config key {path + '.' + key if path else key!r}{did_you_mean(key, valid)}; "
          f"valid keys{' in ' + repr(path) if path else ''}: {valid}"
        )
      _check(value[key], schema[key], f"{path}.{key}" if path else key)
    return
  expected = type(schema)
  if isinstance(schema, float) and isinstance(value, int) and not isinstance(value, bool):
    return
  if isinstance(schema, (tuple, list)) and isinstance(value, (tuple, list)):
    return
  if path == "sharding.rules" and isinstance(value, (str, tuple, list)):
    return
  if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
    raise TypeError(f"config key {path!r} expects {expected.__name__}, got {value!r} ({type(value).__name__})")


def check_objective_fits_model(objective: ObjectiveConfig, independent_heads: bool) -> None:
  """Raises a ValueError naming both keys when an active term reads independent features that the model, with
  `model.independent_heads` off, does not produce."""
  if not objective.needs_independent_features or independent_heads:
    return
  term = next(t for t in objective.terms if t.reads_independent_features)
  key, value = (
    ("objective.base", term.name)
    if term.role == "base"
    else (f"objective.weights.{term.name}", objective.weights[term.name])
  )
  raise ValueError(
    f"{key} = {value!r} needs model.independent_heads = True (it is False): {term.name!r} reads "
    "the features of the independent heads"
  )


def validate_config(config: Mapping[str, Any]) -> None:
  """Raises on unknown keys (naming key, valid keys, close match), wrong value types (naming the type), an invalid
  objective section (`ObjectiveConfig`) and an objective that reads features the model does not produce."""
  plain = config.to_dict() if hasattr(config, "to_dict") else config
  _check(plain, base_config().to_dict(), "")
  choices = {
    "train.nonfinite": ("stop", "skip"),
    "train.best_mode": ("max", "min"),
    "train.progress_bar": ("auto", "on", "off"),
  }
  for path, valid in choices.items():
    section, key = path.split(".")
    if config[section][key] not in valid:
      raise ValueError(f"config key {path!r} must be one of {list(valid)}, got {config[section][key]!r}")
  if plain["task"] not in TASKS:
    raise unknown_choice("config key task", plain["task"], TASKS)
  objective = ObjectiveConfig.from_dict(plain["objective"])
  if plain["task"] == "clip":
    if not objective.has_base:
      raise ValueError(
        f"objective.base = {NO_BASE!r} leaves task = 'clip' without a loss to train; valid bases: {list(names('base'))}"
      )
    check_objective_fits_model(objective, build_model(plain["model"]).independent_heads)
  elif objective.has_base:
    raise ValueError(
      f"objective.base = {objective.base!r} with task = {plain['task']!r}: that model family trains "
      f"its own base loss; set objective.base = {NO_BASE!r} (objective.weights add the regularisers)"
    )


def config_module(path: str | os.PathLike) -> types.ModuleType:
  """The config file at `path`, executed as a module (its `get_config` and any constants it names)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"lmstruct_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _get_config(path: pathlib.Path, arg: str | None) -> ml_collections.ConfigDict:
  """`get_config(arg)` (or `get_config()` without an argument) of the config file at `path`."""
  module = config_module(path)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"config file {path} defines no get_config(arg)")
  return module.get_config(arg) if arg is not None else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
  """`config` with every `'a.b.c': 'text'` override set to `parse_arg_value` of the text next to the current
  value; missing keys are created, for `validate_config` to name if they are not in the schema."""
  config = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  for path, text in overrides.items():
    *parents, key = path.split(".")
    node = config
    for i, name in enumerate(parents):
      if name not in node:
        node[name] = {}
      node = node[name]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"cannot override config key {path!r}: {'.'.join(parents[: i + 1])!r} is not a mapping")
    node[key] = parse_arg_value(path, text, node.get(key), "config key")
  return config


def load_config(spec: str, overrides: Mapping[str, str] | None = None) -> ml_collections.ConfigDict:
  """The validated, locked config of `spec` with `overrides` applied (`apply_overrides`).

  `spec` is a config file with an optional argument, `configs/clip_scenes.py:variant=tiny` (its
  `get_config(arg)`), or a run's saved `config.json`.
  """
  path_text, _, arg = spec.partition(":")
  path = pathlib.Path(path_text)
  if not path.is_file():
    siblings = sorted(str(p) for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
    raise FileNotFoundError(f"config file {path} not found{did_you_mean(str(path), siblings)}")
  if path.suffix == ".json":
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  else:
    config = _get_config(path, arg if ":" in spec else None)
  config = apply_overrides(config, overrides or {})
  validate_config(config)
  config.lock()
  return config
