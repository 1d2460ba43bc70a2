"""Convert a dataset in one of the supported formats into sharded ``array_record`` files of stored examples.

    python -m lmstruct.data.convert FORMAT --src SOURCE [--images DIR] --out OUT_PREFIX [options]

writes ``OUT_PREFIX-00000-of-0000N.array_record`` ... and ``OUT_PREFIX.manifest.json`` (read them back with
``lmstruct.data.records.RecordDataSource(dirname(OUT_PREFIX), basename(OUT_PREFIX))``).

Every image is decoded once during conversion: a corrupt or unreadable image, or a missing image file, is skipped
and counted, and a summary lists the counts and the first few offenders. Shards are written atomically and recorded
in the manifest as they complete, so an interrupted conversion, run again with the same arguments, resumes at the
first unfinished shard and ends with the same records as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

import tqdm

from lmstruct.data import formats, records

MANIFEST_VERSION = 1
SHOW_FIRST = 5
Source = Sequence[Mapping[str, Any]]


@dataclasses.dataclass
class ShardResult:
  """Outcome of one shard: examples written and the skipped ones, by reason."""

  written: int = 0
  missing: list[str] = dataclasses.field(default_factory=list)
  unreadable: list[str] = dataclasses.field(default_factory=list)
  corrupt: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConversionSummary:
  """Totals over all shards of a finished conversion."""

  out: pathlib.Path
  shards: list[pathlib.Path]
  written: int
  missing: list[str]
  unreadable: list[str]
  corrupt: list[str]
  resumed_shards: int

  def report(self) -> str:
    """Human-readable summary with counts and the first few skipped items of each kind."""
    lines = [f"wrote {self.written} examples in {len(self.shards)} shards to {self.out}-*"
             f"{records.SHARD_SUFFIX}" + (f" ({self.resumed_shards} shards kept from an earlier run)"
                                          if self.resumed_shards else "")]
    for kind, items in (("missing files", self.missing), ("unreadable files", self.unreadable),
                        ("corrupt images", self.corrupt)):
      if items:
        lines.append(f"skipped {len(items)} examples with {kind}, first: {items[:SHOW_FIRST]}")
    return "\n".join(lines)


def manifest_path(out: pathlib.Path) -> pathlib.Path:
  """The progress manifest beside the shards: ``<out>.manifest.json``."""
  return out.with_name(out.name + ".manifest.json")


def _write_json_atomically(path: pathlib.Path, payload: Mapping[str, Any]) -> None:
  """Write JSON to a temporary file, then rename it over ``path``."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
  os.replace(tmp, path)


def _load_or_start_manifest(out: pathlib.Path, settings: Mapping[str, Any]) -> dict[str, Any]:
  """The manifest of an earlier run with the same ``settings``, or a fresh one; a clash is a clear error."""
  path = manifest_path(out)
  if not path.is_file():
    return {**settings, "shards": {}}
  manifest = json.loads(path.read_text(encoding="utf-8"))
  previous = {k: manifest.get(k) for k in settings}
  if previous != json.loads(json.dumps(settings)):
    changed = sorted(k for k in settings if previous[k] != json.loads(json.dumps(settings[k])))
    raise ValueError(f"{path} belongs to a conversion with different settings ({changed}); delete "
                     f"{path} and the {out.name}-* shards, or choose another --out")
  return manifest


def load_example(source: Source, index: int) -> tuple[Mapping[str, Any] | None, str, str]:
  """Example ``index`` with its images checked by decoding: ``(example, "", "")`` or ``(None, reason, detail)``.

  ``reason`` is ``missing`` (file not found), ``unreadable`` (other I/O error) or ``corrupt`` (not decodable).
  """
  try:
    example = source[index]
  except FileNotFoundError as e:
    return None, "missing", str(e.filename or e)
  except OSError as e:
    return None, "unreadable", f"{e.filename or ''} {e}".strip()
  for key in records.IMAGE_FIELDS:
    if key in example:
      try:
        records.decode_image(example[key])
      except records.ImageDecodeError as e:
        return None, "corrupt", f"{example.get('image_id', index)} ({key}): {e}"
  return example, "", ""


def _checked_examples(source: Source, indices: range, workers: int, result: ShardResult,
                      on_example: Callable[[], None]) -> Iterator[Mapping[str, Any]]:
  """Yield the usable examples among ``indices`` in order, loaded by ``workers`` threads.

  Skipped examples are recorded in ``result``; ``on_example`` is called once per index.
  """
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  try:
    for example, reason, detail in pool.map(functools.partial(load_example, source), indices):
      on_example()
      if example is None:
        getattr(result, reason).append(detail)
      else:
        yield example
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def convert_shard(source: Source, indices: range, path: pathlib.Path, workers: int,
                  on_example: Callable[[], None]) -> ShardResult:
  """Load, check and write the examples ``indices`` of ``source`` into the shard ``path`` (atomically)."""
  result = ShardResult()
  result.written = records.write_shard(path, _checked_examples(source, indices, workers, result, on_example))
  return result


def convert(source: Source, out: str | os.PathLike, shard_size: int = 1000,
            settings: Mapping[str, Any] | None = None, workers: int | None = None,
            progress: bool = True) -> ConversionSummary:
  """Convert ``source`` (random-access stored examples) into shards ``<out>-NNNNN-of-NNNNN.array_record``.

  Args:
    source: ``len(source)`` and ``source[i]`` -> stored-example dict (e.g. a reader from ``formats``).
    out: output prefix; its folder is created.
    shard_size: examples per shard (before skipping).
    settings: what identifies this conversion (format and arguments); a restart must use the same.
    workers: threads loading and checking images (default: CPU count).
    progress: show a tqdm progress bar.
  """
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  num_shards = max(1, -(-len(source) // shard_size))
  manifest = _load_or_start_manifest(out, {
      "version": MANIFEST_VERSION, "source": dict(settings or {}), "num_examples_in": len(source),
      "shard_size": shard_size, "num_shards": num_shards, "metadata": dict(getattr(source, "metadata", {}))})
  paths = [out.with_name(records.shard_name(out.name, i, num_shards)) for i in range(num_shards)]
  done = {int(k) for k in manifest["shards"] if paths[int(k)].is_file()}
  resumed = len(done)
  bar = tqdm.tqdm(total=len(source), unit="ex", desc=f"convert {out.name}", disable=not progress,
                  initial=sum(min(shard_size, len(source) - i * shard_size) for i in done))
  with bar:
    for shard in range(num_shards):
      if shard in done:
        continue
      indices = range(shard * shard_size, min(len(source), (shard + 1) * shard_size))
      result = convert_shard(source, indices, paths[shard], workers or os.cpu_count() or 1, bar.update)
      manifest["shards"][str(shard)] = dataclasses.asdict(result)
      _write_json_atomically(manifest_path(out), manifest)
      bar.set_postfix(skipped=sum(len(s["missing"]) + len(s["unreadable"]) + len(s["corrupt"])
                                  for s in manifest["shards"].values()))
  shards = [manifest["shards"][str(i)] for i in range(num_shards)]
  return ConversionSummary(out=out, shards=paths, written=sum(s["written"] for s in shards),
                           missing=[m for s in shards for m in s["missing"]],
                           unreadable=[m for s in shards for m in s["unreadable"]],
                           corrupt=[m for s in shards for m in s["corrupt"]], resumed_shards=resumed)


FORMATS: dict[str, tuple[tuple[str, ...], Callable[[argparse.Namespace], Source]]] = {
    "coco": (("images",), lambda a: formats.coco_captions(a.src, a.images)),
    "karpathy": (("images", "split"), lambda a: formats.karpathy(a.src, a.images, a.split.split(","))),
    "flickr30k-entities": (("images", "sentences"),
                           lambda a: formats.flickr30k_entities(a.src, a.sentences, a.images)),
    "table": ((), lambda a: formats.caption_table(a.src, a.images, a.image_column, a.caption_column)),
    "webdataset": ((), lambda a: formats.webdataset(a.src, a.caption_key or "caption")),
    "imagefolder": ((), lambda a: formats.image_folder(a.src)),
    "vqav2": (("images",), lambda a: formats.vqa_v2(a.src, a.images, a.annotations)),
    "gqa": (("images",), lambda a: formats.gqa(a.src, a.images)),
    "nlvr2": (("images",), lambda a: formats.nlvr2(a.src, a.images)),
    "snli-ve": (("images",), lambda a: formats.snli_ve(a.src, a.images)),
    "tfds": (("split",), lambda a: formats.TfdsExamples(a.src, a.split, a.data_dir, a.image_key, a.caption_key,
                                                        a.label_key, a.id_key)),
}
"""Per format: the options it requires, and how to build its reader from the parsed arguments."""

SRC_HELP = ("coco: captions_<split>.json; karpathy: dataset_coco.json / dataset_flickr30k.json; "
            "flickr30k-entities: split list (test.txt); table: .csv/.tsv/.jsonl; webdataset: folder of .tar or one "
            ".tar; imagefolder: class-folder root; vqav2: questions JSON; gqa: questions JSON or folder; "
            "nlvr2: JSON lines; snli-ve: JSON lines; tfds: dataset name")


def build_parser() -> argparse.ArgumentParser:
  """Argument parser of the conversion command."""
  parser = argparse.ArgumentParser(prog="python -m lmstruct.data.convert", description=__doc__.splitlines()[0])
  parser.add_argument("format", choices=sorted(FORMATS), help="input format")
  parser.add_argument("--src", required=True, help=SRC_HELP)
  parser.add_argument("--out", required=True, help="output prefix, e.g. data/coco/train")
  parser.add_argument("--images", help="image folder (root for karpathy and relative table paths)")
  parser.add_argument("--split", help="karpathy: comma-separated splits (train,restval); tfds: split name")
  parser.add_argument("--sentences", help="flickr30k-entities: folder of <id>.txt sentence files")
  parser.add_argument("--annotations", help="vqav2: annotations JSON (answers)")
  parser.add_argument("--image-column", default="filepath", help="table: image path column / key")
  parser.add_argument("--caption-column", default="caption", help="table: caption column / key")
  parser.add_argument("--caption-key", help="webdataset: caption key in .json (default caption); tfds: feature")
  parser.add_argument("--image-key", default="image", help="tfds: image feature")
  parser.add_argument("--label-key", help="tfds: label feature (default label when present)")
  parser.add_argument("--id-key", help="tfds: id feature (default image/id, id or image/filename when present)")
  parser.add_argument("--data-dir", help="tfds: data directory")
  parser.add_argument("--shard-size", type=int, default=1000, help="examples per shard")
  parser.add_argument("--workers", type=int, default=None, help="image loading threads (default: CPU count)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Run the conversion command; returns the exit status (1 when no example at all could be converted)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  required, build = FORMATS[args.format]
  missing = ["--" + name.replace("_", "-") for name in required if getattr(args, name) is None]
  if missing:
    parser.error(f"format {args.format!r} needs {' and '.join(missing)}")
  source = build(args)
  settings = {k: v for k, v in sorted(vars(args).items()) if k not in ("out", "workers", "no_progress")}
  summary = convert(source, args.out, args.shard_size, settings, args.workers, not args.no_progress)
  print(summary.report())
  if len(source) and not summary.written:
    print(f"error: none of the {len(source)} examples could be converted; check --src/--images", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
