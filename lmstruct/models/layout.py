"""The two parameter layouts of a Transformer's blocks, and the map between them.

    unrolled (scan_layers=False):  transformer/block_0/attn/qkv/kernel [w, 3w], …, transformer/block_{L-1}/…
    scanned  (scan_layers=True):   transformer/blocks/attn/qkv/kernel  [L, w, 3w]

Row i of every stacked parameter is block i's parameter, so `to_scanned` stacks the `block_<i>` subtrees in the
order of i and `to_unrolled` takes them apart again; the two are inverse. Both walk any tree that holds parameters
(parameter dicts, a whole TrainState with its optimizer moments, orbax metadata), keep every container type, and
map the leaves of block subtrees only: arrays (NumPy or JAX) are stacked or indexed, and abstract arrays
(`jax.ShapeDtypeStruct`) gain or lose the leading layer axis in their shape and in their sharding's partition spec.
Subtrees without arrays (optax's `MaskedNode` of a frozen parameter) keep their structure; their layer count is
taken from the parameters of the same path elsewhere in the tree.
"""

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lmstruct.models.layers import SCANNED_BLOCKS

_BLOCK = re.compile(r"block_(\d+)")
Path = tuple[str, ...]


def _unrolled_blocks(node: Any) -> bool:
  """Whether `node` is a dict of exactly block_0 … block_{n−1}."""
  if not isinstance(node, Mapping) or not node:
    return False
  indices = [_BLOCK.fullmatch(str(k)) for k in node]
  return all(indices) and sorted(int(m.group(1)) for m in indices) == list(range(len(node)))


def _scanned_blocks(node: Any) -> bool:
  """Whether `node` is the dict of a scanned Transformer: its one entry is the stacked blocks."""
  return isinstance(node, Mapping) and set(node) == {SCANNED_BLOCKS}


def is_scanned(tree: Any) -> bool:
  """Whether any Transformer in `tree` has the scanned layout."""
  found = []
  _walk(tree, (), lambda node, path: found.append(_scanned_blocks(node)) or node)
  return any(found)


def _with_spec(sharding: Any, spec: PartitionSpec) -> Any:
  return NamedSharding(sharding.mesh, spec) if isinstance(sharding, NamedSharding) else sharding


def _stack(*leaves: Any) -> Any:
  """[L, …] from L leaves of equal shape: the array stack, or the stacked abstract array (layer axis unsharded)."""
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, NamedSharding):
      sharding = _with_spec(sharding, PartitionSpec(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype, sharding=sharding)
  if isinstance(first, jax.Array):
    return jnp.stack(leaves)
  return np.stack([np.asarray(leaf) for leaf in leaves])


def _row(leaf: Any, index: int) -> Any:
  """Row `index` of a stacked leaf (for an abstract array: its shape and sharding without the layer axis)."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding):
      sharding = _with_spec(sharding, PartitionSpec(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=sharding)
  return leaf[index]


def _walk(tree: Any, path: Path, visit: Callable[[Any, Path], Any]) -> Any:
  """`tree` rebuilt with every dict passed through `visit(node, path)` first, containers kept (dict, tuple,
  named tuple, list, flax struct dataclass); a dict that `visit` changes is not walked further."""
  if isinstance(tree, Mapping):
    visited = visit(tree, path)
    if visited is not tree:
      return visited
    return {key: _walk(value, (*path, str(key)), visit) for key, value in tree.items()}
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    return dataclasses.replace(
      tree, **{f.name: _walk(getattr(tree, f.name), (*path, f.name), visit) for f in dataclasses.fields(tree) if f.init}
    )
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_walk(value, (*path, name), visit) for name, value in zip(tree._fields, tree)))
  if isinstance(tree, (tuple, list)):
    return type(tree)(_walk(value, (*path, str(i)), visit) for i, value in enumerate(tree))
  return tree


def to_scanned(tree: Any) -> Any:
  """`tree` with every `{block_0: …, …, block_{L−1}: …}` replaced by `{'blocks': …}`, leaves stacked in block order."""

  def visit(node, path):
    if not _unrolled_blocks(node):
      return node
    return {SCANNED_BLOCKS: jax.tree.map(_stack, *(node[f"block_{i}"] for i in range(len(node))))}

  return _walk(tree, (), visit)


def _layer_counts(tree: Any) -> dict[Path, int]:
  """{path of a scanned Transformer: L} for every one whose stacked blocks hold at least one array."""
  counts: dict[Path, int] = {}

  def visit(node, path):
    if _scanned_blocks(node):
      leaves = jax.tree.leaves(node[SCANNED_BLOCKS])
      if leaves:
        counts[path] = int(leaves[0].shape[0])
    return node

  _walk(tree, (), visit)
  return counts


def _common_suffix(a: Path, b: Path) -> int:
  n = 0
  while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
    n += 1
  return n


def to_unrolled(tree: Any) -> Any:
  """`tree` with every `{'blocks': …}` replaced by `{block_0: …, …, block_{L−1}: …}`, block i holding row i."""
  counts = _layer_counts(tree)

  def visit(node, path):
    if not _scanned_blocks(node):
      return node
    stacked = node[SCANNED_BLOCKS]
    leaves = jax.tree.leaves(stacked)
    if leaves:
      layers = int(leaves[0].shape[0])
    elif counts:
      layers = counts[max(counts, key=lambda known: _common_suffix(known, path))]
    else:
      raise ValueError(f"cannot unroll {'/'.join(path)}: it holds no arrays to count its layers by")
    return {f"block_{i}": jax.tree.map(lambda leaf, i=i: _row(leaf, i), stacked) for i in range(layers)}

  return _walk(tree, (), visit)


def matching_layout(tree: Any, target: Any) -> Any:
  """`tree` in the layout of `target` (scanned if any Transformer of `target` is)."""
  return to_scanned(tree) if is_scanned(target) else to_unrolled(tree)
