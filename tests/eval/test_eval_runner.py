"""Registry, step scheduling, JSON records, PNG figures, the feature cache and the structure evaluator end to end."""

import json
import math

import ml_collections
import numpy as np
import pytest

from lmstruct.eval import available_evaluators, get_evaluator, run_evaluators
from lmstruct.eval.features import FeatureCache
from lmstruct.eval.io import metrics_path, read_metrics, write_metrics
from lmstruct.eval.plots import pca_2d, plot_gap_shift_curve, plot_modality_pca
from lmstruct.eval.structure import mean_paired_distance, modality_gap, shift_embeddings, structure_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_unknown_evaluator_error_lists_valid_names():
  assert available_evaluators() == [
    "few_shot",
    "itm_retrieval",
    "label_probes",
    "linear_probe",
    "nlvr",
    "retrieval",
    "structure",
    "ve",
    "vqa",
    "zeroshot",
  ]
  with pytest.raises(ValueError) as info:
    get_evaluator("zero_shot", {})
  for name in available_evaluators():
    assert name in str(info.value)


def test_config_fields_are_checked():
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['kss'\] \(did you mean 'ks'\?\) .*valid fields"):
    get_evaluator("retrieval", {"batches": [], "kss": (1,)})
  with pytest.raises(ValueError, match="batches"):
    get_evaluator("retrieval", {"ks": (1,)})
  config = ml_collections.ConfigDict({"batches": [], "ks": (1, 5), "every_steps": 100})
  evaluator = get_evaluator("retrieval", config, name="coco_retrieval")
  assert (evaluator.name, tuple(evaluator.ks), evaluator.every_steps) == ("coco_retrieval", (1, 5), 100)
  assert get_evaluator("retrieval", {"batches": []}).name == "retrieval"
  with pytest.raises(ValueError):
    get_evaluator("retrieval", {"batches": [], "every_steps": -1})


def test_due_and_run_evaluators_schedule():
  evaluators = [
    get_evaluator("retrieval", {"batches": [], "every_steps": 10, "name": "a"}),
    get_evaluator("retrieval", {"batches": [], "every_steps": 0, "name": "b"}),
  ]
  assert [e.due(20) for e in evaluators] == [True, False]
  assert [e.due(15) for e in evaluators] == [False, False]
  assert run_evaluators(evaluators, None, None, step=15) == {}
  duplicate = evaluators + [get_evaluator("retrieval", {"batches": [], "name": "a"})]
  with pytest.raises(ValueError, match="unique"):
    run_evaluators(duplicate, None, None, step=0)


def test_json_record_round_trip(tmp_path):
  metrics = {"acc1": 0.25, "acc5": 1.0, "broken": float("nan")}
  path = write_metrics(tmp_path, "zeroshot", 1200, metrics, extra={"curve": {"gap": [0.1, 0.2]}})
  assert path == tmp_path / "eval" / "zeroshot" / "step_1200.json" == metrics_path(tmp_path, "zeroshot", 1200)
  json.loads(path.read_text())  # strict JSON (no NaN literal)
  assert "NaN" not in path.read_text()
  record = read_metrics(path)
  assert record["evaluator"] == "zeroshot" and record["step"] == 1200
  assert record["metrics"]["acc1"] == 0.25 and record["metrics"]["acc5"] == 1.0
  assert math.isnan(record["metrics"]["broken"])
  assert record["extra"] == {"curve": {"gap": [0.1, 0.2]}}
  assert [p.name for p in path.parent.iterdir()] == ["step_1200.json"]  # no temporary file left behind


def test_pca_2d_recovers_a_line():
  u = np.array([1.0, 2.0, -3.0]) / np.sqrt(14.0)
  t = np.array([-2.0, -1.0, 0.5, 3.0])
  coords, components, ratio = pca_2d(t[:, None] * u + np.array([5.0, 5.0, 5.0]))
  np.testing.assert_allclose(components[0], -u, atol=1e-12)  # sign: largest-magnitude loading positive
  np.testing.assert_allclose(coords[:, 0], -(t - t.mean()), atol=1e-12)
  np.testing.assert_allclose(ratio, [1.0, 0.0], atol=1e-12)


def test_plots_write_png(tmp_path):
  rng = np.random.default_rng(0)
  zv, zt = rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 1.0
  curve = {"lambda": [0.0, 0.5, 1.0], "gap": [0.8, 0.4, 0.0], "metric": [0.5, 0.55, 0.52]}
  for path in (
    plot_gap_shift_curve(curve, tmp_path / "a" / "curve.png"),
    plot_modality_pca(zv, zt, tmp_path / "pca.png", max_pairs=10),
  ):
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_structure_evaluator_end_to_end(tmp_path):
  rng = np.random.default_rng(1)
  n, d = 48, 16
  zv = _unit(rng.normal(size=(n, d)) + 2.0 * np.eye(d)[0])
  zt = _unit(zv + 0.3 * rng.normal(size=(n, d)) + 1.0 * np.eye(d)[1])
  zv_aug = _unit(zv + 0.1 * rng.normal(size=(n, d)))
  zv_ind, zt_ind = _unit(rng.normal(size=(n, d))), _unit(rng.normal(size=(n, d)))

  # images carry their row index in pixel (0, 0, 0); tokens are the row index
  def images(index, aug=False):
    out = np.zeros((len(index), 2, 2, 3), np.float32)
    out[:, 0, 0, 0] = index
    out[:, 0, 0, 1] = aug
    return out

  def encode_image(x):
    x = np.asarray(x)
    index = x[:, 0, 0, 0].astype(int)
    if x[0, 0, 0, 1]:
      return {"zv": zv_aug[index]}
    return {"zv": zv[index], "zv_ind": zv_ind[index]}

  def encode_text(tokens):
    index = np.asarray(tokens)[:, 0]
    return {"zt": zt[index], "zt_ind": zt_ind[index]}

  batches = []
  for start in range(0, n, 16):
    index = np.arange(start, start + 16)
    batches.append(
      {
        "image": images(index),
        "image_aug": images(index, aug=True),
        "text": index[:, None].astype(np.int32),
        "mask": np.ones(16, bool),
      }
    )
  padded = np.array([0, 1, 2, 3])
  batches.append(
    {
      "image": images(padded),
      "image_aug": images(padded, aug=True),
      "text": padded[:, None].astype(np.int32),
      "mask": np.zeros(4, bool),
    }
  )

  evaluator = get_evaluator(
    "structure", {"batches": batches, "every_steps": 5, "shift_lambdas": (-0.5, 0.0, 0.5, 1.0), "pca_max_pairs": 20}
  )
  results = run_evaluators([evaluator], encode_image, encode_text, step=10, workdir=tmp_path)
  metrics = results["structure"]
  expected = {**structure_metrics(zv, zt, zv_aug=zv_aug, zv_ind=zv_ind, zt_ind=zt_ind), "nonfinite_fraction": 0.0}
  assert metrics == pytest.approx(expected, rel=1e-6)
  assert metrics["modality_gap"] == pytest.approx(modality_gap(zv.astype(np.float64), zt), rel=1e-9)

  out = tmp_path / "eval" / "structure"
  record = read_metrics(out / "step_10.json")
  assert record["metrics"] == pytest.approx(metrics)
  curve = record["extra"]["shift_curve"]
  assert curve["lambda"] == [-0.5, 0.0, 0.5, 1.0]
  assert curve["gap"][0] > curve["gap"][1] > curve["gap"][2] > curve["gap"][3]
  assert curve["gap"][1] == pytest.approx(metrics["modality_gap"], rel=1e-5)
  assert all(0.0 <= m <= 1.0 for m in curve["metric"])
  for name in ("step_10_gap_shift.png", "step_10_pca.png"):
    data = (out / name).read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)

  custom = get_evaluator(
    "structure",
    {
      "batches": batches,
      "name": "structure_mpd",
      "shift_lambdas": (0.5,),
      "shift_metric": mean_paired_distance,
      "shift_metric_name": "mpd",
      "write_plots": False,
    },
  )
  custom.run(encode_image, encode_text, step=3, workdir=tmp_path)
  record = read_metrics(tmp_path / "eval" / "structure_mpd" / "step_3.json")
  assert record["extra"]["shift_metric"] == "mpd"
  expected_metric = mean_paired_distance(*shift_embeddings(zv, zt, 0.5))
  assert record["extra"]["shift_curve"]["metric"] == [pytest.approx(expected_metric)]
  assert sorted(p.name for p in (tmp_path / "eval" / "structure_mpd").iterdir()) == ["step_3.json"]


def test_feature_cache_computes_once_per_step_and_keeps_only_the_newest_step(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"x": np.arange(3.0), "y": np.ones((2, 2), np.int32)}

  first = FeatureCache(tmp_path, 5).get("data-hv", compute)
  again = FeatureCache(tmp_path, 5).get("data-hv", compute)
  assert len(calls) == 1 and again.keys() == first.keys()
  np.testing.assert_array_equal(again["y"], np.ones((2, 2), np.int32))
  FeatureCache(tmp_path, 6).get("data-hv", compute)
  assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["step_6"]
  assert sorted(p.name for p in (tmp_path / "step_6").iterdir()) == ["data-hv.npz"]  # no temporary file left


class KeyedBatches:
  """A batch source with a cache key, counting its passes."""

  cache_key = "toy"

  def __init__(self, batches):
    self.batches, self.passes = batches, 0

  def __call__(self):
    self.passes += 1
    return iter(self.batches)


def test_probe_features_are_read_from_the_cache_at_the_same_step(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(2), 16)
  features = np.eye(2)[labels] + 0.1 * rng.normal(size=(32, 2))
  source = KeyedBatches([{"image": np.arange(32, dtype=np.float32)[:, None], "label": labels}])
  probe = get_evaluator(
    "linear_probe", {"train_batches": source, "test_batches": source, "cache_features": True, "features": "projected"}
  )
  encode = lambda rows: {"zv": features[np.asarray(rows)[:, 0].astype(int)]}
  first = probe.run(encode, None, step=7, workdir=tmp_path)
  assert source.passes == 1  # train and test are the same data: encoded once
  assert probe.run(encode, None, step=7, workdir=tmp_path) == first and source.passes == 1
  probe.run(encode, None, step=8, workdir=tmp_path)
  assert source.passes == 2


def _nan_model_batches(n=24, size=8):
  """Batches whose image pixel (0, 0, 0) and token 0 carry the row index; labels cycle over 3 classes."""
  batches = []
  for start in range(0, n, size):
    index = np.arange(start, start + size)
    images = np.zeros((size, 2, 2, 3), np.float32)
    images[:, 0, 0, 0] = index
    batches.append(
      {
        "image": images,
        "text": index[:, None].astype(np.int32),
        "label": index % 3,
        "index": index,
        "mask": np.ones(size, bool),
      }
    )
  return batches


def test_an_all_nan_model_scores_nothing_in_any_evaluator(tmp_path):
  batches = _nan_model_batches()

  def encode_image(images):
    return {"zv": np.full((len(images), 6), np.nan, np.float32)}

  def encode_text(tokens):
    return {"zt": np.full((len(tokens), 6), np.nan, np.float32)}

  configs = {
    "zeroshot": {
      "batches": batches,
      "class_names": ["a", "b", "c"],
      "ks": (1, 2),
      "tokenize": lambda texts: np.zeros((len(texts), 1), np.int32),
    },
    "retrieval": {"batches": batches, "ks": (1, 5)},
    "linear_probe": {
      "train_batches": batches,
      "test_batches": batches,
      "coarse_exponents": (0.0,),
      "refine_steps": (),
      "features": "projected",
    },
    "few_shot": {
      "train_batches": batches,
      "test_batches": batches,
      "shots": (2,),
      "seeds": (0,),
      "features": "projected",
    },
    "structure": {"batches": batches, "shift_lambdas": (0.0, 1.0)},
  }
  results = run_evaluators(
    [get_evaluator(kind, cfg) for kind, cfg in configs.items()],
    encode_image,
    encode_text,
    step=1,
    workdir=tmp_path,
    only_due=False,
  )
  assert {name: metrics["nonfinite_fraction"] for name, metrics in results.items()} == dict.fromkeys(configs, 1.0)
  # 3 classes: the worst rank is 3, beyond k = 1, 2; 24 pairs: the worst rank is 24, beyond k = 1, 5
  assert results["zeroshot"]["acc1"] == results["zeroshot"]["acc2"] == 0.0
  assert results["zeroshot"]["mean_per_class_recall"] == 0.0
  assert all(
    results["retrieval"][f"{d}_recall@{k}"] == 0.0
    for d in ("image_retrieval", "text_retrieval", "mean")
    for k in (1, 5)
  )
  assert results["linear_probe"]["acc1"] == results["linear_probe"]["val_acc1"] == 0.0
  assert results["few_shot"]["2shot_acc1_mean"] == 0.0
  assert math.isnan(results["structure"]["separability"])
  record = read_metrics(tmp_path / "eval" / "structure" / "step_1.json")  # strict JSON despite the NaN curve
  assert math.isnan(record["metrics"]["modality_gap"]) and record["extra"]["shift_curve"]["gap"] == [None, None]
  assert (tmp_path / "eval" / "structure" / "step_1_pca.png").read_bytes().startswith(PNG_SIGNATURE)


def test_nonfinite_fraction_counts_rows_of_every_embedding():
  batches = _nan_model_batches()
  rng = np.random.default_rng(0)
  table = rng.normal(size=(24, 6)).astype(np.float32)

  def encode_image(images):  # rows 0, 5 and 17 of the images hold a NaN, row 9 an infinity
    z = table[np.asarray(images)[:, 0, 0, 0].astype(int)].copy()
    index = np.asarray(images)[:, 0, 0, 0].astype(int)
    z[np.isin(index, [0, 5, 17]), 2] = np.nan
    z[index == 9, 0] = -np.inf
    return {"zv": z}

  def encode_text(tokens):  # text rows are all finite
    return {"zt": table[np.asarray(tokens)[:, 0]]}

  retrieval = get_evaluator("retrieval", {"batches": batches, "ks": (1,)}).run(encode_image, encode_text)
  assert retrieval["nonfinite_fraction"] == pytest.approx(4 / 48)
  structure = get_evaluator("structure", {"batches": batches, "shift_lambdas": (0.0,), "write_plots": False})
  assert structure.run(encode_image, encode_text)["nonfinite_fraction"] == pytest.approx(4 / 48)
