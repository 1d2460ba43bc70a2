"""Device mesh and sharding rules.

The mesh comes from config (`mesh.shape`: ordered {axis: size}, one size may be −1 for "all remaining devices";
default: every device on a single `data` axis). Batches are sharded on their leading axis over the data axes.
Parameters (and the matching optimizer state) are placed by an ordered list of (regex, spec) rules, first match
wins; `spec` is 'replicate', 'fsdp' (shard the largest dimension that the data axes divide), or a tuple with one
mesh-axis name or None per dimension. `config.sharding.rules` names a rule list of `NAMED_RULES` or spells one out.
"""
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from lmstruct.choices import unknown_choice

DEFAULT_RULES: tuple[tuple[str, Any], ...] = ((".*", "replicate"),)
FSDP_RULES: tuple[tuple[str, Any], ...] = ((".*", "fsdp"),)
NAMED_RULES: dict[str, tuple[tuple[str, Any], ...]] = {"replicate": DEFAULT_RULES, "fsdp": FSDP_RULES}


def sharding_rules(rules: str | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
  """The rule list of `config.sharding.rules`: a name of `NAMED_RULES`, or (regex, spec) pairs (lists → tuples)."""
  if isinstance(rules, str):
    if rules not in NAMED_RULES:
      raise unknown_choice("sharding.rules", rules, NAMED_RULES, "or a list of (regex, spec) pairs")
    return NAMED_RULES[rules]
  return tuple((pattern, tuple(spec) if isinstance(spec, list) else spec) for pattern, spec in rules)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with classic (Auto) GSPMD axes; `shape` maps axis names to sizes, −1 meaning the rest.

  A shape covering fewer devices than available uses the first ones (e.g. {'data': 1} for one device).
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = dict(shape or {"data": -1})
  known = math.prod(s for s in shape.values() if s != -1)
  if list(shape.values()).count(-1) > 1:
    raise ValueError(f"mesh.shape may hold at most one -1, got {shape}")
  sizes = [len(devices) // known if s == -1 else s for s in shape.values()]
  if math.prod(sizes) > len(devices) or (-1 in shape.values() and math.prod(sizes) != len(devices)):
    raise ValueError(f"mesh.shape {shape} does not fit the {len(devices)} available devices")
  return Mesh(np.asarray(devices[:math.prod(sizes)]).reshape(sizes), tuple(shape), axis_types=(AxisType.Auto,) * len(sizes))


def batch_sharding(mesh: Mesh, data_axes: Sequence[str] = ("data",)) -> NamedSharding:
  """A batch's sharding: its leading axis split over `data_axes` of `mesh`, every other axis replicated."""
  for axis in data_axes:
    if axis not in mesh.axis_names:
      raise ValueError(f"data axis {axis!r} is not a mesh axis; mesh axes: {', '.join(mesh.axis_names)}")
  return NamedSharding(mesh, P(tuple(data_axes)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh, data_axes: Sequence[str]) -> P:
  """Shard the largest dimension divisible by the data-axes size; replicate small or indivisible arrays."""
  size = math.prod(mesh.shape[a] for a in data_axes)
  candidates = [i for i, d in enumerate(shape) if d % size == 0 and d >= size]
  if size == 1 or not candidates:
    return P()
  dim = max(candidates, key=lambda i: shape[i])
  return P(*[tuple(data_axes) if i == dim else None for i in range(len(shape))])


def spec_for(path: str, shape: tuple[int, ...], rules: Sequence[tuple[str, Any]], mesh: Mesh,
             data_axes: Sequence[str] = ("data",)) -> P:
  """The PartitionSpec of the first rule whose regex is found in `path`."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      if spec == "replicate":
        return P()
      if spec == "fsdp":
        return _fsdp_spec(shape, mesh, data_axes)
      if isinstance(spec, (tuple, list)) and len(spec) == len(shape):
        return P(*spec)
      raise ValueError(f"sharding rule {pattern!r} → {spec!r} does not fit parameter {path} of shape {shape}; use "
                       "'replicate', 'fsdp' or a tuple with one entry per dimension")
  return P()


def path_string(path: tuple) -> str:
  """'a/b/c' from a pytree key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                   data_axes: Sequence[str] = ("data",)) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules on its path."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, spec_for(path_string(path), tuple(leaf.shape), rules, mesh, data_axes)),
      tree)
