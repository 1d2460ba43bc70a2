"""The paper's evaluation suite: its configs, every registered tfds dataset through it on mock data (no TensorFlow,
no download), and the tables of its results."""
import logging

import jax
import numpy as np
import pytest

from lmstruct.data.tokenize import get_tokenizer
from lmstruct.eval import mock_tfds, suite, tables
from lmstruct.eval.registry import run_evaluators
from lmstruct.models import build_model, input_shapes
from lmstruct.train.evaluation import build_evaluators, make_encoders
from lmstruct.train.sharding import make_mesh

ZERO_SHOT = ("cifar10", "cifar100", "imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
LINEAR_PROBE = ("caltech101", "svhn", "stl10", "cifar10", "cifar100", "dtd", "fgvc_aircraft", "oxford_pets",
                "rendered_sst2", "food101", "gtsrb", "stanford_cars", "flowers102", "imagenet")


def test_suite_covers_the_papers_tables():
  evals = suite.suite_evals(tfds_dir="/tfds", folders="/folders")
  assert {n for n in evals if n.startswith("zeroshot_")} == {f"zeroshot_{k}" for k in ZERO_SHOT}
  assert {n for n in evals if n.startswith("linear_probe_")} == {f"linear_probe_{k}" for k in LINEAR_PROBE}
  assert suite.TABLE3 == LINEAR_PROBE and (*suite.TABLE1, *suite.TABLE2) == ZERO_SHOT
  cifar = evals["zeroshot_cifar10"]
  assert cifar["data"] == {"kind": "tfds", "name": "cifar10", "split": "test", "data_dir": "/tfds"}
  assert (cifar["templates"], cifar["class_names"]) == ("paper", "cifar10")
  assert cifar["prepare"] == "tfds build cifar10 --file_format=array_record --data_dir=/tfds"
  assert evals["zeroshot_imagenet_a"]["class_subset"] == "imagenet_a"
  assert evals["zeroshot_imagenet"]["data"]["split"] == "validation"
  assert "--manual_dir" in evals["zeroshot_imagenet"]["prepare"]
  aircraft = evals["linear_probe_fgvc_aircraft"]
  assert aircraft["train_data"] == {"kind": "imagefolder", "root": "/folders/fgvc_aircraft/train"}
  assert aircraft["val_data"]["root"] == "/folders/fgvc_aircraft/val" and aircraft["features"] == "backbone"
  assert "/folders/fgvc_aircraft/{test|train|val}/<class>/<image>" in aircraft["prepare"]
  assert set(evals["linear_probe_dtd"]) >= {"train_data", "val_data", "test_data"}
  assert "val_data" not in evals["linear_probe_cifar10"]


def test_suite_options():
  clip = suite.suite_evals(tfds_dir="t", folders="f", prompts="clip", every_steps=500, features="projected",
                           use_folders=("imagenet_a",), only=("imagenet_a", "cifar10"))
  assert sorted(clip) == ["linear_probe_cifar10", "zeroshot_cifar10", "zeroshot_imagenet_a"]
  assert clip["zeroshot_cifar10"]["templates"] == "clip_cifar10"
  assert clip["zeroshot_imagenet_a"]["templates"] == "clip_imagenet"
  # An ImageFolder of ImageNet-A holds only its 200 classes: no subset of the 1000 labels.
  assert clip["zeroshot_imagenet_a"]["data"] == {"kind": "imagefolder", "root": "f/imagenet_a/test"}
  assert "class_subset" not in clip["zeroshot_imagenet_a"]
  assert {e["every_steps"] for e in clip.values()} == {500}
  assert clip["linear_probe_cifar10"]["features"] == "projected"
  with pytest.raises(ValueError, match=r"unknown prompts 'openai'; valid choices: \['clip', 'paper'\]"):
    suite.suite_evals(tfds_dir="t", folders="f", prompts="openai")
  with pytest.raises(ValueError, match=r"unknown dataset in only 'imagenet1k' \(did you mean 'imagenet'\?\)"):
    suite.suite_evals(tfds_dir="t", folders="f", only=("imagenet1k",))


@pytest.fixture(scope="module")
def tiny_model():
  config = {"preset": "test"}
  model = build_model(config)
  (size, _, _), length = input_shapes(config)
  variables = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), np.zeros((1, length), np.int32))
  mesh = make_mesh()
  return model, variables, mesh, size, get_tokenizer("clip", context_length=length)


def test_every_registered_tfds_dataset_runs_through_the_suite_on_mock_data(tiny_model, tmp_path, caplog):
  model, variables, mesh, size, tokenize = tiny_model
  evals = suite.suite_evals(tfds_dir=str(tmp_path / "never-read"), folders=str(tmp_path / "absent"))
  for name, entry in evals.items():
    if entry["kind"] == "linear_probe":  # a short sweep: these are random examples
      entry.update(coarse_exponents=(-2.0, 0.0), refine_steps=(), max_iter=20)
  with caplog.at_level(logging.WARNING), mock_tfds.mock_tfds(num_examples=16):
    evaluators = build_evaluators(evals, data_dir=str(tmp_path), batch_size=16, image_size=size, tokenize=tokenize,
                                  mesh=mesh)
    results = run_evaluators(evaluators, *make_encoders(model, variables, mesh), step=3, workdir=tmp_path,
                             only_due=False)
  # The three ImageFolder datasets are absent: each is reported once, with where it belongs, and skipped.
  folder_only = {d.key for d in suite.DATASETS if d.tfds is None}
  skipped = [r.getMessage() for r in caplog.records if "dataset not found" in r.getMessage()]
  assert len(skipped) == len(folder_only) and all("docs/evaluation.md" in m for m in skipped)
  tfds_datasets = {d.key for d in suite.DATASETS if d.tfds}
  assert set(results) == ({f"zeroshot_{k}" for k in ZERO_SHOT} |
                          {f"linear_probe_{k}" for k in LINEAR_PROBE if k in tfds_datasets})
  for name, metrics in results.items():
    keys = {"acc1", "acc3", "acc5", "mean_per_class_recall"} if name.startswith("zeroshot_") else {"acc1"}
    assert keys <= set(metrics) and all(0.0 <= metrics[k] <= 1.0 for k in keys), name
  # ImageNet-A is scored among its 200 classes only; its mock labels range over all 1000.
  record = tables.io.read_metrics(tables.io.metrics_path(tmp_path, "zeroshot_imagenet_a", 3))["extra"]
  assert record["num_classes"] == 200 and record["class_names"][0] == "stingray"
  assert record["num_images"] + record["num_outside_candidates"] == 16
  imagenet = tables.io.read_metrics(tables.io.metrics_path(tmp_path, "zeroshot_imagenet", 3))["extra"]
  assert imagenet["class_names"][:2] == ["tench", "goldfish"]
  # The tables of this run: every tfds dataset has its cell; the ImageFolder ones show the missing mark.
  text = tables.paper_tables({"mock": tables.run_results(tmp_path)})
  row = next(line for line in text.splitlines() if line.startswith("| mock | ") and "–" in line)
  assert row.count("–") == len(folder_only) + 1  # three datasets and the average
