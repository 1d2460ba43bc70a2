"""The vision-language tasks' metrics and evaluation inputs: VQA answer ranking on a toy vocabulary, the VQA accuracy
min(#humans / 3, 1), re-ranked retrieval ranks, and the real formats of ../shared/data/vl-fixtures read into
evaluation rows (questions outside the answer list counted, pairs with a missing image skipped and counted)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.data import sources
from lmstruct.data import vl_pipeline as vl
from lmstruct.data.pipeline import eval_pipeline
from lmstruct.eval.vl_tasks import (
  ItmRetrievalEvaluator,
  NlvrEvaluator,
  VqaEvaluator,
  rank_answers,
  top_k_ranks,
  vqa_accuracy,
)

LENGTH = 8


def tokenize(texts):
  """A stand-in tokenizer: [CLS]=1, one id per word (its length + 10), [SEP]=2, zero padding."""
  out = np.zeros((len(texts), LENGTH), np.int32)
  for row, text in enumerate(texts):
    ids = [1, *[10 + len(word) for word in text.split()][: LENGTH - 2], 2]
    out[row, : len(ids)] = ids
  return out


def test_rank_answers_on_a_toy_vocabulary():
  # Four answers ([CLS]=1 first token … [SEP]=2). First-token log-probabilities put token 6 first, then 5, then 8:
  # with k = 2 the candidates are answers 1 and 2 (both start with 6; equal scores keep the lower index first),
  # and answer 0 is never re-scored although its full likelihood would be the best.
  answers = jnp.asarray([[1, 5, 2, 0], [1, 6, 7, 2], [1, 6, 2, 0], [1, 8, 2, 0]], jnp.int32)
  first = jnp.log(jnp.asarray([[0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.6, 0.0, 0.1, 0.0]]) + 1e-9)
  full = jnp.asarray([-0.1, -3.0, -1.0, -5.0])

  def likelihoods(candidates):  # [B, k, La] → the toy table's value of each candidate
    index = jnp.argmax(jnp.all(candidates[:, :, None, :] == answers[None, None], axis=-1), axis=-1)
    return full[index]

  best, candidates, scores = rank_answers(first, answers, 2, likelihoods)
  np.testing.assert_array_equal(candidates, [[1, 2]])
  np.testing.assert_allclose(scores, [[-3.0, -1.0]])
  assert int(best[0]) == 2
  best, _, _ = rank_answers(first, answers, 4, likelihoods)
  assert int(best[0]) == 0


def test_vqa_accuracy_is_min_humans_over_three():
  counts = vl.answer_counts({"answers": ["net"] * 2 + ["Netting."] * 7 + ["mesh"]})
  scores = vl.answer_scores(counts, multi_annotator=True)
  assert scores == pytest.approx({"net": 2 / 3, "netting": 1.0, "mesh": 1 / 3})
  answer_list = vl.AnswerList(("mesh", "net", "netting", "yes"))
  vector = answer_list.score_vector(scores)
  np.testing.assert_allclose(vector, [1 / 3, 2 / 3, 1.0, 0.0])
  assert vqa_accuracy(np.array([1, 3]), np.stack([vector, vector])) == pytest.approx((2 / 3 + 0) / 2)
  assert vl.answer_weights(counts, 2) == [("netting", 0.7), ("net", 0.2)]


def test_top_k_ranks_put_queries_without_a_positive_last():
  scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
  positive = np.array([[1, 0, 0], [0, 0, 0]], bool)
  np.testing.assert_array_equal(top_k_ranks(scores, positive), [3, 4])


class FixedAnswers:
  """Inference stand-in: always predicts answer-list index `index`."""

  def __init__(self, index):
    self.index = index

  def vqa_answers(self, images, questions):
    return np.full(len(questions), self.index)

  def classify(self, images, tokens):
    logits = np.zeros((len(tokens), 2))
    logits[:, 1] = 1.0
    return logits


def test_vqa_v2_rows_count_outside_answers_and_missing_images(shared_data, tmp_path):
  root = shared_data / "vl-fixtures"
  questions = json.loads((root / "vqav2/questions.json").read_text())
  annotations = json.loads((root / "vqav2/annotations.json").read_text())
  # The fixture's three questions are about one image; a fourth asks about an image that does not exist.
  questions["questions"].append({"image_id": 999999, "question": "Is it here?", "question_id": 999999000})
  annotations["annotations"].append({"question_id": 999999000, "answers": [{"answer": "net"}] * 10})
  (tmp_path / "questions.json").write_text(json.dumps(questions))
  (tmp_path / "annotations.json").write_text(json.dumps(annotations))
  source = sources.build_source(
    {
      "kind": "vqav2",
      "questions": str(tmp_path / "questions.json"),
      "annotations": str(tmp_path / "annotations.json"),
      "images": str(root / "images/vqav2"),
    },
    where="evals.vqa.data",
  )
  # Humans answered 'net' 7 times of 10 to the first question; the second (pitcher, catcher) and third (orange)
  # have no answer in the list ['net', 'zzz']: they are counted and score 0.
  (tmp_path / "answers.json").write_text(json.dumps(["Net", "zzz"]))
  row = vl.VLEvalRow("vqa", tokenize, 16, vl.load_answer_list(str(tmp_path / "answers.json")))
  wrapped = vl.MissingImagesCounted(source)
  evaluator = VqaEvaluator(
    name="vqa",
    model=lambda: FixedAnswers(0),
    batches=lambda: eval_pipeline(
      wrapped, global_batch_size=8, image_size=16, row_fn=row, template=row.template(LENGTH)
    ),
  )
  metrics = evaluator.run(None, None)
  assert (metrics["questions"], metrics["skipped"], metrics["outside_answer_list"]) == (3, 1, 2)
  assert metrics["accuracy"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_nlvr2_pairs_with_a_missing_image_are_skipped_and_counted(shared_data, tmp_path):
  root = shared_data / "vl-fixtures"
  lines = (root / "nlvr2/tiny-dev.json").read_text().splitlines()
  missing = json.loads(lines[0])
  missing["identifier"] = "dev-9999-0-0"  # no such image pair
  (tmp_path / "dev.json").write_text("\n".join([*lines, json.dumps(missing)]) + "\n")
  source = sources.build_source(
    {"kind": "nlvr2", "path": str(tmp_path / "dev.json"), "images": str(root / "images/nlvr2")}, where="evals.nlvr.data"
  )
  row = vl.VLEvalRow("nlvr", tokenize, 16)
  wrapped = vl.MissingImagesCounted(source)
  labels = [source.fields[i]["label"] for i in range(len(source) - 1)]
  evaluator = NlvrEvaluator(
    name="nlvr",
    model=lambda: FixedAnswers(0),
    batches=lambda: eval_pipeline(
      wrapped, global_batch_size=8, image_size=16, row_fn=row, template=row.template(LENGTH)
    ),
  )
  metrics = evaluator.run(None, None)
  assert metrics["skipped"] == 1 and metrics["examples"] == len(lines)
  assert metrics["accuracy"] == pytest.approx(np.mean(np.asarray(labels) == 1))


def test_snli_ve_rows_read_hypothesis_and_label(shared_data):
  root = shared_data / "vl-fixtures"
  source = sources.build_source(
    {
      "kind": "snli-ve",
      "path": str(root / "visual_entailment/sample_pairs.jsonl"),
      "images": str(root / "images/visual_entailment"),
    }
  )
  row = vl.VLEvalRow("ve", tokenize, 16)(source[0])
  first = json.loads((root / "visual_entailment/sample_pairs.jsonl").read_text().splitlines()[0])
  assert row["label"] == ["entailment", "neutral", "contradiction"].index(first["gold_label"])
  np.testing.assert_array_equal(row["text"], tokenize([first["sentence2"]])[0])
  assert row["image"].shape == (16, 16, 3)


class ItmTable:
  """Inference stand-in over 3 images and 3 captions (caption j shows image j). The ITC features rank captions 0 and
  1 on the wrong images (caption 0 lies nearest image 1, caption 1 nearest image 0); the ITM head knows the pairs."""

  zv = np.eye(3)
  zt = np.eye(3)[[1, 0, 2]]

  def encode_image(self, images):
    ids = images[:, 0, 0, 0].astype(int)
    return {"zv": self.zv[ids], "image_tokens": images[:, :1, 0, :1]}

  def encode_text(self, tokens):
    return {"zt": self.zt[tokens[:, 0]]}

  def itm_scores(self, image_tokens, tokens):
    return np.where(image_tokens[:, 0, 0].astype(int) == tokens[:, 0], 10.0, 0.0)


@pytest.mark.parametrize("k,reranked_recall", [(3, 1.0), (1, 1 / 3)])
def test_itm_retrieval_reranks_the_itc_top_k(k, reranked_recall):
  batch = {
    "image": np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 2, 2, 1), np.float32),
    "text": np.arange(3, dtype=np.int32)[:, None],
    "index": np.arange(3, dtype=np.int32),
    "mask": np.ones(3, bool),
  }
  evaluator = ItmRetrievalEvaluator(name="retrieval", batches=[batch], model=ItmTable, k=k, ks=(1,), pair_batch_size=4)
  metrics = evaluator.run(None, None)
  assert metrics["itc_image_retrieval_recall@1"] == pytest.approx(1 / 3)
  assert metrics["itc_text_retrieval_recall@1"] == pytest.approx(1 / 3)
  assert metrics["image_retrieval_recall@1"] == pytest.approx(reranked_recall)
  assert metrics["text_retrieval_recall@1"] == pytest.approx(reranked_recall)
