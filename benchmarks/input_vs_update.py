"""Is the input pipeline the bottleneck? Training-pipeline examples/s against update examples/s at the same batch.

    LMSTRUCT_SHARED_DATA=/work/shared/data .venv/bin/python benchmarks/input_vs_update.py     # tiny and B/32 (~9 min)
    .venv/bin/python benchmarks/input_vs_update.py --configs tiny --workers 0,1 --batches 2 --steps 5

Data: the coco-mini JPEGs and captions under ``$LMSTRUCT_SHARED_DATA/coco-mini`` (default ``../shared/data`` beside
the checkout), held in memory as encoded bytes (an in-memory list source, so storage reads are not timed).

Pipeline: :func:`lmstruct.data.pipeline.train_pipeline` exactly as training runs it — decode, the original view
(CLIP resize + centre crop), the augmented view (default augmentation), a random caption and its EDA-augmented
copy, both tokenized with CLIP's BPE at the configuration's context length — batched on the host, with 0 (in-process
threads), 1 and 2 grain worker processes. Each measurement builds a fresh pipeline, discards its first batch
(worker start-up) and times the next ``--batches``.

Update: lmstruct's full objective (in-modal base + separation + bridge + geometric; it reads both views, as the
pipeline produces them) at the same batch, float32, on a fixed synthetic batch.

Isolated rates: pipeline and update measurements alternate (round robin, ``--rounds``), each alone on the machine;
ratio = pipeline examples/s ÷ update examples/s (> 1: the input keeps up), and the grain workers needed =
⌈update rate ÷ one worker's rate⌉. Fed: the update is then run on the pipeline's own batches (next batch → device
→ update, ``--fed-steps`` each) for each worker count; fed ÷ synthetic step rate < 1 shows the slowdown that
sharing the two cores with the input work costs.

Output: JSON lines (``kind``: machine, input), then a table.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from lmstruct import paths  # noqa: E402

FULL_OBJECTIVE = {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}}


def coco_examples(root: pathlib.Path) -> list[dict[str, Any]]:
  """Stored examples {image_bytes, captions, image_id} of every captioned coco-mini image (train and val)."""
  examples = []
  for split in ("train2017", "val2017"):
    path = root / "coco-mini" / "annotations" / f"captions_{split}.json"
    if not path.exists():
      continue
    data = json.loads(path.read_text())
    by_image: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
      by_image.setdefault(annotation["image_id"], []).append(annotation["caption"])
    for image in data["images"]:
      file = root / "coco-mini" / split / image["file_name"]
      if image["id"] in by_image and file.exists():
        examples.append(
          {"image_bytes": file.read_bytes(), "captions": by_image[image["id"]], "image_id": str(image["id"])}
        )
  if not examples:
    raise FileNotFoundError(f"no captioned coco-mini images under {root} (set LMSTRUCT_SHARED_DATA)")
  return examples


def make_pipeline(source, ref: dict[str, Any], tokenize, workers: int, seed: int):
  from lmstruct.data import pipeline

  return pipeline.train_pipeline(
    source,
    tokenize=tokenize,
    global_batch_size=ref["batch"],
    seed=seed,
    image_size=ref["image_size"],
    worker_count=workers,
    shard_index=0,
    shard_count=1,
  )


def pipeline_rate(source, ref, tokenize, workers: int, batches: int, seed: int) -> dict[str, Any]:
  """Examples/s of a fresh pipeline over `batches` batches after its first (discarded) one."""
  iterator = make_pipeline(source, ref, tokenize, workers, seed)
  try:
    start = time.perf_counter()
    first = next(iterator)
    startup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    seconds = time.perf_counter() - start
  finally:
    iterator.close()
  shapes = {k: list(v.shape) for k, v in first.items()}
  return {
    "workers": workers,
    "examples_per_s": batches * ref["batch"] / seconds,
    "seconds": seconds,
    "first_batch_s": startup_s,
    "shapes": shapes,
  }


def fed_rate(built, source, ref, tokenize, workers: int, steps: int, seed: int) -> dict[str, Any]:
  """Update steps fed by the pipeline's own batches (host batch → device → update); seconds per step."""
  import jax

  from lmstruct.train.sharding import batch_sharding, make_mesh

  sharding = batch_sharding(make_mesh(devices=jax.devices()[:1]))
  iterator = make_pipeline(source, ref, tokenize, workers, seed)
  try:
    common.run_lmstruct_steps(built, 1, "full", jax.device_put(next(iterator), sharding))  # start-up, untimed
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      batch = jax.device_put(next(iterator), sharding)
      common.run_lmstruct_steps(built, 1, "full", batch)
      times.append(time.perf_counter() - start)
  finally:
    iterator.close()
  return {"workers": workers, **common.summary(times), "times_s": times}


def measure(config: str, args: argparse.Namespace, source: list[dict[str, Any]]) -> dict[str, Any]:
  from lmstruct.data.tokenize import get_tokenizer

  ref = common.REFERENCE[config]
  tokenize = get_tokenizer("clip", context_length=ref["context"])
  workers = [int(w) for w in args.workers.split(",")]
  built = common.build_lmstruct_updates(ref, {"full": FULL_OBJECTIVE}, dtype=args.dtype)
  common.run_lmstruct_steps(built, 1, "full")  # warm-up
  pipe: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
  update_times: list[float] = []
  per_round = max(1, math.ceil(args.steps / args.rounds))
  for r in range(args.rounds):
    for w in workers:
      pipe[w].append(pipeline_rate(source, ref, tokenize, w, args.batches, seed=r))
    update_times += common.run_lmstruct_steps(built, per_round, "full")
  update_rate = ref["batch"] / statistics.median(update_times)
  record: dict[str, Any] = {
    "kind": "input",
    "config": config,
    "dtype": args.dtype,
    "batch": ref["batch"],
    "image_size": ref["image_size"],
    "context": ref["context"],
    "examples_in_source": len(source),
    "update": {**common.summary(update_times), "times_s": update_times, "examples_per_s": update_rate},
    "pipeline": {},
    "fed": {},
  }
  for w, runs in pipe.items():
    rate = statistics.median(run["examples_per_s"] for run in runs)
    record["pipeline"][str(w)] = {"examples_per_s": rate, "runs": runs, "ratio_to_update": rate / update_rate}
  one = record["pipeline"].get("1", record["pipeline"][str(workers[0])])["examples_per_s"]
  record["workers_needed"] = math.ceil(update_rate / one)
  for w in [int(x) for x in args.fed_workers.split(",") if x != ""]:
    fed = fed_rate(built, source, ref, tokenize, w, args.fed_steps, seed=100 + w)
    fed["examples_per_s"] = ref["batch"] / fed["median_s"]
    fed["ratio_to_synthetic"] = fed["examples_per_s"] / update_rate
    record["fed"][str(w)] = fed
  return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny,B32", help="comma-separated: tiny, B32")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--workers", default="0,1,2", help="grain worker counts for the isolated pipeline rate")
  parser.add_argument("--batches", type=int, default=2, help="timed batches per pipeline measurement")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of pipeline and update measurements")
  parser.add_argument("--steps", type=int, default=6, help="timed synthetic-batch updates in all (≥ 5)")
  parser.add_argument("--fed-workers", default="1", help="worker counts for the pipeline-fed update ('' for none)")
  parser.add_argument("--fed-steps", type=int, default=5, help="timed pipeline-fed updates per worker count")
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  args = parser.parse_args()

  source = coco_examples(paths.shared_data())
  records = [{"kind": "machine", **common.machine(), "data": str(paths.shared_data() / "coco-mini")}]
  common.emit(records[0])
  for config in args.configs.split(","):
    record = measure(config, args, source)
    common.emit(record)
    records.append(record)
  common.write_json_lines(args.json_out, records)

  rows = []
  for r in common.iter_rows(records, "input"):
    rows.append(
      {"config": r["config"], "what": "update (synthetic batch)", "ex_s": r["update"]["examples_per_s"], "ratio": 1.0}
    )
    for w, p in r["pipeline"].items():
      rows.append(
        {
          "config": r["config"],
          "what": f"pipeline, {w} workers",
          "ex_s": p["examples_per_s"],
          "ratio": p["ratio_to_update"],
        }
      )
    for w, f in r["fed"].items():
      rows.append(
        {
          "config": r["config"],
          "what": f"update fed by pipeline, {w} workers",
          "ex_s": f["examples_per_s"],
          "ratio": f["ratio_to_synthetic"],
        }
      )
    rows.append(
      {
        "config": r["config"],
        "what": "grain workers needed",
        "ex_s": None,
        "ratio": None,
        "needed": r["workers_needed"],
      }
    )
  print()
  print(
    common.table(
      rows,
      [
        ("config", "config"),
        ("what", "measurement"),
        ("ex_s", "examples/s"),
        ("ratio", "÷ update"),
        ("needed", "workers needed"),
      ],
      title=f"input pipeline vs update, {records[0]['cpu']} ({records[0]['cores']} cores), "
      f"commit {records[0]['commit']}, {records[0]['date']}",
    )
  )


if __name__ == "__main__":
  main()
