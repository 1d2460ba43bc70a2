"""Each loss against its float64 NumPy reference, plus properties and hand-worked cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from lmstruct import losses
from lmstruct.losses.common import l2_normalize

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
      (losses.gap_alignment_loss(*f32(zv, zt)), ref.gap_alignment(zv, zt)),
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
        losses.sigmoid_loss(zv, zt, SCALE, -2.0), losses.alignment_loss(zv, zt),
        losses.gap_alignment_loss(zv, zt)])

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


def test_gap_alignment_is_finite_at_initialisation_where_the_printed_form_blows_up():
  """D = 1024, B = 128 random unit pairs (⟨zv_j, zt_j⟩ ~ N(0, 1/D), as at initialisation): the mean squared distance
  is 2 − (2/B)Σ⟨⟩ ≈ 2, while the printed 1/⟨⟩² is set by the pair closest to orthogonal."""
  rng = np.random.default_rng(0)
  zv, zt = (ref.normalize(rng.normal(size=(128, 1024))) for _ in range(2))
  gap, printed = losses.gap_alignment_loss(*f32(zv, zt)), losses.alignment_loss(*f32(zv, zt))
  inner = np.sum(zv * zt, axis=-1)
  assert float(gap) == pytest.approx(2.0 - 2.0 * np.mean(inner), rel=1e-5)
  assert 1.9 < float(gap) < 2.1
  assert np.isfinite(float(jnp.sum(jax.grad(losses.gap_alignment_loss)(*f32(zv, zt)))))
  assert float(printed) > 1e4 and float(printed) == pytest.approx(np.mean(1.0 / inner ** 2), rel=1e-3)


def test_gap_alignment_has_its_only_minimum_at_aligned_pairs():
  """Along the great circle zt(θ) = cos θ·zv + sin θ·u (u ⊥ zv): L_gap = 2(1 − cos θ) rises strictly from 0 at
  θ = 0 to 4 at θ = π, while the printed 1/cos²θ has equal minima at θ = 0 and θ = π (anti-aligned pairs)."""
  zv = np.array([[1.0, 0.0, 0.0]])
  u = np.array([[0.0, 0.6, 0.8]])
  thetas = np.linspace(0.0, np.pi, 61)
  gap = np.array([float(losses.gap_alignment_loss(*f32(zv, np.cos(t) * zv + np.sin(t) * u))) for t in thetas])
  printed = np.array([float(losses.alignment_loss(*f32(zv, np.cos(t) * zv + np.sin(t) * u))) for t in thetas])
  np.testing.assert_allclose(gap, 2.0 * (1.0 - np.cos(thetas)), atol=1e-6)
  assert gap[0] == pytest.approx(0.0, abs=1e-7) and gap[-1] == pytest.approx(4.0, rel=1e-6)
  assert np.all(np.diff(gap) > 0)
  assert printed[0] == pytest.approx(1.0, rel=1e-6) and printed[-1] == pytest.approx(1.0, rel=1e-6)
  assert printed[1] > printed[0] and printed[-2] > printed[-1]  # both ends are minima of the printed form
  assert np.all(printed >= 1.0 - 1e-6)


# Every registered term's float64 reference, on the features f (a dict), the scale s, the bias b, the term's option
# and its per-example draw. A term added to the registry without a reference here fails the test below.
REFERENCES = {
    "clip": lambda f, s, b, option, draw: ref.clip(f["zv"], f["zt"], s),
    "inmodal": lambda f, s, b, option, draw: ref.inmodal(f["zv"], f["zt"], f["zv_aug"], f["zt_aug"], s),
    "sigmoid": lambda f, s, b, option, draw: ref.sigmoid(f["zv"], f["zt"], s, b),
    "separation": lambda f, s, b, option, draw: ref.separation(f["zv"], f["zt"], f["zv_ind"], f["zt_ind"],
                                                               f["zv_ind_aug"], f["zt_ind_aug"], s),
    "bridge": lambda f, s, b, option, draw: ref.bridge(f["zv"], f["zt"], f["zv_aug"], draw),
    "geometric": lambda f, s, b, option, draw: ref.geometric(f["zv"], f["zt"], f["zv_aug"], f["zt_aug"]),
    "cyclip": lambda f, s, b, option, draw: ref.cyclip(f["zv"], f["zt"], option["inmodal_weight"],
                                                       option["crossmodal_weight"]),
    "alignment": lambda f, s, b, option, draw: ref.alignment(f["zv"], f["zt"]),
    "gap_alignment": lambda f, s, b, option, draw: ref.gap_alignment(f["zv"], f["zt"]),
}


def raw_features(n, d, seed):
  """Raw head outputs (norms other than 1) with captions, augmentations and independent views near their partners,
  so that no paired product is near 0 (where the printed alignment term is ill-conditioned)."""
  rng = np.random.default_rng(seed)
  near = lambda x, sigma: x + sigma * rng.normal(size=x.shape)
  zv, zv_ind, zt_ind = (rng.normal(size=(n, d)) for _ in range(3))
  zt = near(zv, 0.5)
  return {"zv": zv, "zt": zt, "zv_aug": near(zv, 0.4), "zt_aug": near(zt, 0.4), "zv_ind": zv_ind, "zt_ind": zt_ind,
          "zv_ind_aug": near(zv_ind, 0.4), "zt_ind_aug": near(zt_ind, 0.4)}


@pytest.mark.parametrize("name", sorted(losses.TERMS))
def test_gradient_of_every_registered_term_matches_float64_finite_differences(name):
  """⟨∇L, u⟩ of the term's global formula, as registered (through l2_normalize, as in a train step), against the
  central difference (R(x + εu) − R(x − εu)) / 2ε of its float64 reference R, along three random directions u in
  (features, s, b)."""
  term = losses.TERMS[name]
  config = losses.ObjectiveConfig(options={"bridge_t": "uniform",
                                           "cyclip": {"inmodal_weight": 0.7, "crossmodal_weight": 0.2}})
  option = config.option(term)
  rng = np.random.default_rng(len(name))
  draw = rng.uniform(size=5) if term.draw is not None else None
  raw, s, b = raw_features(5, 4, seed=len(name)), 6.0, -2.0

  def value(arrays, scale, bias):
    features = losses.Features(logit_scale=scale, logit_bias=bias,
                               **{k: l2_normalize(v) for k, v in arrays.items()})
    return term.formula(features, option, None if draw is None else jnp.asarray(draw, jnp.float32))

  def reference(arrays, scale, bias):
    return REFERENCES[name]({k: ref.normalize(v) for k, v in arrays.items()}, scale, bias, option, draw)

  grads, grad_s, grad_b = jax.grad(value, argnums=(0, 1, 2))({k: jnp.asarray(v, jnp.float32) for k, v in raw.items()},
                                                             jnp.float32(s), jnp.float32(b))
  eps = 1e-5
  for _ in range(3):
    u = {k: rng.normal(size=v.shape) for k, v in raw.items()}
    u_s, u_b = rng.normal(size=2)
    contributions = [float(np.sum(np.asarray(grads[k], np.float64) * u[k])) for k in raw]
    contributions += [float(grad_s) * u_s, float(grad_b) * u_b]
    plus = reference({k: raw[k] + eps * u[k] for k in raw}, s + eps * u_s, b + eps * u_b)
    minus = reference({k: raw[k] - eps * u[k] for k in raw}, s - eps * u_s, b - eps * u_b)
    numeric = (plus - minus) / (2 * eps)
    assert sum(contributions) == pytest.approx(numeric, rel=1e-4, abs=1e-5 * sum(map(abs, contributions)) + 1e-9)
  # The term's gradient reaches exactly the features it declares it reads.
  reached = {k for k, g in grads.items() if float(jnp.abs(g).max()) > 0}
  assert reached == set(term.reads) - {"logit_scale", "logit_bias"}
