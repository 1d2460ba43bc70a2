"""Input rate per core against peers: lmstruct's training pipeline vs open_clip's webdataset + torch DataLoader vs
a tf.data pipeline, doing the same work on the same COCO JPEGs.

    LMSTRUCT_SHARED_DATA=/work/shared/data .venv/bin/python benchmarks/input_rate_peers.py     (~6 min)
    .venv/bin/python benchmarks/input_rate_peers.py --rounds 3 --batches 4 --sides lmstruct,open_clip

Data: the coco-mini photos with their first caption, written once as img2dataset-style webdataset shards (4
shards, ``<key>.jpg`` + ``<key>.txt``) to a temporary folder; every side streams the same tars.

The work, per example, on every side: read the sample from the tar, decode the JPEG, the original view (resize the
short side to 224 bicubic, centre crop, CLIP normalisation), the augmented view (random resized crop with scale
0.5–1 to 224, horizontal flip with p = 0.5, colour jitter 0.4/0.4/0.4/0.1 with p = 0.8, CLIP normalisation), EDA of
the caption (lmstruct's ``eda`` module, the same Python on every side: open_clip has no EDA), CLIP BPE of the
caption and its EDA copy at context 77, and batching (32).

* ``lmstruct``: ``train_pipeline`` on ``{'kind': 'webdataset', 'streaming': True}``, in-process (``worker_count=0``,
  one read thread), host batches.
* ``open_clip`` (``benchmarks/peer_input_worker.py`` in the peer virtualenv, see benchmarks/README.md):
  ``webdataset.WebDataset`` → ``decode('pilrgb')`` → map (open_clip's own eval transform ``image_transform(224,
  is_train=False)`` for the original view, torchvision ``RandomResizedCrop`` / ``RandomHorizontalFlip`` /
  ``ColorJitter`` for the augmented one, open_clip's tokenizer) → ``batched`` → ``WebLoader`` with
  ``num_workers=0``, ``torch.set_num_threads(1)``.
* ``tf.data`` (the same worker file in a ``tensorflow-cpu`` virtualenv): the tar samples through
  ``from_generator``, ``tf.image`` decode / resize / crop / flip / colour ops, EDA and BPE (lmstruct's, through
  ``tf.numpy_function``) in one ``map``, ``batch``; one thread (``num_parallel_calls=1``, private thread pool of
  1, intra/inter-op threads 1).

Every side runs one core's worth of work (no parallelism inside the side), so examples/s is the rate per core.
Each side is its own process; the sides are measured alternately (round robin, ``--rounds``); each measurement
builds a fresh pipeline, discards ``--warmup`` batches and times ``--batches``. Output: JSON lines (``kind``:
machine, side), then a table with medians and the ratio to the best peer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import sys
import tarfile
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from lmstruct import paths  # noqa: E402

WORKER = pathlib.Path(__file__).resolve().parent / "peer_input_worker.py"
IMAGE_SIZE, CONTEXT, BATCH = 224, 77, 32


def write_shards(folder: pathlib.Path, num_shards: int = 4) -> int:
  """coco-mini photos + first captions as webdataset shards in ``folder``; returns the number of samples."""
  samples = []
  for split in ("train2017", "val2017"):
    annotations = json.loads((paths.shared_data() / "coco-mini" / "annotations" / f"captions_{split}.json").read_text())
    first: dict[int, str] = {}
    for annotation in annotations["annotations"]:
      first.setdefault(annotation["image_id"], annotation["caption"].strip())
    for image in annotations["images"]:
      path = paths.shared_data() / "coco-mini" / split / image["file_name"]
      if image["id"] in first and path.exists():
        samples.append((f"{image['id']:012d}", path.read_bytes(), first[image["id"]]))
  folder.mkdir(parents=True, exist_ok=True)
  for shard in range(num_shards):
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
      for key, jpeg, caption in samples[shard::num_shards]:
        for name, data in ((f"{key}.jpg", jpeg), (f"{key}.txt", caption.encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  return len(samples)


class LmstructSide:
  """lmstruct's training pipeline on the streaming source, one read thread, no worker processes."""

  def __init__(self, spec: dict[str, Any]):
    from lmstruct.data import pipeline, streaming
    from lmstruct.data.tokenize import get_tokenizer

    self.spec, self.pipeline, self.streaming = spec, pipeline, streaming
    self.tokenize = get_tokenizer("clip", context_length=CONTEXT)

  def rate(self, batches: int, warmup: int, seed: int) -> dict[str, Any]:
    iterator = self.pipeline.train_pipeline(
      self.streaming.WebDatasetStream(self.spec["shards"], shuffle_buffer=100),
      tokenize=self.tokenize,
      global_batch_size=BATCH,
      seed=seed,
      image_size=IMAGE_SIZE,
      worker_count=0,
      read_threads=1,
      shard_index=0,
      shard_count=1,
    )
    try:
      for _ in range(warmup):
        next(iterator)
      start = time.perf_counter()
      for _ in range(batches):
        batch = next(iterator)
      seconds = time.perf_counter() - start
    finally:
      iterator.close()
    return {
      "examples_per_s": batches * BATCH / seconds,
      "seconds": seconds,
      "shapes": {k: list(v.shape) for k, v in batch.items()},
    }


def lmstruct_worker(spec: dict[str, Any]) -> None:
  side = LmstructSide(spec)

  def handle(command: dict[str, Any]) -> dict[str, Any]:
    if command["cmd"] == "rate":
      return side.rate(int(command["batches"]), int(command["warmup"]), int(command["seed"]))
    raise ValueError(f"unknown command {command['cmd']!r}")

  common.serve(handle)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sides", default="lmstruct,open_clip,tf.data")
  parser.add_argument("--peer-python", default=common.DEFAULT_PEER_PYTHON, help="open_clip's virtualenv python")
  parser.add_argument(
    "--tf-python", default=os.environ.get("LMSTRUCT_TF_PYTHON", str(common.REPO_ROOT.parent / "tf-venv/bin/python"))
  )
  parser.add_argument("--rounds", type=int, default=5, help="alternations of the sides (medians reported)")
  parser.add_argument("--batches", type=int, default=4, help="timed batches per measurement")
  parser.add_argument("--warmup", type=int, default=1, help="discarded batches per measurement")
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    lmstruct_worker(json.loads(args.worker))
    return

  folder = pathlib.Path(tempfile.mkdtemp(prefix="lmstruct-input-rate-"))
  count = write_shards(folder / "shards")
  spec = {"shards": str(folder / "shards"), "image_size": IMAGE_SIZE, "context": CONTEXT, "batch": BATCH}
  from lmstruct.data import eda

  env = {
    **os.environ,
    "PYTHONPATH": str(common.REPO_ROOT),
    "JAX_PLATFORMS": "cpu",
    "OMP_NUM_THREADS": "1",
    "LMSTRUCT_WORDNET_DIR": str(eda.wordnet_directory()),
  }
  commands = {
    "lmstruct": [sys.executable, __file__, "--worker", json.dumps(spec)],
    "open_clip": [args.peer_python, str(WORKER), "--side", "open_clip", json.dumps(spec)],
    "tf.data": [args.tf_python, str(WORKER), "--side", "tf.data", json.dumps(spec)],
  }
  sides = args.sides.split(",")
  workers = {name: common.Worker(name, commands[name], env) for name in sides}
  records: list[dict[str, Any]] = [{"kind": "machine", **common.machine(), "samples": count, **spec}]
  common.emit(records[0])
  runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
  try:
    for round_index in range(args.rounds):
      for name in sides if round_index % 2 == 0 else sides[::-1]:
        runs[name].append(workers[name].call("rate", batches=args.batches, warmup=args.warmup, seed=round_index))
  finally:
    for worker in workers.values():
      worker.close()
  rates = {name: statistics.median(r["examples_per_s"] for r in results) for name, results in runs.items()}
  peers = [rates[name] for name in sides if name != "lmstruct"]
  for name in sides:
    record = {
      "kind": "side",
      "side": name,
      "examples_per_s_per_core": rates[name],
      "runs": [r["examples_per_s"] for r in runs[name]],
      "versions": runs[name][0].get("versions"),
      "ratio_to_best_peer": rates[name] / max(peers) if peers else None,
    }
    common.emit(record)
    records.append(record)
  common.write_json_lines(args.json_out, records)
  print()
  print(
    common.table(
      list(common.iter_rows(records, "side")),
      [("side", "side"), ("examples_per_s_per_core", "examples/s per core"), ("ratio_to_best_peer", "÷ best peer")],
      title=f"input rate per core, {records[0]['cpu']} ({records[0]['cores']} cores), commit {records[0]['commit']}, "
      f"{records[0]['date']}",
    )
  )


if __name__ == "__main__":
  main()
