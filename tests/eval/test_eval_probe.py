"""Linear and few-shot probes: solver and few-shot probe against a float64 SciPy fit, separable data, shuffled labels,
a hand-worked L2 sweep, few-shot draws.

Every problem here pads to 64 features, 8 classes and 256 rows, so the solver compiles once per process.
"""

import numpy as np
import pytest
import scipy.optimize

from lmstruct.eval import get_evaluator, probe
from lmstruct.eval.probe import (
  few_shot_probe,
  fit_logreg,
  linear_probe,
  predict,
  sample_few_shot,
  select_l2,
  validation_split,
)


def _reference_objective(theta, x, y, weights, l2, num_classes):
  """float64 weighted softmax cross-entropy + l2 ||W||^2, written independently."""
  d = x.shape[1]
  w, b = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]
  logits = x @ w + b
  top = logits.max(axis=1, keepdims=True)
  log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
  nll = log_z - logits[np.arange(len(y)), y]
  return np.sum(weights * nll) / np.sum(weights) + l2 * np.sum(w**2)


def _reference_gradient(theta, x, y, weights, l2, num_classes):
  """d/dtheta of ``_reference_objective``: x^T (P - Y) diag(weights) / sum(weights) + 2 l2 W, and the bias part."""
  d = x.shape[1]
  w, b = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]
  logits = x @ w + b
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  residual = (p - np.eye(num_classes)[y]) * (weights / np.sum(weights))[:, None]
  return np.concatenate([(x.T @ residual + 2 * l2 * w).ravel(), residual.sum(axis=0)])


def _reference_fit(x, y, num_classes, l2):
  """float64 BFGS minimiser (W, b) of ``_reference_objective`` with unit weights."""
  x = np.asarray(x, np.float64)
  d = x.shape[1]
  args = (x, y, np.ones(len(y)), l2, num_classes)
  theta = scipy.optimize.minimize(
    _reference_objective,
    np.zeros(d * num_classes + num_classes),
    args=args,
    jac=_reference_gradient,
    method="BFGS",
    options={"gtol": 1e-10},
  ).x
  return theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]


def test_lbfgs_solution_matches_scipy_on_weighted_objective():
  rng = np.random.default_rng(0)
  n, d, c, l2 = 90, 16, 4, 0.03
  x = rng.normal(size=(n, d))
  y = rng.integers(0, c, n)
  weights = np.ones(n)
  weights[60:] = 0.0  # zero-weight rows must not influence the fit
  x[60:] *= 100.0
  ref = scipy.optimize.minimize(
    _reference_objective, np.zeros(d * c + c), args=(x, y, weights, l2, c), method="BFGS", options={"gtol": 1e-10}
  )
  w, b = fit_logreg(x, y, c, l2, weights=weights, tol=1e-6)
  ours = _reference_objective(np.concatenate([w.ravel(), b]), x, y, weights, l2, c)
  assert ours == pytest.approx(ref.fun, abs=1e-6)
  np.testing.assert_allclose(w, ref.x[: d * c].reshape(d, c), atol=1e-3)


@pytest.mark.parametrize("num_features, num_classes", [(10, 3), (20, 5)])
def test_padding_features_and_classes_leaves_the_minimiser_unchanged(num_features, num_classes):
  """The solver pads features to 64 and classes to 8; the unpadded minimiser is what comes back."""
  rng = np.random.default_rng(num_classes)
  x = rng.normal(size=(70, num_features))
  y = rng.integers(0, num_classes, 70)
  w, b = fit_logreg(x, y, num_classes, 0.05, tol=1e-7)
  assert w.shape == (num_features, num_classes) and b.shape == (num_classes,)
  ref_w, ref_b = _reference_fit(x, y, num_classes, 0.05)
  np.testing.assert_allclose(w, ref_w, atol=1e-3)
  np.testing.assert_allclose(b - b.mean(), ref_b - ref_b.mean(), atol=1e-3)


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


def test_select_l2_picks_the_largest_exponent_that_separates_a_hand_worked_problem():
  # One feature. Train: 4 rows of class 1 at x = +1, 16 of class 0 at x = -1; validation: 5 of each. With two
  # classes the optimum has W = (-w/2, w/2), so the penalty is lam * w^2 / 2 for the logit difference w * x + beta.
  # Stationarity in beta and w gives p+ + 4 p- = 1 and lam * w = 0.4 (1 - p+), where p+- = sigmoid(+-w + beta).
  # The prediction at x = +1 flips to class 0 where p+ = 1/2: then p- = 1/8, w = ln(7) / 2 and
  # lam* = 0.4 * 0.5 / w = 0.4 / ln 7 = 0.2056 (10^-0.69). Below lam* validation accuracy is 1, above it 1/2.
  x = np.array([1.0] * 4 + [-1.0] * 16 + [1.0] * 5 + [-1.0] * 5)[:, None]
  y = np.array([1] * 4 + [0] * 16 + [1] * 5 + [0] * 5)
  is_val = np.arange(30) >= 20
  l2, scores = select_l2(x, y, is_val, 2, coarse_exponents=(-4.0, -2.0, 0.0, 2.0), refine_steps=(1.0, 0.5))
  # coarse: -2 is the largest perfect exponent; refine by 1: -3, -1 -> -1; refine by 0.5: -1.5, -0.5 -> stays -1
  assert scores == {-4.0: 1.0, -2.0: 1.0, 0.0: 0.5, 2.0: 0.5, -3.0: 1.0, -1.0: 1.0, -1.5: 1.0, -0.5: 0.5}
  assert l2 == pytest.approx(0.1, rel=1e-12)
  lam_star = 0.4 / np.log(7.0)
  for lam in (0.9 * lam_star, 1.1 * lam_star):  # the flip is where the float64 reference puts it
    w, b = _reference_fit(x[:20], y[:20], 2, lam)
    assert np.argmax(np.array([1.0]) @ w + b) == (1 if lam < lam_star else 0)


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


def test_few_shot_probe_matches_a_float64_scipy_reference():
  rng = np.random.default_rng(5)
  x, y, means = _clusters(rng, 200, scale=0.5)
  y_test = np.arange(200) % 4
  x_test = (means[y_test] + rng.normal(size=(200, 16))).astype(np.float32)
  result = few_shot_probe(x, y, x_test, y_test, shots=(1, 4), seeds=(0, 1, 2), l2=1e-2, max_iter=300)
  assert set(result) == {"1shot_acc1_mean", "1shot_acc1_std", "4shot_acc1_mean", "4shot_acc1_std"}
  for k in (1, 4):
    accs = []
    for seed in (0, 1, 2):
      # the documented draw: k rows of every class, classes in increasing order, numpy.random.default_rng(seed)
      rng = np.random.default_rng(seed)
      index = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in range(4)]))
      w, b = _reference_fit(x[index], y[index], 4, 1e-2)
      accs.append(np.mean(np.argmax(x_test.astype(np.float64) @ w + b, axis=1) == y_test))
    assert 0.3 < np.mean(accs) < 0.95  # a non-trivial problem
    assert result[f"{k}shot_acc1_mean"] == pytest.approx(np.mean(accs), abs=0.011)
    assert result[f"{k}shot_acc1_std"] == pytest.approx(np.std(accs), abs=0.011)


def test_predict_never_credits_a_nonfinite_row():
  w, b = np.eye(2, 3, dtype=np.float32), np.zeros(3, np.float32)
  x = np.array([[1.0, 0.0], [np.nan, 0.0], [0.0, np.inf], [0.0, 2.0]], np.float32)
  np.testing.assert_array_equal(predict(w, b, x), [0, -1, -1, 1])
  np.testing.assert_array_equal(predict(np.full_like(w, np.nan), b, x[:1]), [-1])


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
  probe = get_evaluator(
    "linear_probe",
    {
      "train_batches": train,
      "test_batches": test,
      "label_key": "labels/shape",
      "max_iter": 100,
      "coarse_exponents": (-4.0, 0.0),
      "refine_steps": (),
    },
  )
  assert probe.run(encode_image, None)["acc1"] >= 0.95
  few = get_evaluator(
    "few_shot",
    {
      "train_batches": train,
      "test_batches": test,
      "label_key": "labels/shape",
      "shots": (2,),
      "seeds": (0, 1),
      "max_iter": 100,
    },
  )
  metrics = few.run(encode_image, None)
  assert set(metrics) == {"2shot_acc1_mean", "2shot_acc1_std", "nonfinite_fraction"}
  assert metrics["2shot_acc1_mean"] >= 0.9 and metrics["nonfinite_fraction"] == 0.0


def test_cross_entropy_matches_hand_worked_logits():
  """Logits x W + b = [[ln 3, 0], [0, 0], [0, ln 3]] for labels (0, 1, 0): CE = (ln(4/3) + ln 2 + ln 4) / 3."""
  w = np.array([[np.log(3.0), 0.0], [0.0, np.log(3.0)]])
  x = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
  expected = (np.log(4 / 3) + np.log(2.0) + np.log(4.0)) / 3
  assert probe.cross_entropy(w, np.zeros(2), x, np.array([0, 1, 0])) == pytest.approx(expected, rel=1e-12)
  assert probe.cross_entropy(w, np.zeros(2), np.array([[np.nan, 0.0]]), np.array([0])) == np.inf


def test_probe_selected_by_cross_entropy_reports_the_test_cross_entropy_of_its_refit():
  """Two Gaussian classes with overlap: the CE-selected probe's test CE is near the Bayes cross-entropy of the
  generating model (float64 NumPy reference), and below the chance value ln 2."""
  rng = np.random.default_rng(0)
  mean = np.array([1.0, 0.0])

  def sample(n):
    y = rng.integers(0, 2, n)
    return rng.normal(size=(n, 2)) + np.where(y[:, None] == 1, mean, -mean), y

  train_x, train_y = sample(600)
  test_x, test_y = sample(4000)
  result = probe.linear_probe(train_x, train_y, test_x, test_y, criterion="ce")
  # Bayes posterior of class 1: sigmoid(2 μ·x); its cross-entropy on the test set.
  margin = 2 * test_x @ mean
  bayes = np.mean(np.logaddexp(0.0, np.where(test_y == 1, -margin, margin)))
  assert set(result) == {"acc1", "test_ce", "val_ce", "l2"}
  assert result["test_ce"] == pytest.approx(bayes, abs=0.02)
  assert result["test_ce"] < np.log(2.0) - 0.2
  with pytest.raises(ValueError, match=r"unknown probe criterion 'loss'.*valid choices: \['acc1', 'ce'\]"):
    probe.linear_probe(train_x, train_y, test_x, test_y, criterion="loss")


def test_label_probes_read_each_feature_kind_from_its_own_encoder_output():
  """A label written only into the text features is read perfectly by the text and joint probes and at chance by
  the image probes; a label written only into the backbone is read only by the backbone probe. Cross-entropies are
  checked against the label entropy ln 4 (chance) and 0 (separable)."""
  rng = np.random.default_rng(0)
  n = 400
  text_label, backbone_label = rng.integers(0, 4, n), rng.integers(0, 4, n)
  onehot = lambda y: np.eye(4, dtype=np.float32)[y] * 5
  noise = lambda: rng.normal(size=(n, 4)).astype(np.float32)
  hv, zv, zt = onehot(backbone_label) + 0.1 * noise(), noise(), onehot(text_label) + 0.1 * noise()
  ids = np.arange(n)
  batches = [
    {
      "image": ids[i : i + 100],
      "text": ids[i : i + 100, None],
      "mask": np.ones(100, bool),
      "labels": {"t": text_label[i : i + 100], "b": backbone_label[i : i + 100]},
    }
    for i in range(0, n, 100)
  ]
  train, test = batches[:2], batches[2:]
  encode_image = lambda idx: {"zv": zv[np.asarray(idx)], "hv": hv[np.asarray(idx)]}
  encode_text = lambda tok: {"zt": zt[np.asarray(tok)[:, 0]]}
  evaluator = get_evaluator(
    "label_probes",
    {
      "train_batches": train,
      "test_batches": test,
      "label_keys": {"t": "labels/t", "b": "labels/b"},
      "num_classes": {"t": 4, "b": 4},
      "shots": [2],
    },
  )
  metrics = evaluator.run(encode_image, encode_text)
  assert metrics["t/text/acc1"] == metrics["t/joint/acc1"] == metrics["b/backbone/acc1"] == 1.0
  assert metrics["t/text/test_ce"] < 0.05 and metrics["b/backbone/test_ce"] < 0.05
  for key in ("t/backbone", "t/projected", "b/projected", "b/text"):
    assert metrics[f"{key}/acc1"] < 0.45
    assert metrics[f"{key}/test_ce"] == pytest.approx(np.log(4), abs=0.1)
  assert metrics["b/backbone/2shot_acc1"] > 0.9
  with pytest.raises(ValueError, match=r"unknown evaluator 'label_probes' feature kind 'pooled'"):
    get_evaluator(
      "label_probes",
      {
        "train_batches": train,
        "test_batches": test,
        "label_keys": {"t": "labels/t"},
        "num_classes": {"t": 4},
        "features": ["pooled"],
      },
    )
