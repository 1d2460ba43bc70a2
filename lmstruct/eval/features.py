"""Turning evaluation batches plus encode functions into host-side embedding arrays.

An *encode function* maps a device batch of images (``float32 [B, H, W, 3]``) or tokens (``int32 [B, L]``) to either
an embedding array ``[B, D]`` or the model's output dict (docs/contracts.md), from which ``zv``/``zt`` and, when
present, ``zv_ind``/``zt_ind`` are taken. A *batch source* is an iterable of batch dicts, or a zero-argument callable
returning a fresh one (so an evaluator can run more than once over a single-pass pipeline). Rows whose boolean
``mask`` is false are padding and are dropped.

Across JAX processes every process evaluates its own shard: a batch holds this process's rows (host arrays), or is
a global ``jax.Array`` of which this process reads only its own rows (``to_numpy``); encode functions map this
process's rows to their embeddings. ``gather`` and the evaluators then collect the embeddings a metric needs from
every process (``lmstruct.multihost.allgather_rows``, in process order), so every process computes the metric on
all rows. These collectives need every process to run the same evaluators over batch sources that yield at least
one batch on each process (the eval pipeline pads every process to the same number of batches).
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lmstruct import multihost, paths

Batch = Mapping[str, Any]
BatchSource = Union[Iterable[Batch], Callable[[], Iterable[Batch]]]
EncodeFn = Callable[[Any], Any]


def to_numpy(x: Any) -> np.ndarray:
  """This process's rows of ``x`` as a host array (``lmstruct.multihost.process_rows``): all of ``x``, unless it is
  a ``jax.Array`` spread over several processes."""
  return multihost.process_rows(x)


def source_cache_key(source: BatchSource) -> str | None:
  """The ``cache_key`` attribute of a batch source (a string naming its data and preprocessing), or None."""
  key = getattr(source, "cache_key", None)
  return key if isinstance(key, str) else None


def iterate(source: BatchSource) -> Iterable[Batch]:
  """The batches of ``source``: ``source()`` when it is callable, else ``source`` itself."""
  return source() if callable(source) else source


def lookup(batch: Batch, key: str) -> Any:
  """``batch[key]`` when present; otherwise a ``/`` in ``key`` indexes nested dicts (``'labels/shape'`` is
  ``batch['labels']['shape']``)."""
  if key in batch:
    return batch[key]
  value: Any = batch
  for part in key.split("/"):
    value = value[part]
  return value


def row_mask(batch: Batch, size: int) -> np.ndarray:
  """This process's rows of ``batch['mask']`` as a boolean ``[size]`` array, or all-true when the batch has no
  mask."""
  if "mask" not in batch:
    return np.ones((size,), dtype=bool)
  return to_numpy(batch["mask"]).astype(bool).reshape(size)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Rows divided by their Euclidean norm: ``x / max(||x||_2, eps)`` along the last axis."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norm, eps)


def nonfinite_fraction(*embeddings: np.ndarray) -> float:
  """Fraction of embedding rows holding a NaN or an infinity, over all the given ``[N_a, D]`` arrays:
  ``sum_a #{i : some z_a[i, d] is not finite} / sum_a N_a`` (0 when there are no rows)."""
  rows = sum(np.shape(z)[0] for z in embeddings)
  bad = sum(int(np.sum(~np.isfinite(np.asarray(z)).reshape(np.shape(z)[0], -1).all(axis=1))) for z in embeddings)
  return bad / rows if rows else 0.0


def encode_outputs(encode: EncodeFn, inputs: Any, key: str) -> dict[str, np.ndarray]:
  """Runs ``encode(inputs)`` and returns ``{key: ..., key + '_ind': ...}`` as float32 host arrays.

  ``key`` is ``'zv'``, ``'zt'`` or ``'hv'`` (the pooled image backbone). A bare array output is taken as ``key``; from
  a dict output ``key`` is required and ``key + '_ind'`` is kept when present.
  """
  out = encode(inputs)
  if isinstance(out, Mapping):
    keys = [k for k in (key, key + "_ind") if k in out]
    if key not in out:
      raise KeyError(f"encode function output has no {key!r}; keys: {sorted(out)}")
    return {k: to_numpy(out[k]).astype(np.float32) for k in keys}
  return {key: to_numpy(out).astype(np.float32)}


def gather(source: BatchSource, fn: Callable[[Batch], Mapping[str, np.ndarray]],
           size_key: str = "image") -> dict[str, np.ndarray]:
  """Concatenates ``fn(batch)`` over all batches, keeping only rows with a true ``mask``, then over all processes.

  ``fn`` returns arrays of this process's rows (leading axis: the batch axis); the batch size is the number of rows
  of ``batch[size_key]`` this process holds. Each process keeps its own unmasked rows; the result is every
  process's rows in process order (``lmstruct.multihost.allgather_rows``, a collective), the same on every
  process: for the eval pipeline, whose process ``k`` reads the ``k``-th contiguous block, the source order.
  """
  parts: dict[str, list[np.ndarray]] = {}
  for batch in iterate(source):
    size = multihost.process_row_count(batch[size_key])
    keep = row_mask(batch, size)
    for name, value in fn(batch).items():
      parts.setdefault(name, []).append(np.asarray(value)[keep])
  if not parts:
    raise ValueError("the batch source yielded no batches")
  return {name: multihost.allgather_rows(np.concatenate(values, axis=0)) for name, values in parts.items()}


@dataclasses.dataclass(frozen=True)
class FeatureCache:
  """Arrays computed once per model state and kept on disk: ``<root>/step_<step>/<key>.npz``.

  Features of one dataset under one checkpoint never change, so evaluators that encode large datasets (linear probe
  training sets) look them up here before encoding. Keys name the data and the feature kind; the step names the
  model state. Only the newest step is kept: writing under a step removes the folders of every other step, so the
  cache never holds more than one model's features. Process 0 decides hits (every process then loads the shared
  file, so the workdir must be on a filesystem all processes see, as for checkpoints) and writes files atomically.
  ``root`` may be an object-store URL (:mod:`lmstruct.paths`).
  """

  root: str | os.PathLike
  step: int

  @property
  def directory(self) -> epath.Path:
    """``<root>/step_<step>``."""
    return paths.as_path(self.root) / f"step_{int(self.step)}"

  def get(self, key: str, compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored under ``key``, or ``compute()`` stored there first."""
    path = self.directory / f"{key}.npz"
    if bool(multihost_utils.broadcast_one_to_all(np.bool_(path.is_file()))):
      with path.open("rb") as f, np.load(f) as stored:
        return {name: stored[name] for name in stored.files}
    arrays = {name: np.asarray(value) for name, value in compute().items()}
    if jax.process_index() == 0:
      self._write(path, arrays)
    return arrays

  def _write(self, path: epath.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``arrays`` to ``path`` through a temporary file and drops the folders of other steps."""
    for stale in paths.as_path(self.root).glob("step_*"):
      if stale != self.directory and stale.is_dir():
        stale.rmtree(missing_ok=True)
    self.directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp.npz")
    try:
      with tmp.open("wb") as f:
        np.savez(f, **arrays)
      tmp.replace(path)
    except BaseException:
      tmp.unlink(missing_ok=True)
      raise


def cached(cache: FeatureCache | None, key: str | None,
           compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """``cache.get(key, compute)``, or ``compute()`` when there is no cache or no key."""
  if cache is None or key is None:
    return dict(compute())
  return cache.get(key, compute)
