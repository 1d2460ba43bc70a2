"""Readers for real dataset formats, each giving random access to stored-example dicts (``docs/contracts.md``).

A reader indexes its annotation files up front (cheap) and reads an example's encoded image bytes only when that
example is accessed, so ``len(reader)`` and ``reader[i]`` work on large datasets and a missing image surfaces as a
``FileNotFoundError`` naming its path at access time (the converter counts and reports those). A record the index
cannot use (no caption, a bad annotation row, a damaged tar member) is left out and counted in the reader's
``skipped`` tally (:mod:`lmstruct.data.skips`). Paths may be local or object-store URLs (:mod:`lmstruct.paths`).
Each reader's parameter names are its source-config keys (:data:`lmstruct.data.sources.FORMATS`).

Supported formats:

* ``coco_captions`` -- COCO captions JSON (``images``, ``annotations`` with ``image_id``/``caption``) + image folder.
* ``karpathy`` -- Karpathy split files for COCO / Flickr30k (``dataset_coco.json``, ``dataset_flickr30k.json``).
* ``flickr30k_entities`` -- Flickr30k Entities split list + ``Sentences/<id>.txt`` files.
* ``caption_table`` -- CSV / TSV / JSONL with a local image path column and a caption column.
* ``webdataset`` -- tar shards as written by img2dataset (``<key>.jpg`` + ``<key>.txt`` and/or ``<key>.json``).
* ``image_folder`` -- one folder per class (classes sorted by name) for zero-shot and linear-probe evaluation.
* ``vqa_v2``, ``gqa``, ``nlvr2``, ``snli_ve`` -- vision-language task formats.
* ``TfdsExamples`` -- any tfds dataset already prepared in ``array_record`` format (a tfds data source).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from etils import epath

from lmstruct import paths
from lmstruct.data import skips as skips_lib
from lmstruct.data import tars
from lmstruct.data.tars import IMAGE_SUFFIXES

KARPATHY_SPLITS = ("train", "restval", "val", "test")
SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")
NLVR2_LABELS = ("False", "True")
_ENTITY_RE = re.compile(r"\[/EN#\d+(?:/[^\s\]]+)+ ([^\]]*)\]")

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class FileSlice:
  """``size`` bytes at ``offset`` in ``path`` (the whole file when ``size`` is None), e.g. a tar member.

  ``path`` is local or an object-store URL (:mod:`lmstruct.paths`).
  """

  path: epath.Path
  offset: int = 0
  size: int | None = None

  def read(self) -> bytes:
    """The bytes; ``FileNotFoundError`` (with the path) when the file does not exist."""
    with self.path.open("rb") as f:
      if self.offset:
        f.seek(self.offset)
      data = f.read() if self.size is None else f.read(self.size)
    if self.size is not None and len(data) != self.size:
      raise OSError(f"{self.path}: expected {self.size} bytes at offset {self.offset}, file has {len(data)}")
    return data


class FileExamples:
  """Random-access stored examples whose encoded images are read from files on access.

  Args:
    fields: per example, every key except the images (``captions``, ``image_id``, ``label``, task keys ...).
    images: per example, the image keys (``image_bytes``, ``image2_bytes``) and where their bytes are.
    metadata: dataset-level facts to keep beside the records (e.g. ``classes`` of a classification set).
    skipped: the records the reader left out while indexing (:mod:`lmstruct.data.skips`).
  """

  def __init__(
    self,
    fields: Sequence[dict[str, Any]],
    images: Sequence[Mapping[str, FileSlice]],
    metadata: Mapping[str, Any] | None = None,
    skipped: skips_lib.Skips | None = None,
  ):
    if len(fields) != len(images):
      raise ValueError(f"{len(fields)} field dicts but {len(images)} image dicts")
    self.fields = list(fields)
    self.images = list(images)
    self.metadata = dict(metadata or {})
    self.skipped = skipped or skips_lib.Skips()

  def __len__(self) -> int:
    return len(self.fields)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {**self.fields[index], **{key: where.read() for key, where in self.images[index].items()}}

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return (self[i] for i in range(len(self)))


def _require_file(path: PathLike, what: str) -> epath.Path:
  """``path`` as an ``epath.Path``, or ``FileNotFoundError`` naming what was expected there."""
  path = paths.as_path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} not found: {path}")
  return path


def _require_dir(path: PathLike, what: str) -> epath.Path:
  """``path`` as an ``epath.Path``, or ``FileNotFoundError`` naming what was expected there."""
  path = paths.as_path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"{what} not found: {path}")
  return path


def _load_json(path: PathLike) -> Any:
  """Parse a JSON file; a clear error naming the file when it is missing or malformed."""
  path = _require_file(path, "annotation file")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def _load_jsonl(path: PathLike) -> list[dict[str, Any]]:
  """Parse a JSON-lines file (blank lines ignored); errors name the file and line."""
  path = _require_file(path, "annotation file")
  rows = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number} is not valid JSON: {e}") from e
  return rows


def _require_keys(record: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
  """Raise ``KeyError`` naming ``where`` and the available keys when ``record`` lacks one of ``keys``."""
  missing = [k for k in keys if k not in record]
  if missing:
    raise KeyError(f"{where}: missing key(s) {missing}; available: {sorted(record)}")


def _has_keys(record: Any, keys: Sequence[str], where: str, skipped: skips_lib.Skips) -> bool:
  """True when ``record`` is a dict with every one of ``keys``; otherwise the record is counted as skipped."""
  missing = [k for k in keys if k not in record] if isinstance(record, Mapping) else list(keys)
  if missing:
    skipped.add(skips_lib.BAD_RECORD, f"{where}: missing key(s) {missing}")
  return not missing


def coco_captions(annotations: PathLike, images: PathLike) -> FileExamples:
  """COCO captions (``captions_<split>.json``): one example per image with all its captions, in file order.

  Captions of unknown image ids and images without a caption are skipped and counted.
  """
  data = _load_json(annotations)
  _require_keys(data, ["images", "annotations"], str(annotations))
  image_dir = _require_dir(images, "COCO image folder")
  skipped = skips_lib.Skips()
  known = {img["id"] for img in data["images"]}
  captions: dict[int, list[str]] = collections.defaultdict(list)
  for ann in data["annotations"]:
    if ann.get("image_id") in known and isinstance(ann.get("caption"), str):
      captions[ann["image_id"]].append(ann["caption"].strip())
    else:
      skipped.add(
        skips_lib.BAD_RECORD,
        f"{annotations}: caption {ann.get('id')} of unknown image {ann.get('image_id')!r} or without text",
      )
  chosen = []
  for img in data["images"]:
    if captions[img["id"]]:
      chosen.append(img)
    else:
      skipped.add(skips_lib.NO_CAPTION, f"{annotations}: image {img['id']}")
  fields = [{"image_id": str(img["id"]), "captions": captions[img["id"]]} for img in chosen]
  return FileExamples(
    fields, [{"image_bytes": FileSlice(image_dir / img["file_name"])} for img in chosen], skipped=skipped
  )


def karpathy(split_file: PathLike, image_root: PathLike, splits: Sequence[str]) -> FileExamples:
  """Karpathy split file (``dataset_coco.json`` / ``dataset_flickr30k.json``), images of the given ``splits``.

  Images are at ``image_root/<filepath>/<filename>`` (``filepath`` is absent for Flickr30k); ``image_id`` is the
  COCO id when present (``cocoid``) and the file name's stem otherwise. Images without a sentence are skipped and
  counted.
  """
  splits = [splits] if isinstance(splits, str) else list(splits)
  unknown = sorted(set(splits) - set(KARPATHY_SPLITS))
  if unknown or not splits:
    raise ValueError(f"Karpathy splits must be a non-empty subset of {list(KARPATHY_SPLITS)}, got {list(splits)}")
  data = _load_json(split_file)
  _require_keys(data, ["images"], str(split_file))
  image_root = _require_dir(image_root, "image root")
  skipped = skips_lib.Skips()
  fields, images = [], []
  for img in data["images"]:
    if img.get("split") not in splits:
      continue
    captions = [s["raw"].strip() for s in img.get("sentences", []) if isinstance(s.get("raw"), str)]
    if not captions:
      skipped.add(skips_lib.NO_CAPTION, f"{split_file}: {img.get('filename')}")
      continue
    fields.append({"image_id": str(img.get("cocoid", os.path.splitext(img["filename"])[0])), "captions": captions})
    images.append({"image_bytes": FileSlice(image_root / img.get("filepath", "") / img["filename"])})
  return FileExamples(fields, images, skipped=skipped)


def strip_entity_markup(sentence: str) -> str:
  """Plain text of a Flickr30k Entities sentence: ``[/EN#12/people A girl] sits`` -> ``A girl sits``."""
  return " ".join(_ENTITY_RE.sub(r"\1", sentence).split())


def flickr30k_entities(split_file: PathLike, sentences: PathLike, images: PathLike) -> FileExamples:
  """Flickr30k Entities: image ids listed in ``split_file``, captions from ``sentences/<id>.txt``.

  An id whose sentence file is missing or empty is skipped and counted.
  """
  split_file = _require_file(split_file, "split list")
  sentences_dir = _require_dir(sentences, "Flickr30k Entities sentence folder")
  image_dir = _require_dir(images, "Flickr30k image folder")
  skipped = skips_lib.Skips()
  fields, slices = [], []
  for image_id in (line.strip() for line in split_file.read_text(encoding="utf-8").splitlines()):
    if not image_id:
      continue
    path = sentences_dir / f"{image_id}.txt"
    if not path.is_file():
      skipped.add(skips_lib.MISSING_FILE, str(path))
      continue
    captions = [strip_entity_markup(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    if not captions:
      skipped.add(skips_lib.NO_CAPTION, str(path))
      continue
    fields.append({"image_id": image_id, "captions": captions})
    slices.append({"image_bytes": FileSlice(image_dir / f"{image_id}.jpg")})
  return FileExamples(fields, slices, skipped=skipped)


def _table_rows(path: epath.Path, delimiter: str | None) -> list[dict[str, Any]]:
  """Rows of a CSV (``,``), TSV (tab) or JSONL file, chosen by suffix unless ``delimiter`` is given."""
  suffix = path.suffix.lower()
  if suffix in (".jsonl", ".ndjson") and delimiter is None:
    return _load_jsonl(path)
  if delimiter is None:
    delimiters = {".csv": ",", ".tsv": "\t"}
    if suffix not in delimiters:
      raise ValueError(
        f"{path}: cannot tell the table format from suffix {suffix!r}; use .csv, .tsv, .jsonl or pass a delimiter"
      )
    delimiter = delimiters[suffix]
  return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""), delimiter=delimiter))


def caption_table(
  path: PathLike,
  image_root: PathLike | None = None,
  image_column: str = "filepath",
  caption_column: str = "caption",
  delimiter: str | None = None,
) -> FileExamples:
  """(image path, caption) rows from CSV/TSV/JSONL; rows naming the same image are merged into one example.

  Relative image paths are resolved against ``image_root`` (default: the table's folder); ``image_id`` is the
  image path as written in the table. A row without an image path or caption text is skipped and counted.
  """
  path = _require_file(path, "caption table")
  root = paths.as_path(image_root) if image_root is not None else path.parent
  rows = _table_rows(path, delimiter)
  if rows:
    _require_keys(rows[0], [image_column, caption_column], f"{path} (image_column/caption_column)")
  skipped = skips_lib.Skips()
  captions: dict[str, list[str]] = {}
  for number, row in enumerate(rows, 1):
    image, caption = row.get(image_column), row.get(caption_column)
    if not isinstance(image, str) or not image or not isinstance(caption, str) or not caption.strip():
      skipped.add(skips_lib.BAD_RECORD, f"{path}: row {number} lacks a {image_column!r} or {caption_column!r}")
      continue
    captions.setdefault(image, []).append(caption.strip())
  fields = [{"image_id": image, "captions": texts} for image, texts in captions.items()]
  return FileExamples(fields, [{"image_bytes": FileSlice(root / image)} for image in captions], skipped=skipped)


def webdataset(shards: PathLike | Sequence[PathLike], caption_key: str = "caption") -> FileExamples:
  """img2dataset-style webdataset shards, indexed for random access (every member header, every caption).

  ``shards``: a folder of ``*.tar``, a glob, a brace pattern or a list (:func:`lmstruct.paths.list_shards`). Each
  sample is ``<key>.<image ext>`` with its caption in ``<key>.txt`` or, failing that, the ``caption_key`` field of
  ``<key>.json``; ``image_id`` is the sample key. Damaged shards and samples are skipped and counted
  (:mod:`lmstruct.data.tars`), and so is a key met again in a later shard. Indexing reads the whole dataset's
  headers on every process: for training at scale use the streaming source (``streaming: True``).
  """
  skipped = skips_lib.Skips()
  fields, images, origin = [], [], {}
  for shard in paths.list_shards(shards):
    try:
      size = shard.stat().length
      with shard.open("rb") as f:
        located = list(
          tars.iter_samples(
            f,
            str(shard),
            caption_key,
            skipped,
            size=size,
            locate=lambda m, s=shard: FileSlice(s, m.offset_data, m.size),
          )
        )
    except FileNotFoundError as error:
      skipped.add(skips_lib.UNREADABLE_SHARD, f"{shard}: {error}")
      continue
    for sample in located:
      if sample.key in origin:
        skipped.add(skips_lib.DUPLICATE_KEY, f"{sample.key!r} in {shard}, first in {origin[sample.key]}")
        continue
      origin[sample.key] = shard
      fields.append({"image_id": sample.key, "captions": [sample.caption]})
      images.append({"image_bytes": sample.image})
  return FileExamples(fields, images, skipped=skipped)


def image_folder(root: PathLike) -> FileExamples:
  """ImageFolder classification: ``root/<class>/**/<image>``; labels index the sorted class names.

  ``image_id`` is the path relative to ``root``; ``metadata['classes']`` lists the class names.
  """
  root = _require_dir(root, "ImageFolder root")
  classes = sorted(p.name for p in root.iterdir() if p.is_dir())
  if not classes:
    raise ValueError(f"{root} has no class sub-folders (expected root/<class name>/<images>)")
  fields, images = [], []
  for label, name in enumerate(classes):
    files = sorted(
      (
        folder / file
        for folder, _, names in (root / name).walk()
        for file in names
        if os.path.splitext(file)[1].lower() in IMAGE_SUFFIXES
      ),
      key=os.fspath,
    )
    for path in files:
      fields.append({"image_id": path.relative_to(root).as_posix(), "label": label})
      images.append({"image_bytes": FileSlice(path)})
  if not fields:
    raise ValueError(f"{root}: class folders {classes[:5]} contain no images with suffix in {IMAGE_SUFFIXES}")
  return FileExamples(fields, images, {"classes": classes})


def vqa_v2(questions: PathLike, images: PathLike, annotations: PathLike | None = None) -> FileExamples:
  """VQA v2: one example per question; images ``COCO_<subtype>_<12-digit id>.jpg`` in ``images``.

  With ``annotations`` each example also gets ``answers`` (all ten) and ``answer`` (the
  ``multiple_choice_answer`` when present, else the most frequent answer); a question without an annotation is
  then skipped and counted.
  """
  data = _load_json(questions)
  _require_keys(data, ["questions", "data_subtype"], str(questions))
  image_dir = _require_dir(images, "VQA image folder")
  skipped = skips_lib.Skips()
  answers: dict[int, dict[str, Any]] = {}
  if annotations is not None:
    annotation_data = _load_json(annotations)
    _require_keys(annotation_data, ["annotations"], str(annotations))
    answers = {a["question_id"]: a for a in annotation_data["annotations"]}
  fields, slices = [], []
  for q in data["questions"]:
    if not _has_keys(q, ["question_id", "image_id", "question"], str(questions), skipped):
      continue
    example = {"question_id": str(q["question_id"]), "image_id": str(q["image_id"]), "question": q["question"]}
    if annotations is not None:
      if q["question_id"] not in answers:
        skipped.add(skips_lib.BAD_RECORD, f"{annotations}: no annotation for question {q['question_id']}")
        continue
      ann = answers[q["question_id"]]
      example["answers"] = [a["answer"] for a in ann["answers"]]
      example["answer"] = (
        ann.get("multiple_choice_answer") or collections.Counter(example["answers"]).most_common(1)[0][0]
      )
    fields.append(example)
    name = f"COCO_{data['data_subtype']}_{int(q['image_id']):012d}.jpg"
    slices.append({"image_bytes": FileSlice(image_dir / name)})
  return FileExamples(fields, slices, skipped=skipped)


def gqa(questions: PathLike, images: PathLike) -> FileExamples:
  """GQA questions: a ``{question_id: {...}}`` JSON file or a folder of such files (read in name order)."""
  folder = paths.as_path(questions)
  files = sorted(folder.glob("*.json"), key=os.fspath) if folder.is_dir() else [folder]
  if not files:
    raise FileNotFoundError(f"no GQA question files (*.json) in {questions}")
  image_dir = _require_dir(images, "GQA image folder")
  skipped = skips_lib.Skips()
  fields, slices = [], []
  for path in files:
    for question_id, q in _load_json(path).items():
      if not _has_keys(q, ["imageId", "question"], f"{path}, question {question_id}", skipped):
        continue
      example = {"question_id": question_id, "image_id": q["imageId"], "question": q["question"]}
      if "answer" in q:
        example["answer"] = q["answer"]
      fields.append(example)
      slices.append({"image_bytes": FileSlice(image_dir / f"{q['imageId']}.jpg")})
  return FileExamples(fields, slices, skipped=skipped)


def nlvr2(path: PathLike, images: PathLike) -> FileExamples:
  """NLVR²: a JSON-lines file of statements about image pairs ``<split>-<set>-<pair>-img{0,1}.png``.

  ``label`` is 1 when the statement is true, 0 otherwise (``metadata['classes']`` = ``["False", "True"]``);
  ``image_id`` names the pair; ``image_bytes`` / ``image2_bytes`` are the left and right images. A row without its
  keys or with another label is skipped and counted.
  """
  rows = _load_jsonl(path)
  image_dir = _require_dir(images, "NLVR2 image folder")
  skipped = skips_lib.Skips()
  fields, slices = [], []
  for number, row in enumerate(rows, 1):
    if not _has_keys(row, ["identifier", "sentence", "label"], f"{path}:{number}", skipped):
      continue
    if row["label"] not in NLVR2_LABELS:
      skipped.add(skips_lib.BAD_RECORD, f"{path}:{number}: label {row['label']!r} is not one of {list(NLVR2_LABELS)}")
      continue
    pair = row["identifier"].rsplit("-", 1)[0]
    folder = image_dir / str(row["directory"]) if "directory" in row else image_dir
    fields.append(
      {
        "image_id": pair,
        "identifier": row["identifier"],
        "statement": row["sentence"],
        "label": NLVR2_LABELS.index(row["label"]),
      }
    )
    slices.append(
      {"image_bytes": FileSlice(folder / f"{pair}-img0.png"), "image2_bytes": FileSlice(folder / f"{pair}-img1.png")}
    )
  return FileExamples(fields, slices, {"classes": list(NLVR2_LABELS)}, skipped=skipped)


def snli_ve(path: PathLike, images: PathLike) -> FileExamples:
  """SNLI-VE: JSON lines of (Flickr30k image, hypothesis, gold label); ``label`` indexes ``SNLI_VE_LABELS``.

  A row without its keys or with another gold label is skipped and counted.
  """
  rows = _load_jsonl(path)
  image_dir = _require_dir(images, "SNLI-VE (Flickr30k) image folder")
  skipped = skips_lib.Skips()
  fields, slices = [], []
  for number, row in enumerate(rows, 1):
    if not _has_keys(row, ["Flickr30K_ID", "sentence2", "gold_label", "pairID"], f"{path}:{number}", skipped):
      continue
    if row["gold_label"] not in SNLI_VE_LABELS:
      skipped.add(
        skips_lib.BAD_RECORD, f"{path}:{number}: gold_label {row['gold_label']!r} is not one of {list(SNLI_VE_LABELS)}"
      )
      continue
    fields.append(
      {
        "image_id": str(row["Flickr30K_ID"]),
        "pair_id": row["pairID"],
        "hypothesis": row["sentence2"],
        "label": SNLI_VE_LABELS.index(row["gold_label"]),
      }
    )
    slices.append({"image_bytes": FileSlice(image_dir / f"{row['Flickr30K_ID']}.jpg")})
  return FileExamples(fields, slices, {"classes": list(SNLI_VE_LABELS)}, skipped=skipped)


def _texts(value: Any) -> list[str]:
  """Caption text(s) of a tfds value: a string, bytes, a list of them, or a dict with a ``text`` entry."""
  if isinstance(value, dict):
    value = value["text"]
  values = value if isinstance(value, (list, tuple)) else [value]
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class TfdsExamples:
  """A tfds dataset already prepared in ``array_record`` format, read as a tfds data source.

  The dataset is opened from its prepared files (``dataset_info.json`` and the array_record shards), so neither
  its generation code nor TensorFlow is needed.

  Keys default to what common datasets use: images from ``image``; captions from ``captions`` (a sequence with
  ``text``, as in ``coco_captions``) or ``caption``; labels from ``label``; ids from ``image/id``, ``id`` or
  ``image/filename`` (else ``<split>-<index>``).

  Args:
    name: registered tfds name, optionally with config/version (``coco_captions``, ``cifar10:3.0.2``).
    split: a split of the prepared dataset.
    data_dir: tfds data directory (default: tfds's own default).
    image_key, caption_key, label_key, id_key: feature names overriding the defaults.
  """

  def __init__(
    self,
    name: str,
    split: str = "train",
    data_dir: PathLike | None = None,
    image_key: str = "image",
    caption_key: str | None = None,
    label_key: str | None = None,
    id_key: str | None = None,
  ):
    import tensorflow_datasets as tfds

    try:
      builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in data_dir={data_dir} (nothing is "
        f"downloaded; prepare it there in array_record format first): {e}"
      ) from e
    if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
      raise ValueError(
        f"tfds dataset {name!r} in {builder.data_dir} is stored as "
        f"{builder.info.file_format.value}; random access needs array_record (prepare it with "
        "file_format='array_record')"
      )
    if split not in builder.info.splits:
      raise ValueError(f"tfds dataset {name!r} has no split {split!r}; valid splits: {sorted(builder.info.splits)}")
    features = builder.info.features
    chosen = {
      "image_key": image_key,
      "caption_key": caption_key or _first_in(features, ("captions", "caption")),
      "label_key": label_key or _first_in(features, ("label",)),
      "id_key": id_key or _first_in(features, ("image/id", "id", "image/filename")),
    }
    for arg, key in chosen.items():
      if key is not None and key not in features:
        raise KeyError(f"tfds dataset {name!r} has no feature {key!r} ({arg}); features: {sorted(features)}")
    self.image_key, self.caption_key, self.label_key, self.id_key = chosen.values()
    self.split = split
    self.source = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    label_names = getattr(features[self.label_key], "names", None) if self.label_key else None
    self.metadata = {"classes": list(label_names)} if label_names else {}
    self.skipped = skips_lib.Skips()

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    raw = self.source[index]
    example: dict[str, Any] = {"image_bytes": raw[self.image_key]}
    example["image_id"] = str(_texts(raw[self.id_key])[0]) if self.id_key else f"{self.split}-{index}"
    if self.caption_key:
      example["captions"] = _texts(raw[self.caption_key])
    if self.label_key:
      example["label"] = int(raw[self.label_key])
    return example

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return (self[i] for i in range(len(self)))


def _first_in(features: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
  """The first of ``candidates`` that is a feature name, or None."""
  return next((c for c in candidates if c in features), None)
