"""Zero-shot classification: prompt ensembling, ranks with ties, accuracy@k and per-class recall."""
import numpy as np
import pytest

from lmstruct.eval import get_evaluator
from lmstruct.eval.zeroshot import (class_ranks, encode_strings, ensemble_class_embeddings, mean_per_class_recall,
                                    zeroshot_classifier, zeroshot_metrics)

# Scores of 5 images against 4 classes (class embeddings = identity, so scores = zv). Hand-worked ranks of the true
# class: pessimistic [1, 3, 2, 4, 2] (image 2 ties with class 1), optimistic [1, 3, 1, 4, 2].
SCORES = np.array([[0.9, 0.1, 0.0, 0.0],
                   [0.5, 0.2, 0.3, 0.0],
                   [0.1, 0.4, 0.4, 0.1],
                   [0.4, 0.3, 0.2, 0.1],
                   [0.2, 0.6, 0.1, 0.1]])
LABELS = np.array([0, 1, 2, 3, 0])


def test_class_ranks_ties():
  np.testing.assert_array_equal(class_ranks(SCORES, LABELS, "pessimistic"), [1, 3, 2, 4, 2])
  np.testing.assert_array_equal(class_ranks(SCORES, LABELS, "optimistic"), [1, 3, 1, 4, 2])


def test_zeroshot_metrics_hand_worked():
  pess = zeroshot_metrics(SCORES, np.eye(4), LABELS, ks=(1, 3, 5))
  assert pess == pytest.approx({"acc1": 1 / 5, "acc3": 4 / 5, "acc5": 1.0,
                                "mean_per_class_recall": (1 / 2 + 0 + 0 + 0) / 4})
  opt = zeroshot_metrics(SCORES, np.eye(4), LABELS, ks=(1, 2), ties="optimistic")
  assert opt == pytest.approx({"acc1": 2 / 5, "acc2": 3 / 5, "mean_per_class_recall": (1 / 2 + 0 + 1 + 0) / 4})


def test_all_equal_scores_get_no_credit_by_default():
  scores = np.full((3, 3), 0.5)
  assert zeroshot_metrics(scores, np.eye(3), np.array([0, 1, 2]), ks=(1,))["acc1"] == 0.0
  assert zeroshot_metrics(scores, np.eye(3), np.array([0, 1, 2]), ks=(1,), ties="optimistic")["acc1"] == 1.0


def test_nonfinite_scores_never_count_as_hits():
  # image 0: the true class scores NaN -> worst rank 4; image 1: the NaN and +inf negatives are not ahead -> rank 1;
  # image 2: all NaN -> rank 4; image 3: -inf on the true class -> rank 4
  scores = np.array([[np.nan, 0.1, 0.2, 0.3],
                     [0.1, 0.5, np.nan, np.inf],
                     [np.nan] * 4,
                     [0.1, 0.1, 0.1, -np.inf]])
  labels = np.array([0, 1, 2, 3])
  for ties in ("pessimistic", "optimistic"):
    np.testing.assert_array_equal(class_ranks(scores, labels, ties), [4, 1, 4, 4])
  assert mean_per_class_recall(class_ranks(scores, labels), labels) == 1 / 4


def test_an_all_nan_model_has_zero_accuracy():
  labels = np.array([0, 1, 2, 0, 1])
  nan_images = np.full((5, 4), np.nan)
  for zv, classes in ((nan_images, np.eye(3, 4)), (np.eye(5, 4), np.full((3, 4), np.nan))):
    for ties in ("pessimistic", "optimistic"):
      assert zeroshot_metrics(zv, classes, labels, ks=(1, 2), ties=ties) == {
          "acc1": 0.0, "acc2": 0.0, "mean_per_class_recall": 0.0}


def test_labels_out_of_range_rejected():
  with pytest.raises(ValueError):
    zeroshot_metrics(SCORES, np.eye(4), np.array([0, 1, 2, 4, 0]))


def test_ensemble_is_renormalised_mean_of_normalised_prompts():
  prompts = np.array([[[3.0, 0.0], [0.0, 2.0]],      # -> mean (0.5, 0.5) -> (1, 1)/sqrt(2)
                      [[0.0, -5.0], [0.0, -0.1]]])   # -> (0, -1)
  np.testing.assert_allclose(ensemble_class_embeddings(prompts), [[2**-0.5, 2**-0.5], [0.0, -1.0]], atol=1e-12)


class _Vocab:
  """Tokenizer giving every new string the next id, and a text encoder looking ids up in a table."""

  def __init__(self, table):
    self.table = np.asarray(table, np.float32)
    self.ids: dict[str, int] = {}
    self.calls: list[int] = []

  def tokenize(self, texts):
    return np.array([[self.ids.setdefault(t, len(self.ids))] for t in texts], np.int32)

  def encode_text(self, tokens):
    self.calls.append(len(tokens))
    return self.table[np.asarray(tokens)[:, 0]]


def test_encode_strings_pads_last_batch_to_fixed_size():
  vocab = _Vocab(np.arange(10)[:, None] * np.ones((1, 2)))
  out = encode_strings([f"s{i}" for i in range(5)], vocab.tokenize, vocab.encode_text, batch_size=4)
  assert vocab.calls == [4, 4]
  np.testing.assert_array_equal(out[:, 0], np.arange(5))


def test_zeroshot_classifier_from_prompt_grid():
  vocab = _Vocab([[1.0, 0.0], [0.0, 4.0], [0.0, 1.0], [0.0, 1.0]])
  classifier = zeroshot_classifier([["a", "b"], ["c", "d"]], vocab.tokenize, vocab.encode_text, batch_size=3)
  np.testing.assert_allclose(classifier, [[2**-0.5, 2**-0.5], [0.0, 1.0]], atol=1e-7)


def test_zeroshot_evaluator_on_batches_uses_prompts_labels_and_mask():
    # Prompt "a photo of the red cube." -> e0, "a photo of the blue sphere." -> e1 (normalised, lower-cased names).
  prompt_vectors = {"a photo of the red cube.": [1.0, 0.0, 0.0], "a photo of the blue sphere.": [0.0, 1.0, 0.0]}
  seen: list[str] = []

  def tokenize(texts):
    seen.extend(texts)
    return np.array([[list(prompt_vectors).index(t)] for t in texts], np.int32)

  table = np.array(list(prompt_vectors.values()), np.float32)

  def encode_text(tokens):
    return {"zt": table[np.asarray(tokens)[:, 0]], "logit_scale": 1.0}

  def encode_image(images):
    return np.asarray(images)[:, 0, :, 0]

  def batch(vectors, labels, mask):
    images = np.zeros((len(vectors), 1, 3, 3), np.float32)
    images[:, 0, :, 0] = vectors
    return {"image": images, "label": np.array(labels), "mask": np.array(mask)}

  batches = [batch([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1]], [0, 1], [True, True]),
             batch([[0.1, 0.7, 0.0], [1.0, 0.0, 0.0]], [1, 1], [True, False])]  # padded row would be wrong
  evaluator = get_evaluator("zeroshot", {"batches": batches, "class_names": ["Red_Cube", " Blue  Sphere"],
                                         "tokenize": tokenize, "ks": (1, 2)})
  metrics = evaluator.run(encode_image, encode_text)
  assert sorted(seen) == sorted(prompt_vectors)
  assert metrics == {"acc1": 1.0, "acc2": 1.0, "mean_per_class_recall": 1.0, "nonfinite_fraction": 0.0}
