"""Evaluators from config: fed from each class's declared inputs; caption-less classification data; human class
names; augmented views for bridge_residual; backbone features; the suite on a checkpoint from the CLI."""

import dataclasses
import json
import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from driver_utils import REPO, cli_env, load_config, write_webdataset

from lmstruct.data import augment, pipeline, scenes, sources
from lmstruct.data.tokenize import get_tokenizer
from lmstruct.eval import io
from lmstruct.eval.evaluators import DataInputs
from lmstruct.eval.registry import EVALUATORS
from lmstruct.eval.vl_tasks import VL_EVALUATORS
from lmstruct.models import build_model, input_shapes
from lmstruct.train.evaluation import build_evaluators, make_encoders
from lmstruct.train.loop import train_and_evaluate
from lmstruct.train.sharding import make_mesh

WNIDS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark


def scenes_test_source(size=32):
  return {
    "kind": "scenes",
    "split": "test",
    "knobs": {"image_size": size},
    "split_sizes": {"train": 8, "validation": 8, "test": 16},
  }


def wordnet_imagefolder(shared_data, root, per_class=4):
  """An ImageFolder of real COCO photos under three ImageNet WordNet-id folders (no captions)."""
  images = sorted((shared_data / "coco-mini" / "val2017").glob("*.jpg"))
  for c, wnid in enumerate(WNIDS):
    (root / wnid).mkdir(parents=True)
    for image in images[c * per_class : (c + 1) * per_class]:
      (root / wnid / image.name).write_bytes(image.read_bytes())
  return {"kind": "imagefolder", "root": str(root)}


class SpyTokenizer:
  """The real CLIP tokenizer, recording every text it is asked to tokenize."""

  def __init__(self, context_length):
    self.tokenize = get_tokenizer("clip", context_length=context_length)
    self.texts = []

  def __call__(self, texts):
    self.texts.extend(texts)
    return self.tokenize(texts)


def test_every_registered_evaluator_declares_its_inputs():
  for kind, cls in EVALUATORS.items():
    if cls in VL_EVALUATORS:  # fed by the ALBEF trainer, never by build_evaluators
      assert cls.inputs is None, kind
      with pytest.raises(ValueError, match=rf"evals.x: a '{kind}' evaluator reads a fusion model.*task = 'albef'"):
        build_evaluators({"x": {"kind": kind}}, data_dir="data", batch_size=8, image_size=16, tokenize=None, mesh=None)
      continue
    assert isinstance(cls.inputs, DataInputs), kind
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.inputs.sources.values()) | set(cls.inputs.optional_sources.values()) <= fields, kind
    label_field = "label_keys" if cls.inputs.several_labels else "label_key"
    for flag, field in (
      ("labels", label_field),
      ("class_names", "class_names"),
      ("num_classes", "num_classes"),
      ("mesh", "mesh"),
    ):
      assert not getattr(cls.inputs, flag) or field in fields, (kind, flag)


def test_build_evaluators_feeds_each_evaluator_from_its_declaration(tmp_path):
  source = scenes_test_source()
  tokenize = SpyTokenizer(16)
  mesh = make_mesh()
  evals = {
    "zs": {"kind": "zeroshot", "data": source, "label": "shape"},
    "probe": {"kind": "linear_probe", "train_data": source, "test_data": source, "label": "colour"},
    "ret": {"kind": "retrieval", "data": source, "captions": 2},
    "st": {"kind": "structure", "data": source},
  }
  zs, probe, ret, st = build_evaluators(
    evals, data_dir=str(tmp_path), batch_size=8, image_size=32, tokenize=tokenize, mesh=mesh, augment_config={}, seed=3
  )
  assert zs.class_names == list(scenes.SCENE_LABELS["shape"]) and zs.tokenize is tokenize
  assert (zs.label_key, zs.templates) == ("labels/shape", "scenes_shape")
  assert zs.batches.tokenize is None and zs.batches.augmentation is None
  assert probe.num_classes == len(scenes.SCENE_LABELS["colour"]) and probe.label_key == "labels/colour"
  assert ret.mesh is mesh and ret.batches.tokenize is tokenize and ret.batches.captions == 2
  # an empty data.augment means the training driver's default view
  default_view = augment.augmentation_from_config(augment.caption_safe_augment_config())
  assert st.batches.augmentation == default_view and st.batches.augment_seed == 3
  assert "text" not in next(iter(zs.batches())) and tokenize.texts == []  # the captions are never tokenized
  batch = next(iter(st.batches()))
  assert batch["image_aug"].shape == batch["image"].shape and "text" in batch and tokenize.texts
  with pytest.raises(ValueError, match=r"evals.zs.captions does not apply to a 'zeroshot' evaluator"):
    build_evaluators(
      {"zs": {"kind": "zeroshot", "data": source, "captions": 5}},
      data_dir=str(tmp_path),
      batch_size=8,
      image_size=32,
      tokenize=tokenize,
      mesh=mesh,
    )
  with pytest.raises(ValueError, match=r"must be one of .* got 'zero_shot' \(did you mean 'zeroshot'\?\)"):
    build_evaluators(
      {"zs": {"kind": "zero_shot", "data": source}},
      data_dir=str(tmp_path),
      batch_size=8,
      image_size=32,
      tokenize=tokenize,
      mesh=mesh,
    )
  with pytest.raises(ValueError, match=r"evals.p needs 'test_data'"):
    build_evaluators(
      {"p": {"kind": "linear_probe", "train_data": source}},
      data_dir=str(tmp_path),
      batch_size=8,
      image_size=32,
      tokenize=tokenize,
      mesh=mesh,
    )


def test_missing_dataset_is_reported_once_with_its_preparation_and_skipped(tmp_path, caplog):
  absent = {"kind": "imagefolder", "root": str(tmp_path / "absent")}
  evals = {
    "zs": {"kind": "zeroshot", "data": absent, "prepare": "download it to absent/"},
    "probe": {"kind": "linear_probe", "train_data": absent, "test_data": absent, "prepare": "download it to absent/"},
  }
  kwargs = dict(data_dir=str(tmp_path), batch_size=8, image_size=32, tokenize=None, mesh=make_mesh())
  with caplog.at_level(logging.WARNING):
    assert build_evaluators(evals, **kwargs) == []
  messages = [r.getMessage() for r in caplog.records if "dataset not found" in r.getMessage()]
  assert len(messages) == 1 and "prepare it with: download it to absent/" in messages[0]
  with pytest.raises(FileNotFoundError, match="ImageFolder root not found"):
    build_evaluators({"zs": {"kind": "zeroshot", "data": absent}}, **kwargs)


@pytest.fixture(scope="module")
def tiny_model():
  config = {"preset": "test"}
  model = build_model(config)
  (size, _, _), length = input_shapes(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
  return model, variables, size, length


def test_caption_less_imagefolder_of_wordnet_ids_evaluates_with_human_names(shared_data, tmp_path, tiny_model, caplog):
  model, variables, size, length = tiny_model
  folder = wordnet_imagefolder(shared_data, tmp_path / "val")
  tokenize = SpyTokenizer(length)
  mesh = make_mesh()
  evals = {
    "zs": {"kind": "zeroshot", "data": folder},
    "probe": {
      "kind": "linear_probe",
      "train_data": folder,
      "test_data": folder,
      "max_iter": 50,
      "coarse_exponents": (-2.0, 0.0),
      "refine_steps": (),
    },
    "few": {"kind": "few_shot", "train_data": folder, "test_data": folder, "shots": (1, 2), "seeds": (0,)},
    "digits": {"kind": "zeroshot", "data": folder, "class_names": ["0", "1", "2"]},
  }
  with caplog.at_level(logging.WARNING):
    evaluators = build_evaluators(
      evals, data_dir=str(tmp_path), batch_size=8, image_size=size, tokenize=tokenize, mesh=mesh
    )
  warnings = [r.getMessage() for r in caplog.records if "look like identifiers" in r.getMessage()]
  assert len(warnings) == 1 and "'digits'" in warnings[0] and "set class_names" in warnings[0]
  results = {e.name: e.run(*make_encoders(model, variables, mesh)) for e in evaluators}
  assert set(results["zs"]) == {"acc1", "acc3", "acc5", "mean_per_class_recall", "nonfinite_fraction"}
  assert set(results["probe"]) == {"acc1", "test_ce", "val_acc1", "l2", "nonfinite_fraction"}
  assert "2shot_acc1_mean" in results["few"]
  assert evaluators[0].class_names == ["tench", "goldfish", "great white shark"]
  assert sorted(set(tokenize.texts) - {""}) == sorted(
    [
      "a photo of the tench.",
      "a photo of the goldfish.",
      "a photo of the great white shark.",
      "a photo of the 0.",
      "a photo of the 1.",
      "a photo of the 2.",
    ]
  )


def test_encoders_expose_the_pooled_backbone_feature(tiny_model):
  model, variables, size, _ = tiny_model
  images = np.random.default_rng(0).normal(size=(5, size, size, 3)).astype(np.float32)
  out = make_encoders(model, variables, make_mesh())[0](images)
  hv = np.asarray(out["hv"], np.float64)
  kernel = np.asarray(variables["params"]["image_projection"]["kernel"], np.float64)
  projected = hv @ kernel
  np.testing.assert_allclose(out["zv"], projected / np.linalg.norm(projected, axis=1, keepdims=True), atol=1e-5)
  assert hv.shape == (5, kernel.shape[0]) and set(out) == {"zv", "zv_ind", "hv"}
  bf16 = build_model({"preset": "test", "dtype": "bfloat16"})
  out16 = jax.jit(lambda x: bf16.apply(variables, images=x))(images)
  assert out16["hv"].dtype == jnp.float32 and np.all(np.isfinite(out16["hv"]))


def test_linear_probe_and_few_shot_read_backbone_features_unless_told_otherwise():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  separable = np.eye(3)[labels] * 4.0 + 0.1 * rng.normal(size=(60, 3))  # hv: the class is linearly readable
  noise = rng.normal(size=(60, 5))  # zv: nothing to read
  batches = [{"image": np.arange(60, dtype=np.float32)[:, None], "label": labels}]

  def encode_image(rows):
    index = np.asarray(rows)[:, 0].astype(int)
    return {"hv": separable[index], "zv": noise[index]}

  sweep = {"coarse_exponents": (-2.0,), "refine_steps": ()}
  backbone = EVALUATORS["linear_probe"](train_batches=batches, test_batches=batches, num_classes=3, **sweep)
  projected = EVALUATORS["linear_probe"](
    train_batches=batches, test_batches=batches, num_classes=3, features="projected", **sweep
  )
  assert backbone.run(encode_image, None)["acc1"] == 1.0
  assert projected.run(encode_image, None)["acc1"] < 0.9
  few = EVALUATORS["few_shot"](train_batches=batches, test_batches=batches, shots=(4,), seeds=(0,), num_classes=3)
  assert few.run(encode_image, None)["4shot_acc1_mean"] == 1.0
  with pytest.raises(ValueError, match=r"features must be one of \['backbone', 'projected'\]"):
    EVALUATORS["linear_probe"](train_batches=batches, test_batches=batches, features="pooled")


def test_structure_eval_reports_bridge_residual_on_seeded_augmented_views(tmp_path, tiny_model):
  model, variables, size, length = tiny_model
  source = scenes_test_source(size)
  mesh = make_mesh()
  augment_config, seed = {"random_zoom_out": {"scale": (0.5, 0.9)}}, 3
  [evaluator] = build_evaluators(
    {"structure": {"kind": "structure", "data": source, "write_plots": False, "shift_lambdas": (0.0,)}},
    data_dir=str(tmp_path),
    batch_size=16,
    image_size=size,
    tokenize=get_tokenizer("clip", context_length=length),
    mesh=mesh,
    augment_config=augment_config,
    seed=seed,
  )
  metrics = evaluator.run(*make_encoders(model, variables, mesh), step=0)

  # The same embeddings, computed directly with the model, and the formula in float64 NumPy.
  batch = jax.device_get(next(iter(evaluator.batches())))
  keep = batch["mask"]
  zv = np.asarray(model.apply(variables, images=batch["image"][keep])["zv"], np.float64)
  zv_aug = np.asarray(model.apply(variables, images=batch["image_aug"][keep])["zv"], np.float64)
  zt = np.asarray(model.apply(variables, texts=batch["text"][keep])["zt"], np.float64)
  t = evaluator.bridge_t
  mu = t * zv + (1 - t) * zt
  mu /= np.linalg.norm(mu, axis=1, keepdims=True)
  assert metrics["bridge_residual"] == pytest.approx(np.mean(np.sum((zv_aug - mu) ** 2, axis=1)), rel=1e-4)

  # The view is the run's training augmentation, seeded by (seed, example index): the same on every pass.
  example = sources.build_source(source, str(tmp_path))[0]
  expected = augment.augmentation_from_config(augment_config)(
    pipeline.decode_image(example), np.random.default_rng((seed, 0)), size
  )
  np.testing.assert_array_equal(batch["image_aug"][0], expected)
  assert not np.allclose(batch["image_aug"][0], batch["image"][0])
  np.testing.assert_array_equal(jax.device_get(next(iter(evaluator.batches())))["image_aug"], batch["image_aug"])


@pytest.mark.slow
def test_train_then_zero_shot_on_a_wordnet_imagefolder_then_the_suite_from_the_cli(shared_data, tmp_path):
  """Trains the test model a few steps with the paper's setup, evaluating zero-shot on a caption-less ImageFolder
  of ImageNet WordNet-id folders; then runs the README's worked example on that checkpoint: the suite from the CLI,
  tfds datasets on mock data, ImageNet from the same folders."""
  (tmp_path / "shards").mkdir()
  write_webdataset(shared_data, tmp_path / "shards" / "00000.tar")
  folders = tmp_path / "folders"
  folder = wordnet_imagefolder(shared_data, folders / "imagenet" / "val")
  wordnet_imagefolder(shared_data, folders / "imagenet" / "train")
  workdir = tmp_path / "run"
  config = load_config(
    "paper_cc3m", f"variant=test,shards={tmp_path / 'shards'},devices=1,reg=gc,imagenet={folder['root']}"
  )
  config.mesh.shape = {"data": 1}
  config.data.global_batch_size = 8
  config.data.eval_batch_size = 8
  config.data.worker_count = 0
  config.data.data_dir = str(tmp_path / "data")
  config.train.steps = 2
  config.train.progress_bar = "off"
  results = train_and_evaluate(config, workdir)
  assert set(results["zeroshot_imagenet"]) == {"acc1", "acc3", "acc5", "mean_per_class_recall", "nonfinite_fraction"}
  trained = io.read_metrics(io.metrics_path(workdir, "zeroshot_imagenet", 2))
  assert trained["extra"]["class_names"] == ["tench", "goldfish", "great white shark"]
  assert trained["extra"]["num_images"] == 12
  assert "| IN1K T1 |" in (workdir / "paper_tables.md").read_text()

  evaluate = [
    sys.executable,
    "-m",
    "lmstruct.eval.mock_tfds",
    "eval",
    f"--config={REPO}/configs/paper_eval.py:variant=test,only=cifar10+imagenet+imagenet_a+gtsrb,batch=16,"
    f"use_folders=imagenet,tfds_dir={tmp_path / 'tfds'},folders={folders}",
    f"--workdir={workdir}",
    "--config.mesh.shape.data=1",
  ]
  result = subprocess.run(evaluate, env=cli_env(1), cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "| zeroshot_imagenet_a | acc3 |" in result.stdout and "| linear_probe_cifar10 | acc1 |" in result.stdout
  assert "prepare it with: arrange its images as" in result.stderr and "gtsrb" in result.stderr
  # The restored checkpoint scores the ImageFolder as the trained state did.
  restored = io.read_metrics(io.metrics_path(workdir, "zeroshot_imagenet", 2))
  assert restored["metrics"] == pytest.approx(trained["metrics"], abs=1e-6)
  assert restored["extra"]["class_names"] == ["tench", "goldfish", "great white shark"]
  probe = io.read_metrics(io.metrics_path(workdir, "linear_probe_imagenet", 2))["extra"]
  assert probe["features"] == "backbone" and probe["num_train"] == 12
  saved = json.loads((workdir / "paper_tables.json").read_text())
  assert set(saved["results"]) == {
    "zeroshot_cifar10",
    "zeroshot_imagenet",
    "zeroshot_imagenet_a",
    "linear_probe_cifar10",
    "linear_probe_imagenet",
  }
  header, row = [
    line
    for line in (workdir / "paper_tables.md").read_text().splitlines()
    if line.startswith("| Method | C10 T1") or line.startswith("| run | ")
  ][:2]
  assert row.split(" | ")[1] != "–" and row.split(" | ")[7] != "–"  # CIFAR-10 and ImageNet top-1 filled in
