"""PNG figures of the modality structure (matplotlib, Agg canvas, no pyplot state)."""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from lmstruct import paths


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Projection of ``x [N, D]`` onto its first two principal components.

  With ``x_c = x - mean(x)`` and SVD ``x_c = U S V^T``, returns ``(x_c V[:, :2], V[:, :2]^T, S[:2]^2 / sum S^2)``:
  the ``[N, 2]`` coordinates, the ``[2, D]`` components (each signed so its largest-magnitude entry is positive)
  and the explained-variance ratios.
  """
  x = np.asarray(x, np.float64)
  centred = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  components = vt[:2]
  signs = np.sign(components[np.arange(components.shape[0]), np.argmax(np.abs(components), axis=1)])
  components = components * signs[:, None]
  ratio = s[:2] ** 2 / max(float(np.sum(s**2)), np.finfo(np.float64).tiny)
  return centred @ components.T, components, ratio


def _save(fig: Figure, path: str | pathlib.Path) -> pathlib.Path:
  """Writes ``fig`` as PNG to ``path`` (local or an object-store URL; parents created) and returns the path."""
  path = paths.as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  return path


def plot_gap_shift_curve(curve: Mapping[str, Sequence[float]], path: str | pathlib.Path,
                         metric_name: str = "metric") -> pathlib.Path:
  """Line plot of ``curve['metric']`` against ``curve['gap']`` (``structure.embedding_shift_curve``), each point
  annotated with its shift ``lambda``."""
  fig = Figure(figsize=(5, 4))
  ax = fig.subplots()
  gap, metric = np.asarray(curve["gap"]), np.asarray(curve["metric"])
  order = np.argsort(gap)
  ax.plot(gap[order], metric[order], marker="o")
  for lam, g, m in zip(curve["lambda"], gap, metric):
    ax.annotate(f"{lam:g}", (g, m), textcoords="offset points", xytext=(3, 3), fontsize=7)
  ax.set_xlabel("modality gap ||mean(zv) - mean(zt)||")
  ax.set_ylabel(metric_name)
  ax.set_title("embedding shift along the gap direction")
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


def plot_modality_pca(zv: np.ndarray, zt: np.ndarray, path: str | pathlib.Path, max_pairs: int = 500,
                      seed: int = 0) -> pathlib.Path:
  """Scatter of both modalities in the 2-D PCA of ``[zv; zt]`` (fitted jointly), each pair joined by a line.

  At most ``max_pairs`` pairs, drawn uniformly without replacement with ``numpy.random.default_rng(seed)`` from the
  pairs whose embeddings are finite, are shown; the PCA is fitted on the shown pairs. Pairs holding a NaN or an
  infinity are left out and counted in the title.
  """
  finite = np.flatnonzero(np.isfinite(zv).all(axis=1) & np.isfinite(zt).all(axis=1))
  keep = np.sort(np.random.default_rng(seed).permutation(finite)[:max_pairs])
  fig = Figure(figsize=(5, 5))
  ax = fig.subplots()
  left_out = zv.shape[0] - finite.size
  ax.set_title("paired embeddings, joint PCA" + (f" ({left_out} non-finite pairs left out)" if left_out else ""))
  if keep.size == 0:
    return _save(fig, path)
  coords, _, ratio = pca_2d(np.concatenate([zv[keep], zt[keep]]))
  image_xy, text_xy = coords[:keep.size], coords[keep.size:]
  ax.add_collection(LineCollection(np.stack([image_xy, text_xy], axis=1), colors="0.7", linewidths=0.5))
  ax.scatter(image_xy[:, 0], image_xy[:, 1], s=8, label="image (zv)")
  ax.scatter(text_xy[:, 0], text_xy[:, 1], s=8, label="text (zt)")
  ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% var)")
  ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% var)" if ratio.size > 1 else "PC2")
  ax.legend(loc="best")
  fig.tight_layout()
  return _save(fig, path)
