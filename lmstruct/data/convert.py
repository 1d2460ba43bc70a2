"""Convert a dataset in one of the supported formats into sharded ``array_record`` files of stored examples.

    python -m lmstruct.data.convert FORMAT --src SOURCE [--images DIR] --out OUT_PREFIX [options]

writes ``OUT_PREFIX-00000-of-0000N.array_record`` ... and ``OUT_PREFIX.manifest.json`` (read them back with
``lmstruct.data.records.RecordDataSource(dirname(OUT_PREFIX), basename(OUT_PREFIX))``).

The formats and their flags come from the one format table, :data:`lmstruct.data.sources.FORMATS`
(``python -m lmstruct.data.convert FORMAT --help`` lists a format's flags).

Nothing damaged stops a conversion. Records the reader leaves out while indexing (no caption, a bad annotation
row, a truncated tar, an unsafe tar member path, …; :mod:`lmstruct.data.skips`) and images that are missing,
unreadable or corrupt (every image is decoded once here) are skipped and counted; the conversion exits 0 with a
summary of the counts and the first few offenders of each reason. ``--strict`` turns the first skip into a
one-line error (exit 2). Shards are written atomically and recorded in the manifest as they complete, so an
interrupted conversion, run again with the same arguments, resumes at the first unfinished shard and ends with the
same records as an uninterrupted run.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import tqdm

from lmstruct.data import records, sources
from lmstruct.data import skips as skips_lib

MANIFEST_VERSION = 2
SHOW_FIRST = 5
Source = Sequence[Mapping[str, Any]]


@dataclasses.dataclass
class ConversionSummary:
  """Totals over all shards of a finished conversion: examples written and every skip, by reason."""

  out: pathlib.Path
  shards: list[pathlib.Path]
  written: int
  skipped: skips_lib.Skips
  resumed_shards: int

  def report(self) -> str:
    """Human-readable summary with counts and the first few skipped items of each reason."""
    lines = [
      f"wrote {self.written} examples in {len(self.shards)} shards to {self.out}-*"
      f"{records.SHARD_SUFFIX}"
      + (f" ({self.resumed_shards} shards kept from an earlier run)" if self.resumed_shards else "")
    ]
    return "\n".join(lines + self.skipped.lines())


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
    raise ValueError(
      f"{path} belongs to a conversion with different settings ({changed}); delete "
      f"{path} and the {out.name}-* shards, or choose another --out"
    )
  return manifest


def load_example(source: Source, index: int) -> tuple[Mapping[str, Any] | None, str, str]:
  """Example ``index`` with its images checked by decoding: ``(example, "", "")`` or ``(None, reason, detail)``.

  ``reason`` is ``missing file``, ``unreadable file`` (another I/O error) or ``corrupt image`` (not decodable).
  """
  try:
    example = source[index]
  except FileNotFoundError as e:
    return None, skips_lib.MISSING_FILE, str(e.filename or e)
  except OSError as e:
    return None, skips_lib.UNREADABLE_FILE, f"{e.filename or ''} {e}".strip()
  for key in records.IMAGE_FIELDS:
    if key in example:
      try:
        records.decode_image(example[key])
      except records.ImageDecodeError as e:
        return None, skips_lib.CORRUPT_IMAGE, f"{example.get('image_id', index)} ({key}): {e}"
  return example, "", ""


def _checked_examples(
  source: Source, indices: range, workers: int, skipped: skips_lib.Skips, on_example: Callable[[], None]
) -> Iterator[Mapping[str, Any]]:
  """Yield the usable examples among ``indices`` in order, loaded by ``workers`` threads.

  Skipped examples are counted in ``skipped`` (which raises under ``strict``); ``on_example`` is called once per
  index.
  """
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  try:
    for example, reason, detail in pool.map(functools.partial(load_example, source), indices):
      on_example()
      if example is None:
        skipped.add(reason, detail)
      else:
        yield example
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def convert(
  source: Source,
  out: str | os.PathLike,
  shard_size: int = 1000,
  settings: Mapping[str, Any] | None = None,
  workers: int | None = None,
  progress: bool = True,
  strict: bool = False,
) -> ConversionSummary:
  """Convert ``source`` (random-access stored examples) into shards ``<out>-NNNNN-of-NNNNN.array_record``.

  Args:
    source: ``len(source)`` and ``source[i]`` -> stored-example dict (e.g. a reader from ``formats``); records
      it skipped while indexing (its ``skipped`` tally) are part of the summary.
    out: output prefix; its folder is created.
    shard_size: examples per shard (before skipping).
    settings: what identifies this conversion (format and arguments); a restart must use the same.
    workers: threads loading and checking images (default: CPU count).
    progress: show a tqdm progress bar.
    strict: raise :class:`lmstruct.data.skips.SkipError` at the first skipped record instead of counting it.
  """
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  indexed = getattr(source, "skipped", skips_lib.Skips())
  if strict and indexed.total:
    reason = min(indexed.counts)
    raise skips_lib.SkipError(f"{reason}: {indexed.details[reason][0]}")
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  num_shards = max(1, -(-len(source) // shard_size))
  manifest = _load_or_start_manifest(
    out,
    {
      "version": MANIFEST_VERSION,
      "source": dict(settings or {}),
      "num_examples_in": len(source),
      "shard_size": shard_size,
      "num_shards": num_shards,
      "metadata": dict(getattr(source, "metadata", {})),
    },
  )
  paths = [out.with_name(records.shard_name(out.name, i, num_shards)) for i in range(num_shards)]
  done = {int(k) for k in manifest["shards"] if paths[int(k)].is_file()}
  resumed = len(done)
  bar = tqdm.tqdm(
    total=len(source),
    unit="ex",
    desc=f"convert {out.name}",
    disable=not progress,
    initial=sum(min(shard_size, len(source) - i * shard_size) for i in done),
  )
  with bar:
    for shard in range(num_shards):
      if shard in done:
        continue
      indices = range(shard * shard_size, min(len(source), (shard + 1) * shard_size))
      skipped = skips_lib.Skips(strict=strict)
      written = records.write_shard(
        paths[shard], _checked_examples(source, indices, workers or os.cpu_count() or 1, skipped, bar.update)
      )
      manifest["shards"][str(shard)] = {"written": written, "skipped": skipped.to_json()}
      _write_json_atomically(manifest_path(out), manifest)
      bar.set_postfix(skipped=sum(skips_lib.Skips.from_json(s["skipped"]).total for s in manifest["shards"].values()))
  total = skips_lib.Skips()
  total.update(indexed)
  for i in range(num_shards):
    total.update(manifest["shards"][str(i)]["skipped"])
  return ConversionSummary(
    out=out,
    shards=paths,
    written=sum(manifest["shards"][str(i)]["written"] for i in range(num_shards)),
    skipped=total,
    resumed_shards=resumed,
  )


def build_parser() -> argparse.ArgumentParser:
  """Argument parser of the conversion command: one sub-command per format of the format table."""
  parser = argparse.ArgumentParser(prog="lmstruct convert data", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(
    dest="format", required=True, metavar="FORMAT", help=", ".join(sorted(sources.FORMATS))
  )
  for name, fmt in sorted(sources.FORMATS.items()):
    command = commands.add_parser(name, help=fmt.help, description=f"{name}: {fmt.help}")
    for param in fmt.params:
      default = f" (default {param.default})" if param.default is not None else ""
      command.add_argument(
        param.cli_flag,
        dest=param.key,
        required=param.required,
        type=param.parse,
        default=None,
        help=param.help + default,
      )
    command.add_argument("--out", required=True, help="output prefix, e.g. data/coco/train")
    command.add_argument("--shard-size", type=int, default=1000, help="examples per shard")
    command.add_argument("--workers", type=int, default=None, help="image loading threads (default: CPU count)")
    command.add_argument("--strict", action="store_true", help="fail (exit 2) at the first skipped record")
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Run the conversion command; returns the exit status (2 for a user error or a skip under ``--strict``, 1 when
  no example at all could be converted)."""
  args = build_parser().parse_args(argv)
  fmt = sources.FORMATS[args.format]
  arguments = sources.reader_arguments(fmt, vars(args))
  settings = {"format": args.format, **arguments}
  try:
    source = fmt.reader(**arguments)
    summary = convert(
      source, args.out, args.shard_size, settings, args.workers, not args.no_progress, strict=args.strict
    )
  except skips_lib.SkipError as e:
    print(f"error: skipped record under --strict: {e}", file=sys.stderr)
    return 2
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary.report())
  if len(source) and not summary.written:
    print(f"error: none of the {len(source)} examples could be converted; check --src/--images", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
