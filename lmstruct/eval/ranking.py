"""Rank of the correct answer(s) among scored candidates, with explicit tie handling.

For a query with scores ``s_j`` over candidates and a non-empty set ``P`` of positive (correct) candidates, let
``m = max_{j in P} s_j`` be the best positive score. The rank of the query is

* ``pessimistic``: ``1 + #{j not in P : s_j >= m}`` -- every negative tied with the best positive is ranked ahead;
* ``optimistic``:  ``1 + #{j not in P : s_j >  m}`` -- ties are resolved in favour of the positive.

"Some positive is in the top K" is then exactly ``rank <= K``. The pessimistic rule is the default everywhere in
``lmstruct.eval``: a collapsed model whose scores are all equal gets no credit.

Non-finite scores (NaN, +-inf, e.g. from a diverged model) are the worst scores and never help a query: ``m`` is
taken over the *finite* positive scores only, and

* a query with no finite positive score gets the worst rank, ``1 + #{j not in P}``, under either tie rule;
* otherwise a non-finite negative is never ahead of ``m``: only finite negatives are counted.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Ties = Literal["pessimistic", "optimistic"]
TIES: tuple[str, ...] = ("pessimistic", "optimistic")


def check_ties(ties: str) -> None:
  """Raises ``ValueError`` unless ``ties`` is one of ``TIES``."""
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def ranks_from_scores(scores: np.ndarray, positive: np.ndarray, ties: Ties = "pessimistic") -> np.ndarray:
  """Per-row rank (module docstring) of the best finite positive, from a dense ``[Q, M]`` score matrix.

  ``positive`` is a boolean ``[Q, M]`` matrix with at least one true entry per row. Returns int64 ``[Q]``.
  """
  check_ties(ties)
  scores = np.asarray(scores)
  positive = np.asarray(positive, dtype=bool)
  if not positive.any(axis=1).all():
    raise ValueError("every query needs at least one positive candidate")
  finite = np.isfinite(scores)
  best = np.max(np.where(positive & finite, scores, -np.inf), axis=1, keepdims=True)
  beats = scores >= best if ties == "pessimistic" else scores > best
  ahead = (finite & beats) | ~np.isfinite(best)
  return 1 + np.sum(ahead & ~positive, axis=1)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
  """Fraction of queries whose rank is at most ``k``: ``mean_q [rank_q <= k]``, in [0, 1]."""
  return float(np.mean(np.asarray(ranks) <= k))
