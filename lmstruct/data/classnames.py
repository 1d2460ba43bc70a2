"""Human class names for classification datasets, so zero-shot prompts read "a photo of the tench." and never
"a photo of the n01440764.".

The registry (``class_names.json`` beside this module) holds:

* ``imagenet``: the 1000 ImageNet-1K classes in the standard order (class index ``i`` is the ``i``-th WordNet id in
  sorted order, as in ILSVRC2012, tfds ``imagenet2012`` and torchvision), each with CLIP's curated name (Radford et
  al. 2021, the prompt-engineering notebook of the CLIP repository). CLIP's list gives two pairs of classes the same
  name ("missile" for 657 and 744, "sunglasses" for 836 and 837); identical names give identical prompts, so one
  class of each pair could never rank first. Here 744 (n04008634) and 836 (n04355933) take their WordNet lemma,
  "projectile" and "sunglass", and all 1000 names are distinct.
* ``imagenet_a`` / ``imagenet_r``: the 200-class subsets of ImageNet-A (Hendrycks et al. 2021) and ImageNet-R, as
  WordNet ids.
* ``cifar10`` / ``cifar100``: CLIP's class names of CIFAR-10 and CIFAR-100 (``data/prompts.md`` of the CLIP
  repository), in label order.

An ImageNet class is addressed by WordNet id (``n01440764``) or by class index (``0``, ImageNet-V2's folder names);
``human_class_names`` maps a dataset's raw class names (folder names, tfds label names) through the registry.
"""
from __future__ import annotations

import functools
import json
import pathlib
import re
from collections.abc import Sequence

from lmstruct.choices import did_you_mean, unknown_choice

DATA_FILE = pathlib.Path(__file__).with_name("class_names.json")
WNID = re.compile(r"^n\d{8}$")
NUMBER = re.compile(r"^\d+$")
SUBSETS = ("imagenet_a", "imagenet_r")


@functools.cache
def _registry() -> dict[str, list[str]]:
  """The parsed ``class_names.json``."""
  return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def imagenet_wnids() -> tuple[str, ...]:
  """The 1000 ImageNet-1K WordNet ids; position = class index."""
  return tuple(_registry()["imagenet_wnids"])


def imagenet_names() -> tuple[str, ...]:
  """CLIP's curated ImageNet-1K class names (two duplicates resolved, module docstring); position = class index."""
  return tuple(_registry()["imagenet_names"])


def subset_wnids(subset: str) -> tuple[str, ...]:
  """The WordNet ids of a 200-class ImageNet subset, ``'imagenet_a'`` or ``'imagenet_r'``, sorted."""
  if subset not in SUBSETS:
    raise unknown_choice("ImageNet subset", subset, SUBSETS)
  return tuple(_registry()[f"{subset}_wnids"])



def subset_indices(subset: str) -> tuple[int, ...]:
  """ImageNet-1K class indices of a subset's classes (``subset_wnids``), increasing."""
  index = imagenet_index()
  return tuple(sorted(index[w] for w in subset_wnids(subset)))


@functools.cache
def imagenet_index() -> dict[str, int]:
  """WordNet id -> ImageNet-1K class index."""
  return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def imagenet_class_name(key: str | int) -> str:
  """CLIP's name of one ImageNet-1K class, given its WordNet id (``'n01440764'``) or class index (``0``, ``'0'``)."""
  names = imagenet_names()
  if isinstance(key, str) and WNID.match(key):
    if key not in imagenet_index():
      raise KeyError(f"{key!r} is not one of the 1000 ImageNet-1K WordNet ids")
    return names[imagenet_index()[key]]
  if isinstance(key, int) or (isinstance(key, str) and NUMBER.match(key)):
    if not 0 <= int(key) < len(names):
      raise KeyError(f"ImageNet-1K class index {key!r} is outside [0, {len(names)})")
    return names[int(key)]
  raise KeyError(f"{key!r} is neither an ImageNet WordNet id nor a class index")


def named_lists() -> dict[str, tuple[str, ...]]:
  """Class-name lists a config can name (``class_names: 'imagenet'``), each in its dataset's label order."""
  names = imagenet_names()
  index = imagenet_index()
  registry = _registry()
  return {
      "imagenet": names,
      **{subset: tuple(names[index[w]] for w in subset_wnids(subset)) for subset in SUBSETS},
      "cifar10": tuple(registry["cifar10_names"]),
      "cifar100": tuple(registry["cifar100_names"]),
  }


def looks_like_identifier(name: str) -> bool:
  """True for a WordNet id (``n`` + 8 digits) or a bare number: names that make meaningless prompts."""
  return bool(WNID.match(name) or NUMBER.match(name))


def is_imagenet_index_set(names: Sequence[str]) -> bool:
  """True when ``names`` are the decimal numbers 0..999 in any order (ImageNet-V2's folder names)."""
  return len(names) == 1000 and all(NUMBER.match(n) for n in names) and {int(n) for n in names} == set(range(1000))


def human_class_names(names: Sequence[str]) -> list[str]:
  """``names`` with ImageNet identifiers replaced by CLIP's class names.

  When every name is an ImageNet-1K WordNet id, each is mapped by id (an ImageFolder of ImageNet, -A, -R or
  -Sketch; tfds ImageNet label names). When the names are the numbers 0..999, each is mapped by class index
  (ImageNet-V2's folders; the folder order, e.g. ``0, 1, 10, 100, ...``, is kept). Any other list is returned
  unchanged.
  """
  names = [str(n) for n in names]
  if names and all(n in imagenet_index() for n in names):
    return [imagenet_class_name(n) for n in names]
  if is_imagenet_index_set(names):
    return [imagenet_class_name(int(n)) for n in names]
  return names


def load_class_names(spec: str | Sequence[str]) -> list[str]:
  """Class names from a config value: a list of names, the name of a registry list (``named_lists``), or a file.

  A ``.json`` file holds a JSON list of strings; any other file holds one name per line (blank lines ignored).
  """
  if not isinstance(spec, str):
    names = [str(n) for n in spec]
  elif spec in named_lists():
    names = list(named_lists()[spec])
  else:
    path = pathlib.Path(spec).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"class_names {spec!r} is neither a registered list{did_you_mean(spec, named_lists())} "
                              f"({sorted(named_lists())}) nor a file of names")
    text = path.read_text(encoding="utf-8")
    names = json.loads(text) if path.suffix == ".json" else [line.strip() for line in text.splitlines()
                                                             if line.strip()]
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError(f"class_names {spec!r} must give a non-empty list of non-empty strings")
  return names
