"""Zero-shot classification with prompt ensembles.

Class embedding (CLIP's ensembling): for class ``c`` with prompts ``p_{c,1..T}`` and text encoder ``f``,
``w_c = normalize( (1/T) sum_t normalize(f(p_{c,t})) )``. Image ``i`` scores class ``c`` by ``<zv_i, w_c>``.
Accuracy@k uses the rank of the true class under ``lmstruct.eval.ranking`` (ties pessimistic by default).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from lmstruct import multihost
from lmstruct.eval.features import EncodeFn, encode_outputs, l2_normalize
from lmstruct.eval.ranking import Ties, ranks_from_scores, recall_at_k

Tokenizer = Callable[[Sequence[str]], np.ndarray]


def ensemble_class_embeddings(prompt_embeddings: np.ndarray) -> np.ndarray:
  """``[C, T, D]`` prompt embeddings -> ``[C, D]`` class embeddings ``normalize(mean_t normalize(e_{c,t}))``."""
  return l2_normalize(np.mean(l2_normalize(np.asarray(prompt_embeddings, np.float64)), axis=1))


def encode_strings(texts: Sequence[str], tokenize: Tokenizer, encode_text: EncodeFn,
                   batch_size: int = 256) -> np.ndarray:
  """``[len(texts), D]`` text embeddings ``zt``, the same on every JAX process.

  ``batch_size`` is the global batch: process ``p`` of ``P`` encodes its contiguous share
  ``texts[p*s:(p+1)*s]``, ``s = ceil(len(texts) / P)``, in ``ceil(s / b)`` batches of ``b = ceil(batch_size / P)``
  rows, the last padded by repeating its final row (so a jitted encoder sees one shape and every process runs as
  many batches). Padded rows are dropped and the shares gathered in process order
  (``lmstruct.multihost.allgather_rows``).
  """
  if not texts:
    raise ValueError("there are no texts to encode")
  processes, index = jax.process_count(), jax.process_index()
  share, local_batch = -(-len(texts) // processes), -(-batch_size // processes)
  mine = list(texts[index * share:(index + 1) * share])
  out = []
  for start in range(0, share, local_batch):
    batch = mine[start:start + local_batch]
    tokens = np.asarray(tokenize(batch or [texts[0]]))
    tokens = np.pad(tokens, [(0, local_batch - tokens.shape[0])] + [(0, 0)] * (tokens.ndim - 1), mode="edge")
    out.append(encode_outputs(encode_text, tokens, "zt")["zt"][:len(batch)])
  return multihost.allgather_rows(np.concatenate(out, axis=0))


def zeroshot_classifier(prompts: Sequence[Sequence[str]], tokenize: Tokenizer, encode_text: EncodeFn,
                        batch_size: int = 256) -> np.ndarray:
  """``[C, D]`` class embeddings from a ``C x T`` prompt grid (``templates.build_prompts``) by prompt ensembling."""
  num_templates = len(prompts[0])
  if any(len(row) != num_templates for row in prompts):
    raise ValueError("every class needs the same number of prompts")
  flat = [p for row in prompts for p in row]
  embeddings = encode_strings(flat, tokenize, encode_text, batch_size)
  return ensemble_class_embeddings(embeddings.reshape(len(prompts), num_templates, -1))


def class_ranks(scores: np.ndarray, labels: np.ndarray, ties: Ties = "pessimistic") -> np.ndarray:
  """Rank of the true class per row of ``[N, C]`` scores (1 + number of other classes scoring above it;
  pessimistic ties also count equal scores)."""
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  positive = np.arange(scores.shape[1])[None, :] == labels[:, None]
  return ranks_from_scores(scores, positive, ties)


def mean_per_class_recall(ranks: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 recall averaged over the classes present: ``mean_{c in labels} mean_{i: y_i = c} [rank_i = 1]``."""
  labels = np.asarray(labels)
  correct = np.asarray(ranks) == 1
  return float(np.mean([np.mean(correct[labels == c]) for c in np.unique(labels)]))


def zeroshot_metrics(zv: np.ndarray, class_embeddings: np.ndarray, labels: np.ndarray,
                     ks: Sequence[int] = (1, 3, 5), ties: Ties = "pessimistic") -> dict[str, float]:
  """Zero-shot metrics of image embeddings ``zv [N, D]`` against ``class_embeddings [C, D]``.

  Scores are ``zv @ class_embeddings.T``. Returns ``acc{k}`` = fraction of images whose true class has rank <= k
  (for every k in ``ks``) and ``mean_per_class_recall``; all in [0, 1].
  """
  labels = np.asarray(labels)
  num_classes = class_embeddings.shape[0]
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes})")
  scores = np.asarray(zv, np.float64) @ np.asarray(class_embeddings, np.float64).T
  ranks = class_ranks(scores, labels, ties)
  metrics = {f"acc{k}": recall_at_k(ranks, k) for k in ks}
  metrics["mean_per_class_recall"] = mean_per_class_recall(ranks, labels)
  return metrics
