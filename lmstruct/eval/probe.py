"""Linear probe and few-shot probe: multinomial logistic regression on frozen features, fitted with L-BFGS in JAX.

Objective for features ``x_i``, labels ``y_i``, sample weights ``w_i >= 0`` and L2 strength ``lam``::

    L(W, b) = sum_i w_i * CE(softmax(x_i W + b), y_i) / sum_i w_i  +  lam * ||W||_F^2      (bias not penalised)

minimised from ``W = 0, b = 0`` with ``optax.lbfgs`` (zoom line search) until ``||grad||_2 < tol`` or ``max_iter``
iterations. Sample weights let one compiled solver serve the validation sweep (weight 0 on held-out rows) and the
final refit. Rows are zero-weight padded, feature columns zero-padded and classes padded with logits held at a large
negative value, each to a power of two; none of the three changes the objective or its minimiser on the real
classes and features (padded weights get zero gradient and stay at zero), so XLA compiles once per padded shape and
the probes of labels with different class counts and features of similar widths share one solver.

L2 selection (CLIP's protocol, log-spaced sweep then refine): fit on the train part, score top-1 on the validation
part for ``lam = 10^e`` with ``e`` on a coarse grid (default -6, -4, ..., 6); then for each refinement step ``d``
(default 1, 0.5) also try ``e* - d`` and ``e* + d`` around the current best ``e*``, kept within the coarse grid's
range. The best exponent maximises validation accuracy (``criterion='acc1'``, CLIP's protocol) or minimises the
validation cross-entropy (``criterion='ce'``: the probe that comes closest to the best achievable cross-entropy of
the features, what Theorem 3.1 bounds); ties go to the larger ``lam``. The probe is then refitted on train +
validation with that ``lam`` and scored on the test set: top-1 accuracy and the mean cross-entropy
``-(1/N) Σ_i log softmax(x_i W + b)_{y_i}`` in nats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmstruct.choices import unknown_choice

COARSE_EXPONENTS: tuple[float, ...] = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
REFINE_STEPS: tuple[float, ...] = (1.0, 0.5)


#: Logit of a padded class: softmax gives it probability exp(-1e9) = 0, so it neither adds to the cross-entropy nor
#: sends a gradient to its weights.
PADDED_CLASS_LOGIT = -1e9


def logreg_objective(
  params: tuple[jax.Array, jax.Array],
  x: jax.Array,
  y: jax.Array,
  weights: jax.Array,
  l2: jax.Array,
  real_classes: jax.Array,
) -> jax.Array:
  """Weighted mean softmax cross-entropy over the real classes plus ``l2 * ||W||_F^2`` (module docstring).

  ``params = (W [D, C], b [C])``; ``real_classes [C]`` is false for padded classes, whose logits are held at
  ``PADDED_CLASS_LOGIT``.
  """
  w, b = params
  logits = jnp.where(real_classes, x @ w + b, PADDED_CLASS_LOGIT)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
  return jnp.sum(weights * nll) / jnp.sum(weights) + l2 * jnp.sum(w * w)


@jax.jit
def _fit(x, y, weights, l2, real_classes, tol, max_iter, init):
  """L-BFGS (``optax.lbfgs``) from ``init`` while ``count == 0`` or (``count < max_iter`` and ``||grad|| >= tol``)."""

  def fun(params):
    return logreg_objective(params, x, y, weights, l2, real_classes)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def body(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def cond(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad = optax.tree.get(state, "grad")
    return (count == 0) | ((count < max_iter) & (optax.tree.norm(grad) >= tol))

  params, _ = jax.lax.while_loop(cond, body, (init, solver.init(init)))
  return params


def padded_size(num: int, minimum: int) -> int:
  """Size the solver is compiled for along one axis: the next power of two >= ``max(num, minimum)`` (``minimum`` a
  power of two)."""
  return 1 << max(num - 1, minimum - 1).bit_length()


#: Smallest padded row, feature and class counts.
MIN_ROWS, MIN_FEATURES, MIN_CLASSES = 256, 64, 8


def fit_logreg(
  x: np.ndarray,
  y: np.ndarray,
  num_classes: int,
  l2: float,
  *,
  weights: np.ndarray | None = None,
  max_iter: int = 1000,
  tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
  """Minimiser ``(W [D, C], b [C])`` of the weighted, L2-penalised multinomial logistic loss (module docstring).

  Rows, feature columns and classes are padded to powers of two (``padded_size``; the module docstring says why
  that leaves the minimiser unchanged), so problems of similar size share one compiled solver.
  """
  x = np.asarray(x, np.float32)
  num, dim = x.shape
  weights = np.ones(num, np.float32) if weights is None else np.asarray(weights, np.float32)
  rows, features = padded_size(num, MIN_ROWS), padded_size(dim, MIN_FEATURES)
  classes = padded_size(num_classes, MIN_CLASSES)
  x = np.pad(x, ((0, rows - num), (0, features - dim)))
  y = np.pad(np.asarray(y, np.int32), (0, rows - num))
  weights = np.pad(weights, (0, rows - num))
  real_classes = np.arange(classes) < num_classes
  init = (jnp.zeros((features, classes), jnp.float32), jnp.zeros((classes,), jnp.float32))
  w, b = _fit(x, y, weights, jnp.float32(l2), real_classes, jnp.float32(tol), jnp.int32(max_iter), init)
  return np.asarray(w)[:dim, :num_classes], np.asarray(b)[:num_classes]


def predict(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Predicted class ``argmax_c (x W + b)_c`` (lowest index on ties), or ``-1``, which matches no label, for a row
  with a non-finite logit (a NaN or infinite feature or weight never earns a correct prediction)."""
  with np.errstate(invalid="ignore", over="ignore"):
    logits = np.asarray(x, np.float32) @ w + b
  return np.where(np.isfinite(logits).all(axis=1), np.argmax(logits, axis=1), -1)


def cross_entropy(w: np.ndarray, b: np.ndarray, x: np.ndarray, labels: np.ndarray) -> float:
  """Mean cross-entropy ``-(1/N) Σ_i log softmax(x_i W + b)_{y_i}`` in nats (float64 log-sum-exp); ``inf`` when a
  row has a non-finite logit (a NaN or infinite feature never earns a finite score)."""
  with np.errstate(invalid="ignore", over="ignore"):
    logits = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
  if not np.isfinite(logits).all():
    return math.inf
  top = logits.max(axis=1, keepdims=True)
  log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
  return float(np.mean(log_norm - logits[np.arange(len(logits)), np.asarray(labels)]))


CRITERIA = ("acc1", "ce")


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy ``mean_i [prediction_i = y_i]`` in [0, 1]."""
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def select_l2(
  x: np.ndarray,
  y: np.ndarray,
  is_val: np.ndarray,
  num_classes: int,
  *,
  coarse_exponents: Sequence[float] = COARSE_EXPONENTS,
  refine_steps: Sequence[float] = REFINE_STEPS,
  max_iter: int = 1000,
  tol: float = 1e-5,
  criterion: str = "acc1",
) -> tuple[float, dict[float, float]]:
  """L2 strength chosen by the sweep of the module docstring.

  Rows with ``is_val`` true form the validation part, the others the train part. Returns ``(10^e*, scores)`` where
  ``scores`` maps every tried exponent ``e`` to the validation score: top-1 accuracy (``criterion='acc1'``) or
  minus the cross-entropy (``'ce'``), so that larger is better for both.
  """
  if criterion not in CRITERIA:
    raise unknown_choice("probe criterion", criterion, CRITERIA)
  is_val = np.asarray(is_val, bool)
  train_weights = (~is_val).astype(np.float32)
  scores: dict[float, float] = {}

  def score(exponent: float) -> float:
    if exponent not in scores:
      w, b = fit_logreg(x, y, num_classes, 10.0**exponent, weights=train_weights, max_iter=max_iter, tol=tol)
      scores[exponent] = (
        accuracy(predict(w, b, x[is_val]), y[is_val])
        if criterion == "acc1"
        else -cross_entropy(w, b, x[is_val], y[is_val])
      )
    return scores[exponent]

  def best(exponents: Sequence[float]) -> float:
    return max(exponents, key=lambda e: (score(e), e))

  low, high = min(coarse_exponents), max(coarse_exponents)
  exponent = best(list(coarse_exponents))
  for step in refine_steps:
    exponent = best([e for e in (exponent - step, exponent, exponent + step) if low <= e <= high])
  return 10.0**exponent, scores


def validation_split(num: int, fraction: float, seed: int) -> np.ndarray:
  """Boolean mask marking ``round(fraction * num)`` rows (at least 1, at most ``num - 1``), chosen uniformly at
  random with ``numpy.random.default_rng(seed)``, as validation rows."""
  num_val = min(max(1, round(fraction * num)), num - 1)
  mask = np.zeros(num, dtype=bool)
  mask[np.random.default_rng(seed).permutation(num)[:num_val]] = True
  return mask


def linear_probe(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  *,
  val_x: np.ndarray | None = None,
  val_y: np.ndarray | None = None,
  num_classes: int | None = None,
  val_fraction: float = 0.2,
  seed: int = 0,
  coarse_exponents: Sequence[float] = COARSE_EXPONENTS,
  refine_steps: Sequence[float] = REFINE_STEPS,
  max_iter: int = 1000,
  tol: float = 1e-5,
  criterion: str = "acc1",
) -> dict[str, float]:
  """Linear probe on the test set after the L2 sweep by ``criterion`` (module docstring).

  The validation part is ``(val_x, val_y)`` when given, else a ``val_fraction`` random split of the train set
  (``validation_split``). Returns ``acc1`` and ``test_ce`` (test top-1 and mean cross-entropy in nats),
  ``val_acc1`` (criterion 'acc1') or ``val_ce`` (criterion 'ce') of the chosen strength, and ``l2``.
  """
  if (val_x is None) != (val_y is None):
    raise ValueError("give both val_x and val_y, or neither")
  train_y = np.asarray(train_y)
  if val_x is None:
    x, y = np.asarray(train_x), train_y
    is_val = validation_split(len(y), val_fraction, seed)
  else:
    x = np.concatenate([train_x, val_x])
    y = np.concatenate([train_y, np.asarray(val_y)])
    is_val = np.arange(len(y)) >= len(train_y)
  if num_classes is None:
    num_classes = int(max(y.max(), np.max(test_y))) + 1
  l2, scores = select_l2(
    x,
    y,
    is_val,
    num_classes,
    coarse_exponents=coarse_exponents,
    refine_steps=refine_steps,
    max_iter=max_iter,
    tol=tol,
    criterion=criterion,
  )
  w, b = fit_logreg(x, y, num_classes, l2, max_iter=max_iter, tol=tol)
  best = max(scores.values())
  return {
    "acc1": accuracy(predict(w, b, test_x), test_y),
    "test_ce": cross_entropy(w, b, test_x, test_y),
    **({"val_acc1": best} if criterion == "acc1" else {"val_ce": -best}),
    "l2": l2,
  }


def sample_few_shot(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
  """Sorted indices of ``shots`` examples of every class present in ``labels``, drawn without replacement with
  ``numpy.random.default_rng(seed)`` (classes visited in increasing order). Raises if a class has fewer."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if members.size < shots:
      raise ValueError(f"class {c} has {members.size} examples, fewer than {shots} shots")
    chosen.append(rng.choice(members, size=shots, replace=False))
  return np.sort(np.concatenate(chosen))


def few_shot_probe(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  *,
  shots: Sequence[int] = (1, 2, 4, 8, 16),
  seeds: Sequence[int] = (0, 1, 2),
  l2: float = 1e-3,
  num_classes: int | None = None,
  max_iter: int = 1000,
  tol: float = 1e-5,
) -> dict[str, float]:
  """k-shot linear probes with a fixed L2 strength ``l2``.

  For every ``k`` in ``shots`` and every seed, a probe is fitted on ``sample_few_shot(train_y, k, seed)`` and scored
  (top-1) on the full test set. Returns ``{k}shot_acc1_mean`` and ``{k}shot_acc1_std`` (population standard
  deviation, ``ddof = 0``) over the seeds.
  """
  train_x = np.asarray(train_x, np.float32)
  train_y = np.asarray(train_y)
  if num_classes is None:
    num_classes = int(max(train_y.max(), np.max(test_y))) + 1
  metrics: dict[str, float] = {}
  for k in shots:
    accs = []
    for seed in seeds:
      index = sample_few_shot(train_y, k, seed)
      w, b = fit_logreg(train_x[index], train_y[index], num_classes, l2, max_iter=max_iter, tol=tol)
      accs.append(accuracy(predict(w, b, test_x), test_y))
    metrics[f"{k}shot_acc1_mean"] = float(np.mean(accs))
    metrics[f"{k}shot_acc1_std"] = float(np.std(accs))
  return metrics
