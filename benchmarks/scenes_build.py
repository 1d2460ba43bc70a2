"""Build time of the embedded scenes dataset (TFDS, array_record), and random-access read speed of what it wrote.

Builds a config holding only a training split of ``--train`` examples (knobs of the preset ``--preset``) into a fresh
temporary directory with ``--workers`` render processes, then reads ``--reads`` random examples back through
:func:`lmstruct.data.scenes_builder.load_scenes`. With ``--all-splits`` it also builds the preset's other splits
(validation, test, VQA, NLVR, VE at their default sizes). Prints one JSON object.

    .venv/bin/python benchmarks/scenes_build.py --train 20000 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import tempfile
import time

import numpy as np

from lmstruct.data import scenes_builder


def directory_bytes(path: pathlib.Path) -> int:
  """Total size in bytes of the files under ``path``."""
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed_build(data_dir: pathlib.Path, config: scenes_builder.ScenesBuilderConfig, workers: int) -> float:
  """Seconds taken to build ``config`` into ``data_dir``."""
  builder = scenes_builder.scenes_builder(data_dir, config, num_workers=workers)
  start = time.perf_counter()
  builder.download_and_prepare()
  return time.perf_counter() - start


def main() -> None:
  """Parses flags, runs the builds and the read check, prints the JSON report."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--train", type=int, default=20_000, help="training examples to build")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="render processes")
  parser.add_argument("--preset", default="default", choices=scenes_builder.PRESET_NAMES, help="knobs to use")
  parser.add_argument("--reads", type=int, default=2_000, help="random examples to read back")
  parser.add_argument("--all-splits", action="store_true", help="also build the preset's other splits")
  args = parser.parse_args()

  preset = next(c for c in scenes_builder.PRESETS if c.name == args.preset)
  knobs = dataclasses.asdict(preset.scene)
  report = {"preset": args.preset, "workers": args.workers, "cpu_count": os.cpu_count(), "train": args.train}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = pathlib.Path(tmp)
    train_only = scenes_builder.scenes_config(split_sizes={"train": args.train}, **knobs)
    seconds = timed_build(data_dir, train_only, args.workers)
    report["train_build_seconds"] = round(seconds, 2)
    report["train_examples_per_second"] = round(args.train / seconds, 1)
    report["train_bytes_on_disk"] = directory_bytes(data_dir)

    source = scenes_builder.load_scenes("train", data_dir, train_only)
    order = np.random.default_rng(0).integers(0, len(source), args.reads)
    start = time.perf_counter()
    for index in order:
      source[int(index)]
    report["read_examples_per_second"] = round(args.reads / (time.perf_counter() - start), 1)

    if args.all_splits:
      sizes = {split: n for split, n in scenes_builder.DEFAULT_SPLIT_SIZES if split != "train"}
      others = scenes_builder.scenes_config(split_sizes=sizes, **knobs)
      seconds = timed_build(data_dir, others, args.workers)
      report["other_splits"] = sizes
      report["other_splits_build_seconds"] = round(seconds, 2)
  print(json.dumps(report))


if __name__ == "__main__":
  main()
