"""Rows across JAX processes: the rows one process holds of a global array, and every process's rows gathered.

A *global* ``jax.Array`` sharded on its leading axis over a mesh that spans several processes holds, on each
process, a block of its rows (``jax.make_array_from_process_local_data`` puts a process's rows there, in order).
``process_rows`` returns that block; ``allgather_rows`` is its inverse across processes: the concatenation of every
process's host rows, in process order, the same on every process. With one process both are the identity.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def _row_blocks(x: jax.Array) -> dict[tuple[int, int], jax.Array]:
  """``{(start, stop): shard data}`` of the distinct leading-axis blocks this process holds of ``x``; a shard that
  splits any trailing axis is an error (only the leading axis may be sharded)."""
  blocks: dict[tuple[int, int], jax.Array] = {}
  for shard in x.addressable_shards:
    if tuple(shard.data.shape[1:]) != tuple(x.shape[1:]):
      raise ValueError(f"an array of shape {x.shape} sharded as {x.sharding} splits a trailing axis; only the "
                       "leading (batch) axis may be sharded across processes")
    start, stop, _ = shard.index[0].indices(x.shape[0])
    blocks.setdefault((start, stop), shard.data)
  return blocks


def process_row_count(x: Any) -> int:
  """How many leading-axis rows of ``x`` this process holds: ``len(x)`` unless ``x`` is a ``jax.Array`` spread over
  several processes, then the summed length of its distinct local blocks."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return sum(stop - start for start, stop in _row_blocks(x))
  return int(np.shape(x)[0])


def process_rows(x: Any) -> np.ndarray:
  """This process's rows of ``x`` as a host array: ``np.asarray(x)`` unless ``x`` is a ``jax.Array`` spread over
  several processes, then its distinct local leading-axis blocks concatenated in global row order (for an array
  built by ``jax.make_array_from_process_local_data``, exactly the rows this process gave; a scalar is
  replicated, so its local copy is the value)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.ndim == 0:
      return np.asarray(x.addressable_shards[0].data)
    blocks = _row_blocks(x)
    return np.concatenate([np.asarray(blocks[key]) for key in sorted(blocks)])
  return np.asarray(x)


def allgather_rows(x: np.ndarray) -> np.ndarray:
  """``concatenate([x_0, x_1, ..., x_{P-1}])``, where ``x_p`` is process ``p``'s ``x``, on every process.

  A collective: every process calls it, with arrays of one dtype and one trailing shape; the row counts may
  differ. Rows travel as raw bytes, so every dtype (bool, int64, float64) and every bit (NaN payloads) is kept.
  """
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  counts = np.asarray(multihost_utils.process_allgather(np.array([x.shape[0]], np.int32))).reshape(-1)
  row_bytes = x.dtype.itemsize * math.prod(x.shape[1:])
  if counts.sum() == 0 or row_bytes == 0:
    return np.zeros((int(counts.sum()), *x.shape[1:]), x.dtype)
  padded = np.zeros((int(counts.max()), row_bytes), np.uint8)
  padded[:x.shape[0]] = np.frombuffer(np.ascontiguousarray(x).tobytes(), np.uint8).reshape(x.shape[0], row_bytes)
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(counts), -1, row_bytes)
  rows = np.concatenate([gathered[p, :count] for p, count in enumerate(counts)])
  return np.frombuffer(rows.tobytes(), x.dtype).reshape(-1, *x.shape[1:]).copy()
