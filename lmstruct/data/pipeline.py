"""grain input pipelines: training batches with two image and two text views, and padded evaluation batches.

Both pipelines read a random-access *source* (``len(source)`` and ``source[i]`` giving a stored-example dict, see
``docs/contracts.md``; an in-memory list works) and a *tokenize* function (``list[str] -> int32 [N, L]``). Sources
and tokenizers must pickle when ``worker_count > 0``: grain then runs the per-example work in worker processes, so
the launching script needs a ``__main__`` guard; grain's absl flags are marked parsed (defaults) if the program
has not parsed them.

Training (:func:`train_pipeline`), per JAX process:

1. each epoch is a permutation of the whole source drawn from ``seed`` (a new one every epoch); process ``k`` of
   ``n`` takes every ``n``-th position starting at ``k`` among the first ``len(source) - len(source) % n``, so the
   shards of one epoch are disjoint, equally long and together cover all but ``len(source) % n`` examples;
2. per example, with a generator seeded by ``seed`` and the example's global stream position: decode the image,
   pick a caption (random, or the first), build the original view (CLIP resize + centre crop) and the augmented
   view (:mod:`lmstruct.data.augment`), EDA-augment the caption (:mod:`lmstruct.data.eda`), tokenize both;
3. examples whose image cannot be decoded are logged, counted (:attr:`BatchIterator.num_corrupt`) and skipped;
4. ``global_batch_size / n`` examples are stacked into a host batch (an incomplete last batch is dropped) and,
   given a mesh, assembled into global ``jax.Array``s sharded on the leading axis over the mesh's data axes.

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
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain
import jax
from absl import flags
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from lmstruct.data import augment, eda

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


def decode_image(example: Mapping[str, Any]) -> np.ndarray:
  """Returns the example's image as RGB ``uint8 [H, W, 3]``.

  Reads ``image`` (a uint8 ``[H, W, 3]``/``[H, W]`` array, or encoded bytes) or else ``image_bytes`` (encoded
  PNG/JPEG). Raises :class:`CorruptImageError` for undecodable bytes or a malformed array, ``KeyError`` when
  the example has no image at all.
  """
  if "image" in example and not isinstance(example["image"], (bytes, bytearray)):
    array = np.asarray(example["image"])
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3) \
            or 0 in array.shape:
      raise CorruptImageError(f"example {_image_id(example)!r}: expected a uint8 [H, W, 3] image, got "
                              f"{array.dtype} {array.shape}")
    return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array
  data = example["image"] if "image" in example else example.get("image_bytes")
  if data is None:
    raise KeyError(f"example {_image_id(example)!r} has neither 'image' nor 'image_bytes'")
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise CorruptImageError(f"example {_image_id(example)!r}: cannot decode image "
                            f"({len(data)} bytes): {error}") from error


def _tokens(tokenize: Tokenize, texts: Sequence[str]) -> np.ndarray:
  """Tokenizes ``texts`` into int32 ``[len(texts), L]``."""
  return np.asarray(tokenize(list(texts)), dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Turns one stored example into a training example (``image``, ``image_aug``, ``text``, ``text_aug``)."""
  source: DataSource
  tokenize: Tokenize
  image_size: int
  augmentation: augment.ImageAugmentation
  text_augmentation: Callable[[str, np.random.Generator], str]
  caption_choice: str = "random"

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
    """Builds the example for source ``index``; a corrupt image gives ``{CORRUPT: True}`` instead."""
    example = self.source[int(index)]
    try:
      image = decode_image(example)
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

  def _row(self, index: int, example: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocesses one valid example (labels copied as int32; ``image_aug`` seeded by ``(augment_seed, index)``)."""
    image = decode_image(example)
    row: dict[str, Any] = {"image": augment.clip_preprocess(image, self.image_size)}
    if self.augmentation is not None:
      row["image_aug"] = self.augmentation(image, np.random.default_rng((self.augment_seed, index)), self.image_size)
    if self.tokenize is not None:
      captions = example.get("captions") or []
      if len(captions) <= self.caption_index:
        raise ValueError(f"example {_image_id(example)!r} has {len(captions)} captions; caption_index is "
                         f"{self.caption_index}")
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
    return {**row, "index": np.int32(index if index < self.stop else -1), "mask": np.bool_(valid),
            CORRUPT: np.bool_(corrupt)}


def eval_template(example: Mapping[str, Any], image_size: int, tokenize: Tokenize | None,
                  augmented: bool = False) -> dict[str, Any]:
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


def data_sharding(mesh: Mesh, data_axes: Sequence[str]) -> NamedSharding:
  """Sharding of a batch's leading axis over ``data_axes`` of ``mesh`` (other axes replicated)."""
  for axis in data_axes:
    if axis not in mesh.axis_names:
      raise ValueError(f"data axis {axis!r} is not a mesh axis; mesh axes: {', '.join(mesh.axis_names)}")
  return NamedSharding(mesh, PartitionSpec(tuple(data_axes)))


def to_global(batch: Mapping[str, Any], sharding: NamedSharding) -> dict[str, Any]:
  """Assembles this process's host batch into global ``jax.Array``s (process batches concatenated in order)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), dict(batch))


class BatchIterator(Iterator[dict[str, Any]]):
  """Stacks per-example dicts from a grain iterator into batches; checkpointable.

  Examples flagged :data:`CORRUPT` are counted in :attr:`num_corrupt`; with ``skip_corrupt`` they are left out
  of the batch, otherwise they stay (evaluation rows with mask False). An incomplete last batch is dropped.
  Batches are numpy host batches, or global ``jax.Array``s when ``sharding`` is given.
  """

  def __init__(self, examples: grain.DatasetIterator, batch_size: int, *, skip_corrupt: bool,
               sharding: NamedSharding | None = None):
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
      row = dict(next(self._examples))
      if bool(row.pop(CORRUPT, False)):
        self._num_corrupt += 1
        if self._skip_corrupt:
          continue
      rows.append(row)
    batch = stack_rows(rows)
    return batch if self._sharding is None else to_global(batch, self._sharding)

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


def _local_batch_size(global_batch_size: int, shard_count: int, mesh: Mesh | None,
                      data_axes: Sequence[str]) -> tuple[int, NamedSharding | None]:
  """Checks the batch divides over processes and data devices; returns the per-process size and sharding."""
  if global_batch_size <= 0 or global_batch_size % shard_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of the number of "
                     f"processes ({shard_count})")
  if mesh is None:
    return global_batch_size // shard_count, None
  sharding = data_sharding(mesh, data_axes)
  devices = math.prod(mesh.shape[axis] for axis in data_axes)
  if global_batch_size % devices:
    raise ValueError(f"global_batch_size={global_batch_size} must be a multiple of the {devices} devices on "
                     f"data axes {tuple(data_axes)}")
  if shard_count != jax.process_count():
    raise ValueError(f"global arrays need one shard per JAX process ({jax.process_count()}), got "
                     f"shard_count={shard_count}; pass mesh=None for host batches")
  return global_batch_size // shard_count, sharding


def _ensure_flags_parsed() -> None:
  """Lets grain's worker processes read its absl flags when the program did not parse them (default values)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _iterate(dataset: grain.MapDataset, read_threads: int, worker_count: int,
             batch_size: int) -> grain.DatasetIterator:
  """Iterates ``dataset`` with ``read_threads`` threads per process, in ``worker_count`` worker processes."""
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(read_threads, 2 * batch_size))
  iterable = dataset.to_iter_dataset(options)
  if worker_count > 0:
    _ensure_flags_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                                per_worker_buffer_size=batch_size))
  return iter(iterable)


def _seeds(seed: int) -> tuple[int, int]:
  """Two independent 32-bit seeds (shuffle, per-example randomness) derived from ``seed``."""
  shuffle_seed, example_seed = np.random.SeedSequence(seed).generate_state(2)
  return int(shuffle_seed), int(example_seed)


def train_dataset(source: DataSource, transform: TrainTransform, *, seed: int, shard_index: int, shard_count: int,
                  num_epochs: int | None = None) -> grain.MapDataset:
  """The per-example training dataset of one shard: shuffled epochs, strided shard, seeded per-example views."""
  usable = len(source) - len(source) % shard_count
  if usable == 0:
    raise ValueError(f"source has {len(source)} examples, fewer than the {shard_count} shards")
  shuffle_seed, example_seed = _seeds(seed)
  dataset = grain.MapDataset.range(len(source)).shuffle(seed=shuffle_seed)
  dataset = dataset.random_map(transform, seed=example_seed)
  return dataset[shard_index:usable:shard_count].repeat(num_epochs)


def train_pipeline(source: DataSource, *, tokenize: Tokenize, global_batch_size: int, seed: int,
                   image_size: int = 224, augment_config: Mapping[str, Any] | Any | None = None,
                   eda_config: Mapping[str, Any] | Any | None = None, mesh: Mesh | None = None,
                   data_axes: Sequence[str] = ("data",), num_epochs: int | None = None, worker_count: int = 0,
                   read_threads: int = 2, caption_choice: str = "random",
                   synonyms: eda.SynonymSource = eda.wordnet_synonyms, shard_index: int | None = None,
                   shard_count: int | None = None) -> BatchIterator:
  """Iterator of training batches ``{image, image_aug: float32 [B, S, S, 3], text, text_aug: int32 [B, L]}``.

  Args:
    source: random-access stored examples (each with an image and ``captions``).
    tokenize: ``list[str] -> int32 [N, L]``.
    global_batch_size: batch size summed over processes (per-process batches hold ``B / shard_count``).
    seed: shuffling and augmentation seed; equal seeds give equal batches.
    image_size: output side ``S``.
    augment_config: image augmentation stages (:func:`augment.augmentation_from_config`); ``None`` gives
      :func:`augment.default_augment_config`.
    eda_config: EDA rates (:func:`eda.eda_from_config`); ``None`` gives the defaults (0.1 each).
    mesh, data_axes: when ``mesh`` is given, batches are global ``jax.Array``s sharded on the leading axis over
      ``data_axes``; otherwise numpy host batches.
    num_epochs: passes over the data; ``None`` repeats forever.
    worker_count: grain worker processes (0 = in this process).
    read_threads: threads per process running the per-example work.
    caption_choice: ``"random"`` (uniform among ``captions``) or ``"first"``.
    synonyms: synonym source for EDA (WordNet by default).
    shard_index, shard_count: this process's shard; default ``jax.process_index()``, ``jax.process_count()``.
  """
  if caption_choice not in CAPTION_CHOICES:
    raise ValueError(f"unknown caption_choice {caption_choice!r}; valid choices: {', '.join(CAPTION_CHOICES)}")
  index, count = _shard(shard_index, shard_count)
  batch_size, sharding = _local_batch_size(global_batch_size, count, mesh, data_axes)
  config = augment.default_augment_config() if augment_config is None else augment_config
  transform = TrainTransform(source=source, tokenize=tokenize, image_size=image_size,
                             augmentation=augment.augmentation_from_config(config),
                             text_augmentation=eda.eda_from_config(eda_config, synonyms),
                             caption_choice=caption_choice)
  dataset = train_dataset(source, transform, seed=seed, shard_index=index, shard_count=count,
                          num_epochs=num_epochs)
  return BatchIterator(_iterate(dataset, read_threads, worker_count, batch_size), batch_size,
                       skip_corrupt=True, sharding=sharding)


def eval_pipeline(source: DataSource, *, global_batch_size: int, image_size: int = 224,
                  tokenize: Tokenize | None = None, caption_index: int = 0,
                  augmentation: augment.ImageAugmentation | None = None, augment_seed: int = 0,
                  mesh: Mesh | None = None, data_axes: Sequence[str] = ("data",), worker_count: int = 0,
                  read_threads: int = 2, shard_index: int | None = None,
                  shard_count: int | None = None) -> BatchIterator:
  """Iterator of evaluation batches covering every example exactly once, in source order.

  Each batch has ``image`` (float32 [B, S, S, 3], CLIP preprocessing), ``text`` (int32 [B, L], caption
  ``caption_index``, only when ``tokenize`` is given), ``image_aug`` (float32 [B, S, S, 3], only when
  ``augmentation`` is given: that augmentation of the example, drawn with ``np.random.default_rng((augment_seed,
  source index))``), ``label``/``labels`` when the examples carry them, ``index`` (int32 source index, -1 on
  padding) and ``mask`` (bool, False on padding and corrupt images). Other arguments are as for
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
  transform = EvalTransform(source=source, start=start, stop=stop, image_size=image_size,
                            template=eval_template(source[0], image_size, tokenize, augmentation is not None),
                            tokenize=tokenize, caption_index=caption_index, augmentation=augmentation,
                            augment_seed=augment_seed)
  dataset = grain.MapDataset.range(padded).map(transform)
  return BatchIterator(_iterate(dataset, read_threads, worker_count, batch_size), batch_size,
                       skip_corrupt=False, sharding=sharding)
