"""Paths that are local or object-store URLs (``gs://``, ``s3://``, ``az://``, ``hf://``), through etils ``epath``.

``epath`` is the file-system layer orbax, grain and tfds already use: a local path is read with the operating
system, a URL through fsspec (``gcsfs`` for ``gs://``, ``s3fs`` for ``s3://``; or TensorFlow's gfile where TensorFlow
is installed). Every path lmstruct opens from a config (data sources, the workdir, the checkpoint directory) goes
through :func:`as_path`, so a bucket works wherever a folder does.

Shard lists (:func:`list_shards`) accept a folder, a glob (``cc3m/*.tar``), webdataset's brace notation
(``cc3m/{00000..00331}.tar``, expanded without listing the bucket) or an explicit list.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

from etils import epath

URL_SCHEMES = ("gs://", "s3://", "az://", "hf://")
SHARED_DATA_ENV = "LMSTRUCT_SHARED_DATA"
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  """True for an object-store URL (one of :data:`URL_SCHEMES`)."""
  return os.fspath(path).startswith(URL_SCHEMES)


def as_path(path: PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: ``~`` expanded for local paths, URLs unchanged."""
  return epath.Path(path if is_url(path) else os.path.expanduser(os.fspath(path)))


def absolute(path: PathLike) -> epath.Path:
  """An absolute ``epath.Path``: a local path made absolute against the working directory, a URL unchanged."""
  return as_path(path) if is_url(path) else epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def expand_braces(pattern: str) -> list[str]:
  """webdataset's brace notation: ``a-{008..010}.tar`` -> ``a-008.tar, a-009.tar, a-010.tar`` (zero padding kept).

  Several brace groups expand as a product, left to right; a pattern without braces is returned alone.
  """
  match = _BRACES.search(pattern)
  if match is None:
    return [pattern]
  first, last = match.group(1), match.group(2)
  if int(last) < int(first):
    raise ValueError(f"brace range {match.group(0)} in {pattern!r} runs backwards")
  width = len(first) if first.startswith("0") else 0
  head, tail = pattern[: match.start()], pattern[match.end() :]
  return [
    expanded
    for number in range(int(first), int(last) + 1)
    for expanded in expand_braces(f"{head}{number:0{width}d}{tail}")
  ]


def list_shards(shards: PathLike | Sequence[PathLike], suffix: str = ".tar") -> list[epath.Path]:
  """The shard files named by ``shards``: a folder (its ``*<suffix>`` files, sorted), a glob, a brace pattern, one
  file, or a list of any of these. A folder or glob is listed once; braces and lists are not checked against the
  store (a missing shard is found when it is read)."""
  if not isinstance(shards, (str, os.PathLike)):
    return [path for item in shards for path in list_shards(item, suffix)]
  text = os.fspath(shards)
  if _BRACES.search(text):
    return [as_path(p) for p in expand_braces(text)]
  if any(c in text for c in "*?["):
    directory, _, pattern = text.rpartition("/")
    found = sorted(as_path(directory or ".").glob(pattern), key=os.fspath)
    if not found:
      raise FileNotFoundError(f"no shards match {text}")
    return found
  path = as_path(text)
  if path.is_dir():
    found = sorted(path.glob(f"*{suffix}"), key=os.fspath)
    if not found:
      raise FileNotFoundError(f"no *{suffix} shards in folder {text}")
    return found
  if not path.exists():
    raise FileNotFoundError(
      f"shards not found: {text} (give a folder of {suffix} files, a glob, a brace pattern "
      f"such as shards/{{00000..00099}}{suffix}, or a list of files)"
    )
  return [path]


def shared_data() -> pathlib.Path:
  """The read-only real sample data (COCO-mini, the VL fixtures, real CLIP features): the one configurable path
  `$LMSTRUCT_SHARED_DATA`, else `../shared/data` beside the checkout."""
  return pathlib.Path(os.environ.get(SHARED_DATA_ENV, pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
