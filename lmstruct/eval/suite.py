"""The paper's evaluation suite (Jiang et al., CVPR 2023, Tables 1-3) as evaluator configs.

* zero-shot top-1/3/5 on CIFAR-10, CIFAR-100 and ImageNet-1K (Table 1) and on ImageNet-V2, -Sketch, -A and -R
  (Table 2), with the paper's prompt "a photo of the {}." or CLIP's per-dataset prompts;
* linear probe top-1 on 14 datasets (Table 3), on the image encoder's pooled features.

Every dataset is read offline, either as a tfds dataset the user prepared in ``array_record`` format, or as an
ImageFolder (``<folders>/<key>/<split>/<class>/<image>``) for the three datasets tfds does not carry (FGVC-Aircraft,
Rendered SST2, GTSRB) and for any dataset listed in ``use_folders``. ``docs/evaluation.md`` says how to prepare each
one. A dataset that is not there is reported once, with its preparation command, and skipped; the rest still runs.

Evaluators are named ``zeroshot_<key>`` and ``linear_probe_<key>``; ``lmstruct.eval.tables`` lays their results out
as the paper's tables.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lmstruct.choices import unknown_choice
from lmstruct.eval.evaluators import IMAGE_FEATURES


@dataclasses.dataclass(frozen=True)
class SuiteDataset:
  """One dataset of the suite.

  ``tfds``/``tfds_splits`` name its tfds dataset and the splits read for each role (``test``, ``train``, ``val``);
  ``folder_splits`` are the split folders of its ImageFolder form. ``class_names`` is a registered class-name list
  (``lmstruct.data.classnames``) or None for the dataset's own names; ``class_subset`` a named ImageNet subset scored
  among ImageNet-1K's labels; ``templates`` CLIP's prompt set for it (``lmstruct.eval.templates``).
  """

  key: str
  title: str
  num_classes: int
  tfds: str | None
  tfds_splits: Mapping[str, str]
  folder_splits: Mapping[str, str]
  zero_shot: bool = False
  linear_probe: bool = False
  templates: str = ""
  class_names: str | None = None
  class_subset: str | None = None
  manual_download: bool = False

  def tfds_prepare(self, tfds_dir: str) -> str:
    """The command that prepares its tfds form in ``tfds_dir`` (on a machine with tensorflow-datasets)."""
    manual = " --manual_dir=<folder with the downloaded archives>" if self.manual_download else ""
    return f"tfds build {self.tfds} --file_format=array_record --data_dir={tfds_dir}{manual}"

  def folder_prepare(self, folders: str) -> str:
    """Where its ImageFolder form is expected."""
    splits = "|".join(sorted(set(self.folder_splits.values())))
    return (f"arrange its images as {folders}/{self.key}/{{{splits}}}/<class>/<image> "
            f"(docs/evaluation.md, '{self.title}')")


_TRAIN_TEST = {"train": "train", "test": "test"}
_IMAGENET_TEST = {"test": "test"}

DATASETS: tuple[SuiteDataset, ...] = (
    SuiteDataset("cifar10", "C10", 10, "cifar10", _TRAIN_TEST, _TRAIN_TEST, zero_shot=True, linear_probe=True,
                 templates="clip_cifar10", class_names="cifar10"),
    SuiteDataset("cifar100", "C100", 100, "cifar100", _TRAIN_TEST, _TRAIN_TEST, zero_shot=True, linear_probe=True,
                 templates="clip_cifar100", class_names="cifar100"),
    SuiteDataset("imagenet", "IN1K", 1000, "imagenet2012", {"train": "train", "test": "validation"},
                 {"train": "train", "test": "val"}, zero_shot=True, linear_probe=True, templates="clip_imagenet",
                 manual_download=True),
    SuiteDataset("imagenet_v2", "V2", 1000, "imagenet_v2", _IMAGENET_TEST, _IMAGENET_TEST, zero_shot=True,
                 templates="clip_imagenet"),
    SuiteDataset("imagenet_sketch", "Sketch", 1000, "imagenet_sketch", _IMAGENET_TEST, _IMAGENET_TEST,
                 zero_shot=True, templates="clip_imagenet"),
    SuiteDataset("imagenet_a", "A", 200, "imagenet_a", _IMAGENET_TEST, _IMAGENET_TEST, zero_shot=True,
                 templates="clip_imagenet", class_subset="imagenet_a"),
    SuiteDataset("imagenet_r", "R", 200, "imagenet_r", _IMAGENET_TEST, _IMAGENET_TEST, zero_shot=True,
                 templates="clip_imagenet", class_subset="imagenet_r"),
    SuiteDataset("caltech101", "Cal101", 102, "caltech101", _TRAIN_TEST, _TRAIN_TEST, linear_probe=True,
                 templates="clip_caltech101"),
    SuiteDataset("svhn", "SVHN", 10, "svhn_cropped", _TRAIN_TEST, _TRAIN_TEST, linear_probe=True),
    SuiteDataset("stl10", "STL10", 10, "stl10", _TRAIN_TEST, _TRAIN_TEST, linear_probe=True, templates="clip_stl10"),
    SuiteDataset("dtd", "DTD", 47, "dtd", {"train": "train", "val": "validation", "test": "test"},
                 {"train": "train", "val": "val", "test": "test"}, linear_probe=True, templates="clip_dtd"),
    SuiteDataset("fgvc_aircraft", "Aircraft", 100, None, {}, {"train": "train", "val": "val", "test": "test"},
                 linear_probe=True, templates="clip_fgvc_aircraft"),
    SuiteDataset("oxford_pets", "Pets", 37, "oxford_iiit_pet", _TRAIN_TEST, _TRAIN_TEST, linear_probe=True,
                 templates="clip_oxford_pets"),
    SuiteDataset("rendered_sst2", "SST2", 2, None, {}, {"train": "train", "val": "valid", "test": "test"},
                 linear_probe=True, templates="clip_rendered_sst2"),
    SuiteDataset("food101", "Food101", 101, "food101", {"train": "train", "test": "validation"}, _TRAIN_TEST,
                 linear_probe=True, templates="clip_food101"),
    SuiteDataset("gtsrb", "GTSRB", 43, None, {}, _TRAIN_TEST, linear_probe=True, templates="clip_gtsrb"),
    SuiteDataset("stanford_cars", "Cars", 196, "cars196", _TRAIN_TEST, _TRAIN_TEST, linear_probe=True,
                 templates="clip_stanford_cars"),
    SuiteDataset("flowers102", "Flowers", 102, "oxford_flowers102",
                 {"train": "train", "val": "validation", "test": "test"}, {"train": "train", "val": "val",
                                                                           "test": "test"},
                 linear_probe=True, templates="clip_flowers102"),
)

BY_KEY: dict[str, SuiteDataset] = {d.key: d for d in DATASETS}
#: Column order of the paper's tables: zero-shot (Table 1, Table 2) and linear probe (Table 3).
TABLE1 = ("cifar10", "cifar100", "imagenet")
TABLE2 = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
TABLE3 = ("caltech101", "svhn", "stl10", "cifar10", "cifar100", "dtd", "fgvc_aircraft", "oxford_pets",
          "rendered_sst2", "food101", "gtsrb", "stanford_cars", "flowers102", "imagenet")
PROMPTS = ("paper", "clip")


def zeroshot_name(key: str) -> str:
  """Evaluator name of the zero-shot evaluation of dataset ``key``."""
  return f"zeroshot_{key}"


def linear_probe_name(key: str) -> str:
  """Evaluator name of the linear probe of dataset ``key``."""
  return f"linear_probe_{key}"


def _source(dataset: SuiteDataset, role: str, tfds_dir: str, folders: str, from_folder: bool) -> dict[str, Any]:
  """The data-source config of one split (``role``) of ``dataset``."""
  if from_folder:
    return {"kind": "imagefolder", "root": f"{folders}/{dataset.key}/{dataset.folder_splits[role]}"}
  return {"kind": "tfds", "name": dataset.tfds, "split": dataset.tfds_splits[role], "data_dir": tfds_dir}


def _check_keys(keys: Iterable[str], what: str) -> None:
  """Raises ValueError for a key that is no suite dataset."""
  unknown = sorted(set(keys) - set(BY_KEY))
  if unknown:
    raise unknown_choice(what, unknown[0], BY_KEY)


def suite_evals(*, tfds_dir: str, folders: str, prompts: str = "paper", every_steps: int = 0,
                features: str = "backbone", use_folders: Sequence[str] = (), only: Sequence[str] = (),
                zero_shot: bool = True, linear_probe: bool = True) -> dict[str, dict[str, Any]]:
  """The ``evals`` config section of the suite (module docstring).

  Args:
    tfds_dir: the tfds data directory holding the prepared datasets.
    folders: the root of the ImageFolder datasets.
    prompts: ``'paper'`` ("a photo of the {}.") or ``'clip'`` (CLIP's prompts for each dataset).
    every_steps: run the suite every this many training steps (0: at the end and with ``lmstruct eval`` only).
    features: the linear probes' image features, ``'backbone'`` (the paper's) or ``'projected'``.
    use_folders: datasets to read as ImageFolders although tfds carries them (e.g. an ImageNet val folder).
    only: restrict the suite to these datasets (default: all).
    zero_shot, linear_probe: which halves of the suite to include.
  """
  if prompts not in PROMPTS:
    raise unknown_choice("prompts", prompts, PROMPTS)
  if features not in IMAGE_FEATURES:
    raise unknown_choice("features", features, IMAGE_FEATURES)
  _check_keys(use_folders, "dataset in use_folders")
  _check_keys(only, "dataset in only")
  evals: dict[str, dict[str, Any]] = {}
  for dataset in DATASETS:
    if only and dataset.key not in only:
      continue
    from_folder = dataset.tfds is None or dataset.key in use_folders
    prepare = dataset.folder_prepare(folders) if from_folder else dataset.tfds_prepare(tfds_dir)
    common = {"every_steps": every_steps, "prepare": prepare, "cache_features": True}
    if zero_shot and dataset.zero_shot:
      names = {"class_names": dataset.class_names} if dataset.class_names else {}
      subset = {"class_subset": dataset.class_subset} if dataset.class_subset and not from_folder else {}
      evals[zeroshot_name(dataset.key)] = {
          **common, **names, **subset, "kind": "zeroshot",
          "data": _source(dataset, "test", tfds_dir, folders, from_folder),
          "templates": "paper" if prompts == "paper" else dataset.templates}
    if linear_probe and dataset.linear_probe:
      splits = dataset.folder_splits if from_folder else dataset.tfds_splits
      evals[linear_probe_name(dataset.key)] = {
          **common, "kind": "linear_probe", "features": features,
          **{f"{role}_data": _source(dataset, role, tfds_dir, folders, from_folder) for role in splits}}
  return evals
