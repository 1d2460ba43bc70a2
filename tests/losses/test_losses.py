"""Each loss against its float64 NumPy reference, plus properties and hand-worked cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from lmstruct import losses

SIZES = [(2, 3), (5, 8), (16, 32)]
SCALE = 7.5


def features(n, d, seed, count=8):
  rng = np.random.default_rng(seed)
  return [ref.normalize(rng.normal(size=(n, d))) for _ in range(count)]


def f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


@pytest.mark.parametrize("n,d", SIZES)
def test_every_loss_matches_float64_reference(n, d):
  zv, zt, zva, zta, zvi, zti, zvia, ztia = features(n, d, seed=n * 100 + d)
  cases = [
      (losses.clip_loss(*f32(zv, zt), SCALE), ref.clip(zv, zt, SCALE)),
      (losses.inmodal_contrastive_loss(*f32(zv, zt, zva, zta), SCALE), ref.inmodal(zv, zt, zva, zta, SCALE)),
      (losses.separation_loss(*f32(zv, zt, zvi, zti, zvia, ztia), SCALE),
       ref.separation(zv, zt, zvi, zti, zvia, ztia, SCALE)),
      (losses.brownian_bridge_loss(*f32(zv, zt, zva)), ref.bridge(zv, zt, zva, 0.25)),
      (losses.geometric_consistency_loss(*f32(zv, zt, zva, zta)), ref.geometric(zv, zt, zva, zta)),
      (losses.cyclip_loss(*f32(zv, zt)), ref.cyclip(zv, zt)),
      (losses.cyclip_loss(*f32(zv, zt), inmodal_weight=0.7, crossmodal_weight=0.1),
       ref.cyclip(zv, zt, 0.7, 0.1)),
      (losses.sigmoid_loss(*f32(zv, zt), 10.0, -3.0), ref.sigmoid(zv, zt, 10.0, -3.0)),
      (losses.alignment_loss(*f32(zv, zt)), ref.alignment(zv, zt)),
  ]
  for got, want in cases:
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=2e-6)


def test_bridge_with_per_example_times_matches_reference():
  zv, zt, zva = features(6, 4, seed=3, count=3)
  t = np.random.default_rng(0).uniform(size=6)
  got = losses.brownian_bridge_loss(*f32(zv, zt, zva), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(float(got), ref.bridge(zv, zt, zva, t), rtol=2e-5)


def test_gradient_matches_finite_differences():
  """d L_inmodal / d zv against central differences in float64."""
  zv, zt, zva, zta = features(4, 3, seed=11, count=4)
  with jax.enable_x64(True):
    grad = jax.grad(lambda x: losses.inmodal_contrastive_loss(x, zt, zva, zta, SCALE))(jnp.asarray(zv))
    grad = np.asarray(grad)
  eps = 1e-6
  numeric = np.zeros_like(zv)
  for idx in np.ndindex(zv.shape):
    plus, minus = zv.copy(), zv.copy()
    plus[idx] += eps
    minus[idx] -= eps
    numeric[idx] = (ref.inmodal(plus, zt, zva, zta, SCALE) - ref.inmodal(minus, zt, zva, zta, SCALE)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_permuting_the_batch_leaves_every_loss_unchanged():
  arrays = features(7, 5, seed=5)
  perm = np.random.default_rng(1).permutation(7)
  permuted = [a[perm] for a in arrays]

  def all_losses(zv, zt, zva, zta, zvi, zti, zvia, ztia):
    return np.array([
        losses.clip_loss(zv, zt, SCALE), losses.inmodal_contrastive_loss(zv, zt, zva, zta, SCALE),
        losses.separation_loss(zv, zt, zvi, zti, zvia, ztia, SCALE), losses.brownian_bridge_loss(zv, zt, zva),
        losses.geometric_consistency_loss(zv, zt, zva, zta), losses.cyclip_loss(zv, zt),
        losses.sigmoid_loss(zv, zt, SCALE, -2.0), losses.alignment_loss(zv, zt)])

  np.testing.assert_allclose(all_losses(*f32(*arrays)), all_losses(*f32(*permuted)), rtol=1e-5)


def test_geometric_consistency_core_is_zero_for_identical_modalities():
  from lmstruct.losses.geometric import crossmodal_symmetry_error, similarity_structure_error
  (z,) = features(6, 4, seed=2, count=1)
  z = jnp.asarray(z, jnp.float32)
  assert float(crossmodal_symmetry_error(z, z) + similarity_structure_error(z, z)) < 1e-10
  # With the augmented views equal to the originals, the whole L_GC + L_GC^a vanishes.
  assert float(losses.geometric_consistency_loss(z, z, z, z)) < 1e-10


def test_bridge_loss_is_zero_on_the_bridge_mean():
  zv, zt = features(5, 3, seed=4, count=2)
  mean = ref.normalize(0.25 * zv + 0.75 * zt)
  assert float(losses.brownian_bridge_loss(*f32(zv, zt, mean))) < 1e-12
  assert float(losses.brownian_bridge_loss(*f32(zv, zt, zv))) > 0.01


def test_bridge_gradient_reaches_all_three_inputs():
  zv, zt, zva = f32(*features(4, 3, seed=9, count=3))
  grads = jax.grad(losses.brownian_bridge_loss, argnums=(0, 1, 2))(zv, zt, zva)
  assert all(float(jnp.abs(g).sum()) > 0 for g in grads)


def test_orthogonality_is_zero_for_orthogonal_pairs():
  from lmstruct.losses.separation import orthogonality_loss
  eye = np.eye(4)
  zv, zv_ind = eye[[0, 1]], eye[[2, 3]]
  zt, zt_ind = eye[[1, 0]], eye[[3, 2]]
  assert float(orthogonality_loss(*f32(zv, zt, zv_ind, zt_ind))) == 0.0
  assert float(orthogonality_loss(*f32(zv, zt, zv, zt))) == pytest.approx(2.0)


def test_clip_loss_hand_worked_2x2():
  """zv = zt = [e1, e2], s = 1: logits = I, so each row is CE([1, 0], 0) = log(1 + e^{-1})."""
  eye = jnp.eye(2, dtype=jnp.float32)
  assert float(losses.clip_loss(eye, eye, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
  # Swapped captions: the positives score 0 and the negatives 1, so each row costs log(1 + e).
  assert float(losses.clip_loss(eye, eye[::-1], 1.0)) == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_uniformity_term_matches_hand_value_for_antipodal_points():
  """Two antipodal points per modality: Σ_jk G = 2·(1 + e^{-8}) per modality, so L = log((1 + e^{-8}) · 4 / 4)."""
  from lmstruct.losses.separation import independent_uniformity_loss
  z = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]], jnp.float32)
  assert float(independent_uniformity_loss(z, z)) == pytest.approx(math.log(1 + math.exp(-8)), abs=2e-7)
