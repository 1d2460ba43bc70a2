"""Stored examples in ``array_record`` files: msgpack encoding, sharded writing, random-access reading, image decoding.

A record is one stored-example dict (see ``docs/contracts.md``) encoded with msgpack; images stay encoded
(``image_bytes``, and ``image2_bytes`` for a second image). A dataset is a set of shards named
``<name>-00000-of-00004.array_record`` ... ``<name>-00003-of-00004.array_record`` in one directory.
:class:`RecordDataSource` reads them by global index and can be handed to grain as a random-access data source.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from array_record.python import array_record_data_source, array_record_module
from PIL import Image, UnidentifiedImageError

SHARD_SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"
IMAGE_FIELDS = {"image_bytes": "image", "image2_bytes": "image2"}
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})" + re.escape(SHARD_SUFFIX) + "$")


class ImageDecodeError(ValueError):
  """Encoded image bytes that cannot be decoded (corrupt, truncated or not an image)."""


def shard_name(name: str, index: int, num_shards: int) -> str:
  """File name of shard ``index`` of ``num_shards``: ``<name>-00001-of-00004.array_record``."""
  if not 0 <= index < num_shards:
    raise ValueError(f"shard index {index} is outside [0, {num_shards})")
  return f"{name}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def _to_msgpack(value: Any) -> Any:
  """msgpack hook: numpy scalars become Python scalars; anything else unsupported is a clear error."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    raise TypeError("numpy arrays cannot be stored in records; store encoded image bytes ('image_bytes')")
  raise TypeError(f"cannot store a value of type {type(value).__name__} in a record")


def encode_example(example: Mapping[str, Any]) -> bytes:
  """msgpack encoding of one stored-example dict (string keys; str/bytes/int/float/bool/None/list/dict values)."""
  bad_keys = [k for k in example if not isinstance(k, str)]
  if bad_keys:
    raise TypeError(f"record keys must be strings, got {bad_keys!r}")
  try:
    return msgpack.packb(dict(example), default=_to_msgpack, use_bin_type=True)
  except TypeError as e:
    raise TypeError(f"cannot encode example with keys {sorted(example)}: {e}") from e


def decode_example(data: bytes) -> dict[str, Any]:
  """Inverse of :func:`encode_example`."""
  example = msgpack.unpackb(data, raw=False, strict_map_key=True)
  if not isinstance(example, dict):
    raise ValueError(f"a record must hold a msgpack map, found {type(example).__name__}")
  return example


def write_shard(path: str | os.PathLike, examples: Iterable[Mapping[str, Any]]) -> int:
  """Write ``examples`` to one array_record file atomically and return their count.

  The records go to ``<path>.tmp``, renamed to ``path`` only when all were written; on any error the temporary
  file is removed, so ``path`` is either absent or complete.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
  count = 0
  try:
    for example in examples:
      writer.write(encode_example(example))
      count += 1
  except BaseException:
    writer.close()
    tmp.unlink(missing_ok=True)
    raise
  writer.close()
  os.replace(tmp, path)
  return count


def write_records(
  directory: str | os.PathLike, name: str, examples: Sequence[Mapping[str, Any]], num_shards: int = 1
) -> list[pathlib.Path]:
  """Split ``examples`` into ``num_shards`` contiguous, near-equal shards in ``directory``; return their paths."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  bounds = np.linspace(0, len(examples), num_shards + 1).round().astype(int)
  paths = [directory / shard_name(name, i, num_shards) for i in range(num_shards)]
  for path, start, stop in zip(paths, bounds[:-1], bounds[1:]):
    write_shard(path, examples[start:stop])
  return paths


def find_shards(directory: str | os.PathLike, name: str) -> list[pathlib.Path]:
  """The complete, ordered shard list of dataset ``name`` in ``directory``.

  Raises ``FileNotFoundError`` when there are no shards, a shard is missing, or shard counts disagree.
  """
  directory = pathlib.Path(directory)
  matches = [
    m
    for m in map(_SHARD_RE.match, sorted(p.name for p in directory.glob(f"{name}-*{SHARD_SUFFIX}")))
    if m and m["name"] == name
  ]
  if not matches:
    available = (
      sorted({m["name"] for m in map(_SHARD_RE.match, (p.name for p in directory.glob(f"*{SHARD_SUFFIX}"))) if m})
      if directory.is_dir()
      else []
    )
    raise FileNotFoundError(
      f"no shards '{name}-NNNNN-of-NNNNN{SHARD_SUFFIX}' in {directory}; datasets found there: {available}"
    )
  counts = {int(m["count"]) for m in matches}
  if len(counts) != 1:
    raise FileNotFoundError(f"shards of '{name}' in {directory} disagree on the shard count: {sorted(counts)}")
  (count,) = counts
  missing = sorted(set(range(count)) - {int(m["index"]) for m in matches})
  if missing:
    raise FileNotFoundError(
      f"dataset '{name}' in {directory} is incomplete: missing shards "
      f"{[shard_name(name, i, count) for i in missing[:5]]} ({len(missing)} of {count})"
    )
  return [directory / shard_name(name, i, count) for i in range(count)]


class RecordDataSource:
  """Random access to the stored examples of a sharded array_record dataset (a grain data source).

  Args:
    directory: folder holding the shards.
    name: dataset name, the part of the shard file names before ``-NNNNN-of-NNNNN``.
    decode_images: decode ``image_bytes``/``image2_bytes`` into ``image``/``image2`` uint8 arrays on access.
  """

  def __init__(self, directory: str | os.PathLike, name: str, decode_images: bool = False):
    self.paths = find_shards(directory, name)
    self.decode_images = decode_images
    self._source = array_record_data_source.ArrayRecordDataSource([str(p) for p in self.paths])

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f"record index {index} out of range for {len(self)} records in {self.paths[0].parent}")
    example = decode_example(self._source[index % len(self)])
    return decode_example_images(example) if self.decode_images else example

  def __repr__(self) -> str:
    return f"RecordDataSource({len(self.paths)} shards, {len(self)} records, first={self.paths[0]})"


def decode_image(data: bytes) -> np.ndarray:
  """Decode an encoded image (JPEG/PNG/...) into ``uint8 [H, W, 3]`` RGB.

  Raises :class:`ImageDecodeError` when the bytes are not a complete, decodable image.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except UnidentifiedImageError as e:
    raise ImageDecodeError(
      f"cannot decode image ({len(data)} bytes): unrecognised format, starts with {data[:8]!r}"
    ) from e
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {e}") from e


def decode_example_images(example: Mapping[str, Any]) -> dict[str, Any]:
  """A copy of ``example`` whose encoded images (``image_bytes``, ``image2_bytes``) are decoded to arrays."""
  decoded = {k: v for k, v in example.items() if k not in IMAGE_FIELDS}
  for encoded_key, decoded_key in IMAGE_FIELDS.items():
    if encoded_key in example:
      try:
        decoded[decoded_key] = decode_image(example[encoded_key])
      except ImageDecodeError as e:
        raise ImageDecodeError(f"example {example.get('image_id', '?')!r}, field {encoded_key!r}: {e}") from e
  return decoded
