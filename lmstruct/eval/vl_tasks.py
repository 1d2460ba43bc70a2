"""Evaluators of the vision-language tasks of a fusion model (ALBEF), and their metric functions.

* ``itm_retrieval`` — COCO-protocol retrieval where the ITC similarity ⟨zv, zt⟩ gives each query its top ``k``
  candidates and the ITM head re-scores them; the re-scored order decides the ranks (a query whose positives are
  all outside its top k ranks after every candidate). Metrics: the retrieval keys of ``eval.retrieval``
  (``image_retrieval_recall@k``, ``text_retrieval_recall@k``, ``mean_recall@k``) and the same before re-ranking
  with an ``itc_`` prefix.
* ``vqa`` — the answer-list index the model ranks first (``rank_answers``); ``accuracy`` is the mean VQA accuracy
  min(#humans who gave the answer / 3, 1); ``outside_answer_list`` counts the questions none of whose answers is in
  the list (they score 0); ``skipped`` counts questions whose image is missing or corrupt.
* ``nlvr``, ``ve`` — ``accuracy`` of the classifier's arg-max, ``examples``, ``skipped`` (pairs with a missing
  image).

Each evaluator reads its model through ``model``, a zero-argument callable that returns the model's inference
functions bound to the current parameters (``lmstruct.train.albef.AlbefFunctions``); the encode functions
``run`` receives are not used, nor is the feature cache (``inputs`` is None: the ALBEF trainer, not the generic
builder of ``train.evaluation``, feeds them). The evaluator names carry the task, so results read
``vqa/accuracy``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from lmstruct.eval.evaluators import DataInputs, Evaluator, Result
from lmstruct.eval.features import BatchSource, EncodeFn, FeatureCache, iterate, row_mask, to_numpy
from lmstruct.eval.ranking import Ties, ranks_from_scores
from lmstruct.eval.retrieval import recall_metrics, retrieval_ranks


@dataclasses.dataclass
class KeptRows:
  """Iterating yields (batch, text tokens, kept row indices) for each batch of `batches` with a kept row
  (`row_mask`); `skipped` counts the real rows dropped on the way (those with an index ≥ 0: a missing or corrupt
  image), as opposed to the padding rows of a last batch."""

  batches: BatchSource
  skipped: int = 0

  def __iter__(self) -> Iterator[tuple[Mapping[str, Any], np.ndarray, np.ndarray]]:
    for batch in iterate(self.batches):
      text = to_numpy(batch["text"])
      keep = row_mask(batch, text.shape[0])
      if "index" in batch:
        self.skipped += int(np.sum(~keep & (to_numpy(batch["index"]) >= 0)))
      rows = np.flatnonzero(keep)
      if rows.size:
        yield batch, text, rows


def rank_answers(
  first_log_probs: jax.Array,
  answer_tokens: jax.Array,
  k: int,
  sequence_log_likelihoods: Callable[[jax.Array], jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Closed-list answer ranking of VQA as generation (ALBEF's `rank_answer`).

  first_log_probs [B, V]: log p(first answer token | question); answer_tokens [A, La]: the answer list as
  [start] t₁ … [end] padding. The k answers whose first token t₁ is most probable become the candidates [B, k]
  (ties: the lower answer index first); `sequence_log_likelihoods(candidate tokens [B, k, La])` → [B, k] gives
  each candidate's full log-likelihood Σ_t log p(t_t | t_<t, question), and the best of them is the answer.
  Returns (answer index [B], candidates [B, k], their log-likelihoods [B, k]).
  """
  first = jnp.take(first_log_probs, answer_tokens[:, 1], axis=-1)
  _, candidates = jax.lax.top_k(first, k)
  scores = sequence_log_likelihoods(answer_tokens[candidates])
  best = jnp.take_along_axis(candidates, jnp.argmax(scores, axis=-1)[:, None], axis=-1)[:, 0]
  return best, candidates, scores


def vqa_accuracy(predicted: np.ndarray, answer_scores: np.ndarray) -> float:
  """Mean over questions of the predicted answer's score, min(#humans who gave it / 3, 1): answer_scores [N, A],
  predicted [N] answer-list indices."""
  predicted = np.asarray(predicted, np.int64)
  return float(np.mean(np.asarray(answer_scores)[np.arange(predicted.size), predicted]))


def top_k_ranks(scores: np.ndarray, positive: np.ndarray, ties: Ties = "pessimistic") -> np.ndarray:
  """Ranks [Q] of the best positive among each query's candidates [Q, k] (`ranking.ranks_from_scores`); a query
  with no positive among them ranks k + 1 (after every candidate)."""
  scores, positive = np.asarray(scores), np.asarray(positive, bool)
  ranks = np.full(scores.shape[0], scores.shape[1] + 1, np.int64)
  found = positive.any(axis=1)
  if found.any():
    ranks[found] = ranks_from_scores(scores[found], positive[found], ties)
  return ranks


def top_k_candidates(queries: np.ndarray, candidates: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
  """Indices [Q, k] of each query's k most similar candidates by ⟨q, c⟩, most similar first (chunks of queries,
  so no Q × C matrix is held)."""
  out = []
  for start in range(0, queries.shape[0], chunk):
    similarity = queries[start : start + chunk] @ candidates.T
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
    out.append(np.take_along_axis(top, order, axis=1))
  return np.concatenate(out)


def _check_k(k: int, ks: Sequence[int]) -> None:
  if k < max(ks):
    raise ValueError(f"k={k} re-ranked candidates cannot give recall@{max(ks)}; use k >= {max(ks)}")


@dataclasses.dataclass(kw_only=True)
class ItmRetrievalEvaluator(Evaluator):
  """Retrieval re-ranked by the ITM head (module docstring). ``batches`` are eval batches of images and captions,
  one caption per row over several passes joined to their image by ``image_id_key`` (the pipeline's ``index``);
  ``pair_batch_size`` (image, text) pairs go through the fusion layers at once."""

  kind: ClassVar[str] = "itm_retrieval"
  inputs: ClassVar[DataInputs | None] = None  # fed by the fusion-model trainer, not by train.evaluation
  batches: BatchSource
  model: Callable[[], Any]
  k: int = 16
  ks: Sequence[int] = (1, 5, 10)
  ties: Ties = "pessimistic"
  image_id_key: str = "index"
  pair_batch_size: int = 256

  def __post_init__(self) -> None:
    super().__post_init__()
    _check_k(self.k, self.ks)

  def _collect(self, functions: Any) -> dict[str, np.ndarray]:
    """zv, image tokens per image; zt, token ids and owning image per caption."""
    images: dict[Any, int] = {}
    zv, image_tokens, zt, tokens, owner = [], [], [], [], []
    for batch in iterate(self.batches):
      text = to_numpy(batch["text"])
      keep = row_mask(batch, text.shape[0])
      ids = to_numpy(batch[self.image_id_key])
      rows = np.flatnonzero(keep)
      if rows.size == 0:
        continue
      encoded_image = functions.encode_image(to_numpy(batch["image"])[rows])
      encoded_text = functions.encode_text(text[rows])
      for j, row in enumerate(rows):
        key = ids[row].item()
        if key not in images:
          images[key] = len(zv)
          zv.append(encoded_image["zv"][j])
          image_tokens.append(encoded_image["image_tokens"][j])
        owner.append(images[key])
      zt.append(encoded_text["zt"])
      tokens.append(text[rows])
    if not zv:
      raise ValueError(f"{self.name}: the batch source yielded no unmasked rows")
    return {
      "zv": np.stack(zv),
      "image_tokens": np.stack(image_tokens),
      "zt": np.concatenate(zt),
      "tokens": np.concatenate(tokens),
      "owner": np.asarray(owner, np.int64),
    }

  def _scores(
    self, functions: Any, image_index: np.ndarray, text_index: np.ndarray, data: dict[str, np.ndarray]
  ) -> np.ndarray:
    """ITM log p(match) of the pairs (image_index[i], text_index[i]), in fixed-size batches (one compilation)."""
    out = []
    size = self.pair_batch_size
    for start in range(0, image_index.size, size):
      img, txt = image_index[start : start + size], text_index[start : start + size]
      pad = size - img.size
      img, txt = np.pad(img, (0, pad)), np.pad(txt, (0, pad))
      out.append(functions.itm_scores(data["image_tokens"][img], data["tokens"][txt])[: size - pad])
    return np.concatenate(out)

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    """Encodes every image and caption, re-ranks each query's top k by ITM, and ranks both directions."""
    functions = self.model()
    data = self._collect(functions)
    zv, zt, owner = data["zv"], data["zt"], data["owner"]
    k_images, k_texts = min(self.k, zv.shape[0]), min(self.k, zt.shape[0])
    texts_of_image = top_k_candidates(zv, zt, k_texts)  # i2t candidates [Ni, k]
    images_of_text = top_k_candidates(zt, zv, k_images)  # t2i candidates [Nt, k]
    i2t_scores = self._scores(
      functions, np.repeat(np.arange(zv.shape[0]), k_texts), texts_of_image.reshape(-1), data
    ).reshape(texts_of_image.shape)
    t2i_scores = self._scores(
      functions, images_of_text.reshape(-1), np.repeat(np.arange(zt.shape[0]), k_images), data
    ).reshape(images_of_text.shape)
    i2t = top_k_ranks(i2t_scores, owner[texts_of_image] == np.arange(zv.shape[0])[:, None], self.ties)
    t2i = top_k_ranks(t2i_scores, images_of_text == owner[:, None], self.ties)
    metrics = recall_metrics(t2i, i2t, self.ks)
    itc_t2i, itc_i2t = retrieval_ranks(zv, zt, owner, ties=self.ties)
    metrics.update({f"itc_{key}": value for key, value in recall_metrics(itc_t2i, itc_i2t, self.ks).items()})
    return Result(metrics, {"num_images": int(zv.shape[0]), "num_texts": int(zt.shape[0]), "k": self.k})


@dataclasses.dataclass(kw_only=True)
class VqaEvaluator(Evaluator):
  """VQA accuracy of closed-list answer ranking (module docstring); batches carry image, text (question),
  answer_scores [A] and outside (see lmstruct.data.vl_pipeline)."""

  kind: ClassVar[str] = "vqa"
  inputs: ClassVar[DataInputs | None] = None  # fed by the fusion-model trainer, not by train.evaluation
  batches: BatchSource
  model: Callable[[], Any]

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    functions = self.model()
    predicted, scores, outside = [], [], 0
    kept = KeptRows(self.batches)
    for batch, text, rows in kept:
      predicted.append(functions.vqa_answers(to_numpy(batch["image"])[rows], text[rows]))
      scores.append(to_numpy(batch["answer_scores"])[rows])
      outside += int(np.sum(to_numpy(batch["outside"])[rows]))
    if not predicted:
      raise ValueError(f"{self.name}: the batch source yielded no unmasked rows")
    predicted, scores = np.concatenate(predicted), np.concatenate(scores)
    metrics = {
      "accuracy": vqa_accuracy(predicted, scores),
      "questions": float(predicted.size),
      "outside_answer_list": float(outside),
      "skipped": float(kept.skipped),
    }
    return Result(metrics, {"predicted": predicted.tolist()})


@dataclasses.dataclass(kw_only=True)
class ClassificationEvaluator(Evaluator):
  """Accuracy of a fused-[CLS] classifier on batches with image (and image2 for NLVR²), text and label."""

  kind: ClassVar[str] = "classification"
  inputs: ClassVar[DataInputs | None] = None  # fed by the fusion-model trainer, not by train.evaluation
  batches: BatchSource
  model: Callable[[], Any]
  image_keys: Sequence[str] = ("image",)

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    functions = self.model()
    correct, count = 0, 0
    confusion: dict[str, int] = {}
    kept = KeptRows(self.batches)
    for batch, text, rows in kept:
      logits = functions.classify([to_numpy(batch[key])[rows] for key in self.image_keys], text[rows])
      labels = to_numpy(batch["label"])[rows]
      predicted = np.argmax(logits, axis=-1)
      correct += int(np.sum(predicted == labels))
      count += rows.size
      for label, guess in zip(labels.tolist(), predicted.tolist()):
        confusion[f"{label}->{guess}"] = confusion.get(f"{label}->{guess}", 0) + 1
    if count == 0:
      raise ValueError(f"{self.name}: the batch source yielded no unmasked rows")
    return Result(
      {"accuracy": correct / count, "examples": float(count), "skipped": float(kept.skipped)},
      {"confusion": confusion},
    )


@dataclasses.dataclass(kw_only=True)
class NlvrEvaluator(ClassificationEvaluator):
  """NLVR² accuracy (two images per statement)."""

  kind: ClassVar[str] = "nlvr"
  image_keys: Sequence[str] = ("image", "image2")


@dataclasses.dataclass(kw_only=True)
class VeEvaluator(ClassificationEvaluator):
  """SNLI-VE accuracy (entailment / neutral / contradiction)."""

  kind: ClassVar[str] = "ve"


VL_EVALUATORS: tuple[type[Evaluator], ...] = (ItmRetrievalEvaluator, VqaEvaluator, NlvrEvaluator, VeEvaluator)
