"""ALBEF's losses against float64 NumPy written from the formulas (loops, no shared code), and hand-worked cases of
hard-negative sampling and BERT masking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.losses import albef as albef_losses


def normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def log_softmax_row(row):
  top = max(row)
  log_z = top + math.log(sum(math.exp(v - top) for v in row))
  return [v - log_z for v in row]


def soft_ce(logits, targets):
  """(1/B) Σ_b −Σ_j Y_bj log softmax(S_b)_j with explicit loops."""
  total = 0.0
  for b in range(logits.shape[0]):
    log_p = log_softmax_row(list(logits[b]))
    total -= sum(targets[b, j] * log_p[j] for j in range(logits.shape[1]))
  return total / logits.shape[0]


def itc_md_reference(zv, zt, zv_m, zt_m, image_queue, text_queue, tau, alpha):
  """ALBEF's ITC with momentum distillation, in float64 with loops."""
  text_all = np.concatenate([zt_m, text_queue])
  image_all = np.concatenate([zv_m, image_queue])
  batch, columns = zv.shape[0], text_all.shape[0]

  def sims(a, b):
    return np.array([[float(np.dot(a[i], b[j])) / tau for j in range(b.shape[0])] for i in range(a.shape[0])])

  def targets(momentum):
    out = np.zeros((batch, columns))
    for b in range(batch):
      p = [math.exp(v) for v in log_softmax_row(list(momentum[b]))]
      for j in range(columns):
        out[b, j] = alpha * p[j] + (1 - alpha) * (1.0 if j == b else 0.0)
    return out

  i2t = soft_ce(sims(zv, text_all), targets(sims(zv_m, text_all)))
  t2i = soft_ce(sims(zt, image_all), targets(sims(zt_m, image_all)))
  return 0.5 * (i2t + t2i)


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_itc_md_matches_float64_reference(alpha):
  rng = np.random.default_rng(0)
  b, q, d = 4, 8, 6
  zv, zt, zv_m, zt_m = (normalize(rng.normal(size=(b, d))) for _ in range(4))
  image_queue, text_queue = normalize(rng.normal(size=(q, d))), normalize(rng.normal(size=(q, d)))
  tau = 0.07
  got = albef_losses.itc_md_loss(
    *(jnp.asarray(x, jnp.float32) for x in (zv, zt, zv_m, zt_m, image_queue, text_queue)), jnp.float32(tau), alpha
  )
  want = itc_md_reference(zv, zt, zv_m, zt_m, image_queue, text_queue, tau, alpha)
  np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_itc_md_gradient_flows_only_into_the_online_features_and_temperature():
  rng = np.random.default_rng(1)
  zv, zt, zv_m, zt_m, iq, tq = (
    jnp.asarray(normalize(rng.normal(size=(3 if i < 4 else 6, 5))), jnp.float32) for i in range(6)
  )
  grads = jax.grad(albef_losses.itc_md_loss, argnums=tuple(range(7)))(zv, zt, zv_m, zt_m, iq, tq, 0.1, 0.4)
  assert all(float(jnp.abs(g).sum()) > 0 for g in (grads[0], grads[1], grads[6]))
  assert all(float(jnp.abs(g).sum()) == 0 for g in grads[2:6])


def mlm_md_reference(logits, targets, selected, momentum_logits, alpha):
  total, count = 0.0, 0
  for b in range(logits.shape[0]):
    for t in range(logits.shape[1]):
      if not selected[b, t]:
        continue
      log_p = log_softmax_row(list(logits[b, t]))
      p_m = [math.exp(v) for v in log_softmax_row(list(momentum_logits[b, t]))]
      hard = -log_p[targets[b, t]]
      soft = -sum(p_m[v] * log_p[v] for v in range(len(log_p)))
      total += (1 - alpha) * hard + alpha * soft
      count += 1
  return total / count


def test_mlm_md_matches_float64_reference():
  rng = np.random.default_rng(2)
  logits, momentum = rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7))
  targets = rng.integers(0, 7, (2, 5))
  selected = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], bool)
  got = albef_losses.mlm_md_loss(
    jnp.asarray(logits, jnp.float32),
    jnp.asarray(targets),
    jnp.asarray(selected),
    jnp.asarray(momentum, jnp.float32),
    0.4,
  )
  np.testing.assert_allclose(float(got), mlm_md_reference(logits, targets, selected, momentum, 0.4), rtol=1e-5)


def test_mlm_md_without_selected_positions_is_zero_not_nan():
  got = albef_losses.mlm_md_loss(
    jnp.ones((1, 3, 4)), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3), bool), jnp.ones((1, 3, 4)), 0.4
  )
  assert float(got) == 0.0


def test_itm_loss_matches_reference_and_ignores_invalid_negatives():
  rng = np.random.default_rng(3)
  positive, negative = rng.normal(size=(3, 2)), rng.normal(size=(6, 2))
  valid = np.array([1, 1, 0, 1, 0, 1], bool)
  terms = [-log_softmax_row(list(positive[b]))[1] for b in range(3)]
  terms += [-log_softmax_row(list(negative[b]))[0] for b in range(6) if valid[b]]
  got = albef_losses.itm_loss(
    jnp.asarray(positive, jnp.float32), jnp.asarray(negative, jnp.float32), jnp.asarray(valid)
  )
  np.testing.assert_allclose(float(got), sum(terms) / len(terms), rtol=1e-6)


def test_hard_negatives_never_draw_a_positive_and_follow_the_softmax_weights():
  # Row 0: columns 0 and 1 show the same image (positives); column 2 has similarity 2, column 3 similarity 0, so
  # column 2 is drawn with probability (e²/Z + 1e-4) / (e²/Z + 1 /Z + 2e-4) where Z is the row's softmax sum.
  similarity = jnp.asarray([[5.0, 4.0, 2.0, 0.0], [0.0, 5.0, 1.0, 1.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
  positive = jnp.asarray([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
  draws = jax.vmap(lambda key: albef_losses.hard_negatives(similarity, positive, key)[0])(
    jax.random.split(jax.random.key(0), 4000)
  )
  draws = np.asarray(draws)
  assert not np.any(np.asarray(positive)[np.arange(4)[None, :], draws])
  z = math.exp(5) + math.exp(4) + math.exp(2) + 1
  p2 = (math.exp(2) / z + 1e-4) / (math.exp(2) / z + 1 / z + 2e-4)
  assert abs(np.mean(draws[:, 0] == 2) - p2) < 0.025
  assert abs(np.mean(draws[:, 2] == 0) - 1 / 3) < 0.03  # equal similarities: uniform over the three negatives


def test_hard_negatives_of_a_row_without_negatives_are_invalid_and_the_loss_stays_finite():
  similarity = jnp.zeros((2, 2))
  positive = jnp.ones((2, 2), bool)  # both rows show the same image
  index, valid = albef_losses.hard_negatives(similarity, positive, jax.random.key(1))
  assert not np.any(np.asarray(valid))
  assert np.all((np.asarray(index) >= 0) & (np.asarray(index) < 2))
  loss = albef_losses.itm_loss(jnp.zeros((2, 2)), jnp.zeros((4, 2)), jnp.concatenate([valid, valid]))
  np.testing.assert_allclose(float(loss), math.log(2), rtol=1e-6)  # the positives alone count
  grad = jax.grad(lambda s: albef_losses.itm_loss(s[:2], s, jnp.concatenate([valid, valid])))(jnp.ones((4, 2)))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_mask_tokens_follows_the_80_10_10_rule_and_spares_special_tokens():
  vocab, mask_id, pad, cls, sep = 1000, 103, 0, 101, 102
  rng = np.random.default_rng(4)
  tokens = rng.integers(200, vocab, (256, 64)).astype(np.int32)
  tokens[:, 0], tokens[:, 40] = cls, sep
  tokens[:, 41:] = pad
  masked, selected = albef_losses.mask_tokens(
    jnp.asarray(tokens), jax.random.key(2), vocab_size=vocab, mask_token_id=mask_id, special_ids=(pad, cls, sep)
  )
  masked, selected = np.asarray(masked), np.asarray(selected)
  special = np.isin(tokens, [pad, cls, sep])
  assert not selected[special].any() and np.array_equal(masked[special], tokens[special])
  assert np.array_equal(masked[~selected], tokens[~selected])
  candidates = (~special).sum()
  n = selected.sum()
  assert abs(n / candidates - 0.15) < 4 * math.sqrt(0.15 * 0.85 / candidates)
  as_mask = np.mean(masked[selected] == mask_id)
  kept = np.mean(masked[selected] == tokens[selected])
  replaced = 1 - as_mask - kept
  sigma = lambda p: 4 * math.sqrt(p * (1 - p) / n)
  assert abs(as_mask - 0.8) < sigma(0.8)
  assert abs(kept - (0.1 + 0.1 / vocab)) < sigma(0.1)  # a random token equals the original 1/vocab of the time
  assert abs(replaced - 0.1) < sigma(0.1)


def test_answer_weighted_lm_loss_matches_reference():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(4, 3, 6))  # 2 questions × 2 answer slots, length 3, vocabulary 6
  answers = np.array([[1, 4, 2], [1, 3, 0], [1, 5, 2], [1, 0, 0]], np.int32)
  weights = np.array([[0.7, 0.3], [1.0, 0.0]], np.float32)
  nll = []
  for n in range(4):
    total = 0.0
    for t in range(1, 3):
      if answers[n, t] != 0:
        total -= log_softmax_row(list(logits[n, t - 1]))[answers[n, t]]
    nll.append(total)
  want = (0.7 * nll[0] + 0.3 * nll[1] + 1.0 * nll[2]) / 2
  got = albef_losses.answer_weighted_lm_loss(
    jnp.asarray(logits, jnp.float32), jnp.asarray(answers), jnp.asarray(weights)
  )
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
