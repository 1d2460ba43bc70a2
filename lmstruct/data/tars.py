"""webdataset tar shards: members grouped into samples, under the damage rules every tar reader shares.

A *sample* is a run of consecutive members sharing a key: ``dir/0001.jpg``, ``dir/0001.txt`` and ``dir/0001.json``
form the sample ``dir/0001`` (the key is the member name up to the first dot of its base name, as in webdataset).
Its image is the member with an image suffix, its caption the ``.txt`` member or else the ``caption_key`` field of
the ``.json`` member. Both the indexing reader (:func:`lmstruct.data.formats.webdataset`) and the streaming reader
(:mod:`lmstruct.data.streaming`) go through :func:`iter_samples`, so the rules are the same everywhere:

* a member whose name is absolute or has a ``..`` component is skipped and counted (``unsafe member path``); its
  bytes are never read, and no member is ever written anywhere;
* a sample without an image or without a caption, or with an undecodable caption, is skipped and counted;
* a truncated shard (a partial download: it ends inside a member, or lacks the end-of-archive blocks) yields its
  complete samples; the sample it was cut in is counted as ``truncated shard`` and reading stops;
* a file that is not an uncompressed tar is counted as an ``unreadable shard`` and yields nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from lmstruct.data import skips as skips_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclasses.dataclass(frozen=True)
class Sample:
  """One usable sample: its key, its ordinal among the shard's sample keys (skipped ones included), its image
  (encoded bytes, or wherever the caller's ``locate`` put it) and its caption."""

  key: str
  ordinal: int
  image: Any
  caption: str


def is_unsafe(name: str) -> bool:
  """True for a member name that would escape a destination folder: absolute, a drive, or a ``..`` component."""
  parts = re.split(r"[\\/]", name)
  return name.startswith(("/", "\\")) or bool(_DRIVE.match(name)) or ".." in parts


def sample_key(member_name: str) -> tuple[str, str]:
  """webdataset convention: ``dir/0001.jpg`` -> key ``dir/0001``, extension ``jpg`` (split at the first dot)."""
  directory, _, base = member_name.rpartition("/")
  stem, _, ext = base.partition(".")
  return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _caption(members: dict[str, bytes], caption_key: str) -> str | None:
  """The caption: the ``.txt`` text, else ``json[caption_key]``; ``ValueError`` when present but undecodable."""
  if "txt" in members:
    return members["txt"].decode("utf-8").strip()
  if "json" in members:
    value = json.loads(members["json"].decode("utf-8")).get(caption_key)
    return value.strip() if isinstance(value, str) else None
  return None


def iter_samples(
  fileobj: IO[bytes],
  origin: str,
  caption_key: str,
  skips: skips_lib.Skips,
  *,
  size: int | None = None,
  locate: Callable[[tarfile.TarInfo], Any] | None = None,
) -> Iterator[Sample]:
  """The usable samples of one tar, in archive order; damaged ones are counted in ``skips`` (see the module doc).

  Args:
    fileobj: the open shard (binary). Without ``locate`` it is read once, front to back (a stream).
    origin: the shard's name, for skip details.
    caption_key: the caption field of ``.json`` members.
    skips: the tally damaged samples are counted in.
    size: the shard's length in bytes, when known: a shard shorter than its last member plus the end-of-archive
      blocks is truncated.
    locate: ``member -> image`` instead of reading image bytes (the indexing reader keeps file slices); needs a
      seekable ``fileobj``.
  """
  try:
    archive = tarfile.open(fileobj=fileobj, mode="r|" if locate is None else "r:")
  except tarfile.ReadError as error:
    skips.add(skips_lib.UNREADABLE_SHARD, f"{origin}: not an uncompressed tar ({error})")
    return
  key, members, ordinal = None, {}, -1

  def finish() -> Sample | None:
    if "image" not in members:
      skips.add(skips_lib.NO_IMAGE, f"{origin}: {key} has {sorted(members)}")
      return None
    try:
      caption = _caption(members, caption_key)
    except (UnicodeDecodeError, ValueError) as error:
      skips.add(skips_lib.BAD_CAPTION, f"{origin}: {key}: {error}")
      return None
    if not caption:
      skips.add(skips_lib.NO_CAPTION, f"{origin}: {key} (.txt, or .json with key {caption_key!r})")
      return None
    return Sample(key, ordinal, members["image"], caption)

  try:
    for member in archive:
      if is_unsafe(member.name):
        skips.add(skips_lib.UNSAFE_PATH, f"{origin}: {member.name!r}")
        continue
      if not member.isfile():
        continue
      name, ext = sample_key(member.name)
      if name != key:
        if key is not None and (sample := finish()) is not None:
          yield sample
        key, members, ordinal = name, {}, ordinal + 1
      if size is not None and member.offset_data + member.size > size:
        raise tarfile.ReadError(
          f"member {member.name!r} ends at byte {member.offset_data + member.size} of a {size}-byte file"
        )
      if "." + ext in IMAGE_SUFFIXES:
        members["image"] = locate(member) if locate is not None else archive.extractfile(member).read()
      elif ext in ("txt", "json"):
        members[ext] = archive.extractfile(member).read()
    if size is not None and archive.offset + END_OF_ARCHIVE > size:
      raise tarfile.ReadError(f"no end-of-archive marker after byte {archive.offset} of a {size}-byte file")
  except (tarfile.ReadError, EOFError) as error:
    skips.add(skips_lib.TRUNCATED, f"{origin}: cut in sample {key!r} after {max(ordinal, 0)} samples ({error})")
    return
  if key is not None and (sample := finish()) is not None:
    yield sample
