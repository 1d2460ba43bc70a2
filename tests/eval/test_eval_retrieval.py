"""Retrieval under the COCO protocol: hand-worked ranks with ties, recall keys, sharded == unsharded == float64."""
import jax
import numpy as np
import pytest

from lmstruct.eval import get_evaluator
from lmstruct.eval.ranking import ranks_from_scores, recall_at_k
from lmstruct.eval.retrieval import recall_metrics, retrieval_metrics, retrieval_ranks, sharded_ranks

# Images are one-hot (zv = I_3), so caption t's embedding is its column of scores <zv_i, zt_t>:
#        t0   t1   t2   t3   t4          captions t0, t1 -> image 0; t2, t3 -> image 1; t4 -> image 2
# img0  0.9  0.3  0.5  0.2  0.4
# img1  0.1  0.5  0.5  0.5  0.7
# img2  0.2  0.5  0.0  0.6  0.4
ZV = np.eye(3, dtype=np.float32)
ZT = np.array([[0.9, 0.1, 0.2], [0.3, 0.5, 0.5], [0.5, 0.5, 0.0], [0.2, 0.5, 0.6], [0.4, 0.7, 0.4]], np.float32)
TEXT_IMAGE = np.array([0, 0, 1, 1, 2])
# Text -> image: t2 ties its image with img0, t4 ties with img0.  Image -> text: img1's best caption (0.5, shared
# by its own t2 and t3) ties with the negative t1; the own tie does not count.
T2I = {"pessimistic": [1, 3, 2, 2, 3], "optimistic": [1, 3, 1, 2, 2]}
I2T = {"pessimistic": [1, 3, 3], "optimistic": [1, 2, 3]}


def _mesh(n):
  return jax.make_mesh((n,), ("eval",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("devices", [1, 8])
def test_hand_worked_ranks(ties, devices):
  t2i, i2t = retrieval_ranks(ZV, ZT, TEXT_IMAGE, mesh=_mesh(devices), ties=ties, query_chunk=2)
  np.testing.assert_array_equal(t2i, T2I[ties])
  np.testing.assert_array_equal(i2t, I2T[ties])


def test_hand_worked_recall_keys_follow_clip_benchmark():
  pess = retrieval_metrics(ZV, ZT, TEXT_IMAGE, ks=(1, 2, 3), mesh=_mesh(8))
  expected = {"image_retrieval_recall@1": 1 / 5, "image_retrieval_recall@2": 3 / 5, "image_retrieval_recall@3": 1.0,
              "text_retrieval_recall@1": 1 / 3, "text_retrieval_recall@2": 1 / 3, "text_retrieval_recall@3": 1.0}
  expected.update({f"mean_recall@{k}": 0.5 * (expected[f"image_retrieval_recall@{k}"]
                                              + expected[f"text_retrieval_recall@{k}"]) for k in (1, 2, 3)})
  assert pess == pytest.approx(expected)
  opt = retrieval_metrics(ZV, ZT, TEXT_IMAGE, ks=(1, 2), mesh=_mesh(8), ties="optimistic")
  assert opt["image_retrieval_recall@1"] == pytest.approx(2 / 5)
  assert opt["image_retrieval_recall@2"] == pytest.approx(4 / 5)
  assert opt["text_retrieval_recall@2"] == pytest.approx(2 / 3)


def test_dense_reference_ranks_match_hand_worked():
  scores = ZV.astype(np.float64) @ ZT.T.astype(np.float64)
  positive = TEXT_IMAGE[None, :] == np.arange(3)[:, None]
  np.testing.assert_array_equal(ranks_from_scores(scores, positive), I2T["pessimistic"])
  np.testing.assert_array_equal(ranks_from_scores(scores.T, positive.T, "optimistic"), T2I["optimistic"])
  assert recall_at_k(np.array([1, 3, 2, 11]), 2) == 0.5


# Non-finite scores are the worst: a query with no finite positive score gets the worst rank, 1 + #negatives, under
# either tie rule; a non-finite negative is never ahead of the best finite positive.
NONFINITE_SCORES = np.array([[np.nan, 0.2, 0.5, -np.inf],   # positive {0}: not finite -> 1 + 3
                             [0.3, np.nan, 0.3, np.inf],     # positive {0}: only the tie at 0.3 may count
                             [np.nan, 0.1, 0.7, 0.2],        # positives {0, 2}: best finite positive 0.7
                             [np.inf, 0.9, np.nan, 0.1],     # positives {0, 2}: none finite -> 1 + 2
                             [np.nan] * 4])                  # positive {1}: all NaN -> 1 + 3
NONFINITE_POSITIVE = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 0]], bool)
NONFINITE_RANKS = {"pessimistic": [4, 2, 1, 3, 4], "optimistic": [4, 1, 1, 3, 4]}


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_nonfinite_scores_are_the_worst(ties):
  np.testing.assert_array_equal(ranks_from_scores(NONFINITE_SCORES, NONFINITE_POSITIVE, ties),
                                NONFINITE_RANKS[ties])


# t4's embedding holds a NaN, so every score with t4 is NaN: as a query (image 2) it gets the worst rank 1 + 2; as
# image 2's only caption, image 2 gets the worst rank 1 + 4; as a negative of image 1 (0.7 before) it no longer beats
# image 1's best caption (0.5, tied with t1).
T2I_NAN = {"pessimistic": [1, 3, 2, 2, 3], "optimistic": [1, 3, 1, 2, 3]}
I2T_NAN = {"pessimistic": [1, 2, 5], "optimistic": [1, 1, 5]}


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("devices", [1, 8])
def test_a_nan_caption_never_helps_sharded_ranks(ties, devices):
  zt = ZT.copy()
  zt[4, 0] = np.nan
  t2i, i2t = retrieval_ranks(ZV, zt, TEXT_IMAGE, mesh=_mesh(devices), ties=ties, query_chunk=2)
  np.testing.assert_array_equal(t2i, T2I_NAN[ties])
  np.testing.assert_array_equal(i2t, I2T_NAN[ties])


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_an_all_nan_model_gets_the_worst_ranks(ties):
  t2i, i2t = retrieval_ranks(np.full((3, 3), np.nan), np.full((5, 3), np.nan), TEXT_IMAGE, mesh=_mesh(8), ties=ties)
  np.testing.assert_array_equal(t2i, [3] * 5)  # 1 + the 2 other images
  np.testing.assert_array_equal(i2t, [4, 4, 5])  # 1 + the other images' captions
  metrics = recall_metrics(t2i, i2t, ks=(1, 2, 3))
  assert all(metrics[f"{d}_retrieval_recall@{k}"] == 0.0 for d in ("image", "text") for k in (1, 2))
  assert metrics["image_retrieval_recall@3"] == 1.0 and metrics["text_retrieval_recall@3"] == 0.0


def _loop_reference(zv, zt, text_image):
  """float64 ranks by explicit loops over queries: 1 + #negatives scoring >= the best positive."""
  s = zv.astype(np.float64) @ zt.astype(np.float64).T
  t2i = [1 + sum(s[i, t] >= s[text_image[t], t] for i in range(len(zv)) if i != text_image[t])
         for t in range(len(zt))]
  i2t = []
  for i in range(len(zv)):
    own = [t for t in range(len(zt)) if text_image[t] == i]
    best = max(s[i, t] for t in own)
    i2t.append(1 + sum(s[i, t] >= best for t in range(len(zt)) if text_image[t] != i))
  return np.array(t2i), np.array(i2t)


def test_sharded_equals_unsharded_equals_float64_reference():
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  num_images, dim = 29, 16
  text_image = np.concatenate([np.arange(num_images), rng.integers(0, num_images, size=44)])  # 73 captions
  zv = rng.normal(size=(num_images, dim)).astype(np.float32)
  zt = (zv[text_image] + 1.5 * rng.normal(size=(text_image.size, dim))).astype(np.float32)
  ref_t2i, ref_i2t = _loop_reference(zv, zt, text_image)
  assert 0 < np.mean(ref_t2i == 1) < 1 and ref_t2i.max() > 10  # a non-trivial ranking
  for devices, chunk in [(1, 1024), (8, 1024), (8, 7)]:
    t2i, i2t = retrieval_ranks(zv, zt, text_image, mesh=_mesh(devices), query_chunk=chunk)
    np.testing.assert_array_equal(t2i, ref_t2i)
    np.testing.assert_array_equal(i2t, ref_i2t)


def test_recall_metrics_from_ranks():
  metrics = recall_metrics(np.array([1, 2, 6, 11]), np.array([1, 1, 20]), ks=(1, 5, 10))
  assert metrics["image_retrieval_recall@1"] == 0.25 and metrics["image_retrieval_recall@5"] == 0.5
  assert metrics["image_retrieval_recall@10"] == 0.75
  assert metrics["text_retrieval_recall@10"] == pytest.approx(2 / 3)


def test_invalid_inputs():
  with pytest.raises(ValueError, match="at least one caption"):
    retrieval_ranks(ZV, ZT, np.array([0, 0, 1, 1, 1]))
  with pytest.raises(ValueError):
    retrieval_ranks(ZV, ZT, np.array([0, 0, 1, 1, 3]))
  with pytest.raises(ValueError, match="positive"):
    sharded_ranks(ZT, np.array([0, 0, 1, 1, 5]), ZV, np.arange(3))
  with pytest.raises(ValueError):
    retrieval_ranks(ZV, ZT, TEXT_IMAGE, ties="random")


def test_retrieval_evaluator_with_several_captions_text_mask_and_padding():
  junk = 5
  table = np.concatenate([ZT, np.ones((1, 3), np.float32)])  # token id 5 is a junk caption scoring 1.0 everywhere

  def encode_image(images):
    return {"zv": np.asarray(images)[:, 0, :, 0]}

  def encode_text(tokens):
    return table[np.asarray(tokens)[:, 0]]

  def batch(image_vectors, captions, text_mask, mask):
    images = np.zeros((len(image_vectors), 1, 3, 3), np.float32)
    images[:, 0, :, 0] = image_vectors
    return {"image": images, "text": np.array(captions, np.int32)[..., None],
            "text_mask": np.array(text_mask), "mask": np.array(mask)}

  batches = [batch(ZV[:2], [[0, 1], [2, 3]], [[True, True], [True, True]], [True, True]),
             batch([ZV[2], np.ones(3)], [[4, junk], [junk, junk]], [[True, False], [True, True]], [True, False])]
  evaluator = get_evaluator("retrieval", {"batches": lambda: iter(batches), "ks": (1, 2, 3),
                                          "mesh": _mesh(8), "query_chunk": 4})
  first = evaluator.run(encode_image, encode_text)
  assert first == pytest.approx({**retrieval_metrics(ZV, ZT, TEXT_IMAGE, ks=(1, 2, 3), mesh=_mesh(1)),
                                 "nonfinite_fraction": 0.0})
  assert first["image_retrieval_recall@2"] == pytest.approx(3 / 5)
  assert evaluator.run(encode_image, encode_text) == first  # a callable source is re-iterated


def test_retrieval_evaluator_joins_caption_passes_by_image_index():
  def encode_image(images):
    return np.asarray(images)[:, 0, :, 0]

  def encode_text(tokens):
    return ZT[np.asarray(tokens)[:, 0]]

  def batch(index, captions, mask):
    images = np.zeros((len(index), 1, 3, 3), np.float32)
    images[:, 0, :, 0] = ZV[np.maximum(index, 0)]
    return {"image": images, "text": np.array(captions, np.int32)[:, None], "index": np.array(index, np.int32),
            "mask": np.array(mask)}

# pass over caption 0 of every image, then over caption 1 (image 2 has none: its row is masked)
  passes = [batch([0, 1], [0, 2], [True, True]), batch([2, -1], [4, 0], [True, False]),
            batch([0, 1], [1, 3], [True, True]), batch([2, -1], [0, 0], [False, False])]
  evaluator = get_evaluator("retrieval", {"batches": passes, "ks": (1, 2, 3), "mesh": _mesh(8)})
  metrics = evaluator.run(encode_image, encode_text)
  assert metrics == pytest.approx({**retrieval_metrics(ZV, ZT, TEXT_IMAGE, ks=(1, 2, 3), mesh=_mesh(1)),
                                   "nonfinite_fraction": 0.0})
  separate = get_evaluator("retrieval", {"batches": passes, "ks": (1,), "image_id_key": None, "mesh": _mesh(8)})
  # without joining, the second pass adds duplicate images (5 images, one caption each)
  assert separate.compute(encode_image, encode_text).extra == {"num_images": 5, "num_texts": 5}
