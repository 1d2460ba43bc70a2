"""scripts/shape_budget.py: the supervised shape-budget diagnostic of the main job (README, "The main job").

The smoke run uses the `test` variant of configs/clip_scenes.py (32 px, the tiny test towers), so it compiles in
seconds; the committed measurement uses the main job's own config."""

import importlib.util
import json
import pathlib

import numpy as np

from lmstruct.data import scenes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script():
  spec = importlib.util.spec_from_file_location("shape_budget", REPO / "scripts" / "shape_budget.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_rendered_labels_are_the_leftmost_objects_shape():
  config = scenes.SceneConfig(image_size=32, max_rotation=0.0)
  images, labels = _script().render_split(config, "train", 12)
  assert images.shape == (12, 32, 32, 3) and images.dtype == np.float32
  for index, label in enumerate(labels):
    scene, _ = scenes.example_scenes(config, "train", index)
    leftmost = min(scene.objects, key=lambda o: o.x)
    assert label == leftmost.shape


def test_rotation_knob_reaches_the_rendered_scenes():
  upright = scenes.SceneConfig(image_size=32, max_rotation=0.0)
  for index in range(8):
    scene, _ = scenes.example_scenes(upright, "test", index)
    assert all(obj.angle == 0.0 for obj in scene.objects)


def test_smoke_run_writes_one_record_per_rotation_and_seed(tmp_path):
  out = tmp_path / "budget.jsonl"
  records = _script().main(
    [
      "--config",
      f"{REPO / 'configs' / 'clip_scenes.py'}:variant=test",
      "--rotations",
      "45,0",
      "--seeds",
      "0",
      "--steps",
      "3",
      "--batch",
      "8",
      "--train-size",
      "16",
      "--test-size",
      "10",
      "--eval-every",
      "2",
    ]
    + ["--out", str(out)]
  )
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert lines == records
  assert [(r["max_rotation"], r["seed"]) for r in records] == [(45.0, 0), (0.0, 0)]
  for record in records:
    assert list(record["curve"]) == ["2", "3"]
    assert record["test_accuracy"] == record["curve"]["3"]
    # accuracy on 10 test scenes is a multiple of 1/10
    assert all(abs(v * 10 - round(v * 10)) < 1e-9 for v in record["curve"].values())
    assert record["chance"] == 1 / 7 and record["commit"] and record["date"]
