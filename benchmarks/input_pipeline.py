"""Training input-pipeline throughput on real COCO JPEGs: decode, two image views, EDA, tokenize, batch.

Reads the coco-mini photos and captions (``$LMSTRUCT_SHARED_DATA``, default ``../shared/data`` beside the
checkout) into an in-memory list source of encoded JPEG bytes, runs :func:`lmstruct.data.pipeline.train_pipeline`
(host batches, no device transfer) with 0, 1 and 2 grain worker processes, and prints one JSON object: for each
worker count, examples per second of every run and their median. Each run builds a fresh pipeline, discards its
first batch (worker start-up) and times the next ``--batches`` batches.

    python benchmarks/input_pipeline.py --image_size=224 --batch_size=32 --batches=6 --runs=3
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from lmstruct import paths
from lmstruct.data import pipeline

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Output image side.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
_BATCHES = flags.DEFINE_integer("batches", 6, "Timed batches per run.")
_RUNS = flags.DEFINE_integer("runs", 3, "Runs per worker count (the median is reported).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker-process counts to measure.")


def coco_source(root: pathlib.Path) -> list[dict]:
  """Stored examples (``image_bytes``, ``captions``, ``image_id``) for every coco-mini photo with a caption."""
  source = []
  for split in ("train2017", "val2017"):
    annotations = json.loads((root / "coco-mini" / "annotations" / f"captions_{split}.json").read_text())
    captions: dict[int, list[str]] = {}
    for annotation in annotations["annotations"]:
      captions.setdefault(annotation["image_id"], []).append(annotation["caption"])
    for image in annotations["images"]:
      if image["id"] in captions:
        source.append(
          {
            "image_bytes": (root / "coco-mini" / split / image["file_name"]).read_bytes(),
            "captions": captions[image["id"]],
            "image_id": str(image["id"]),
          }
        )
  if not source:
    raise FileNotFoundError(f"no coco-mini captions/images under {root}")
  return source


def whitespace_tokenize(texts: Sequence[str], context_length: int = 77) -> np.ndarray:
  """Fallback tokenizer: lower-cased words hashed to ids, start 1, end 2, zero padding."""
  out = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = [1] + [3 + sum(word.encode()) % 49000 for word in text.lower().split()][: context_length - 2] + [2]
    out[row, : len(ids)] = ids
  return out


def tokenizer() -> tuple[str, pipeline.Tokenize]:
  """CLIP's tokenizer when it can be built here, else the whitespace fallback; with its name."""
  try:
    from lmstruct.data.tokenize import get_tokenizer

    return "clip", get_tokenizer("clip")
  except (ImportError, OSError, RuntimeError) as error:
    print(f"CLIP tokenizer unavailable ({error}); using a whitespace tokenizer", file=sys.stderr)
    return "whitespace", whitespace_tokenize


def run_once(source: list[dict], tokenize: pipeline.Tokenize, workers: int, seed: int) -> float:
  """Examples per second over ``--batches`` batches of a fresh pipeline, after one warm-up batch."""
  iterator = pipeline.train_pipeline(
    source,
    tokenize=tokenize,
    global_batch_size=_BATCH_SIZE.value,
    seed=seed,
    image_size=_IMAGE_SIZE.value,
    worker_count=workers,
    shard_index=0,
    shard_count=1,
  )
  try:
    next(iterator)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(iterator)
    elapsed = time.perf_counter() - start
  finally:
    iterator.close()
  return _BATCHES.value * _BATCH_SIZE.value / elapsed


def main(argv: Sequence[str]) -> None:
  """Measures every requested worker count and prints the JSON report."""
  del argv
  source = coco_source(paths.shared_data())
  name, tokenize = tokenizer()
  results = []
  for workers in (int(w) for w in _WORKERS.value):
    runs = [run_once(source, tokenize, workers, seed) for seed in range(_RUNS.value)]
    results.append(
      {
        "worker_count": workers,
        "examples_per_s_median": round(statistics.median(runs), 2),
        "examples_per_s_runs": [round(r, 2) for r in runs],
      }
    )
  print(
    json.dumps(
      {
        "benchmark": "input_pipeline",
        "image_size": _IMAGE_SIZE.value,
        "batch_size": _BATCH_SIZE.value,
        "timed_batches": _BATCHES.value,
        "tokenizer": name,
        "num_images": len(source),
        "cpu_count": os.cpu_count(),
        "results": results,
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  app.run(main)
