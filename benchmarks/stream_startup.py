"""Start-up time and host memory of the training input against dataset size and process count.

    .venv/bin/python benchmarks/stream_startup.py                       # 40 → 400 shards, 1/2/4 processes (~15 min)
    .venv/bin/python benchmarks/stream_startup.py --shards 40,80 --processes 1,2 --per-shard 200

Simulated CC3M-style data: ``--shards`` img2dataset shards of ``--per-shard`` samples each (a small JPEG and its
caption; 500 per shard by default, as in issue 16's measurement), written once to ``--cache`` (outside the repo).

Each measurement is a fresh process that imports everything, then records its resident memory (RSS, from
``/proc/self/status``), opens the training source, records RSS again, builds the training pipeline as a process
``k`` of ``n`` would (host batches of ``--batch``, 64-px views, CLIP BPE, two read threads) and takes the first
batch. It reports seconds to open the source, seconds to the first batch, and RSS after import / after opening /
after the first batch. Sources:

* ``stream``: ``{'kind': 'webdataset', 'streaming': True}``, the default of ``configs/paper_cc3m.py``;
* ``index``: ``{'kind': 'webdataset'}`` (random access: indexes every member of every shard on every host);
* ``records``: the same samples converted to array_record (``{'kind': 'records'}``, random access);
* ``imagefolder``: the same images as files in 10 class folders (random access; only up to ``--max-files``; a
  classification source has no captions, so only its opening is measured).

Against the shard count all sources run as process 0 of 1; against the process count the streaming source runs
``n`` processes at once on ``--shards``'s largest value (no JAX distributed runtime is needed: each process is
given its index). Output: JSON lines (``kind``: machine, startup), then a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

SOURCES = ("stream", "index", "records", "imagefolder")


def _tiny_jpeg(seed: int) -> bytes:
  import numpy as np
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
    buffer, format="JPEG", quality=70
  )
  return buffer.getvalue()


def write_data(cache: pathlib.Path, num_shards: int, per_shard: int, max_files: int) -> None:
  """The shards (and, once, their array_record and ImageFolder copies) under ``cache``; kept between runs."""
  shards = cache / "shards"
  shards.mkdir(parents=True, exist_ok=True)
  images = [_tiny_jpeg(i) for i in range(16)]
  for shard in range(num_shards):
    path = shards / f"{shard:05d}.tar"
    if path.exists():
      continue
    with tarfile.open(path.with_suffix(".tmp"), "w") as tar:
      for i in range(per_shard):
        key = f"{shard:05d}{i:05d}"
        for name, data in (
          (f"{key}.jpg", images[i % 16]),
          (f"{key}.txt", f"a photo number {i} of shard {shard}".encode()),
        ):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    path.with_suffix(".tmp").rename(path)
  from lmstruct.data import records

  for count in sorted({40, num_shards}):
    name = f"n{count}"
    if not list((cache / "records").glob(f"{name}-*")):
      examples = (
        {"image_bytes": images[i % 16], "captions": [f"a photo number {i}"], "image_id": str(i)}
        for i in range(count * per_shard)
      )
      (cache / "records").mkdir(exist_ok=True)
      records.write_shard(cache / "records" / records.shard_name(name, 0, 1), examples)
  folder = cache / "imagefolder"
  if not folder.exists():
    for i in range(max_files):
      target = folder / f"class{i % 10}" / f"{i:07d}.jpg"
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(images[i % 16])


def source_config(kind: str, cache: pathlib.Path, num_shards: int, per_shard: int) -> dict[str, Any]:
  shards = f"{cache}/shards/{{00000..{num_shards - 1:05d}}}.tar"
  if kind == "stream":
    return {"kind": "webdataset", "shards": shards, "streaming": True}
  if kind == "index":
    return {"kind": "webdataset", "shards": shards}
  if kind == "records":
    return {"kind": "records", "path": str(cache / "records" / f"n{num_shards}")}
  return {"kind": "imagefolder", "root": str(cache / "imagefolder")}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
  """Inside a fresh process: open the source, build the pipeline, take one batch; seconds and RSS."""
  start = time.perf_counter()
  from lmstruct.data import pipeline, sources
  from lmstruct.data.tokenize import get_tokenizer

  tokenize = get_tokenizer("clip", context_length=32)
  imported = common.memory_mib()
  opened_at = time.perf_counter()
  source = sources.build_source(spec["source"])
  opened = common.memory_mib()
  open_s = time.perf_counter() - opened_at
  if spec["source"]["kind"] == "imagefolder":
    return {
      "open_s": open_s,
      "first_batch_s": None,
      "since_launch_s": time.perf_counter() - start,
      "rows": 0,
      "rss_import_mib": imported["rss_mib"],
      "rss_open_mib": opened["rss_mib"],
      "rss_first_batch_mib": None,
    }
  batches = pipeline.train_pipeline(
    source,
    tokenize=tokenize,
    global_batch_size=spec["batch"] * spec["count"],
    seed=0,
    image_size=64,
    shard_index=spec["index"],
    shard_count=spec["count"],
  )
  first = next(batches)
  first_batch_s = time.perf_counter() - opened_at
  batches.close()
  return {
    "open_s": open_s,
    "first_batch_s": first_batch_s,
    "since_launch_s": time.perf_counter() - start,
    "rows": int(first["text"].shape[0]),
    "rss_import_mib": imported["rss_mib"],
    "rss_open_mib": opened["rss_mib"],
    "rss_first_batch_mib": common.memory_mib()["rss_mib"],
  }


def launch(spec: dict[str, Any]) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen(
    [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, stdout=subprocess.PIPE, text=True
  )


def run(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Runs the specs as concurrent processes; their results in order."""
  processes = [launch(s) for s in specs]
  results = []
  for process in processes:
    out, _ = process.communicate(timeout=900)
    if process.returncode:
      raise RuntimeError(f"measurement failed ({process.returncode}); see its stderr above")
    results.append(json.loads(out.strip().splitlines()[-1]))
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shards", default="40,200,400", help="shard counts (each of --per-shard samples)")
  parser.add_argument("--per-shard", type=int, default=500)
  parser.add_argument("--processes", default="1,2,4", help="process counts for the streaming source")
  parser.add_argument("--sources", default=",".join(SOURCES), help=f"any of {SOURCES}")
  parser.add_argument("--max-files", type=int, default=40_000, help="ImageFolder files (up to this many samples)")
  parser.add_argument("--batch", type=int, default=32, help="examples per process batch")
  parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats (medians reported)")
  parser.add_argument("--cache", default=str(common.REPO_ROOT.parent / "lmstruct-bench-shards"))
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(measure(json.loads(args.worker))))
    return

  cache = pathlib.Path(args.cache)
  shard_counts = [int(s) for s in args.shards.split(",")]
  kinds = args.sources.split(",")
  write_data(cache, max(shard_counts), args.per_shard, args.max_files)
  records = [{"kind": "machine", **common.machine(), "per_shard": args.per_shard, "batch": args.batch}]
  common.emit(records[0])
  runs: dict[tuple, list[dict[str, Any]]] = {}
  for _ in range(args.repeats):
    for num_shards in shard_counts:
      for kind in kinds:
        samples = num_shards * args.per_shard
        if (kind == "imagefolder" and samples > args.max_files) or (
          kind == "records" and num_shards not in (40, max(shard_counts))
        ):
          continue
        spec = {
          "source": source_config(kind, cache, num_shards, args.per_shard),
          "index": 0,
          "count": 1,
          "batch": args.batch,
        }
        result = run([spec])[0]
        common.emit({"kind": "run", "source": kind, "shards": num_shards, "processes": 1, **result})
        runs.setdefault((kind, num_shards, 1), []).append(result)
    for count in (int(p) for p in args.processes.split(",")):
      specs = [
        {
          "source": source_config("stream", cache, max(shard_counts), args.per_shard),
          "index": k,
          "count": count,
          "batch": args.batch,
        }
        for k in range(count)
      ]
      results = run(specs)
      for result in results:
        common.emit({"kind": "run", "source": "stream", "shards": max(shard_counts), "processes": count, **result})
      runs.setdefault(("stream", max(shard_counts), count), []).extend(results)
  import statistics

  for (kind, num_shards, count), results in runs.items():
    record = {
      "kind": "startup",
      "source": kind,
      "shards": num_shards,
      "samples": num_shards * args.per_shard,
      "processes": count,
      "runs": results,
    }
    for key in ("open_s", "first_batch_s", "since_launch_s", "rss_import_mib", "rss_open_mib", "rss_first_batch_mib"):
      values = [r[key] for r in results if r[key] is not None]
      record[key] = statistics.median(values) if values else None
    record["index_mib"] = statistics.median(r["rss_open_mib"] - r["rss_import_mib"] for r in results)
    common.emit(record)
    records.append(record)
  common.write_json_lines(args.json_out, records)
  print()
  print(
    common.table(
      list(common.iter_rows(records, "startup")),
      [
        ("source", "source"),
        ("shards", "shards"),
        ("samples", "samples"),
        ("processes", "processes"),
        ("open_s", "open s"),
        ("first_batch_s", "first batch s"),
        ("index_mib", "index MiB"),
        ("rss_first_batch_mib", "RSS MiB"),
      ],
      title=f"input start-up, {records[0]['cpu']} ({records[0]['cores']} cores), commit {records[0]['commit']}, "
      f"{records[0]['date']}",
    )
  )


if __name__ == "__main__":
  main()
