"""Diagnostics of the latent modality structure on paired embeddings ``zv_j``, ``zt_j`` (j = 1..N).

Every function takes the embeddings as given (no renormalisation) and computes in float64; the ``N x N`` quantities
are accumulated over row blocks so memory stays ``O(block * N)``. Definitions are in each docstring.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from lmstruct.eval.features import l2_normalize
from lmstruct.eval.probe import accuracy, fit_logreg, predict


def _f64(x: np.ndarray) -> np.ndarray:
  """``x`` as a float64 NumPy array."""
  return np.asarray(x, dtype=np.float64)


def gap_vector(zv: np.ndarray, zt: np.ndarray) -> np.ndarray:
  """``Delta = mean_j zv_j - mean_j zt_j``, the difference of the modality centroids."""
  return _f64(zv).mean(axis=0) - _f64(zt).mean(axis=0)


def modality_gap(zv: np.ndarray, zt: np.ndarray) -> float:
  """Modality gap of Liang et al. (NeurIPS 2022): ``||mean_j zv_j - mean_j zt_j||_2``."""
  return float(np.linalg.norm(gap_vector(zv, zt)))


def mean_paired_distance(zv: np.ndarray, zt: np.ndarray) -> float:
  """The gap measure of Jiang et al. (CVPR 2023): ``(1/N) sum_j ||zv_j - zt_j||_2``."""
  return float(np.mean(np.linalg.norm(_f64(zv) - _f64(zt), axis=1)))


def alignment(zv: np.ndarray, zt: np.ndarray, alpha: float = 2.0) -> float:
  """Alignment of Wang & Isola (ICML 2020): ``(1/N) sum_j ||zv_j - zt_j||_2^alpha``."""
  return float(np.mean(np.linalg.norm(_f64(zv) - _f64(zt), axis=1) ** alpha))


def uniformity(z: np.ndarray, t: float = 2.0, block: int = 1024) -> float:
  """Uniformity of Wang & Isola: ``log( (1/(N(N-1))) sum_{j != k} exp(-t ||z_j - z_k||_2^2) )``; needs N >= 2."""
  z = _f64(z)
  n = z.shape[0]
  if n < 2:
    raise ValueError("uniformity needs at least two embeddings")
  sq = np.sum(z * z, axis=1)
  total = 0.0
  for start in range(0, n, block):
    rows = slice(start, min(start + block, n))
    dist2 = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * z[rows] @ z.T, 0.0)
    kernel = np.exp(-t * dist2)
    kernel[np.arange(kernel.shape[0]), np.arange(start, rows.stop)] = 0.0
    total += kernel.sum()
  return float(np.log(total / (n * (n - 1))))


def _mean_squared_by_row_blocks(difference: Callable[[slice], np.ndarray], n: int, block: int) -> float:
  """``(1/N^2) sum_rows sum ||difference(rows)||^2`` over row blocks of at most ``block`` rows (bounded memory)."""
  total = sum(np.sum(difference(slice(start, min(start + block, n))) ** 2) for start in range(0, n, block))
  return float(total / n**2)


def cross_modal_symmetry_error(zv: np.ndarray, zt: np.ndarray, block: int = 1024) -> float:
  """Cross-modal geometric-consistency error: ``(1/N^2) sum_{j,k} (<zv_j, zt_k> - <zv_k, zt_j>)^2``."""
  zv, zt = _f64(zv), _f64(zt)
  return _mean_squared_by_row_blocks(lambda rows: zv[rows] @ zt.T - zt[rows] @ zv.T, zv.shape[0], block)


def in_modal_symmetry_error(zv: np.ndarray, zt: np.ndarray, block: int = 1024) -> float:
  """In-modal geometric-consistency error: ``(1/N^2) sum_{j,k} (<zv_j, zv_k> - <zt_j, zt_k>)^2``."""
  zv, zt = _f64(zv), _f64(zt)
  return _mean_squared_by_row_blocks(lambda rows: zv[rows] @ zv.T - zt[rows] @ zt.T, zv.shape[0], block)


def bridge_residual(zv_aug: np.ndarray, zv: np.ndarray, zt: np.ndarray, t: float = 0.25) -> float:
  """Brownian-bridge residual: ``(1/N) sum_j ||zv_aug_j - normalize(t zv_j + (1 - t) zt_j)||_2^2``."""
  mu = l2_normalize(t * _f64(zv) + (1.0 - t) * _f64(zt))
  return float(np.mean(np.sum((_f64(zv_aug) - mu) ** 2, axis=1)))


def orthogonality(z: np.ndarray, z_ind: np.ndarray) -> float:
  """Orthogonality of shared and independent features: ``(1/N) sum_j <z_j, z_ind_j>^2``."""
  return float(np.mean(np.sum(_f64(z) * _f64(z_ind), axis=1) ** 2))


def modality_separability(zv: np.ndarray, zt: np.ndarray, *, test_fraction: float = 0.5, l2: float = 1e-4,
                          seed: int = 0, max_iter: int = 500) -> float:
  """Held-out accuracy of a linear image-vs-text classifier.

  The pair indices are permuted with ``numpy.random.default_rng(seed)``; the first ``round(test_fraction * N)``
  pairs (at least 1, at most N - 1) are held out, so both members of a pair fall on the same side. A 2-class
  logistic regression (``probe.fit_logreg``, L2 strength ``l2``) is fitted on the other pairs' ``zv`` (label 0) and
  ``zt`` (label 1) and its top-1 accuracy on the held-out ``zv`` and ``zt`` is returned. 0.5 means inseparable.
  Like every other diagnostic here, it is NaN when an embedding holds a NaN or an infinity.
  """
  n = zv.shape[0]
  if n < 2:
    raise ValueError("separability needs at least two pairs")
  if not (np.isfinite(zv).all() and np.isfinite(zt).all()):
    return math.nan
  order = np.random.default_rng(seed).permutation(n)
  num_test = min(max(1, round(test_fraction * n)), n - 1)
  test, train = order[:num_test], order[num_test:]

  def stack(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([zv[index], zt[index]]).astype(np.float32)
    y = np.concatenate([np.zeros(index.size, np.int32), np.ones(index.size, np.int32)])
    return x, y

  x_train, y_train = stack(train)
  x_test, y_test = stack(test)
  w, b = fit_logreg(x_train, y_train, 2, l2, max_iter=max_iter)
  return accuracy(predict(w, b, x_test), y_test)


def shift_embeddings(zv: np.ndarray, zt: np.ndarray, lam: float,
                     delta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Embedding shift along the gap direction.

  ``zv' = normalize(zv - lam * Delta / 2)``, ``zt' = normalize(zt + lam * Delta / 2)`` with
  ``Delta = mean(zv) - mean(zt)`` (``gap_vector``) unless ``delta`` is given. ``lam = 0`` keeps the embeddings (up to
  renormalisation), ``lam = 1`` makes the two centroids coincide before renormalisation, ``lam < 0`` widens the gap.
  """
  delta = gap_vector(zv, zt) if delta is None else _f64(delta)
  return l2_normalize(_f64(zv) - 0.5 * lam * delta), l2_normalize(_f64(zt) + 0.5 * lam * delta)


def embedding_shift_curve(zv: np.ndarray, zt: np.ndarray, lambdas: Sequence[float],
                          metric: Callable[[np.ndarray, np.ndarray], float],
                          delta: np.ndarray | None = None) -> dict[str, list[float]]:
  """For each ``lam``: shift (``shift_embeddings``, ``Delta`` fixed from the unshifted data) and re-evaluate.

  Returns ``{'lambda': [...], 'gap': [modality_gap(zv', zt')...], 'metric': [metric(zv', zt')...]}``.
  """
  delta = gap_vector(zv, zt) if delta is None else delta
  curve: dict[str, list[float]] = {"lambda": [], "gap": [], "metric": []}
  for lam in lambdas:
    shifted_v, shifted_t = shift_embeddings(zv, zt, lam, delta)
    curve["lambda"].append(float(lam))
    curve["gap"].append(modality_gap(shifted_v, shifted_t))
    curve["metric"].append(float(metric(shifted_v, shifted_t)))
  return curve


def structure_metrics(zv: np.ndarray, zt: np.ndarray, *, zv_aug: np.ndarray | None = None,
                      zv_ind: np.ndarray | None = None, zt_ind: np.ndarray | None = None,
                      bridge_t: float = 0.25, uniformity_t: float = 2.0, alignment_alpha: float = 2.0,
                      separability_l2: float = 1e-4, separability_test_fraction: float = 0.5,
                      seed: int = 0) -> dict[str, float]:
  """All structure diagnostics of paired embeddings, keyed by name.

  Always: ``modality_gap``, ``mean_paired_distance``, ``alignment``, ``uniformity_image``, ``uniformity_text``,
  ``cross_modal_symmetry_error``, ``in_modal_symmetry_error``, ``separability``. With ``zv_aug``:
  ``bridge_residual``. With ``zv_ind`` / ``zt_ind``: ``orthogonality_image`` / ``orthogonality_text``.
  """
  metrics = {
      "modality_gap": modality_gap(zv, zt),
      "mean_paired_distance": mean_paired_distance(zv, zt),
      "alignment": alignment(zv, zt, alignment_alpha),
      "uniformity_image": uniformity(zv, uniformity_t),
      "uniformity_text": uniformity(zt, uniformity_t),
      "cross_modal_symmetry_error": cross_modal_symmetry_error(zv, zt),
      "in_modal_symmetry_error": in_modal_symmetry_error(zv, zt),
      "separability": modality_separability(zv, zt, test_fraction=separability_test_fraction,
                                            l2=separability_l2, seed=seed),
  }
  if zv_aug is not None:
    metrics["bridge_residual"] = bridge_residual(zv_aug, zv, zt, bridge_t)
  if zv_ind is not None:
    metrics["orthogonality_image"] = orthogonality(zv, zv_ind)
  if zt_ind is not None:
    metrics["orthogonality_text"] = orthogonality(zt, zt_ind)
  return metrics
