"""ALBEF's pre-training and VQA objectives (Li et al. 2021): image-text contrastive learning with momentum
distillation over a feature queue (ITC-MD), image-text matching on hard negatives (ITM), masked language modelling
with momentum distillation (MLM-MD), and the answer likelihood of VQA as generation.

All math is float32. On arrays sharded over a mesh's batch axis the sums and means below run over the global batch
(GSPMD inserts the collectives); the queues are replicated.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32

#: Added to the softmax weights of hard-negative sampling before the positives are removed (as ALBEF does), so
#: every candidate keeps a chance however confident the similarities are.
NEGATIVE_WEIGHT_FLOOR = 1e-4


def momentum_distillation_targets(momentum_logits: jax.Array, alpha: float | jax.Array) -> jax.Array:
  """Y = α·softmax(S_m) + (1 − α)·I, row by row over the B + Q columns of S_m [B, B + Q], where I is one at column
  j = row b (the pair itself; the queue columns are negatives)."""
  (momentum_logits,) = as_float32(momentum_logits)
  batch, columns = momentum_logits.shape
  one_hot = jnp.eye(batch, columns, dtype=jnp.float32)
  return alpha * jax.nn.softmax(momentum_logits, axis=-1) + (1.0 - alpha) * one_hot


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """(1/B) Σ_b −Σ_j Y_bj · log softmax(S_b)_j for logits S and target distributions Y, both [B, C]."""
  logits, targets = as_float32(logits, targets)
  return jnp.mean(-jnp.sum(jax.nn.log_softmax(logits, axis=-1) * targets, axis=-1))


def itc_md_loss(
  zv: jax.Array,
  zt: jax.Array,
  zv_m: jax.Array,
  zt_m: jax.Array,
  image_queue: jax.Array,
  text_queue: jax.Array,
  temperature: jax.Array,
  alpha: float | jax.Array,
) -> jax.Array:
  """L_itc = ½[CE_soft(zv·T_allᵀ/τ, Y_i2t) + CE_soft(zt·V_allᵀ/τ, Y_t2i)] with

  T_all = [zt_m; text_queue], V_all = [zv_m; image_queue] ([B + Q, D], momentum features first),
  Y_i2t = α·softmax(zv_m·T_allᵀ/τ) + (1 − α)·I and Y_t2i = α·softmax(zt_m·V_allᵀ/τ) + (1 − α)·I
  (`momentum_distillation_targets`; no gradient flows into the targets, the momentum features or the queues).
  All features are unit vectors [B, D]; τ is the clamped temperature.
  """
  zv, zt, zv_m, zt_m, image_queue, text_queue, temperature = as_float32(
    zv, zt, zv_m, zt_m, image_queue, text_queue, temperature
  )
  zv_m, zt_m = jax.lax.stop_gradient(zv_m), jax.lax.stop_gradient(zt_m)
  text_all = jnp.concatenate([zt_m, jax.lax.stop_gradient(text_queue)], axis=0)
  image_all = jnp.concatenate([zv_m, jax.lax.stop_gradient(image_queue)], axis=0)
  targets_i2t = momentum_distillation_targets(zv_m @ text_all.T / jax.lax.stop_gradient(temperature), alpha)
  targets_t2i = momentum_distillation_targets(zt_m @ image_all.T / jax.lax.stop_gradient(temperature), alpha)
  i2t = soft_cross_entropy(zv @ text_all.T / temperature, targets_i2t)
  t2i = soft_cross_entropy(zt @ image_all.T / temperature, targets_t2i)
  return 0.5 * (i2t + t2i)


def hard_negatives(similarity: jax.Array, positive: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One hard negative per row: column k is drawn with probability ∝ softmax(similarity_b)_k + 1e-4 among the
  columns that are not positives of row b (`positive` [B, B], True on the diagonal and wherever a candidate is
  another view of the same item). Returns (indices [B], valid [B]); a row with no non-positive column gets an
  arbitrary index and valid = False, and its pair must not count in the loss."""
  (similarity,) = as_float32(jax.lax.stop_gradient(similarity))
  weights = jax.nn.softmax(similarity, axis=-1) + NEGATIVE_WEIGHT_FLOOR
  valid = jnp.any(~positive, axis=-1)
  logits = jnp.where(positive, -jnp.inf, jnp.log(weights))
  logits = jnp.where(valid[:, None], logits, 0.0)
  return jax.random.categorical(rng, logits, axis=-1), valid


def itm_loss(positive_logits: jax.Array, negative_logits: jax.Array, negative_valid: jax.Array) -> jax.Array:
  """Cross-entropy of the 2-way ITM logits: the B matched pairs have label 1, the negative pairs label 0; the mean
  is over the matched pairs and the valid negatives (`negative_valid`), so a row without a negative adds nothing."""
  positive_logits, negative_logits = as_float32(positive_logits, negative_logits)
  positive = -jax.nn.log_softmax(positive_logits, axis=-1)[:, 1]
  negative = -jax.nn.log_softmax(negative_logits, axis=-1)[:, 0]
  weight = negative_valid.astype(jnp.float32)
  return (jnp.sum(positive) + jnp.sum(negative * weight)) / (positive.shape[0] + jnp.sum(weight))


def mask_tokens(
  tokens: jax.Array,
  rng: jax.Array,
  *,
  vocab_size: int,
  mask_token_id: int,
  special_ids: Sequence[int],
  probability: float = 0.15,
) -> tuple[jax.Array, jax.Array]:
  """BERT's masking: each token that is not special (padding, [CLS], [SEP] …) is selected with `probability`; a
  selected token becomes [MASK] with probability 0.8, a token drawn uniformly from the vocabulary with 0.1, and
  stays as it is with 0.1. Returns (masked token ids [B, L], selected [B, L]: the positions MLM predicts)."""
  select_rng, kind_rng, token_rng = jax.random.split(rng, 3)
  candidate = ~jnp.isin(tokens, jnp.asarray(list(special_ids), tokens.dtype))
  selected = candidate & jax.random.bernoulli(select_rng, probability, tokens.shape)
  kind = jax.random.uniform(kind_rng, tokens.shape)
  random_tokens = jax.random.randint(token_rng, tokens.shape, 0, vocab_size, tokens.dtype)
  masked = jnp.where(selected & (kind < 0.8), mask_token_id, tokens)
  masked = jnp.where(selected & (kind >= 0.8) & (kind < 0.9), random_tokens, masked)
  return masked, selected


def mlm_md_loss(
  logits: jax.Array, targets: jax.Array, selected: jax.Array, momentum_logits: jax.Array, alpha: float | jax.Array
) -> jax.Array:
  """(1 − α)·CE(logits, targets) + α·CE_soft(logits, softmax(momentum logits)), both averaged over the selected
  positions of the (global) batch: logits [B, L, V], targets [B, L] (the unmasked ids), selected [B, L]."""
  logits, momentum_logits = as_float32(logits, jax.lax.stop_gradient(momentum_logits))
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  hard = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  soft = -jnp.sum(jax.nn.softmax(momentum_logits, axis=-1) * log_probs, axis=-1)
  weight = selected.astype(jnp.float32)
  return jnp.sum(((1.0 - alpha) * hard + alpha * soft) * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def sequence_log_likelihood(logits: jax.Array, tokens: jax.Array, pad_token_id: int = 0) -> jax.Array:
  """log p(tokens) = Σ_{t ≥ 1, tokens_t ≠ pad} log softmax(logits_{t−1})[tokens_t] per sequence [N], where
  logits [N, L, V] at position t predict token t + 1 and token 0 is the start token ([CLS])."""
  (logits,) = as_float32(logits)
  log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nexts = tokens[:, 1:]
  picked = jnp.take_along_axis(log_probs, nexts[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(jnp.where(nexts != pad_token_id, picked, 0.0), axis=-1)


def answer_weighted_lm_loss(
  logits: jax.Array, answers: jax.Array, weights: jax.Array, pad_token_id: int = 0
) -> jax.Array:
  """ALBEF's VQA loss: (1/B) Σ_b Σ_a w_ba · (−log p(answer_ba | question_b)), for logits [B·A, L, V] of the answers
  [B·A, L] (A answer slots per question, unused slots with weight 0) and weights [B, A]."""
  (weights,) = as_float32(weights)
  nll = -sequence_log_likelihood(logits, answers, pad_token_id).reshape(weights.shape)
  return jnp.sum(weights * nll) / weights.shape[0]
