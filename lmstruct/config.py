"""Configs: big_vision-style `get_config(arg)` files over one base schema, validated before anything runs.

A config file (`configs/*.py`) defines `get_config(arg: str | None)`; `arg` is a short comma-separated string of
`key=value` pairs (`configs/clip_scenes.py:variant=tiny,steps=300`) parsed by `parse_arg`. Every config starts
from `base_config()`, the one place where each training key, its default and its type are defined;
`validate_config` rejects unknown keys (naming the key and the valid keys, with a close match) and values of the
wrong type (naming the key and the expected type). `task` picks the model family's trainer (`train.loop.TRAINERS`:
'clip', the two-tower family, or 'albef'). Open-ended sections are validated by their owners: `model` by
`lmstruct.models.factory` (or `lmstruct.models.albef`), `objective` by `lmstruct.losses.objective`, data sources by
`lmstruct.data.sources`, `evals` by `lmstruct.eval.registry`, `albef` by `lmstruct.train.albef`.
"""
import ast
import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections

OPEN_SECTIONS = ("model", "objective", "evals", "data.train", "data.augment", "data.eda", "albef")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'a=1,b=x' → ConfigDict(a=1, b='x') over `defaults`; values are Python literals or bare strings.

  Unknown names are an error listing the valid ones; a value is cast to the type of its default.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not of the form key=value")
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; valid arguments: {sorted(defaults)}")
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    default = defaults[key]
    result[key] = type(default)(parsed) if default is not None and not isinstance(parsed, type(default)) else parsed
  return result


def base_config() -> ml_collections.ConfigDict:
  """Every training key with its default; see README 'Configs' for what each means."""
  return ml_collections.ConfigDict({
      "seed": 0,
      "task": "clip",
      "model": {"preset": "tiny"},
      "objective": {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0},
                    "bridge_t": 0.25, "impl": "auto"},
      "optimizer": {"learning_rate": 5e-4, "end_learning_rate": 0.0, "warmup_steps": 0, "total_steps": 0,
                    "weight_decay": 0.1, "b1": 0.9, "b2": 0.98, "eps": 1e-6, "grad_clip_norm": 1.0,
                    "trainable": ()},
      "mesh": {"shape": {"data": -1}},
      "sharding": {"rules": "replicate"},
      "data": {"train": {"kind": "scenes", "split": "train", "preset": "default"}, "data_dir": "data",
               "global_batch_size": 128, "tokenizer": "clip", "worker_count": 0, "read_threads": 2,
               "augment": {}, "eda": {}, "caption_choice": "random", "eval_batch_size": 256,
               "tokenizer_path": ""},
      "train": {"steps": 1000, "log_every": 50, "checkpoint_every": 500, "keep_checkpoints": 2, "best_metric": "",
                "best_mode": "max", "accumulation_steps": 1, "nonfinite": "stop", "profile_start_step": -1,
                "profile_steps": 5, "progress_bar": "auto"},
      "init": {"pretrained": "", "towers": ()},
      "evals": {},
      "albef": {},
  })


def _suggest(key: str, valid: list[str]) -> str:
  close = difflib.get_close_matches(key, valid, n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


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
        raise ValueError(f"unknown config key {path + '.' + key if path else key!r}{_suggest(key, valid)}; "
                         f"valid keys{' in ' + repr(path) if path else ''}: {valid}")
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


def validate_config(config: Mapping[str, Any]) -> None:
  """Raises on unknown keys (naming key, valid keys, close match) and wrong value types (naming the type)."""
  _check(config.to_dict() if hasattr(config, "to_dict") else config, base_config().to_dict(), "")
  choices = {"train.nonfinite": ("stop", "skip"), "train.best_mode": ("max", "min"),
             "train.progress_bar": ("auto", "on", "off")}
  for path, valid in choices.items():
    section, key = path.split(".")
    if config[section][key] not in valid:
      raise ValueError(f"config key {path!r} must be one of {list(valid)}, got {config[section][key]!r}")
