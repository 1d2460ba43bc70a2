"""Data sources from config: one dict names a dataset in any supported format; `build_source` opens it.

    {'kind': 'scenes', 'split': 'train', 'preset': 'default'}            # the embedded rendered-scenes dataset
    {'kind': 'scenes', 'split': 'test', 'knobs': {'grey_fraction': .3}, 'split_sizes': {'train': 5000, 'test': 500}}
    {'kind': 'coco', 'annotations': '.../captions_val2017.json', 'images': '.../val2017'}
    {'kind': 'karpathy', 'split_file': 'dataset_coco.json', 'image_root': 'coco', 'splits': ['test']}
    {'kind': 'table', 'path': 'pairs.tsv', 'image_root': 'imgs', 'image_column': 'filepath', 'caption_column': 'caption'}
    {'kind': 'webdataset', 'shards': 'cc3m/'}
    {'kind': 'imagefolder', 'root': 'imagenet/val'}
    {'kind': 'records', 'path': 'data/coco/train'}        # written by `lmstruct convert data`
    {'kind': 'tfds', 'name': 'cifar10', 'split': 'test', 'data_dir': '~/tensorflow_datasets'}

Every source is random access (`len`, `[i]`) and yields the stored-example dicts of docs/contracts.md.
"""
import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmstruct.data import classnames, formats, records, scenes, scenes_builder


def _scenes(cfg: Mapping[str, Any], data_dir: str) -> Any:
  """A scenes preset, or — with `knobs` and/or `split_sizes` — that preset's knobs with those overrides."""
  preset, knobs, sizes = cfg.get("preset", "default"), dict(cfg.get("knobs", {})), cfg.get("split_sizes")
  config: Any = preset
  if knobs or sizes:
    presets = {p.name: p for p in scenes_builder.PRESETS}
    if preset not in presets:
      raise ValueError(f"unknown scenes preset {preset!r}; valid presets: {sorted(presets)}")
    base = presets[preset]
    config = scenes_builder.scenes_config(split_sizes=dict(sizes) if sizes else dict(base.split_sizes),
                                          **{**dataclasses.asdict(base.scene), **knobs})
  return scenes_builder.load_scenes(cfg.get("split", "train"), os.path.join(data_dir, "tfds"), config)


def _records(cfg: Mapping[str, Any], data_dir: str) -> Any:
  path = pathlib.Path(cfg["path"])
  return records.RecordDataSource(path.parent, path.name)


BUILDERS: dict[str, tuple[Callable[[Mapping[str, Any], str], Any], tuple[str, ...], tuple[str, ...]]] = {
    # kind: (open, required keys, optional keys)
    "scenes": (_scenes, (), ("split", "preset", "knobs", "split_sizes")),
    "coco": (lambda c, d: formats.coco_captions(c["annotations"], c["images"]), ("annotations", "images"), ()),
    "karpathy": (lambda c, d: formats.karpathy(c["split_file"], c["image_root"], list(c["splits"])),
                 ("split_file", "image_root", "splits"), ()),
    "table": (lambda c, d: formats.caption_table(c["path"], c.get("image_root"), c.get("image_column", "filepath"),
                                                 c.get("caption_column", "caption")),
              ("path",), ("image_root", "image_column", "caption_column")),
    "webdataset": (lambda c, d: formats.webdataset(c["shards"], c.get("caption_key", "caption")), ("shards",),
                   ("caption_key",)),
    "imagefolder": (lambda c, d: formats.image_folder(c["root"]), ("root",), ()),
    "records": (_records, ("path",), ()),
    "tfds": (lambda c, d: formats.TfdsExamples(c["name"], c.get("split", "train"), c.get("data_dir"),
                                               caption_key=c.get("caption_key"), label_key=c.get("label_key")),
             ("name",), ("split", "data_dir", "caption_key", "label_key")),
}


def validate_source_config(cfg: Mapping[str, Any], where: str = "data") -> None:
  """Raises ValueError naming an unknown kind, a missing key or an unknown key, with the valid choices."""
  kind = cfg.get("kind")
  if kind not in BUILDERS:
    raise ValueError(f"unknown data source kind {kind!r} in {where}; valid kinds: {sorted(BUILDERS)}")
  _, required, optional = BUILDERS[kind]
  for key in required:
    if key not in cfg:
      raise ValueError(f"data source {where} of kind {kind!r} needs key {key!r}")
  valid = {"kind", *required, *optional}
  for key in cfg:
    if key not in valid:
      raise ValueError(f"unknown key {where}.{key} for a {kind!r} source; valid keys: {sorted(valid)}")


def build_source(cfg: Mapping[str, Any], data_dir: str = "data", where: str = "data") -> Any:
  """The random-access source described by `cfg` (see the module docstring)."""
  cfg = dict(cfg)
  validate_source_config(cfg, where)
  return BUILDERS[cfg["kind"]][0](cfg, data_dir)


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
