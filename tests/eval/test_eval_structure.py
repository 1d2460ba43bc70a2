"""Modality-structure diagnostics on hand-worked embeddings and against float64 references."""

import numpy as np
import pytest

from lmstruct.eval.structure import (
  alignment,
  bridge_residual,
  cross_modal_symmetry_error,
  embedding_shift_curve,
  gap_vector,
  in_modal_symmetry_error,
  mean_paired_distance,
  modality_gap,
  modality_separability,
  orthogonality,
  shift_embeddings,
  structure_metrics,
  uniformity,
)


def _unit(rng, n, d=16):
  z = rng.normal(size=(n, d))
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_identical_modalities_have_no_gap_and_no_asymmetry():
  z = _unit(np.random.default_rng(0), 40)
  assert modality_gap(z, z) == 0.0
  assert mean_paired_distance(z, z) == 0.0
  assert alignment(z, z) == 0.0
  assert cross_modal_symmetry_error(z, z) == pytest.approx(0.0, abs=1e-24)
  assert in_modal_symmetry_error(z, z) == 0.0
  assert modality_separability(z, z) == 0.5  # each held-out pair gets one right, one wrong


def test_shifted_copy_gap_is_the_shift_norm():
  rng = np.random.default_rng(1)
  zv = rng.normal(size=(30, 16))
  shift = rng.normal(size=16)
  norm = np.linalg.norm(shift)
  assert modality_gap(zv, zv + shift) == pytest.approx(norm, rel=1e-12)
  np.testing.assert_allclose(gap_vector(zv, zv + shift), -shift, atol=1e-12)
  assert mean_paired_distance(zv, zv + shift) == pytest.approx(norm, rel=1e-12)
  assert alignment(zv, zv + shift) == pytest.approx(norm**2, rel=1e-12)
  assert alignment(zv, zv + shift, alpha=1.0) == pytest.approx(norm, rel=1e-12)


def test_gap_and_paired_distance_differ_as_defined():
  zv = np.array([[1.0, 0.0], [-1.0, 0.0]])
  zt = np.array([[-1.0, 0.0], [1.0, 0.0]])  # same centroid, every pair antipodal
  assert modality_gap(zv, zt) == 0.0
  assert mean_paired_distance(zv, zt) == 2.0


def test_uniformity_hand_worked():
  assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)  # d^2 = 4, t = 2
  angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3
  triangle = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # d^2 = 3 for every pair
  assert uniformity(triangle) == pytest.approx(-6.0)
  assert uniformity(triangle, t=1.0) == pytest.approx(-3.0)


def test_uniformity_blocked_matches_float64_pairs():
  z = _unit(np.random.default_rng(2), 7, d=4)
  pairs = [np.exp(-2.0 * np.sum((z[j] - z[k]) ** 2)) for j in range(7) for k in range(7) if j != k]
  assert uniformity(z, block=3) == pytest.approx(np.log(np.mean(pairs)), rel=1e-12)


def test_symmetry_errors_hand_worked():
  zv = np.array([[1.0, 0.0], [0.0, 1.0]])
  zt = np.array([[1.0, 0.0], [1.0, 0.0]])
  # <zv_j, zt_k> = [[1, 1], [0, 0]] -> (S - S^T)^2 sums to 2 over 4 entries
  assert cross_modal_symmetry_error(zv, zt) == pytest.approx(0.5)
  # Gram(zv) = I, Gram(zt) = all ones -> squared difference sums to 2 over 4 entries
  assert in_modal_symmetry_error(zv, zt) == pytest.approx(0.5)
  swapped = np.array([[0.0, 1.0], [1.0, 0.0]])
  assert cross_modal_symmetry_error(zv, swapped) == 0.0


def test_symmetry_errors_blocked_match_dense_reference():
  rng = np.random.default_rng(3)
  zv, zt = _unit(rng, 9), _unit(rng, 9)
  s = np.einsum("jd,kd->jk", zv, zt)
  assert cross_modal_symmetry_error(zv, zt, block=4) == pytest.approx(np.mean((s - s.T) ** 2), rel=1e-12)
  gv, gt = np.einsum("jd,kd->jk", zv, zv), np.einsum("jd,kd->jk", zt, zt)
  assert in_modal_symmetry_error(zv, zt, block=2) == pytest.approx(np.mean((gv - gt) ** 2), rel=1e-12)


def test_bridge_residual_hand_worked():
  zv, zt = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
  mu = np.array([[0.25, 0.75]]) / np.sqrt(0.25**2 + 0.75**2)
  assert bridge_residual(mu, zv, zt) == pytest.approx(0.0, abs=1e-15)
  assert bridge_residual(-mu, zv, zt) == pytest.approx(4.0)
  # unit vectors: ||a - mu||^2 = 2 - 2 <a, mu>
  assert bridge_residual(zv, zv, zt) == pytest.approx(2.0 - 2.0 * mu[0, 0])
  assert bridge_residual(zv, zv, zt, t=1.0) == pytest.approx(0.0)


def test_orthogonality_hand_worked():
  z = np.array([[1.0, 0.0], [0.0, 1.0]])
  z_ind = np.array([[np.cos(np.pi / 3), np.sin(np.pi / 3)], [1.0, 0.0]])
  assert orthogonality(z, z_ind) == pytest.approx((0.25 + 0.0) / 2)


def test_shift_convention_and_curve():
  alpha = 0.4
  c, s = np.cos(alpha), np.sin(alpha)
  zv = np.array([[c, s], [-c, s]])
  zt = np.array([[c, -s], [-c, -s]])  # centroids (0, s) and (0, -s): Delta = (0, 2s)
  np.testing.assert_allclose(gap_vector(zv, zt), [0.0, 2 * s])
  v1, t1 = shift_embeddings(zv, zt, 1.0)
  np.testing.assert_allclose(v1, [[1.0, 0.0], [-1.0, 0.0]], atol=1e-12)
  np.testing.assert_allclose(t1, v1, atol=1e-12)
  v_neg, _ = shift_embeddings(zv, zt, -1.0)
  expected = np.array([[c, 2 * s], [-c, 2 * s]]) / np.hypot(c, 2 * s)  # zv + Delta/2, renormalised
  np.testing.assert_allclose(v_neg, expected, atol=1e-12)

  calls = []

  def metric(a, b):
    calls.append(a.copy())
    return mean_paired_distance(a, b)

  curve = embedding_shift_curve(zv, zt, [0.0, 1.0, -1.0], metric)
  assert curve["lambda"] == [0.0, 1.0, -1.0]
  assert curve["gap"][0] == pytest.approx(2 * s) and curve["gap"][1] == pytest.approx(0.0, abs=1e-12)
  assert curve["gap"][2] == pytest.approx(2 * (2 * s) / np.hypot(c, 2 * s))
  assert curve["metric"][0] == pytest.approx(2 * s) and curve["metric"][1] == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_allclose(calls[2], expected, atol=1e-12)


def test_separability_of_shifted_modalities():
  rng = np.random.default_rng(4)
  zv = _unit(rng, 100)
  zt = zv + 1.5 * _unit(rng, 1)
  zt = zt / np.linalg.norm(zt, axis=1, keepdims=True)
  assert modality_separability(zv, zt) >= 0.95
  with pytest.raises(ValueError):
    modality_separability(zv[:1], zt[:1])


def test_structure_metrics_keys():
  rng = np.random.default_rng(5)
  zv, zt = _unit(rng, 20), _unit(rng, 20)
  base = structure_metrics(zv, zt)
  assert set(base) == {
    "modality_gap",
    "mean_paired_distance",
    "alignment",
    "uniformity_image",
    "uniformity_text",
    "cross_modal_symmetry_error",
    "in_modal_symmetry_error",
    "separability",
  }
  full = structure_metrics(zv, zt, zv_aug=zv, zv_ind=zt, zt_ind=zv)
  assert set(full) - set(base) == {"bridge_residual", "orthogonality_image", "orthogonality_text"}
  assert full["modality_gap"] == modality_gap(zv, zt)
  assert full["bridge_residual"] == bridge_residual(zv, zv, zt)
