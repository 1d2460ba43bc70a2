"""Evaluators: data + settings bound once, then ``run(encode_image, encode_text, step=..., workdir=...)``.

Each evaluator is a dataclass built from a config mapping (``lmstruct.eval.registry.get_evaluator``). ``run`` encodes
its batches with the given encode functions, computes its metrics with the pure functions of this package, writes
``<workdir>/eval/<name>/step_<step>.json`` (and figures, for ``structure``) when ``workdir`` is given, and returns the
metrics. Every evaluator also reports ``nonfinite_fraction``, the fraction of the embedding rows it computed that hold
a NaN or an infinity (``features.nonfinite_fraction``); such embeddings never count as hits (``ranking``,
``probe.predict``). ``every_steps`` is the interval at which the training loop runs it (0: only standalone runs).

Batches follow docs/contracts.md: ``image float32 [B, H, W, 3]``, ``text int32 [B, L]`` (retrieval also accepts
``[B, C, L]``, C captions per image, with an optional boolean ``text_mask [B, C]``), labels under ``label_key``
(``'a/b'`` reads ``batch['a']['b']``) and a boolean padding ``mask [B]``.
"""
from __future__ import annotations

import abc
import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import numpy as np
from jax.sharding import Mesh

from lmstruct.eval import io, plots
from lmstruct.eval.features import (Batch, BatchSource, EncodeFn, encode_outputs, gather, iterate, lookup,
                                    nonfinite_fraction, row_mask, to_numpy)
from lmstruct.eval.probe import COARSE_EXPONENTS, REFINE_STEPS, few_shot_probe, linear_probe
from lmstruct.eval.ranking import Ties
from lmstruct.eval.retrieval import recall_metrics, retrieval_metrics, retrieval_ranks
from lmstruct.eval.structure import embedding_shift_curve, structure_metrics
from lmstruct.eval.templates import build_prompts
from lmstruct.eval.zeroshot import Tokenizer, zeroshot_classifier, zeroshot_metrics

Extra = dict[str, Any]
Figure = Callable[[pathlib.Path], pathlib.Path]


@dataclasses.dataclass
class Result:
  """What an evaluator computed: ``metrics`` (returned and stored), JSON-serialisable ``extra`` detail, and
  ``figures``, each a function that draws one PNG to the path it is given, keyed by file-name suffix."""

  metrics: dict[str, float]
  extra: Extra = dataclasses.field(default_factory=dict)
  figures: dict[str, Figure] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class Evaluator(abc.ABC):
  """Common part: ``name`` (output folder; defaults to the registry kind) and ``every_steps``."""

  kind: ClassVar[str] = ""
  name: str = ""
  every_steps: int = 0

  def __post_init__(self) -> None:
    if not self.name:
      self.name = self.kind
    if self.every_steps < 0:
      raise ValueError("every_steps must be >= 0")

  def due(self, step: int) -> bool:
    """True when ``every_steps > 0`` and ``step`` is a multiple of it."""
    return self.every_steps > 0 and step % self.every_steps == 0

  @abc.abstractmethod
  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn) -> Result:
    """Encodes the evaluator's data with the given functions and computes its ``Result``."""

  def run(self, encode_image: EncodeFn, encode_text: EncodeFn, *, step: int = 0,
          workdir: str | pathlib.Path | None = None) -> dict[str, float]:
    """Computes the metrics; with ``workdir`` process 0 also writes ``<workdir>/eval/<name>/step_<step>.json``
    (``io.write_metrics``) and each figure to ``<workdir>/eval/<name>/step_<step>_<suffix>.png``."""
    result = self.compute(encode_image, encode_text)
    if workdir is not None and jax.process_index() == 0:
      io.write_metrics(workdir, self.name, step, result.metrics, result.extra)
      for suffix, draw in result.figures.items():
        draw(io.eval_dir(workdir, self.name) / f"step_{int(step)}_{suffix}.png")
    return result.metrics


def _image_label_features(source: BatchSource, encode_image: EncodeFn, label_key: str) -> dict[str, np.ndarray]:
  """``{'zv': [N, D], 'label': [N]}`` over the unmasked rows of ``source``."""
  return gather(source, lambda b: {"zv": encode_outputs(encode_image, b["image"], "zv")["zv"],
                                   "label": to_numpy(lookup(b, label_key)).astype(np.int64)})


@dataclasses.dataclass(kw_only=True)
class ZeroShotEvaluator(Evaluator):
  """Zero-shot classification: ``acc{k}`` for k in ``ks`` and ``mean_per_class_recall`` (``zeroshot_metrics``).

  ``class_names[c]`` names label ``c``; ``templates`` is a set name from ``templates.TEMPLATE_SETS`` or a list;
  ``tokenize`` maps a list of strings to ``int32 [n, L]`` tokens. Prompts are normalised per the three flags
  (``templates.normalize_text``).
  """

  kind: ClassVar[str] = "zeroshot"
  batches: BatchSource
  class_names: Sequence[str]
  tokenize: Tokenizer
  templates: str | Sequence[str] = "paper"
  label_key: str = "label"
  ks: Sequence[int] = (1, 3, 5)
  ties: Ties = "pessimistic"
  lowercase: bool = True
  strip: bool = True
  underscores_to_spaces: bool = True
  text_batch_size: int = 256

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn) -> Result:
    """Builds the prompt-ensemble classifier, encodes the images and scores them."""
    prompts = build_prompts(self.class_names, self.templates, lowercase=self.lowercase, strip=self.strip,
                            underscores_to_spaces=self.underscores_to_spaces)
    classifier = zeroshot_classifier(prompts, self.tokenize, encode_text, self.text_batch_size)
    data = _image_label_features(self.batches, encode_image, self.label_key)
    metrics = zeroshot_metrics(data["zv"], classifier, data["label"], self.ks, self.ties)
    metrics["nonfinite_fraction"] = nonfinite_fraction(data["zv"], classifier)
    return Result(metrics, {"num_images": int(data["label"].size), "num_classes": len(self.class_names)})


@dataclasses.dataclass(kw_only=True)
class LinearProbeEvaluator(Evaluator):
  """Linear probe on frozen image embeddings ``zv`` (``probe.linear_probe``): ``acc1``, ``val_acc1``, ``l2``."""

  kind: ClassVar[str] = "linear_probe"
  train_batches: BatchSource
  test_batches: BatchSource
  val_batches: BatchSource | None = None
  label_key: str = "label"
  num_classes: int | None = None
  val_fraction: float = 0.2
  seed: int = 0
  coarse_exponents: Sequence[float] = COARSE_EXPONENTS
  refine_steps: Sequence[float] = REFINE_STEPS
  max_iter: int = 1000
  tol: float = 1e-5

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn) -> Result:
    """Encodes train/(val)/test images and runs the probe; ``encode_text`` is not used."""
    train = _image_label_features(self.train_batches, encode_image, self.label_key)
    test = _image_label_features(self.test_batches, encode_image, self.label_key)
    val = (None if self.val_batches is None
           else _image_label_features(self.val_batches, encode_image, self.label_key))
    metrics = linear_probe(
        train["zv"], train["label"], test["zv"], test["label"],
        val_x=None if val is None else val["zv"], val_y=None if val is None else val["label"],
        num_classes=self.num_classes, val_fraction=self.val_fraction, seed=self.seed,
        coarse_exponents=self.coarse_exponents, refine_steps=self.refine_steps, max_iter=self.max_iter,
        tol=self.tol)
    metrics["nonfinite_fraction"] = nonfinite_fraction(train["zv"], test["zv"], *([] if val is None else [val["zv"]]))
    return Result(metrics, {"num_train": int(train["label"].size), "num_test": int(test["label"].size)})


@dataclasses.dataclass(kw_only=True)
class FewShotEvaluator(Evaluator):
  """k-shot linear probes (``probe.few_shot_probe``): ``{k}shot_acc1_mean`` / ``{k}shot_acc1_std`` over seeds."""

  kind: ClassVar[str] = "few_shot"
  train_batches: BatchSource
  test_batches: BatchSource
  label_key: str = "label"
  shots: Sequence[int] = (1, 2, 4, 8, 16)
  seeds: Sequence[int] = (0, 1, 2)
  l2: float = 1e-3
  num_classes: int | None = None
  max_iter: int = 1000
  tol: float = 1e-5

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn) -> Result:
    """Encodes train/test images and runs the few-shot probes; ``encode_text`` is not used."""
    train = _image_label_features(self.train_batches, encode_image, self.label_key)
    test = _image_label_features(self.test_batches, encode_image, self.label_key)
    metrics = few_shot_probe(train["zv"], train["label"], test["zv"], test["label"], shots=self.shots,
                             seeds=self.seeds, l2=self.l2, num_classes=self.num_classes,
                             max_iter=self.max_iter, tol=self.tol)
    metrics["nonfinite_fraction"] = nonfinite_fraction(train["zv"], test["zv"])
    return Result(metrics, {"seeds": [int(x) for x in self.seeds]})


def _retrieval_features(source: BatchSource, encode_image: EncodeFn, encode_text: EncodeFn, text_key: str,
                        text_mask_key: str, image_id_key: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(zv [Ni, D], zt [Nt, D], text_image [Nt])`` from batches with ``[B, L]`` or ``[B, C, L]`` captions.

  Rows with a false ``mask`` are dropped with all their captions; caption ``(b, c)`` is kept when
  ``text_mask[b, c]`` (default true). Rows whose ``image_id_key`` value was seen before (e.g. the same source
  ``index`` in a later pass over another caption) add their captions to that image; otherwise, or without that
  key, each row is a new image. Images are numbered in order of first appearance.
  """
  zv_rows: list[np.ndarray] = []
  zt_parts, owner_parts = [], []
  image_of: dict[Any, int] = {}
  for batch in iterate(source):
    tokens = to_numpy(batch[text_key])
    if tokens.ndim == 2:
      tokens = tokens[:, None, :]
    size, captions = tokens.shape[:2]
    keep = row_mask(batch, size)
    caption_keep = keep[:, None] & (to_numpy(batch[text_mask_key]).astype(bool) if text_mask_key in batch
                                    else np.ones((size, captions), dtype=bool))
    ids = to_numpy(batch[image_id_key]) if image_id_key is not None and image_id_key in batch else None
    zv = encode_outputs(encode_image, batch["image"], "zv")["zv"]
    zt = encode_outputs(encode_text, tokens.reshape(size * captions, -1), "zt")["zt"]
    owner = np.zeros(size, np.int64)
    for row in np.flatnonzero(keep):
      key = ids[row].item() if ids is not None else ("row", len(zv_rows))
      if key not in image_of:
        image_of[key] = len(zv_rows)
        zv_rows.append(zv[row])
      owner[row] = image_of[key]
    zt_parts.append(zt.reshape(size, captions, -1)[caption_keep])
    owner_parts.append(np.broadcast_to(owner[:, None], (size, captions))[caption_keep])
  if not zv_rows:
    raise ValueError("the batch source yielded no unmasked rows")
  return np.stack(zv_rows), np.concatenate(zt_parts), np.concatenate(owner_parts)


@dataclasses.dataclass(kw_only=True)
class RetrievalEvaluator(Evaluator):
  """COCO-protocol retrieval (``retrieval.retrieval_metrics``) with ranks computed blockwise on ``mesh``
  (default: every device).

  Captions come as ``[B, C, L]`` per batch (with ``text_mask``), or one per row over several passes (e.g. the eval
  pipeline with ``caption_index`` 0, 1, ... chained) joined to their image by ``image_id_key`` (default the
  pipeline's source ``index``).
  """

  kind: ClassVar[str] = "retrieval"
  batches: BatchSource
  ks: Sequence[int] = (1, 5, 10)
  ties: Ties = "pessimistic"
  mesh: Mesh | None = None
  query_chunk: int = 1024
  text_key: str = "text"
  text_mask_key: str = "text_mask"
  image_id_key: str | None = "index"

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn) -> Result:
    """Encodes images and all their captions, then ranks in both directions."""
    zv, zt, text_image = _retrieval_features(self.batches, encode_image, encode_text, self.text_key,
                                             self.text_mask_key, self.image_id_key)
    metrics = retrieval_metrics(zv, zt, text_image, self.ks, mesh=self.mesh, ties=self.ties,
                                query_chunk=self.query_chunk)
    metrics["nonfinite_fraction"] = nonfinite_fraction(zv, zt)
    return Result(metrics, {"num_images": int(zv.shape[0]), "num_texts": int(zt.shape[0])})


@dataclasses.dataclass(kw_only=True)
class StructureEvaluator(Evaluator):
  """Modality-structure diagnostics (``structure.structure_metrics``) on paired embeddings, plus the
  embedding-shift curve.

  Pairs are (``image``, ``text``); with ``[B, C, L]`` captions the first caption is paired. ``image_aug`` (key
  ``aug_key``) enables ``bridge_residual``; encode functions returning dicts with ``zv_ind``/``zt_ind`` enable the
  orthogonality metrics. The shift curve re-evaluates ``shift_metric(zv', zt')`` at every ``lambda`` in
  ``shift_lambdas`` (default metric: ``mean_recall@1`` of one-caption-per-image retrieval, ranks on ``mesh``); it
  is stored under ``extra['shift_curve']`` and, with ``write_plots``, drawn to ``step_<k>_gap_shift.png`` beside
  a joint PCA of both modalities, ``step_<k>_pca.png``.
  """

  kind: ClassVar[str] = "structure"
  batches: BatchSource
  text_key: str = "text"
  aug_key: str = "image_aug"
  bridge_t: float = 0.25
  uniformity_t: float = 2.0
  alignment_alpha: float = 2.0
  separability_l2: float = 1e-4
  separability_test_fraction: float = 0.5
  seed: int = 0
  shift_lambdas: Sequence[float] = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
  shift_metric: Callable[[np.ndarray, np.ndarray], float] | None = None
  shift_metric_name: str = "mean_recall@1"
  ties: Ties = "pessimistic"
  mesh: Mesh | None = None
  write_plots: bool = True
  pca_max_pairs: int = 500

  def _pair_outputs(self, batch: Batch, encode_image: EncodeFn, encode_text: EncodeFn) -> dict[str, np.ndarray]:
    """Embeddings of one batch: ``zv``, ``zt`` and, when available, ``zv_ind``, ``zt_ind``, ``zv_aug``."""
    tokens = to_numpy(batch[self.text_key])
    out = {**encode_outputs(encode_image, batch["image"], "zv"),
           **encode_outputs(encode_text, tokens[:, 0] if tokens.ndim == 3 else tokens, "zt")}
    if self.aug_key in batch:
      out["zv_aug"] = encode_outputs(encode_image, batch[self.aug_key], "zv")["zv"]
    return out

  def _retrieval_mean_recall_at_1(self, zv: np.ndarray, zt: np.ndarray) -> float:
    """``mean_recall@1`` of one-caption-per-image retrieval (the default shift metric)."""
    t2i, i2t = retrieval_ranks(zv, zt, np.arange(zv.shape[0]), mesh=self.mesh, ties=self.ties)
    return recall_metrics(t2i, i2t, (1,))["mean_recall@1"]

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn) -> Result:
    """Encodes the pairs and computes every diagnostic, the shift curve (in ``extra``) and the figures."""
    data = gather(self.batches, lambda b: self._pair_outputs(b, encode_image, encode_text))
    metrics = structure_metrics(
        data["zv"], data["zt"], zv_aug=data.get("zv_aug"), zv_ind=data.get("zv_ind"), zt_ind=data.get("zt_ind"),
        bridge_t=self.bridge_t, uniformity_t=self.uniformity_t, alignment_alpha=self.alignment_alpha,
        separability_l2=self.separability_l2, separability_test_fraction=self.separability_test_fraction,
        seed=self.seed)
    metrics["nonfinite_fraction"] = nonfinite_fraction(*data.values())
    metric = self._retrieval_mean_recall_at_1 if self.shift_metric is None else self.shift_metric
    curve = embedding_shift_curve(data["zv"], data["zt"], self.shift_lambdas, metric)
    figures: dict[str, Figure] = {}
    if self.write_plots:
      figures["gap_shift"] = lambda path: plots.plot_gap_shift_curve(curve, path, self.shift_metric_name)
      figures["pca"] = lambda path: plots.plot_modality_pca(data["zv"], data["zt"], path, self.pca_max_pairs,
                                                             self.seed)
    extra = {"shift_curve": curve, "shift_metric": self.shift_metric_name, "num_pairs": int(data["zv"].shape[0])}
    return Result(metrics, extra, figures)
