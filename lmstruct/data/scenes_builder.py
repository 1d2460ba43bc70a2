"""TFDS builder of the embedded scenes dataset, and :func:`load_scenes`, a random-access reader of its splits.

The builder renders every example locally (no download) with :mod:`lmstruct.data.scenes` and writes ``array_record``
files, so building and reading need no TensorFlow: images reach TFDS as PNG bytes encoded with PIL (TFDS would call
TensorFlow to encode numpy images), and the splits are read with ``tfds.data_source`` / ``builder.as_data_source``,
which decode with numpy and PIL.

All splits share one feature schema; keys that do not apply to a split's kind hold empty values there
(``""``, ``-1``, ``False``, empty sequences). :func:`load_scenes` drops them and decodes text to ``str``.

Reading without this module: ``tfds.builder_from_directory(<data_dir>/lmstruct_scenes/<config>/<version>)``; with it
imported, ``tfds.data_source("lmstruct_scenes/<config>", data_dir=<data_dir>)``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from lmstruct.data import scenes

#: Examples per split of the preset configs.
DEFAULT_SPLIT_SIZES: tuple[tuple[str, int], ...] = (
  ("train", 20_000),
  ("validation", 1_000),
  ("test", 1_000),
  ("vqa_train", 2_000),
  ("vqa_test", 1_000),
  ("nlvr_train", 2_000),
  ("nlvr_test", 1_000),
  ("ve_train", 2_000),
  ("ve_test", 1_000),
)
_CHUNK = 128


@dataclasses.dataclass(eq=False)
class ScenesBuilderConfig(tfds.core.BuilderConfig):
  """A named set of scene knobs plus the number of examples in each split (splits of size 0 are not built)."""

  scene: scenes.SceneConfig = scenes.SceneConfig()
  split_sizes: tuple[tuple[str, int], ...] = DEFAULT_SPLIT_SIZES

  def __post_init__(self) -> None:
    sizes = tuple((str(split), int(n)) for split, n in dict(self.split_sizes).items())
    for split, n in sizes:
      scenes.split_kind(split)
      if n < 0:
        raise ValueError(f"split {split!r} has a negative size {n}")
    self.split_sizes = sizes


def _preset(name: str, description: str, **knobs: Any) -> ScenesBuilderConfig:
  """A preset config with the default split sizes."""
  return ScenesBuilderConfig(name=name, description=description, scene=scenes.SceneConfig.from_dict(knobs))


#: Preset configs: each varies one part of the information gap from ``default``.
PRESETS: tuple[ScenesBuilderConfig, ...] = (
  _preset("default", "Captions state shape, colour, size and count; images show all of them."),
  _preset(
    "material_text",
    "Captions also state a material no image shows (text-only information).",
    caption_attributes=("shape", "colour", "size", "material", "count"),
  ),
  _preset(
    "no_size_text",
    "Captions never state size (image-only information).",
    caption_attributes=("shape", "colour", "count"),
  ),
  _preset(
    "two_way_gap",
    "Size is image-only and material is text-only.",
    caption_attributes=("shape", "colour", "material", "count"),
  ),
  _preset("grey_out", "30% of objects have their colour washed out to grey in the image.", grey_fraction=0.3),
  _preset("occlusion", "20% of objects are hidden under an opaque patch in the image.", occlusion_fraction=0.2),
)
PRESET_NAMES: tuple[str, ...] = tuple(c.name for c in PRESETS)


def scenes_config(
  split_sizes: Mapping[str, int] | None = None, name: str | None = None, description: str | None = None, **knobs: Any
) -> ScenesBuilderConfig:
  """A custom config from scene knobs (see :class:`~lmstruct.data.scenes.SceneConfig`) and split sizes.

  Splits missing from ``split_sizes`` are not built. Without ``name``, the name is ``custom-`` plus a hash of the
  knobs and sizes, so different settings never share a directory.
  """
  scene = scenes.SceneConfig.from_dict(knobs)
  sizes = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
  for split in sizes:
    scenes.split_kind(split)
  if name is None:
    key = json.dumps([dataclasses.asdict(scene), sorted(sizes.items())], sort_keys=True)
    name = "custom-" + hashlib.sha256(key.encode()).hexdigest()[:12]
  if name in PRESET_NAMES:
    raise ValueError(f"config name {name!r} is taken by a preset; presets: {list(PRESET_NAMES)}")
  return ScenesBuilderConfig(
    name=name, description=description or f"Custom scenes: {knobs}", scene=scene, split_sizes=tuple(sizes.items())
  )


def _objects_feature() -> tfds.features.Sequence:
  """Per-object columns, left to right (see :func:`lmstruct.data.scenes.objects_record`)."""
  columns = {name: tfds.features.ClassLabel(names=list(scenes.SCENE_LABELS[name])) for name in scenes.OBJECT_ATTRIBUTES}
  columns.update({name: np.float32 for name in ("x", "y", "radius")})
  columns.update({name: np.bool_ for name in ("greyed", "occluded")})
  return tfds.features.Sequence(columns)


def scenes_features(image_size: int) -> tfds.features.FeaturesDict:
  """The feature schema shared by every split (task keys are empty in splits of other kinds)."""
  image = tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="png")
  return tfds.features.FeaturesDict(
    {
      "image": image,
      "image_id": tfds.features.Text(),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "labels": {name: tfds.features.ClassLabel(names=names) for name, names in scenes.SCENE_LABELS.items()},
      "visible_in_image": {name: np.bool_ for name in scenes.SCENE_LABELS},
      "objects": _objects_feature(),
      "question": tfds.features.Text(),
      "question_type": tfds.features.Text(),
      "answer": np.int32,
      "answerable": np.bool_,
      "image2": tfds.features.Sequence(tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="png")),
      "objects2": _objects_feature(),
      "statement": tfds.features.Text(),
      "hypothesis": tfds.features.Text(),
      "target": np.int32,
      "hypothesis_true": np.bool_,
    }
  )


_EMPTY_TASK_FIELDS: dict[str, Any] = {
  "question": "",
  "question_type": "",
  "answer": -1,
  "answerable": False,
  "statement": "",
  "hypothesis": "",
  "target": -1,
  "hypothesis_true": False,
}


def to_stored(record: Mapping[str, Any]) -> dict[str, Any]:
  """A :func:`lmstruct.data.scenes.example_record` filled out to the shared schema (empty task keys added)."""
  stored = {**_EMPTY_TASK_FIELDS, **record}
  stored["image2"] = [record["image2"]] if "image2" in record else []
  stored.setdefault("objects2", {name: [] for name in record["objects"]})
  return stored


def scenes_metadata(config: scenes.SceneConfig) -> dict[str, Any]:
  """JSON metadata: knobs, per-label information source and hidden fraction, and the class-name lists."""
  return {
    "scene_config": dataclasses.asdict(config),
    "label_sources": scenes.label_sources(config),
    "image_hidden_fractions": scenes.image_hidden_fractions(config),
    "label_names": scenes.SCENE_LABELS,
    "vqa_answers": list(scenes.VQA_ANSWERS),
    "nlvr_labels": list(scenes.NLVR_LABELS),
    "ve_labels": list(scenes.VE_LABELS),
    "split_kinds": scenes.SPLIT_KINDS,
  }


def _record_chunk(config: scenes.SceneConfig, split: str, indices: Sequence[int]) -> list[dict[str, Any]]:
  """Stored examples for a chunk of indices (the unit of work of a build process)."""
  return [to_stored(scenes.example_record(config, split, i)) for i in indices]


def generate_records(
  config: scenes.SceneConfig, split: str, count: int, num_workers: int
) -> Iterator[tuple[int, dict[str, Any]]]:
  """``(index, stored example)`` for indices ``0 .. count-1`` in order, rendered by ``num_workers`` processes.

  Every example depends only on ``(config, split, index)``, so the output does not depend on ``num_workers``.
  """
  chunks = [range(start, min(start + _CHUNK, count)) for start in range(0, count, _CHUNK)]
  if num_workers <= 1 or len(chunks) <= 1:
    for chunk in chunks:
      yield from zip(chunk, _record_chunk(config, split, chunk))
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
    results = pool.map(_record_chunk, [config] * len(chunks), [split] * len(chunks), chunks)
    for chunk, records in zip(chunks, results):
      yield from zip(chunk, records)


class LmstructScenes(tfds.core.GeneratorBasedBuilder):
  """Rendered scenes with captions, labels and VQA / NLVR / visual-entailment splits (see module docstrings)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = list(PRESETS)
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, num_workers: int | None = None, file_format: str = "array_record", **kwargs: Any):
    """Like any TFDS builder (``config``, ``data_dir`` …); writes ``array_record`` files by default and renders
    with ``num_workers`` processes (default: every CPU)."""
    self._num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    super().__init__(file_format=file_format, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This module's file (TFDS's default finds it through ``importlib.resources``, which fails for a package
    installed in editable mode and imported from outside the checkout)."""
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    """Schema and metadata of the selected config."""
    scene = self.builder_config.scene
    return tfds.core.DatasetInfo(
      builder=self,
      description="Rendered 1-3 object scenes with captions and a controllable image/text information gap.",
      features=scenes_features(scene.image_size),
      metadata=tfds.core.MetadataDict(scenes_metadata(scene)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    """One generator per split of non-zero size; nothing is downloaded."""
    return {split: self._generate_examples(split, n) for split, n in self.builder_config.split_sizes if n > 0}

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The split's examples keyed by index."""
    yield from generate_records(self.builder_config.scene, split, count, self._num_workers)


def _text(value: bytes | str) -> str:
  """UTF-8 text of a stored string."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_example(raw: Mapping[str, Any], kind: str) -> dict[str, Any]:
  """A stored example as the contract's dict: decoded image, ``str`` text, ``int`` labels, and only the task keys
  of ``kind`` (see :data:`lmstruct.data.scenes.TASK_KEYS`)."""
  example = {
    "image": np.asarray(raw["image"]),
    "image_id": _text(raw["image_id"]),
    "captions": [_text(c) for c in raw["captions"]],
    "labels": {k: int(v) for k, v in raw["labels"].items()},
    "visible_in_image": {k: bool(v) for k, v in raw["visible_in_image"].items()},
    "objects": {k: np.asarray(v) for k, v in raw["objects"].items()},
  }
  for key in scenes.TASK_KEYS[kind]:
    value = raw[key]
    if key == "image2":
      value = np.asarray(value)[0]
    elif key == "objects2":
      value = {k: np.asarray(v) for k, v in value.items()}
    elif key in ("answer", "target"):
      value = int(value)
    elif key in ("answerable", "hypothesis_true"):
      value = bool(value)
    else:
      value = _text(value)
    example[key] = value
  return example


class ScenesSource:
  """Random-access source of one split (``len`` and ``[i]``, usable by grain) yielding contract dicts."""

  def __init__(self, source: Any, split: str, metadata: Mapping[str, Any]):
    """Wraps a TFDS data source of ``split``; ``metadata`` is the dataset's (label sources, class names …)."""
    self._source = source
    self.split = split
    self.kind = scenes.split_kind(split)
    self.metadata = dict(metadata)

  def __len__(self) -> int:
    """Number of examples in the split."""
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    """Example ``index`` (in the stored order)."""
    return decode_example(self._source[index], self.kind)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Several examples in one read."""
    return [decode_example(raw, self.kind) for raw in self._source.__getitems__(list(indices))]


def scenes_builder(
  data_dir: str | os.PathLike, config: str | ScenesBuilderConfig = "default", num_workers: int | None = None
) -> LmstructScenes:
  """The builder of ``config`` (a preset name or a :class:`ScenesBuilderConfig`) writing under ``data_dir``."""
  if isinstance(config, str) and config not in PRESET_NAMES:
    raise ValueError(
      f"unknown scenes config {config!r}; presets: {list(PRESET_NAMES)} "
      "(or pass a ScenesBuilderConfig from scenes_config(...))"
    )
  return LmstructScenes(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers)


def load_scenes(
  split: str, data_dir: str | os.PathLike, config: str | ScenesBuilderConfig = "default", num_workers: int | None = None
) -> ScenesSource:
  """Random-access source of ``split``, building the dataset into ``data_dir`` first if it is not there yet."""
  builder = scenes_builder(data_dir, config, num_workers)
  sizes = dict(builder.builder_config.split_sizes)
  built = [s for s, n in sizes.items() if n > 0]
  if split not in built:
    raise ValueError(f"unknown split {split!r} for config {builder.builder_config.name!r}; valid choices: {built}")
  builder.download_and_prepare()
  return ScenesSource(builder.as_data_source(split), split, scenes_metadata(builder.builder_config.scene))
