"""Image-text retrieval (COCO protocol) with similarities computed blockwise on a device mesh.

Data: ``zv [Ni, D]`` image embeddings, ``zt [Nt, D]`` caption embeddings and ``text_image[t]`` in ``[0, Ni)``, the
image caption ``t`` belongs to (several captions per image allowed). Score = inner product ``<zv_i, zt_t>``.

* text -> image (CLIP_benchmark's ``image_retrieval_recall@k``): the positives of text query ``t`` are
  ``{text_image[t]}``; R@k = fraction of texts whose own image has rank <= k.
* image -> text (CLIP_benchmark's ``text_retrieval_recall@k``): the positives of image query ``i`` are all its
  captions ``{t : text_image[t] = i}``; R@k = fraction of images with *any* caption among the top k, i.e. whose best
  caption has rank <= k.

Ranks follow ``lmstruct.eval.ranking`` (``1 +`` number of negatives scoring above, or also equal to for the default
pessimistic ties, the best finite positive; non-finite scores are the worst and never help a query). Rather than
merging per-block top-K lists, each device counts, for its shard of candidates, the negatives that beat the best
positive: the best positive score is combined over devices with ``pmax`` and the counts with ``psum``. This gives the
exact rank for every K at once with explicit tie handling, and no device ever holds more than a
``[query_chunk, candidates / devices]`` block of the similarity matrix.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lmstruct.eval.ranking import Ties, check_ties, recall_at_k

_PAD_QUERY_GROUP = -1
_PAD_CANDIDATE_GROUP = -2


def default_mesh() -> Mesh:
  """A 1-D mesh over every device, axis ``'eval'``, with classic (Auto) sharding semantics."""
  return jax.make_mesh((jax.device_count(),), ("eval",), axis_types=(jax.sharding.AxisType.Auto,))


@functools.lru_cache(maxsize=None)
def _ranks_fn(mesh: Mesh, ties: str):
  """Jitted shard_map computing ranks for query chunks ``[n_chunks, chunk, D]`` against sharded candidates."""
  axes = tuple(mesh.axis_names)

  def chunk_ranks(queries, query_groups, candidates, candidate_groups, candidate_valid):
    same = query_groups[:, None] == candidate_groups[None, :]
    scores = jnp.matmul(queries, candidates.T, precision=jax.lax.Precision.HIGHEST)
    finite = jnp.isfinite(scores)
    best = jnp.max(jnp.where(same & finite & candidate_valid[None, :], scores, -jnp.inf), axis=1)
    best = jax.lax.pmax(best, axes)[:, None]
    beats = scores >= best if ties == "pessimistic" else scores > best
    ahead = (finite & beats) | ~jnp.isfinite(best)
    count = jnp.sum(ahead & ~same & candidate_valid[None, :], axis=1, dtype=jnp.int32)
    return 1 + jax.lax.psum(count, axes)

  def shard_ranks(queries, query_groups, candidates, candidate_groups, candidate_valid):
    return jax.lax.map(
        lambda q: chunk_ranks(q[0], q[1], candidates, candidate_groups, candidate_valid),
        (queries, query_groups))

  sharded = P(axes)
  return jax.jit(jax.shard_map(shard_ranks, mesh=mesh, in_specs=(P(), P(), sharded, sharded, sharded),
                               out_specs=P()))


def _put(x: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
  """A global array with sharding ``spec`` on ``mesh`` built from the same host array on every process."""
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])


def sharded_ranks(queries: np.ndarray, query_groups: np.ndarray, candidates: np.ndarray,
                  candidate_groups: np.ndarray, *, mesh: Mesh | None = None, ties: Ties = "pessimistic",
                  query_chunk: int = 1024) -> np.ndarray:
  """Rank of the best positive for every query; candidate ``j`` is a positive of query ``q`` iff their groups match.

  ``rank_q = 1 + #{j : group_j != group_q, <q, c_j> finite and > m_q}`` (``>=`` for pessimistic ties) with
  ``m_q = max_{j : group_j = group_q, <q, c_j> finite} <q, c_j>``; a query without a finite positive score gets the
  worst rank ``1 + #{j : group_j != group_q}`` (``lmstruct.eval.ranking``). Candidates are padded to a multiple of
  the mesh size and sharded over all mesh axes; queries are replicated and processed ``query_chunk`` at a time.
  Returns int64 ``[Q]``.
  """
  check_ties(ties)
  mesh = default_mesh() if mesh is None else mesh
  queries = np.asarray(queries, np.float32)
  candidates = np.asarray(candidates, np.float32)
  query_groups = np.asarray(query_groups, np.int32)
  candidate_groups = np.asarray(candidate_groups, np.int32)
  if not np.isin(query_groups, candidate_groups).all():
    raise ValueError("every query needs at least one positive candidate")
  num_queries, num_candidates = queries.shape[0], candidates.shape[0]

  chunk = max(1, min(query_chunk, num_queries))
  q_pad = -num_queries % chunk
  queries = np.pad(queries, ((0, q_pad), (0, 0))).reshape(-1, chunk, queries.shape[1])
  query_groups = np.pad(query_groups, (0, q_pad), constant_values=_PAD_QUERY_GROUP).reshape(-1, chunk)

  c_pad = -num_candidates % mesh.size
  valid = np.arange(num_candidates + c_pad) < num_candidates
  candidates = np.pad(candidates, ((0, c_pad), (0, 0)))
  candidate_groups = np.pad(candidate_groups, (0, c_pad), constant_values=_PAD_CANDIDATE_GROUP)

  sharded = P(tuple(mesh.axis_names))
  ranks = _ranks_fn(mesh, ties)(
      _put(queries, mesh, P()), _put(query_groups, mesh, P()), _put(candidates, mesh, sharded),
      _put(candidate_groups, mesh, sharded), _put(valid, mesh, sharded))
  return np.asarray(ranks).reshape(-1)[:num_queries].astype(np.int64)


def retrieval_ranks(zv: np.ndarray, zt: np.ndarray, text_image: np.ndarray, *, mesh: Mesh | None = None,
                    ties: Ties = "pessimistic", query_chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """``(text_to_image_ranks [Nt], image_to_text_ranks [Ni])`` under the COCO protocol (module docstring)."""
  text_image = np.asarray(text_image, np.int64)
  num_images = zv.shape[0]
  if text_image.shape != (zt.shape[0],):
    raise ValueError("text_image must hold one image index per caption")
  if text_image.size and (text_image.min() < 0 or text_image.max() >= num_images):
    raise ValueError(f"text_image entries must lie in [0, {num_images})")
  if np.bincount(text_image, minlength=num_images).min(initial=1) == 0:
    raise ValueError("every image needs at least one caption")
  image_ids = np.arange(num_images)
  t2i = sharded_ranks(zt, text_image, zv, image_ids, mesh=mesh, ties=ties, query_chunk=query_chunk)
  i2t = sharded_ranks(zv, image_ids, zt, text_image, mesh=mesh, ties=ties, query_chunk=query_chunk)
  return t2i, i2t


def recall_metrics(text_to_image_ranks: np.ndarray, image_to_text_ranks: np.ndarray,
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """CLIP_benchmark-named recalls in [0, 1]: ``image_retrieval_recall@k`` (text queries -> images),
  ``text_retrieval_recall@k`` (image queries -> texts) and their mean ``mean_recall@k``."""
  metrics: dict[str, float] = {}
  for k in ks:
    image_r = recall_at_k(text_to_image_ranks, k)
    text_r = recall_at_k(image_to_text_ranks, k)
    metrics[f"image_retrieval_recall@{k}"] = image_r
    metrics[f"text_retrieval_recall@{k}"] = text_r
    metrics[f"mean_recall@{k}"] = 0.5 * (image_r + text_r)
  return metrics


def retrieval_metrics(zv: np.ndarray, zt: np.ndarray, text_image: np.ndarray, ks: Sequence[int] = (1, 5, 10), *,
                      mesh: Mesh | None = None, ties: Ties = "pessimistic",
                      query_chunk: int = 1024) -> dict[str, float]:
  """Retrieval recalls (``recall_metrics``) of paired embeddings under the COCO protocol."""
  t2i, i2t = retrieval_ranks(zv, zt, text_image, mesh=mesh, ties=ties, query_chunk=query_chunk)
  return recall_metrics(t2i, i2t, ks)
