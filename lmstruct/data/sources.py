"""Data sources from config: one dict names a dataset in any supported format; `build_source` opens it.

    {'kind': 'scenes', 'split': 'train', 'preset': 'default'}            # the embedded rendered-scenes dataset
    {'kind': 'scenes', 'split': 'test', 'knobs': {'grey_fraction': .3}, 'split_sizes': {'train': 5000, 'test': 500}}
    {'kind': 'coco', 'annotations': '.../captions_val2017.json', 'images': '.../val2017'}
    {'kind': 'karpathy', 'split_file': 'dataset_coco.json', 'image_root': 'coco', 'splits': ['test']}
    {'kind': 'table', 'path': 'pairs.tsv', 'image_root': 'imgs', 'caption_column': 'caption'}
    {'kind': 'webdataset', 'shards': 'gs://bucket/cc3m/{00000..00331}.tar', 'streaming': True}
    {'kind': 'imagefolder', 'root': 'imagenet/val'}
    {'kind': 'vqav2', 'questions': 'v2_OpenEnded_mscoco_val2014_questions.json', 'images': 'val2014'}
    {'kind': 'records', 'path': 'data/coco/train'}        # written by `lmstruct convert data`
    {'kind': 'tfds', 'name': 'cifar10', 'split': 'test', 'data_dir': '~/tensorflow_datasets'}

:data:`FORMATS` is the one table of dataset formats: per format its reader, its parameters (each parameter is at
once a source-config key, a keyword of the reader and a flag of `lmstruct convert data FORMAT`) and, where the
format can be streamed, its streaming reader. :data:`KINDS` adds the two kinds that are not conversion inputs
(`scenes`, and `records`, the conversion output). Every source is random access (`len`, `[i]`) and yields the
stored-example dicts of docs/contracts.md, except a streaming source (`streaming: True`), which the training
pipeline reads shard by shard (:mod:`lmstruct.data.streaming`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmstruct import paths
from lmstruct.choices import did_you_mean
from lmstruct.data import classnames, formats, records, scenes, scenes_builder, streaming


@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter of a format: source-config key and reader keyword `key`, CLI flag `flag` (default `--key`
  with dashes), whether it is required, its default and how the CLI parses its string."""

  key: str
  help: str
  flag: str = ""
  required: bool = True
  default: Any = None
  parse: Callable[[str], Any] = str

  @property
  def cli_flag(self) -> str:
    return self.flag or "--" + self.key.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Format:
  """A dataset format: `reader(**params)` gives the random-access source; `stream(**params, shuffle_buffer=…)`
  the streaming one (formats that can stream); `data_root`: the reader keyword that receives the run's
  `data.data_dir`."""

  help: str
  reader: Callable[..., Any]
  params: tuple[Param, ...]
  stream: Callable[..., Any] | None = None
  data_root: str = ""

  def keys(self) -> tuple[str, ...]:
    """Every source-config key of this format (without `kind`)."""
    extra = tuple(STREAM_PARAMS) if self.stream is not None else ()
    return tuple(p.key for p in self.params) + extra


def _comma_list(text: str) -> list[str]:
  return [item for item in text.split(",") if item]


def _records(path: str) -> records.RecordDataSource:
  """The converted dataset at prefix `path`; array_record's reader opens local files only."""
  if paths.is_url(path):
    raise ValueError(f"records path {path}: array_record reads local files only (its reader has no object-store "
                     "backend); mount the bucket (e.g. gcsfuse) and give the mounted path, or stream the "
                     "webdataset shards from the bucket ({'kind': 'webdataset', 'streaming': True})")
  return records.RecordDataSource(os.path.dirname(path), os.path.basename(path))


def _scenes(data_root: str, split: str = "train", preset: str = "default", knobs: Mapping[str, Any] | None = None,
            split_sizes: Mapping[str, int] | None = None) -> Any:
  """A scenes preset, or — with `knobs` and/or `split_sizes` — that preset's knobs with those overrides."""
  config: Any = preset
  if knobs or split_sizes:
    presets = {p.name: p for p in scenes_builder.PRESETS}
    if preset not in presets:
      raise ValueError(f"unknown scenes preset {preset!r}; valid presets: {sorted(presets)}")
    base = presets[preset]
    config = scenes_builder.scenes_config(split_sizes=dict(split_sizes or base.split_sizes),
                                          **{**dataclasses.asdict(base.scene), **dict(knobs or {})})
  return scenes_builder.load_scenes(split, os.path.join(data_root, "tfds"), config)


_IMAGES = Param("images", "image folder")
STREAM_PARAMS = {
    "streaming": "read shard by shard: per-process shards, in-shard shuffle buffer, no index (training only)",
    "shuffle_buffer": f"samples in the in-shard shuffle buffer (default {streaming.DEFAULT_SHUFFLE_BUFFER})",
}

FORMATS: dict[str, Format] = {
    "coco": Format("COCO captions JSON + image folder", formats.coco_captions, (
        Param("annotations", "captions_<split>.json", flag="--src"), _IMAGES)),
    "karpathy": Format("Karpathy splits (dataset_coco.json, dataset_flickr30k.json)", formats.karpathy, (
        Param("split_file", "dataset_coco.json / dataset_flickr30k.json", flag="--src"),
        Param("image_root", "image root (holds <filepath>/<filename>)", flag="--images"),
        Param("splits", "comma-separated splits, e.g. train,restval", flag="--split", parse=_comma_list))),
    "flickr30k-entities": Format("Flickr30k Entities split list + Sentences/<id>.txt", formats.flickr30k_entities, (
        Param("split_file", "split list, e.g. test.txt", flag="--src"),
        Param("sentences", "folder of <id>.txt sentence files"), _IMAGES)),
    "table": Format("CSV/TSV/JSONL of (image path, caption)", formats.caption_table, (
        Param("path", ".csv, .tsv or .jsonl table", flag="--src"),
        Param("image_root", "root of relative image paths (default: the table's folder)", flag="--images",
              required=False),
        Param("image_column", "image path column / key", required=False, default="filepath"),
        Param("caption_column", "caption column / key", required=False, default="caption"),
        Param("delimiter", "column delimiter (default: by suffix)", required=False))),
    "webdataset": Format("img2dataset tar shards (key.jpg + key.txt/key.json): CC3M, CC12M, LAION",
                         formats.webdataset, (
                             Param("shards", "folder of .tar, glob, brace pattern {00000..00099} or one .tar",
                                   flag="--src"),
                             Param("caption_key", "caption field of key.json", required=False, default="caption")),
                         stream=streaming.WebDatasetStream),
    "imagefolder": Format("one folder per class (labels index the sorted class names)", formats.image_folder, (
        Param("root", "class-folder root", flag="--src"),)),
    "vqav2": Format("VQA v2 questions (+ annotations) JSON", formats.vqa_v2, (
        Param("questions", "questions JSON", flag="--src"), _IMAGES,
        Param("annotations", "annotations JSON (answers)", required=False))),
    "gqa": Format("GQA questions JSON (or a folder of them)", formats.gqa, (
        Param("questions", "questions JSON or folder", flag="--src"), _IMAGES)),
    "nlvr2": Format("NLVR2 JSON lines, image pairs <split>-<set>-<pair>-img{0,1}.png", formats.nlvr2, (
        Param("path", "JSON lines", flag="--src"), _IMAGES)),
    "snli-ve": Format("SNLI-VE JSON lines, Flickr30k images", formats.snli_ve, (
        Param("path", "JSON lines", flag="--src"), _IMAGES)),
    "tfds": Format("a tfds dataset prepared in array_record format (no TensorFlow)", formats.TfdsExamples, (
        Param("name", "tfds name[:version]", flag="--src"),
        Param("split", "split name", required=False, default="train"),
        Param("data_dir", "tfds data directory", required=False),
        Param("image_key", "image feature", required=False, default="image"),
        Param("caption_key", "caption feature (default captions or caption)", required=False),
        Param("label_key", "label feature (default label when present)", required=False),
        Param("id_key", "id feature (default image/id, id or image/filename)", required=False))),
}
"""Every format `lmstruct convert data` reads; each is also a source kind."""

KINDS: dict[str, Format] = {
    **FORMATS,
    "scenes": Format("the embedded rendered-scenes dataset", _scenes, (
        Param("split", "split", required=False, default="train"),
        Param("preset", "scenes preset", required=False, default="default"),
        Param("knobs", "SceneConfig overrides", required=False),
        Param("split_sizes", "examples per split", required=False)), data_root="data_root"),
    "records": Format("array_record shards written by `lmstruct convert data`", _records, (
        Param("path", "output prefix of the conversion"),)),
}
"""Every source kind: the formats plus `scenes` and `records`."""


def validate_source_config(cfg: Mapping[str, Any], where: str = "data") -> None:
  """Raises ValueError naming an unknown kind, a missing key or an unknown key, with the valid choices."""
  kind = cfg.get("kind")
  if kind not in KINDS:
    raise ValueError(f"unknown data source kind {kind!r} in {where}{did_you_mean(kind, KINDS)}; valid kinds: "
                     f"{sorted(KINDS)}")
  fmt = KINDS[kind]
  valid = {"kind", *fmt.keys()}
  for key in cfg:
    if key not in valid:
      raise ValueError(f"unknown key {where}.{key} for a {kind!r} source{did_you_mean(key, valid)}; valid keys: "
                       f"{sorted(valid)}")
  for param in fmt.params:
    if param.required and param.key not in cfg:
      raise ValueError(f"data source {where} of kind {kind!r} needs key {param.key!r}")


def reader_arguments(fmt: Format, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The reader's keyword arguments from a source config (or parsed CLI flags): each parameter's value or default."""
  return {p.key: cfg[p.key] if cfg.get(p.key) is not None else p.default for p in fmt.params}


def build_source(cfg: Mapping[str, Any], data_dir: str = "data", where: str = "data") -> Any:
  """The source described by `cfg` (see the module docstring): random access, or a stream with `streaming`; a
  random-access source without examples is an error."""
  cfg = dict(cfg)
  validate_source_config(cfg, where)
  fmt = KINDS[cfg["kind"]]
  arguments = reader_arguments(fmt, cfg)
  if fmt.data_root:
    arguments[fmt.data_root] = data_dir
  if cfg.get("streaming"):
    return fmt.stream(**arguments, shuffle_buffer=int(cfg.get("shuffle_buffer") or
                                                      streaming.DEFAULT_SHUFFLE_BUFFER))
  if cfg.get("shuffle_buffer"):
    raise ValueError(f"{where}.shuffle_buffer applies to streaming sources only; set {where}.streaming=True")
  source = fmt.reader(**arguments)
  if len(source) == 0:
    raise ValueError(f"{where} ({cfg['kind']!r} source) has no examples")
  return source


def class_names(source: Any, label: str | None = None) -> Sequence[str]:
  """Names of the classes of `label` (scenes: 'shape', 'colour', …) or of the source's `label` column (ImageFolder
  folders, the tfds label feature), with ImageNet WordNet ids and indices replaced by their human names
  (`classnames.human_class_names`: 'n01440764' → 'tench')."""
  if isinstance(source, scenes_builder.ScenesSource):
    if label not in scenes.SCENE_LABELS:
      raise ValueError(f"unknown scenes label {label!r}; valid labels: {sorted(scenes.SCENE_LABELS)}")
    return list(scenes.SCENE_LABELS[label])
  classes = getattr(source, "metadata", {}).get("classes")
  if not classes:
    raise ValueError("this source carries no class names (metadata['classes']); use an ImageFolder, scenes or a "
                     "labelled tfds dataset for classification, or give the evaluator class_names")
  return classnames.human_class_names(classes)


def default_templates(source: Any, label: str | None) -> str | None:
  """The prompt-template set written for `label` of this source ('scenes_<label>' for scenes), else None."""
  return f"scenes_{label}" if isinstance(source, scenes_builder.ScenesSource) and label is not None else None


def label_key(source: Any, label: str | None) -> str:
  """The batch key holding `label`: 'labels/<label>' for scenes, 'label' otherwise."""
  return f"labels/{label}" if isinstance(source, scenes_builder.ScenesSource) else "label"
