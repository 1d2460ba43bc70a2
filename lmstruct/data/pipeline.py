"""grain input pipelines: training batches with two image and two text views, and padded evaluation batches.

Both pipelines read a random-access *source* (``len(source)`` and ``source[i]`` giving a stored-example dict, see
``docs/contracts.md``; an in-memory list works) and a *tokenize* function (``list[str] -> int32 [N, L]``). Sources
and tokenizers must pickle when ``worker_count > 0``: grain then runs the per-example work in worker processes, so
the launching script needs a ``__main__`` guard; grain's absl flags are marked parsed (defaults) if the program
has not parsed them.

Training (:func:`train_pipeline`) reads a random-access source or a streaming one
(:class:`lmstruct.data.streaming.WebDatasetStream`), per JAX process:

1. the *readers* of all processes split the sequence of all epochs' units (:mod:`lmstruct.data.plan`): for a
   random-access source a unit is an example, each epoch a seeded permutation of all of them, one reader per
   process; for a stream a unit is a shard, one reader per grain worker (or read thread). Within each epoch every
   example is read exactly once, by one reader (none is dropped when the count does not divide);
2. per example, with a generator seeded by ``seed`` and the example's identity (epoch and index, or epoch, shard
   and position in the shard, so the same whichever reader reads it): decode the image, pick a caption (random, or
   the first), build the original view (CLIP resize + centre crop) and the augmented view
   (:mod:`lmstruct.data.augment`), EDA-augment the caption (:mod:`lmstruct.data.eda`), tokenize both;
3. examples whose image cannot be decoded are logged, counted (:attr:`BatchIterator.num_corrupt`) and skipped, and
   so are damaged samples of a stream (:attr:`TrainBatches.num_skipped`);
4. ``global_batch_size / n`` examples are stacked into a host batch (an incomplete last batch is dropped) and,
   given a mesh, assembled into global ``jax.Array``s sharded on the leading axis over the mesh's data axes.

The training iterator's state is every reader's position (:meth:`TrainBatches.get_state`;
:meth:`TrainBatches.global_state` gathers all processes'); restoring it onto another number of processes or
workers remaps the positions so that nothing is repeated or skipped within the epoch.

Evaluation (:func:`eval_pipeline`) keeps the source order, never shuffles, gives process ``k`` the ``k``-th
contiguous block and pads every process to the same number of full batches; the ``mask`` key is False on padding rows
(and on examples whose image is corrupt, which are counted), ``index`` holds each row's source index (-1 on
padding), so every example is evaluated exactly once. Captions are tokenized only when a ``tokenize`` function is
given (classification data may have none). Given an augmentation, each row also carries ``image_aug``, a
deterministic augmented view: the training augmentation applied with a generator seeded by ``(augment_seed, source
index)``, so every pass and every process sees the same view of an example.

Both iterators are checkpointable: ``get_state()`` returns a dict and ``set_state(state)`` on a freshly built
pipeline with the same arguments continues at exactly the next example.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain
import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding
from PIL import Image

from lmstruct import multihost
from lmstruct.data import augment, eda, streaming
from lmstruct.data import plan as plan_lib
from lmstruct.train.sharding import batch_sharding

log = logging.getLogger(__name__)

Tokenize = Callable[[Sequence[str]], np.ndarray]
CAPTION_CHOICES = ("random", "first")
#: Per-example flag set when the example's image could not be decoded; removed before batches leave the iterator.
CORRUPT = "corrupt"


class DataSource(Protocol):
  """Random access to stored-example dicts."""

  def __len__(self) -> int:
    """Number of examples."""

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    """The stored example at ``index``."""


class CorruptImageError(ValueError):
  """A stored image that cannot be decoded into ``uint8 [H, W, 3]``."""


def _image_id(example: Mapping[str, Any]) -> str:
  """The example's ``image_id`` for messages, ``?`` when it has none."""
  return str(example.get("image_id", "?"))


def _image_array(example: Mapping[str, Any]) -> np.ndarray | None:
  """The example's ``image`` when it is an array (checked: uint8 ``[H, W, 3]`` or ``[H, W]``), else None."""
  if "image" not in example or isinstance(example["image"], (bytes, bytearray)):
    return None
  array = np.asarray(example["image"])
  if (
    array.dtype != np.uint8
    or array.ndim not in (2, 3)
    or (array.ndim == 3 and array.shape[-1] != 3)
    or 0 in array.shape
  ):
    raise CorruptImageError(
      f"example {_image_id(example)!r}: expected a uint8 [H, W, 3] image, got {array.dtype} {array.shape}"
    )
  return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array


def decode_pil(example: Mapping[str, Any]) -> Image.Image:
  """The example's image as an RGB PIL image: encoded bytes decoded once, an array wrapped (see
  :func:`decode_image` for the keys read and the errors raised)."""
  array = _image_array(example)
  if array is not None:
    return Image.fromarray(array)
  data = example["image"] if "image" in example else example.get("image_bytes")
  if data is None:
    raise KeyError(f"example {_image_id(example)!r} has neither 'image' nor 'image_bytes'")
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise CorruptImageError(
      f"example {_image_id(example)!r}: cannot decode image ({len(data)} bytes): {error}"
    ) from error


def decode_image(example: Mapping[str, Any]) -> np.ndarray:
  """Returns the example's image as RGB ``uint8 [H, W, 3]``.

  Reads ``image`` (a uint8 ``[H, W, 3]``/``[H, W]`` array, or encoded bytes) or else ``image_bytes`` (encoded
  PNG/JPEG). Raises :class:`CorruptImageError` for undecodable bytes or a malformed array, ``KeyError`` when
  the example has no image at all.
  """
  array = _image_array(example)
  return array if array is not None else np.asarray(decode_pil(example), dtype=np.uint8)


def _tokens(tokenize: Tokenize, texts: Sequence[str]) -> np.ndarray:
  """Tokenizes ``texts`` into int32 ``[len(texts), L]``."""
  return np.asarray(tokenize(list(texts)), dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Turns one stored example into a training example (``image``, ``image_aug``, ``text``, ``text_aug``)."""

  tokenize: Tokenize
  image_size: int
  augmentation: augment.ImageAugmentation
  text_augmentation: Callable[[str, np.random.Generator], str]
  caption_choice: str = "random"

  def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Builds the training example; a corrupt image gives ``{CORRUPT: True}`` instead."""
    try:
      image = decode_pil(example)
    except CorruptImageError as error:
      log.warning("skipping corrupt image: %s", error)
      return {CORRUPT: np.True_}
    captions = example.get("captions") or []
    if not captions:
      raise ValueError(f"example {_image_id(example)!r} has no captions; training needs at least one")
    caption = captions[int(rng.integers(len(captions)))] if self.caption_choice == "random" else captions[0]
    tokens = _tokens(self.tokenize, [caption, self.text_augmentation(caption, rng)])
    return {
      "image": augment.clip_preprocess(image, self.image_size),
      "image_aug": self.augmentation(image, rng, self.image_size),
      "text": tokens[0],
      "text_aug": tokens[1],
    }


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Turns position ``i`` of one process's padded block into an evaluation row (padding past ``stop``)."""

  source: DataSource
  start: int
  stop: int
  image_size: int
  template: Mapping[str, Any]
  tokenize: Tokenize | None = None
  caption_index: int = 0
  augmentation: augment.ImageAugmentation | None = None
  augment_seed: int = 0
  row_fn: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

  def _row(self, index: int, example: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocesses one valid example (labels copied as int32; ``image_aug`` seeded by ``(augment_seed, index)``),
    or returns `row_fn(example)` when given."""
    if self.row_fn is not None:
      return self.row_fn(example)
    image = decode_image(example)
    row: dict[str, Any] = {"image": augment.clip_preprocess(image, self.image_size)}
    if self.augmentation is not None:
      row["image_aug"] = self.augmentation(image, np.random.default_rng((self.augment_seed, index)), self.image_size)
    if self.tokenize is not None:
      captions = example.get("captions") or []
      if len(captions) <= self.caption_index:
        raise ValueError(
          f"example {_image_id(example)!r} has {len(captions)} captions; caption_index is {self.caption_index}"
        )
      row["text"] = _tokens(self.tokenize, [captions[self.caption_index]])[0]
    if "label" in self.template:
      row["label"] = np.int32(example["label"])
    if "labels" in self.template:
      row["labels"] = {name: np.int32(example["labels"][name]) for name in self.template["labels"]}
    return row

  def __call__(self, position: int) -> dict[str, Any]:
    """The row for block position ``position``: the example with mask True, or a zero row with mask False."""
    index = self.start + int(position)
    corrupt = False
    row = None
    if index < self.stop:
      try:
        row = self._row(index, self.source[index])
      except CorruptImageError as error:
        log.warning("corrupt image excluded from evaluation: %s", error)
        corrupt = True
    valid = row is not None
    row = row if valid else jax.tree.map(np.zeros_like, dict(self.template))
    return {
      **row,
      "index": np.int32(index if index < self.stop else -1),
      "mask": np.bool_(valid),
      CORRUPT: np.bool_(corrupt),
    }


def eval_template(
  example: Mapping[str, Any], image_size: int, tokenize: Tokenize | None, augmented: bool = False
) -> dict[str, Any]:
  """Zero-valued row with the structure every evaluation row of this source has (built without decoding)."""
  template: dict[str, Any] = {"image": np.zeros((image_size, image_size, 3), np.float32)}
  if augmented:
    template["image_aug"] = np.zeros((image_size, image_size, 3), np.float32)
  if tokenize is not None:
    template["text"] = np.zeros_like(_tokens(tokenize, [""])[0])
  if "label" in example:
    template["label"] = np.int32(0)
  if "labels" in example:
    template["labels"] = {name: np.int32(0) for name in sorted(example["labels"])}
  return template


def stack_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Stacks a list of same-structured row dicts into one dict of arrays with a leading batch axis."""
  return jax.tree.map(lambda *leaves: np.stack(leaves), *rows)


def to_global(batch: Mapping[str, Any], sharding: NamedSharding) -> dict[str, Any]:
  """Assembles this process's host batch into global ``jax.Array``s (process batches concatenated in order)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), dict(batch))


class BatchIterator(Iterator[dict[str, Any]]):
  """Stacks per-example dicts from a grain iterator into batches; checkpointable.

  Examples flagged :data:`CORRUPT` are counted in :attr:`num_corrupt`; with ``skip_corrupt`` they are left out
  of the batch, otherwise they stay (evaluation rows with mask False). An incomplete last batch is dropped.
  Batches are numpy host batches, or global ``jax.Array``s when ``sharding`` is given.
  """

  def __init__(
    self, examples: grain.DatasetIterator, batch_size: int, *, skip_corrupt: bool, sharding: NamedSharding | None = None
  ):
    self._examples = examples
    self._batch_size = batch_size
    self._skip_corrupt = skip_corrupt
    self._sharding = sharding
    self._num_corrupt = 0

  @property
  def num_corrupt(self) -> int:
    """Number of examples with an undecodable image met so far (this process)."""
    return self._num_corrupt

  def __next__(self) -> dict[str, Any]:
    """Returns the next batch; raises StopIteration when the examples run out."""
    rows = []
    while len(rows) < self._batch_size:
      row = self._next_row()
      if bool(row.pop(CORRUPT, False)):
        self._num_corrupt += 1
        if self._skip_corrupt:
          continue
      rows.append(row)
    batch = stack_rows(rows)
    return batch if self._sharding is None else to_global(batch, self._sharding)

  def _next_row(self) -> dict[str, Any]:
    """The next per-example dict from grain."""
    return dict(next(self._examples))

  def get_state(self) -> dict[str, Any]:
    """The position after the last returned batch (grain state) and the corrupt-image count."""
    return {"examples": self._examples.get_state(), "num_corrupt": self._num_corrupt}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Restores a state from :meth:`get_state`: the next batch starts at the example after the saved one."""
    self._examples.set_state(state["examples"])
    self._num_corrupt = int(state["num_corrupt"])

  def close(self) -> None:
    """Stops grain's worker processes and threads, if any."""
    close = getattr(self._examples, "close", None)
    if close is not None:
      close()


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """Returns (index, count) of this process's shard, defaulting to the JAX process index and count."""
  index = jax.process_index() if shard_index is None else shard_index
  count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= index < count:
    raise ValueError(f"shard_index must be in [0, shard_count={count}), got {index}")
  return index, count


def _local_batch_size(
  global_batch_size: int, shard_count: int, mesh: Mesh | None, data_axes: Sequence[str]
) -> tuple[int, NamedSharding | None]:
  """Checks the batch divides over processes and data devices; returns the per-process size and sharding."""
  if global_batch_size <= 0 or global_batch_size % shard_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a positive multiple of the number of processes ({shard_count})"
    )
  if mesh is None:
    return global_batch_size // shard_count, None
  sharding = batch_sharding(mesh, data_axes)
  devices = math.prod(mesh.shape[axis] for axis in data_axes)
  if global_batch_size % devices:
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a multiple of the {devices} devices on "
      f"data axes {tuple(data_axes)}"
    )
  if shard_count != jax.process_count():
    raise ValueError(
      f"global arrays need one shard per JAX process ({jax.process_count()}), got "
      f"shard_count={shard_count}; pass mesh=None for host batches"
    )
  return global_batch_size // shard_count, sharding


def _ensure_flags_parsed() -> None:
  """Lets grain's worker processes read its absl flags when the program did not parse them (default values)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _iterate(dataset: grain.MapDataset, read_threads: int, worker_count: int, batch_size: int) -> grain.DatasetIterator:
  """Iterates ``dataset`` with ``read_threads`` threads per process, in ``worker_count`` worker processes."""
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(read_threads, 2 * batch_size))
  iterable = dataset.to_iter_dataset(options)
  if worker_count > 0:
    _ensure_flags_parsed()
    iterable = iterable.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=batch_size)
    )
  return iter(iterable)


def _seeds(seed: int) -> tuple[int, int]:
  """Two independent 32-bit seeds (shuffle, per-example randomness) derived from ``seed``."""
  shuffle_seed, example_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(shuffle_seed), int(example_seed)


STATE_FORMAT = "lmstruct-reader-positions-1"


@dataclasses.dataclass(frozen=True)
class _RandomAccessExample:
  """Step ``s`` of a reader's plan over a random-access source → its training example, with its position."""

  source: DataSource
  transform: Callable[[Mapping[str, Any], np.random.Generator], dict[str, Any]]
  plan: plan_lib.ReaderPlan
  shuffle_seed: int
  example_seed: int

  def __call__(self, step: int) -> dict[str, Any]:
    epoch, index = plan_lib.unit_at(self.plan.at(int(step))[0], len(self.source), self.shuffle_seed)
    row = self.transform(self.source[index], np.random.default_rng([self.example_seed, epoch, index]))
    return {**row, streaming.POSITION: np.array([0, step, 1, True], np.int64)}


@dataclasses.dataclass(frozen=True)
class _StreamExample:
  """A streamed stored example → its training example, seeded by (epoch, shard, ordinal), with its position."""

  transform: Callable[[Mapping[str, Any], np.random.Generator], dict[str, Any]]
  example_seed: int

  def __call__(self, element: Mapping[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng([self.example_seed, *element[streaming.SEED].tolist()])
    row = self.transform(element, rng)
    return {**row, streaming.POSITION: element[streaming.POSITION], streaming.SKIPPED: element[streaming.SKIPPED]}


class TrainReaders:
  """Opens the grain iterator of this process's readers at given positions (random access or stream)."""

  def __init__(
    self,
    source: Any,
    transform: Callable[[Mapping[str, Any], np.random.Generator], dict[str, Any]],
    *,
    seed: int,
    num_epochs: int | None,
    worker_count: int,
    read_threads: int,
    batch_size: int,
  ):
    self.source, self.transform, self.num_epochs = source, transform, num_epochs
    self.worker_count, self.read_threads, self.batch_size = worker_count, read_threads, batch_size
    self.shuffle_seed, self.example_seed = _seeds(seed)
    self.seed = seed
    self.streaming = isinstance(source, streaming.WebDatasetStream)
    self.num_units = source.num_units if self.streaming else len(source)
    if self.num_units == 0:
      raise ValueError("the training source is empty")

  @property
  def readers_per_process(self) -> int:
    """A stream has one reader per grain worker (or read thread); a random-access source one per process."""
    return max(1, self.worker_count or self.read_threads) if self.streaming else 1

  def open(self, positions: Sequence[plan_lib.Position]) -> grain.DatasetIterator:
    """The per-example iterator continuing from ``positions`` (one per reader of this process)."""
    if not self.streaming:
      (position,) = positions
      limit = sys.maxsize if self.num_epochs is None else position.plan.steps_below(self.num_epochs * self.num_units)
      element = _RandomAccessExample(self.source, self.transform, position.plan, self.shuffle_seed, self.example_seed)
      dataset = grain.MapDataset.range(position.step, max(limit, position.step)).map(element)
      return _iterate(dataset, self.read_threads, self.worker_count, self.batch_size)
    stream = streaming.StreamDataset(self.source, positions, self.shuffle_seed, self.num_epochs)
    dataset = stream.map(_StreamExample(self.transform, self.example_seed))
    if self.worker_count > 0:
      _ensure_flags_parsed()
      dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=self.worker_count, per_worker_buffer_size=self.batch_size)
      )
    elif len(positions) > 1:
      dataset = grain.experimental.multithread_prefetch(
        dataset, num_threads=len(positions), buffer_size=self.batch_size
      )
    return iter(dataset)


def combine_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The states of all processes (in process order) as one global training-data state."""
  return {"format": STATE_FORMAT, "processes": [dict(s) for s in states]}


def _allgather_json(value: Any) -> list[Any]:
  """``value`` of every JAX process, in process order (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  lengths = multihost.allgather_rows(np.array([data.size]))
  parts = np.split(multihost.allgather_rows(data), np.cumsum(lengths)[:-1])
  return [json.loads(bytes(part).decode()) for part in parts]


class TrainBatches(BatchIterator):
  """Training batches that track every reader's position; their state resumes on any number of processes.

  ``get_state()`` is this process's readers' positions (plus the corrupt/skipped counts); ``global_state()``
  gathers every process's (a collective). ``set_state`` takes either: when the saved number of processes and
  readers per process equal the current ones each reader continues exactly where it stopped; otherwise the
  positions are remapped (:func:`lmstruct.data.plan.remap`) so the rest of every epoch is read exactly once.
  """

  def __init__(
    self,
    readers: TrainReaders,
    positions: Sequence[plan_lib.Position],
    batch_size: int,
    *,
    process_index: int,
    process_count: int,
    sharding: NamedSharding | None = None,
  ):
    self._readers = readers
    self._positions = list(positions)
    self._process = (process_index, process_count)
    self._num_skipped = 0
    super().__init__(readers.open(self._positions), batch_size, skip_corrupt=True, sharding=sharding)

  @property
  def num_skipped(self) -> int:
    """Damaged stream samples skipped so far (this process; counted when their shard is finished)."""
    return self._num_skipped

  def _next_row(self) -> dict[str, Any]:
    row = dict(next(self._examples))
    reader, step, delivered, last = (int(v) for v in row.pop(streaming.POSITION))
    self._num_skipped += int(row.pop(streaming.SKIPPED, 0))
    current = self._positions[reader]
    self._positions[reader] = plan_lib.Position(current.plan, step, delivered).advanced(delivered, bool(last))
    return row

  def get_state(self) -> dict[str, Any]:
    """This process's state: its readers' positions after the last returned batch, and its counts."""
    return {
      "format": STATE_FORMAT,
      "process_index": self._process[0],
      "process_count": self._process[1],
      "num_units": self._readers.num_units,
      "seed": self._readers.seed,
      "readers": [p.to_json() for p in self._positions],
      "num_corrupt": self._num_corrupt,
      "num_skipped": self._num_skipped,
    }

  def global_state(self) -> dict[str, Any]:
    """Every process's :meth:`get_state`, gathered (call it on all processes at once)."""
    return combine_states(_allgather_json(self.get_state()))

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a :meth:`global_state` (or, with one process, a :meth:`get_state`)."""
    if state.get("format") != STATE_FORMAT:
      raise ValueError(
        f"the checkpoint's data state has format {state.get('format', 'grain iterator state')!r}, "
        f"not {STATE_FORMAT!r}: it was written by an older lmstruct; start a new workdir"
      )
    saved = state["processes"] if "processes" in state else [state]
    for process in saved:
      for key, current in (("num_units", self._readers.num_units), ("seed", self._readers.seed)):
        if process[key] != current:
          raise ValueError(
            f"the checkpoint's data state was written for {key}={process[key]}, but the training "
            f"data now has {key}={current}; the data position cannot be carried over"
          )
    index, count = self._process
    per_process = self._readers.readers_per_process
    if len(saved) != saved[0]["process_count"]:
      raise ValueError(f"the checkpoint's data state holds {len(saved)} of {saved[0]['process_count']} processes")
    same = len(saved) == count and all(len(p["readers"]) == per_process for p in saved)
    if same:
      mine = saved[index]
      self._positions = [plan_lib.Position.from_json(p) for p in mine["readers"]]
      self._num_corrupt, self._num_skipped = int(mine["num_corrupt"]), int(mine["num_skipped"])
    else:
      everyone = [plan_lib.Position.from_json(p) for process in saved for p in process["readers"]]
      remapped = plan_lib.remap(everyone, count * per_process)
      self._positions = remapped[index * per_process : (index + 1) * per_process]
      first = index == 0
      self._num_corrupt = sum(int(p["num_corrupt"]) for p in saved) if first else 0
      self._num_skipped = sum(int(p["num_skipped"]) for p in saved) if first else 0
      log.info("data position of %d processes remapped onto %d (%d readers each)", len(saved), count, per_process)
    self.close()
    self._examples = self._readers.open(self._positions)


def view_augmentation(augment_config: Mapping[str, Any] | None) -> augment.ImageAugmentation:
  """The training view's augmentation of `augment_config` (None: the caption-safe default), with a warning for each
  stage that can make the view contradict its caption (`augment.caption_contradictions`)."""
  config = augment.caption_safe_augment_config() if augment_config is None else augment_config
  augmentation = augment.augmentation_from_config(config)
  for reason in augment.caption_contradictions(augmentation):
    log.warning("the augmented view can contradict its caption: %s", reason)
  return augmentation


def train_pipeline(
  source: DataSource | streaming.WebDatasetStream,
  *,
  tokenize: Tokenize,
  global_batch_size: int,
  seed: int,
  image_size: int = 224,
  augment_config: Mapping[str, Any] | Any | None = None,
  eda_config: Mapping[str, Any] | Any | None = None,
  mesh: Mesh | None = None,
  data_axes: Sequence[str] = ("data",),
  num_epochs: int | None = None,
  worker_count: int = 0,
  read_threads: int = 2,
  caption_choice: str = "random",
  synonyms: eda.SynonymSource = eda.wordnet_synonyms,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> TrainBatches:
  """Iterator of training batches ``{image, image_aug: float32 [B, S, S, 3], text, text_aug: int32 [B, L]}``.

  Args:
    source: random-access stored examples (each with an image and ``captions``), or a
      :class:`lmstruct.data.streaming.WebDatasetStream`.
    tokenize: ``list[str] -> int32 [N, L]``.
    global_batch_size: batch size summed over processes (per-process batches hold ``B / shard_count``).
    seed: shuffling and augmentation seed; equal seeds give equal batches.
    image_size: output side ``S``.
    augment_config: image augmentation stages (:func:`augment.augmentation_from_config`); ``None`` gives
      :func:`augment.caption_safe_augment_config`.
    eda_config: EDA rates (:func:`eda.eda_from_config`); ``None`` gives the defaults (0.1 each).
    mesh, data_axes: when ``mesh`` is given, batches are global ``jax.Array``s sharded on the leading axis over
      ``data_axes``; otherwise numpy host batches.
    num_epochs: passes over the data; ``None`` repeats forever. With several processes the readers' epochs end at
      different batches, so multi-process training runs a number of steps instead.
    worker_count: grain worker processes (0 = in this process).
    read_threads: threads per process running the per-example work (without workers, a stream runs one reader
      per thread).
    caption_choice: ``"random"`` (uniform among ``captions``) or ``"first"``.
    synonyms: synonym source for EDA (WordNet by default).
    shard_index, shard_count: this process's shard; default ``jax.process_index()``, ``jax.process_count()``.
  """
  if caption_choice not in CAPTION_CHOICES:
    raise ValueError(f"unknown caption_choice {caption_choice!r}; valid choices: {', '.join(CAPTION_CHOICES)}")
  augmentation = view_augmentation(augment_config)
  transform = TrainTransform(
    tokenize=tokenize,
    image_size=image_size,
    augmentation=augmentation,
    text_augmentation=eda.eda_from_config(eda_config, synonyms),
    caption_choice=caption_choice,
  )
  return transform_pipeline(
    source,
    transform,
    global_batch_size=global_batch_size,
    seed=seed,
    mesh=mesh,
    data_axes=data_axes,
    num_epochs=num_epochs,
    worker_count=worker_count,
    read_threads=read_threads,
    shard_index=shard_index,
    shard_count=shard_count,
  )


def transform_pipeline(
  source: DataSource | streaming.WebDatasetStream,
  transform: Callable[[Mapping[str, Any], np.random.Generator], dict[str, Any]],
  *,
  global_batch_size: int,
  seed: int,
  mesh: Mesh | None = None,
  data_axes: Sequence[str] = ("data",),
  num_epochs: int | None = None,
  worker_count: int = 0,
  read_threads: int = 2,
  shard_index: int | None = None,
  shard_count: int | None = None,
) -> TrainBatches:
  """Training batches of any per-example `transform` (stored example, seeded generator) → row dict: the reader
  plans, positions, corrupt-row skipping (a row ``{CORRUPT: True}``) and global sharding of :func:`train_pipeline`,
  which is this with :class:`TrainTransform`. `transform` must pickle when ``worker_count > 0``; the other
  arguments are as for :func:`train_pipeline`."""
  index, count = _shard(shard_index, shard_count)
  batch_size, sharding = _local_batch_size(global_batch_size, count, mesh, data_axes)
  readers = TrainReaders(
    source,
    transform,
    seed=seed,
    num_epochs=num_epochs,
    worker_count=worker_count,
    read_threads=read_threads,
    batch_size=batch_size,
  )
  per_process = readers.readers_per_process
  plans = plan_lib.fresh_plans(count * per_process)[index * per_process : (index + 1) * per_process]
  return TrainBatches(
    readers,
    [plan_lib.Position.start(p) for p in plans],
    batch_size,
    process_index=index,
    process_count=count,
    sharding=sharding,
  )


def eval_pipeline(
  source: DataSource,
  *,
  global_batch_size: int,
  image_size: int = 224,
  tokenize: Tokenize | None = None,
  caption_index: int = 0,
  augmentation: augment.ImageAugmentation | None = None,
  augment_seed: int = 0,
  mesh: Mesh | None = None,
  data_axes: Sequence[str] = ("data",),
  worker_count: int = 0,
  read_threads: int = 2,
  shard_index: int | None = None,
  shard_count: int | None = None,
  row_fn: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
  template: Mapping[str, Any] | None = None,
) -> BatchIterator:
  """Iterator of evaluation batches covering every example exactly once, in source order.

  Each batch has ``image`` (float32 [B, S, S, 3], CLIP preprocessing), ``text`` (int32 [B, L], caption
  ``caption_index``, only when ``tokenize`` is given), ``image_aug`` (float32 [B, S, S, 3], only when
  ``augmentation`` is given: that augmentation of the example, drawn with ``np.random.default_rng((augment_seed,
  source index))``), ``label``/``labels`` when the examples carry them, ``index`` (int32 source index, -1 on
  padding) and ``mask`` (bool, False on padding and corrupt images). With ``row_fn`` (stored example → row dict;
  it may raise :class:`CorruptImageError`) the rows are its output instead, padded with ``template`` (a zero row
  of the same structure). Other arguments are as for
  :func:`train_pipeline`.
  """
  if len(source) == 0:
    raise ValueError("cannot evaluate an empty source")
  index, count = _shard(shard_index, shard_count)
  batch_size, sharding = _local_batch_size(global_batch_size, count, mesh, data_axes)
  per_shard = -(-len(source) // count)
  start = min(len(source), index * per_shard)
  stop = min(len(source), start + per_shard)
  padded = max(1, -(-per_shard // batch_size)) * batch_size
  if (row_fn is None) != (template is None):
    raise ValueError("eval_pipeline takes row_fn and template together")
  transform = EvalTransform(
    source=source,
    start=start,
    stop=stop,
    image_size=image_size,
    template=template
    if template is not None
    else eval_template(source[0], image_size, tokenize, augmentation is not None),
    tokenize=tokenize,
    caption_index=caption_index,
    augmentation=augmentation,
    augment_seed=augment_seed,
    row_fn=row_fn,
  )
  dataset = grain.MapDataset.range(padded).map(transform)
  return BatchIterator(
    _iterate(dataset, read_threads, worker_count, batch_size), batch_size, skip_corrupt=False, sharding=sharding
  )
