"""Streaming webdataset input: each reader reads its own shards front to back, through an in-shard shuffle buffer.

``{'kind': 'webdataset', 'shards': 'gs://bucket/cc3m/{00000..00331}.tar', 'streaming': True}`` opens a
:class:`WebDatasetStream`. Opening it lists the shards (one listing, or none for a brace pattern) and reads
nothing else, so start-up time and memory depend on the number of shards, not on the number of samples.

Which shard a reader reads next is decided by :mod:`lmstruct.data.plan`: the shards of each epoch in a seeded
order, dealt round-robin to all readers of all processes (``process_count × readers per process``; a process runs
one reader per grain worker, or per read thread without workers). A reader opens its shard (local or object
store, :mod:`lmstruct.paths`), parses it as a stream (:mod:`lmstruct.data.tars`: damaged samples are skipped and
counted, a truncated shard yields its complete samples), and emits the samples through a shuffle buffer of
``shuffle_buffer`` samples seeded by ``(seed, epoch, shard)``, so a shard's order is the same whichever reader
reads it.

**Guarantee.** Within every epoch each usable sample of every shard is delivered exactly once, whatever the
number of processes, shards or workers, including across a resume onto another number of processes
(:func:`lmstruct.data.plan.remap`). What is not aligned is the end of an epoch: a reader that holds fewer or
smaller shards starts its next epoch earlier. Damaged samples are skipped identically every time a shard is read.

**Position.** Each delivered sample carries its reader's position (the step in the reader's plan and the number
of samples of the current shard delivered), and the training iterator keeps the position after the last sample it
put in a batch. Resuming re-reads the current shard from its start and drops the samples already delivered (the
shuffle is replayed from its seed, so the buffer is rebuilt exactly): at most one shard per reader is read again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from lmstruct import paths
from lmstruct.data import plan as plan_lib
from lmstruct.data import skips as skips_lib
from lmstruct.data import tars

log = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 1000


def shuffled(items: Iterator[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
  """Items through a shuffle buffer: once ``buffer_size`` items are held, each new item replaces a uniformly drawn
  held one, which is emitted; at the end the held items are emitted in a uniformly drawn order. ``buffer_size``
  ≤ 1 keeps the order."""
  buffer: list[Any] = []
  for item in items:
    if len(buffer) < max(buffer_size, 1):
      buffer.append(item)
      continue
    slot = int(rng.integers(len(buffer)))
    yield buffer[slot]
    buffer[slot] = item
  while buffer:
    slot = int(rng.integers(len(buffer)))
    buffer[slot], buffer[-1] = buffer[-1], buffer[slot]
    yield buffer.pop()


class WebDatasetStream:
  """img2dataset-style webdataset shards read as a stream (the ``webdataset`` format with ``streaming: True``).

  Args:
    shards: a folder of ``.tar``, a glob, a brace pattern or a list (:func:`lmstruct.paths.list_shards`).
    caption_key: the caption field of ``<key>.json`` members.
    shuffle_buffer: samples held by each reader's in-shard shuffle buffer.
  """

  def __init__(self, shards: Any, caption_key: str = "caption", shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER):
    self.shards = [str(p) for p in paths.list_shards(shards)]
    self.caption_key = caption_key
    self.shuffle_buffer = int(shuffle_buffer)

  @property
  def num_units(self) -> int:
    """The number of shards (the plan's units)."""
    return len(self.shards)

  def samples(self, shard: int, skips: skips_lib.Skips) -> Iterator[tars.Sample]:
    """The usable samples of shard ``shard`` in archive order; an unreadable shard is counted in ``skips``."""
    path = paths.as_path(self.shards[shard])
    try:
      size = path.stat().length
      with path.open("rb") as f:
        yield from tars.iter_samples(f, self.shards[shard], self.caption_key, skips, size=size)
    except OSError as error:
      skips.add(skips_lib.UNREADABLE_SHARD, f"{self.shards[shard]}: {error}")

  def unit(self, shard: int, epoch: int, seed: int, skips: skips_lib.Skips) -> Iterator[tars.Sample]:
    """Shard ``shard``'s samples in the order of epoch ``epoch``: through the shuffle buffer seeded by
    ``(seed, epoch, shard)``."""
    rng = np.random.default_rng([seed, epoch, shard])
    return shuffled(self.samples(shard, skips), self.shuffle_buffer, rng)

  def __repr__(self) -> str:
    return f"WebDatasetStream({len(self.shards)} shards, first={self.shards[0]}, buffer={self.shuffle_buffer})"


POSITION = "_position"
"""Per element: int64 [reader, step, delivered, last] (see :class:`lmstruct.data.plan.Position`)."""
SEED = "_seed"
"""Per element: the ints that seed its per-example randomness, (epoch, unit, ordinal)."""
SKIPPED = "_skipped"
"""Per element: samples skipped in the units its reader finished since its previous element."""


class StreamDataset(grain.IterDataset):
  """The samples of a :class:`WebDatasetStream` as read by this process's readers, one reader per grain slice.

  Elements are stored-example dicts (``image_bytes``, ``captions``, ``image_id``) with :data:`POSITION`,
  :data:`SEED` and :data:`SKIPPED`. Without slicing there must be one reader; grain's ``mp_prefetch`` and
  ``multithread_prefetch`` give worker ``i`` of ``w`` the slice ``i::w``, which is reader ``i``.
  """

  def __init__(
    self, stream: WebDatasetStream, positions: Sequence[plan_lib.Position], seed: int, num_epochs: int | None = None
  ):
    super().__init__()
    self._stream = stream
    self._readers = list(enumerate(positions))
    self._seed = seed
    self._num_epochs = num_epochs

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Keeps the readers of slice ``sl`` (grain calls this once per worker)."""
    del sequential_slice
    self._readers = self._readers[sl]

  def __iter__(self) -> grain.DatasetIterator:
    if len(self._readers) != 1:
      return _UnslicedIterator(self._readers)
    reader, position = self._readers[0]
    return _ReaderIterator(self._stream, reader, position, self._seed, self._num_epochs)

  def __str__(self) -> str:
    return f"StreamDataset({self._stream!r}, readers={[r for r, _ in self._readers]})"


class _ReaderIterator(grain.DatasetIterator):
  """One reader: its plan's shards, from its position on."""

  def __init__(
    self, stream: WebDatasetStream, reader: int, position: plan_lib.Position, seed: int, num_epochs: int | None
  ):
    super().__init__()
    self._stream, self._reader, self._seed = stream, reader, seed
    self._limit = None if num_epochs is None else num_epochs * stream.num_units
    self._position = position
    self._elements = self._read(position)

  def _read(self, position: plan_lib.Position) -> Iterator[dict[str, Any]]:
    """Elements from ``position`` on; each unit's skips ride on the next element delivered after them."""
    step, done, skipped, empty_units = position.step, position.done, 0, 0
    while True:
      g, _ = position.plan.at(step)
      if self._limit is not None and g >= self._limit:
        return
      epoch, shard = plan_lib.unit_at(g, self._stream.num_units, self._seed)
      skips = skips_lib.Skips()
      samples = self._stream.unit(shard, epoch, self._seed, skips)
      upcoming = next(samples, None)
      delivered = 0
      while upcoming is not None:
        sample, upcoming = upcoming, next(samples, None)
        delivered += 1
        if delivered <= done:
          continue
        last = upcoming is None
        if last:
          skipped += skips.total
          _log_skips(self._stream.shards[shard], skips)
        self._position = plan_lib.Position(position.plan, step, delivered).advanced(delivered, last)
        yield {
          "image_bytes": sample.image,
          "captions": [sample.caption],
          "image_id": sample.key,
          POSITION: np.array([self._reader, step, delivered, last], np.int64),
          SEED: np.array([epoch, shard, sample.ordinal], np.int64),
          SKIPPED: np.int64(skipped),
        }
        skipped = 0 if last else skipped
      if delivered == 0:
        skipped += skips.total
        _log_skips(self._stream.shards[shard], skips)
        empty_units += 1
        if empty_units >= self._stream.num_units:
          raise RuntimeError(
            f"{empty_units} shards in a row gave no usable sample (all {self._stream.num_units} "
            f"shards of the source, e.g. {self._stream.shards[shard]}): {skips.lines()}"
          )
      else:
        empty_units = 0
      step += 1
      done = position.plan.at(step)[1]

  def __next__(self) -> dict[str, Any]:
    return next(self._elements)

  def get_state(self) -> dict[str, Any]:
    """The position after the last element returned."""
    return {"position": self._position.to_json()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues after the element a :meth:`get_state` was taken at."""
    self._position = plan_lib.Position.from_json(state["position"])
    self._elements = self._read(self._position)


class _UnslicedIterator(grain.DatasetIterator):
  """The iterator of a stream of several readers before grain slices it: it has a state (grain's prefetch asks for
  one in the parent process) but no elements."""

  def __init__(self, readers: Sequence[tuple[int, plan_lib.Position]]):
    super().__init__()
    self._readers = list(readers)

  def __next__(self) -> dict[str, Any]:
    raise ValueError(f"a stream of {len(self._readers)} readers is read by one grain worker or thread per reader")

  def get_state(self) -> dict[str, Any]:
    return {"positions": [p.to_json() for _, p in self._readers]}

  def set_state(self, state: dict[str, Any]) -> None:
    self._readers = [(r, plan_lib.Position.from_json(p)) for (r, _), p in zip(self._readers, state["positions"])]


def _log_skips(shard: str, skips: skips_lib.Skips) -> None:
  """One warning per damaged shard, with the counts and first details of each reason."""
  if skips.total:
    log.warning("%s: %s", shard, "; ".join(skips.lines()))
