"""Renames and reshapes a PyTorch state dict into a Flax variable tree, checking every key and shape.

A :class:`KeyMap` says, for each Flax variable path (``params/image_tower/patch_embed/kernel``,
``batch_stats/image_tower/stem_bn1/mean``), which checkpoint key holds it and how to reshape it. Conversion walks
the variables the lmstruct model expects (their shapes from ``jax.eval_shape`` of its ``init``) and fails — naming
every key at fault — on a missing key, a shape that differs after reshaping, or a checkpoint key that nothing
consumes. The transforms use only array methods, so a conversion also runs under ``jax.eval_shape`` on shapes
alone.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import numpy as np

from lmstruct.pretrained.torch_reader import CheckpointError

Transform = Callable[[Any], Any]
MAX_LISTED = 12


def same(x: Any) -> Any:
  """Stored as is (learned embeddings, norm scales and biases, and projections kept as ``x @ W`` matrices)."""
  return x


def linear(x: Any) -> Any:
  """``nn.Linear.weight`` [out, in] → Dense kernel [in, out]."""
  return x.T


def conv(x: Any) -> Any:
  """``nn.Conv2d.weight`` [out, in/groups, kh, kw] → Conv kernel [kh, kw, in/groups, out]."""
  return x.transpose(2, 3, 1, 0)


def scalar(x: Any) -> Any:
  """A one-element tensor (``[]`` or ``[1]``) → a scalar."""
  return x.reshape(())


@dataclasses.dataclass(frozen=True)
class Rule:
  """Variables whose path fully matches the regex `pattern` come from checkpoint key `key` (a ``re`` template
  that may refer to the pattern's groups), reshaped by `transform`."""

  pattern: str
  key: str
  transform: Transform = same


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """How one checkpoint family maps onto lmstruct variables.

  rules: the first rule whose pattern matches a variable path gives its key.
  ignored: regexes of checkpoint keys that hold no lmstruct variable (counters, fixed masks, unused heads).
  fresh: regexes of variable paths no checkpoint of the family holds; they stay as initialised.
  optional: regexes of variable paths taken from the checkpoint when it has them, else left as initialised.
  """

  rules: tuple[Rule, ...]
  ignored: tuple[str, ...] = ()
  fresh: tuple[str, ...] = ()
  optional: tuple[str, ...] = ()


def dense(flax_path: str, torch_path: str, bias: bool = True) -> tuple[Rule, ...]:
  """Rules for a Dense layer stored as an ``nn.Linear``."""
  return (
    Rule(f"params/{flax_path}/kernel", f"{torch_path}.weight", linear),
    *((Rule(f"params/{flax_path}/bias", f"{torch_path}.bias"),) if bias else ()),
  )


def layer_norm(flax_path: str, torch_path: str) -> tuple[Rule, ...]:
  """Rules for a LayerNorm (``scale`` ← ``weight``)."""
  return Rule(f"params/{flax_path}/scale", f"{torch_path}.weight"), Rule(
    f"params/{flax_path}/bias", f"{torch_path}.bias"
  )


def batch_norm(flax_path: str, torch_path: str) -> tuple[Rule, ...]:
  """Rules for a BatchNorm: affine parameters and running statistics."""
  return (
    *layer_norm(flax_path, torch_path),
    Rule(f"batch_stats/{flax_path}/mean", f"{torch_path}.running_mean"),
    Rule(f"batch_stats/{flax_path}/var", f"{torch_path}.running_var"),
  )


def convolution(flax_path: str, torch_path: str) -> tuple[Rule, ...]:
  """The rule for a bias-free convolution."""
  return (Rule(f"params/{flax_path}/kernel", f"{torch_path}.weight", conv),)


def _matches(patterns: tuple[str, ...], text: str) -> bool:
  return any(re.fullmatch(p, text) for p in patterns)


def _listing(items: list[str]) -> str:
  shown = ", ".join(items[:MAX_LISTED])
  return shown + (f", … ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """``{'a/b/c': leaf}`` from a nested dict of variables."""
  return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def convert_state_dict(
  state_dict: Mapping[str, Any], expected: Mapping[str, Any], keymap: KeyMap, source: str
) -> dict[str, Any]:
  """The variables of `expected` (a tree of arrays or ShapeDtypeStructs) filled from `state_dict`, as float32.

  Fresh and absent optional variables are left out. Raises :class:`CheckpointError` naming `source` and every
  missing, unexpected or mis-shaped key.
  """
  converted, used = {}, set()
  missing, mismatched = [], []
  for path, leaf in flatten(expected).items():
    if _matches(keymap.fresh, path):
      continue
    rule, match = next(((r, m) for r in keymap.rules if (m := re.fullmatch(r.pattern, path))), (None, None))
    if rule is None:
      raise CheckpointError(
        f"{source}: no checkpoint key is known for lmstruct variable {path!r}; this model "
        "is not of the architecture family being converted"
      )
    key = match.expand(rule.key)
    if key not in state_dict:
      if not _matches(keymap.optional, path):
        missing.append(f"{key!r} (for {path})")
      continue
    value = rule.transform(state_dict[key].astype(np.float32))
    used.add(key)
    if tuple(value.shape) != tuple(leaf.shape):
      mismatched.append(
        f"{key!r} has shape {tuple(state_dict[key].shape)}, giving {tuple(value.shape)} for "
        f"{path} which needs {tuple(leaf.shape)}"
      )
      continue
    converted[path] = value
  unexpected = sorted(k for k in state_dict if k not in used and not _matches(keymap.ignored, k))
  problems = [
    f"missing keys: {_listing(missing)}" if missing else "",
    f"shape mismatches: {_listing(mismatched)}" if mismatched else "",
    f"unexpected keys: {_listing(unexpected)}" if unexpected else "",
  ]
  problems = [p for p in problems if p]
  if problems:
    raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
  return flax.traverse_util.unflatten_dict(converted, sep="/")
