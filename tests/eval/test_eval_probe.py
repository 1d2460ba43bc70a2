"""Linear and few-shot probes: solver against SciPy, separable data, shuffled labels, L2 sweep, few-shot draws.

Every problem here has 16 features, 4 classes and at most 256 rows, so the solver compiles once per process.
"""
import numpy as np
import pytest
import scipy.optimize

from lmstruct.eval import get_evaluator
from lmstruct.eval.probe import (fit_logreg, few_shot_probe, linear_probe, predict, sample_few_shot, select_l2,
                                 validation_split)


def _reference_objective(theta, x, y, weights, l2, num_classes):
  """float64 weighted softmax cross-entropy + l2 ||W||^2, written independently."""
  d = x.shape[1]
  w, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
  logits = x @ w + b
  top = logits.max(axis=1, keepdims=True)
  log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
  nll = log_z - logits[np.arange(len(y)), y]
  return np.sum(weights * nll) / np.sum(weights) + l2 * np.sum(w**2)


def test_lbfgs_solution_matches_scipy_on_weighted_objective():
  rng = np.random.default_rng(0)
  n, d, c, l2 = 90, 16, 4, 0.03
  x = rng.normal(size=(n, d))
  y = rng.integers(0, c, n)
  weights = np.ones(n)
  weights[60:] = 0.0            # zero-weight rows must not influence the fit
  x[60:] *= 100.0
  ref = scipy.optimize.minimize(_reference_objective, np.zeros(d * c + c), args=(x, y, weights, l2, c),
                                method="BFGS", options={"gtol": 1e-10})
  w, b = fit_logreg(x, y, c, l2, weights=weights, tol=1e-6)
  ours = _reference_objective(np.concatenate([w.ravel(), b]), x, y, weights, l2, c)
  assert ours == pytest.approx(ref.fun, abs=1e-6)
  np.testing.assert_allclose(w, ref.x[:d * c].reshape(d, c), atol=1e-3)


def _clusters(rng, n, num_classes=4, dim=16, scale=3.0):
  means = rng.normal(size=(num_classes, dim)) * scale
  y = np.arange(n) % num_classes
  return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y, means


def test_linear_probe_on_separable_features():
  rng = np.random.default_rng(1)
  x, y, means = _clusters(rng, 200)
  y_test = rng.integers(0, 4, 300)
  x_test = (means[y_test] + rng.normal(size=(300, 16))).astype(np.float32)
  result = linear_probe(x, y, x_test, y_test, max_iter=200)
  assert result["acc1"] >= 0.95
  assert result["val_acc1"] >= 0.95
  assert 1e-6 <= result["l2"] <= 1e6


def test_linear_probe_on_shuffled_labels_is_at_chance():
  rng = np.random.default_rng(2)
  x, y, _ = _clusters(rng, 200)
  x_test, y_test, _ = _clusters(rng, 400)
  result = linear_probe(x, rng.permutation(y), x_test, rng.permutation(y_test), max_iter=200)
  assert abs(result["acc1"] - 0.25) < 0.1


def test_linear_probe_with_explicit_validation_set():
  rng = np.random.default_rng(3)
  x, y, _ = _clusters(rng, 240)
  result = linear_probe(x[:160], y[:160], x[200:], y[200:], val_x=x[160:200], val_y=y[160:200], max_iter=200)
  assert result["acc1"] >= 0.95
  with pytest.raises(ValueError):
    linear_probe(x[:160], y[:160], x[200:], y[200:], val_x=x[160:200])


def test_select_l2_returns_best_tried_exponent_with_ties_to_larger():
  rng = np.random.default_rng(4)
  x, y, _ = _clusters(rng, 120, scale=0.4)  # overlapping classes: validation accuracy depends on l2
  is_val = validation_split(len(y), 0.3, seed=0)
  l2, scores = select_l2(x, y, is_val, 4, coarse_exponents=(-4.0, -2.0, 0.0, 2.0), refine_steps=(1.0,),
                         max_iter=100)
  assert {-4.0, -2.0, 0.0, 2.0} <= set(scores) and len(scores) <= 6
  assert all(-4.0 <= e <= 2.0 for e in scores)
  best = max(scores.values())
  assert np.log10(l2) == pytest.approx(max(e for e, s in scores.items() if s == best))


def test_validation_split_sizes_and_determinism():
  mask = validation_split(10, 0.2, seed=5)
  assert mask.sum() == 2 and mask.dtype == bool
  np.testing.assert_array_equal(mask, validation_split(10, 0.2, seed=5))
  assert validation_split(3, 0.0, seed=0).sum() == 1 and validation_split(3, 1.0, seed=0).sum() == 2


def test_sample_few_shot():
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
  index = sample_few_shot(labels, 3, seed=7)
  assert len(set(index)) == 9
  np.testing.assert_array_equal(np.bincount(labels[index]), [3, 3, 3])
  np.testing.assert_array_equal(index, sample_few_shot(labels, 3, seed=7))
  with pytest.raises(ValueError, match="fewer"):
    sample_few_shot(labels, 4, seed=0)


def test_few_shot_probe_mean_and_std_match_independent_fits():
  rng = np.random.default_rng(5)
  x, y, means = _clusters(rng, 200, scale=0.5)
  y_test = np.arange(200) % 4
  x_test = (means[y_test] + rng.normal(size=(200, 16))).astype(np.float32)
  result = few_shot_probe(x, y, x_test, y_test, shots=(1, 4), seeds=(0, 1, 2), l2=1e-2, max_iter=300)
  assert set(result) == {"1shot_acc1_mean", "1shot_acc1_std", "4shot_acc1_mean", "4shot_acc1_std"}
  for k in (1, 4):
    accs = []
    for seed in (0, 1, 2):
      index = sample_few_shot(y, k, seed)
      w, b = fit_logreg(x[index], y[index], 4, 1e-2, max_iter=300)
      accs.append(np.mean(predict(w, b, x_test) == y_test))
    assert result[f"{k}shot_acc1_mean"] == pytest.approx(np.mean(accs), abs=0.011)
    assert result[f"{k}shot_acc1_std"] == pytest.approx(np.std(accs), abs=0.011)


def test_probe_evaluators_on_batches():
  rng = np.random.default_rng(6)
  x, y, means = _clusters(rng, 160, scale=4.0)

  def batches(xs, ys, size=32):
    out = []
    for start in range(0, len(ys), size):
      images = np.zeros((size, 1, 16, 3), np.float32)
      labels = np.zeros(size, np.int64)
      chunk = slice(start, min(start + size, len(ys)))
      real = chunk.stop - chunk.start
      images[:real, 0, :, 0] = xs[chunk]
      labels[:real] = ys[chunk]
      out.append({"image": images, "labels": {"shape": labels}, "mask": np.arange(size) < real})
    return out

  def encode_image(images):
    return np.asarray(images)[:, 0, :, 0]

  train, test = batches(x[:100], y[:100]), batches(x[100:], y[100:])
  probe = get_evaluator("linear_probe", {"train_batches": train, "test_batches": test, "label_key": "labels/shape",
                                         "max_iter": 100, "coarse_exponents": (-4.0, 0.0), "refine_steps": ()})
  assert probe.run(encode_image, None)["acc1"] >= 0.95
  few = get_evaluator("few_shot", {"train_batches": train, "test_batches": test, "label_key": "labels/shape",
                                   "shots": (2,), "seeds": (0, 1), "max_iter": 100})
  metrics = few.run(encode_image, None)
  assert set(metrics) == {"2shot_acc1_mean", "2shot_acc1_std"} and metrics["2shot_acc1_mean"] >= 0.9
