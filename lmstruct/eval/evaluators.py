"""Evaluators: data + settings bound once, then ``run(encode_image, encode_text, step=..., workdir=...)``.

Each evaluator is a dataclass built from a config mapping (``lmstruct.eval.registry.get_evaluator``). ``run`` encodes
its batches with the given encode functions, computes its metrics with the pure functions of this package, writes
``<workdir>/eval/<name>/step_<step>.json`` (and figures, for ``structure``) when ``workdir`` is given, and returns the
metrics. Every evaluator also reports ``nonfinite_fraction``, the fraction of the embedding rows it computed that hold
a NaN or an infinity (``features.nonfinite_fraction``); such embeddings never count as hits (``ranking``,
``probe.predict``). ``every_steps`` is the interval at which the training loop runs it (0: only standalone runs).
With several JAX processes every process runs every evaluator on its own rows of the data; the embeddings are
gathered from all processes (``features.gather``), so every process computes the metrics of all rows.

Batches follow docs/contracts.md: ``image float32 [B, H, W, 3]``, ``text int32 [B, L]`` (retrieval also accepts
``[B, C, L]``, C captions per image, with an optional boolean ``text_mask [B, C]``), labels under ``label_key``
(``'a/b'`` reads ``batch['a']['b']``) and a boolean padding ``mask [B]``.

Each evaluator class declares what it reads in ``inputs`` (``DataInputs``): which config keys name its data sources,
and whether its batches must carry captions or augmented views, and whether it needs labels, class names, the class
count or the device mesh. ``lmstruct.train.evaluation.build_evaluators`` feeds every evaluator from that declaration
alone.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np
from jax.sharding import Mesh

from lmstruct import multihost
from lmstruct.choices import did_you_mean
from lmstruct.data.classnames import looks_like_identifier, named_lists
from lmstruct.eval import io, plots
from lmstruct.eval.features import (Batch, BatchSource, EncodeFn, FeatureCache, cached, encode_outputs, gather,
                                    iterate, lookup, nonfinite_fraction, row_mask, source_cache_key, to_numpy)
from lmstruct.eval.probe import COARSE_EXPONENTS, REFINE_STEPS, few_shot_probe, linear_probe
from lmstruct.eval.ranking import Ties
from lmstruct.eval.retrieval import recall_metrics, retrieval_metrics, retrieval_ranks
from lmstruct.eval.structure import embedding_shift_curve, structure_metrics
from lmstruct.eval.templates import build_prompts, get_templates
from lmstruct.eval.zeroshot import Tokenizer, zeroshot_classifier, zeroshot_metrics

log = logging.getLogger(__name__)

Extra = dict[str, Any]
Figure = Callable[[pathlib.Path], pathlib.Path]
#: ``features:`` of the probe evaluators -> encoder output: the pooled image-tower output before the projection
#: ("the learned visual encoder" of the paper) or the projected, normalised shared embedding.
IMAGE_FEATURES = {"backbone": "hv", "projected": "zv"}


@dataclasses.dataclass(frozen=True)
class DataInputs:
  """What an evaluator reads, declared once per class so that one generic builder can feed every evaluator.

  ``sources`` maps each config key naming a data source (``'data'``, ``'train_data'``) to the evaluator field that
  receives its batches; ``optional_sources`` likewise for sources that may be left out. The flags say whether the
  batches must carry tokenized captions (``text``) and augmented views (``image_aug``), and whether the evaluator
  needs a label (field ``label_key``), the class names with a tokenizer and prompt templates (``class_names``,
  ``tokenize``, ``templates``), the number of classes (``num_classes``) or the device mesh (``mesh``). Data read
  without ``captions`` is never tokenized, so caption-less classification data (an ImageFolder) works.
  """

  sources: Mapping[str, str]
  optional_sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
  captions: bool = False
  augmented_views: bool = False
  labels: bool = False
  class_names: bool = False
  num_classes: bool = False
  mesh: bool = False


@dataclasses.dataclass
class Result:
  """What an evaluator computed: ``metrics`` (returned and stored), JSON-serialisable ``extra`` detail, and
  ``figures``, each a function that draws one PNG to the path it is given, keyed by file-name suffix."""

  metrics: dict[str, float]
  extra: Extra = dataclasses.field(default_factory=dict)
  figures: dict[str, Figure] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True)
class Evaluator(abc.ABC):
  """Common part: ``name`` (output folder; defaults to the registry kind), ``every_steps`` and ``cache_features``
  (keep encoded features on disk for reuse at the same step, see ``run``); ``inputs`` is the class's declaration of
  what it reads."""

  kind: ClassVar[str] = ""
  inputs: ClassVar[DataInputs]
  name: str = ""
  every_steps: int = 0
  cache_features: bool = False

  def __post_init__(self) -> None:
    if not self.name:
      self.name = self.kind
    if self.every_steps < 0:
      raise ValueError("every_steps must be >= 0")

  def due(self, step: int) -> bool:
    """True when ``every_steps > 0`` and ``step`` is a multiple of it."""
    return self.every_steps > 0 and step % self.every_steps == 0

  @abc.abstractmethod
  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    """Encodes the evaluator's data with the given functions (looking features up in ``cache`` when given) and
    computes its ``Result``."""

  def run(self, encode_image: EncodeFn, encode_text: EncodeFn, *, step: int = 0,
          workdir: str | pathlib.Path | None = None) -> dict[str, float]:
    """Computes the metrics; with ``workdir`` process 0 also writes ``<workdir>/eval/<name>/step_<step>.json``
    (``io.write_metrics``) and each figure to ``<workdir>/eval/<name>/step_<step>_<suffix>.png``. With
    ``cache_features`` and a ``workdir``, features are kept in ``<workdir>/feature_cache/step_<step>``
    (``FeatureCache``) and read from there when another evaluator or a rerun needs them at the same step."""
    cache = FeatureCache(io.feature_cache_dir(workdir), step) if workdir is not None and self.cache_features else None
    result = self.compute(encode_image, encode_text, cache)
    if workdir is not None and jax.process_index() == 0:
      io.write_metrics(workdir, self.name, step, result.metrics, result.extra)
      for suffix, draw in result.figures.items():
        draw(io.eval_dir(workdir, self.name) / f"step_{int(step)}_{suffix}.png")
    return result.metrics


def _image_label_features(source: BatchSource, encode_image: EncodeFn, label_key: str, feature: str = "zv",
                          cache: FeatureCache | None = None) -> dict[str, np.ndarray]:
  """``{feature: [N, D], 'label': [N]}`` over the unmasked rows of ``source``; ``feature`` is an image output of the
  encode function (``zv``, or ``hv`` for the pooled backbone). Stored in ``cache`` under the source's
  ``cache_key``, the feature and the label key."""
  def compute() -> dict[str, np.ndarray]:
    return gather(source, lambda b: {feature: encode_outputs(encode_image, b["image"], feature)[feature],
                                     "label": to_numpy(lookup(b, label_key)).astype(np.int64)})

  key = source_cache_key(source)
  return cached(cache, None if key is None else f"{key}-{feature}-{label_key.replace('/', '.')}", compute)


def _probe_feature(features: str) -> str:
  """The encoder output named by a probe's ``features`` setting (``IMAGE_FEATURES``)."""
  if features not in IMAGE_FEATURES:
    raise ValueError(f"features must be one of {sorted(IMAGE_FEATURES)}, got {features!r}"
                     f"{did_you_mean(features, IMAGE_FEATURES)}")
  return IMAGE_FEATURES[features]


@dataclasses.dataclass(kw_only=True)
class ZeroShotEvaluator(Evaluator):
  """Zero-shot classification: ``acc{k}`` for k in ``ks`` and ``mean_per_class_recall`` (``zeroshot_metrics``).

  ``class_names[c]`` names label ``c``; ``templates`` is a set name from ``templates.TEMPLATE_SETS`` or a list;
  ``tokenize`` maps a list of strings to ``int32 [n, L]`` tokens. Prompts are normalised per the three flags
  (``templates.normalize_text``). ``candidate_classes`` (sorted labels) restricts the classifier to those classes,
  as for ImageNet-A and -R read with ImageNet-1K's 1000 labels; images of other classes are left out (counted in
  ``extra['num_outside_candidates']``). Class names that look like identifiers (WordNet ids, bare numbers) are
  logged once, when the evaluator is built.
  """

  kind: ClassVar[str] = "zeroshot"
  inputs: ClassVar[DataInputs] = DataInputs(sources={"data": "batches"}, labels=True, class_names=True)
  batches: BatchSource
  class_names: Sequence[str]
  tokenize: Tokenizer
  templates: str | Sequence[str] = "paper"
  candidate_classes: Sequence[int] | None = None
  label_key: str = "label"
  ks: Sequence[int] = (1, 3, 5)
  ties: Ties = "pessimistic"
  lowercase: bool = True
  strip: bool = True
  underscores_to_spaces: bool = True
  text_batch_size: int = 256

  def __post_init__(self) -> None:
    super().__post_init__()
    get_templates(self.templates)
    if self.candidate_classes is not None:
      candidates = list(self.candidate_classes)
      if not candidates or candidates != sorted(set(candidates)) or not 0 <= candidates[0] <= candidates[-1] < len(
          self.class_names):
        raise ValueError(f"candidate_classes must be increasing labels in [0, {len(self.class_names)})")
    identifiers = [n for n in self.scored_names() if looks_like_identifier(n)]
    if identifiers:
      log.warning("evaluator %r: %d of its %d class names look like identifiers (e.g. %r), so its prompts read "
                  "%r; set class_names on the evaluator (a list, a file of names, or one of %s)", self.name,
                  len(identifiers), len(self.scored_names()), identifiers[0], f"a photo of the {identifiers[0]}.",
                  sorted(named_lists()))

  def scored_names(self) -> list[str]:
    """The names of the classes the classifier scores: ``class_names``, restricted to ``candidate_classes``."""
    if self.candidate_classes is None:
      return list(self.class_names)
    return [self.class_names[c] for c in self.candidate_classes]

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    """Builds the prompt-ensemble classifier, encodes the images and scores them among the scored classes."""
    names = self.scored_names()
    prompts = build_prompts(names, self.templates, lowercase=self.lowercase, strip=self.strip,
                            underscores_to_spaces=self.underscores_to_spaces)
    digest = hashlib.sha1("\n".join(p for row in prompts for p in row).encode()).hexdigest()[:16]
    classifier = cached(cache, f"classifier-{digest}", lambda: {
        "classifier": zeroshot_classifier(prompts, self.tokenize, encode_text, self.text_batch_size)})["classifier"]
    data = _image_label_features(self.batches, encode_image, self.label_key, "zv", cache)
    zv, labels = data["zv"], data["label"]
    outside = 0
    if self.candidate_classes is not None:
      candidates = np.asarray(self.candidate_classes)
      inside = np.isin(labels, candidates)
      outside = int(np.sum(~inside))
      if not inside.any():
        raise ValueError(f"evaluator {self.name!r}: no image has a label among its {candidates.size} "
                         "candidate_classes")
      if outside:
        log.warning("evaluator %r: %d of %d images have labels outside its candidate_classes and are left out",
                    self.name, outside, labels.size)
      zv, labels = zv[inside], np.searchsorted(candidates, labels[inside])
    metrics = zeroshot_metrics(zv, classifier, labels, self.ks, self.ties)
    metrics["nonfinite_fraction"] = nonfinite_fraction(data["zv"], classifier)
    return Result(metrics, {"num_images": int(labels.size), "num_classes": len(names),
                            "num_outside_candidates": outside, "num_templates": len(prompts[0]),
                            "class_names": names})


@dataclasses.dataclass(kw_only=True)
class LinearProbeEvaluator(Evaluator):
  """Linear probe on frozen image features (``probe.linear_probe``): ``acc1``, ``val_acc1``, ``l2``.

  ``features``: ``'backbone'`` (default; the pooled image-tower output ``hv``, "the learned visual encoder" the
  paper probes) or ``'projected'`` (the shared embedding ``zv``). The L2 strength is swept on ``val_batches`` (or a
  ``val_fraction`` split of the training set) and the probe refitted on train + validation.
  """

  kind: ClassVar[str] = "linear_probe"
  inputs: ClassVar[DataInputs] = DataInputs(sources={"train_data": "train_batches", "test_data": "test_batches"},
                                            optional_sources={"val_data": "val_batches"}, labels=True,
                                            num_classes=True)
  train_batches: BatchSource
  test_batches: BatchSource
  val_batches: BatchSource | None = None
  features: str = "backbone"
  label_key: str = "label"
  num_classes: int | None = None
  val_fraction: float = 0.2
  seed: int = 0
  coarse_exponents: Sequence[float] = COARSE_EXPONENTS
  refine_steps: Sequence[float] = REFINE_STEPS
  max_iter: int = 1000
  tol: float = 1e-5

  def __post_init__(self) -> None:
    super().__post_init__()
    _probe_feature(self.features)

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    """Encodes train/(val)/test images and runs the probe; ``encode_text`` is not used."""
    feature = _probe_feature(self.features)
    train = _image_label_features(self.train_batches, encode_image, self.label_key, feature, cache)
    test = _image_label_features(self.test_batches, encode_image, self.label_key, feature, cache)
    val = (None if self.val_batches is None
           else _image_label_features(self.val_batches, encode_image, self.label_key, feature, cache))
    metrics = linear_probe(
        train[feature], train["label"], test[feature], test["label"],
        val_x=None if val is None else val[feature], val_y=None if val is None else val["label"],
        num_classes=self.num_classes, val_fraction=self.val_fraction, seed=self.seed,
        coarse_exponents=self.coarse_exponents, refine_steps=self.refine_steps, max_iter=self.max_iter,
        tol=self.tol)
    metrics["nonfinite_fraction"] = nonfinite_fraction(
        train[feature], test[feature], *([] if val is None else [val[feature]]))
    return Result(metrics, {"num_train": int(train["label"].size), "num_test": int(test["label"].size),
                            "num_val": 0 if val is None else int(val["label"].size), "features": self.features,
                            "feature_dim": int(train[feature].shape[1])})


@dataclasses.dataclass(kw_only=True)
class FewShotEvaluator(Evaluator):
  """k-shot linear probes (``probe.few_shot_probe``): ``{k}shot_acc1_mean`` / ``{k}shot_acc1_std`` over seeds, on
  the image ``features`` (``'backbone'``, the default, or ``'projected'``; see ``LinearProbeEvaluator``)."""

  kind: ClassVar[str] = "few_shot"
  inputs: ClassVar[DataInputs] = DataInputs(sources={"train_data": "train_batches", "test_data": "test_batches"},
                                            labels=True, num_classes=True)
  train_batches: BatchSource
  test_batches: BatchSource
  features: str = "backbone"
  label_key: str = "label"
  shots: Sequence[int] = (1, 2, 4, 8, 16)
  seeds: Sequence[int] = (0, 1, 2)
  l2: float = 1e-3
  num_classes: int | None = None
  max_iter: int = 1000
  tol: float = 1e-5

  def __post_init__(self) -> None:
    super().__post_init__()
    _probe_feature(self.features)

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
    """Encodes train/test images and runs the few-shot probes; ``encode_text`` is not used."""
    feature = _probe_feature(self.features)
    train = _image_label_features(self.train_batches, encode_image, self.label_key, feature, cache)
    test = _image_label_features(self.test_batches, encode_image, self.label_key, feature, cache)
    metrics = few_shot_probe(train[feature], train["label"], test[feature], test["label"], shots=self.shots,
                             seeds=self.seeds, l2=self.l2, num_classes=self.num_classes,
                             max_iter=self.max_iter, tol=self.tol)
    metrics["nonfinite_fraction"] = nonfinite_fraction(train[feature], test[feature])
    return Result(metrics, {"seeds": [int(x) for x in self.seeds], "features": self.features})


def _retrieval_features(source: BatchSource, encode_image: EncodeFn, encode_text: EncodeFn, text_key: str,
                        text_mask_key: str, image_id_key: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(zv [Ni, D], zt [Nt, D], text_image [Nt])`` from batches with ``[B, L]`` or ``[B, C, L]`` captions.

  Rows with a false ``mask`` are dropped with all their captions; caption ``(b, c)`` is kept when
  ``text_mask[b, c]`` (default true). Rows whose integer ``image_id_key`` value was seen before (e.g. the same
  source ``index`` in a later pass over another caption) add their captions to that image; otherwise, or without
  that key, each row is a new image. Images are numbered in order of first appearance. Each process encodes its own
  rows; the images and captions of all processes are gathered in process order (``multihost.allgather_rows``) and
  joined by image id across processes too.
  """
  zv_parts, key_parts, zt_parts, owner_parts = [], [], [], []
  seen: set[tuple[int, ...]] = set()
  rows_read = 0
  for batch in iterate(source):
    tokens = to_numpy(batch[text_key])
    if tokens.ndim == 2:
      tokens = tokens[:, None, :]
    size, captions = tokens.shape[:2]
    keep = row_mask(batch, size)
    caption_keep = keep[:, None] & (to_numpy(batch[text_mask_key]).astype(bool) if text_mask_key in batch
                                    else np.ones((size, captions), dtype=bool))
    keys = _image_keys(batch, image_id_key, size, rows_read)
    rows_read += size
    zv = encode_outputs(encode_image, batch["image"], "zv")["zv"]
    zt = encode_outputs(encode_text, tokens.reshape(size * captions, -1), "zt")["zt"]
    first = []
    for row in np.flatnonzero(keep):
      if tuple(keys[row]) not in seen:
        seen.add(tuple(keys[row]))
        first.append(row)
    zv_parts.append(zv[first])
    key_parts.append(keys[first])
    zt_parts.append(zt.reshape(size, captions, -1)[caption_keep])
    owner_parts.append(np.broadcast_to(keys[:, None], (size, captions, keys.shape[1]))[caption_keep])
  if not zv_parts:
    raise ValueError("the batch source yielded no batches")
  zv, image_keys, zt, owner_keys = (multihost.allgather_rows(np.concatenate(parts))
                                    for parts in (zv_parts, key_parts, zt_parts, owner_parts))
  if not zv.shape[0]:
    raise ValueError("the batch source yielded no unmasked rows")
  _, first_seen, unique_of = np.unique(np.concatenate([image_keys, owner_keys]), axis=0, return_index=True,
                                       return_inverse=True)
  order = np.argsort(first_seen)
  number = np.empty_like(order)
  number[order] = np.arange(order.size)
  return zv[first_seen[order]], zt, number[unique_of.reshape(-1)[len(image_keys):]]


def _image_keys(batch: Batch, image_id_key: str | None, size: int, rows_read: int) -> np.ndarray:
  """int64 ``[size, 3]`` keys that name each row's image across processes: ``(1, 0, id)`` for rows with an
  ``image_id_key`` value, else ``(0, process, row number on this process)`` (a new image per row)."""
  if image_id_key is not None and image_id_key in batch:
    ids = to_numpy(batch[image_id_key]).astype(np.int64).reshape(size)
    return np.stack([np.ones_like(ids), np.zeros_like(ids), ids], axis=1)
  rows = rows_read + np.arange(size, dtype=np.int64)
  return np.stack([np.zeros_like(rows), np.full_like(rows, jax.process_index()), rows], axis=1)


@dataclasses.dataclass(kw_only=True)
class RetrievalEvaluator(Evaluator):
  """COCO-protocol retrieval (``retrieval.retrieval_metrics``) with ranks computed blockwise on ``mesh``
  (default: every device).

  Captions come as ``[B, C, L]`` per batch (with ``text_mask``), or one per row over several passes (e.g. the eval
  pipeline with ``caption_index`` 0, 1, ... chained) joined to their image by ``image_id_key`` (default the
  pipeline's source ``index``).
  """

  kind: ClassVar[str] = "retrieval"
  inputs: ClassVar[DataInputs] = DataInputs(sources={"data": "batches"}, captions=True, mesh=True)
  batches: BatchSource
  ks: Sequence[int] = (1, 5, 10)
  ties: Ties = "pessimistic"
  mesh: Mesh | None = None
  query_chunk: int = 1024
  text_key: str = "text"
  text_mask_key: str = "text_mask"
  image_id_key: str | None = "index"

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
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
  ``aug_key``; the eval pipeline's deterministic augmented view) enables ``bridge_residual``; encode functions
  returning dicts with ``zv_ind``/``zt_ind`` enable the orthogonality metrics. The shift curve re-evaluates
  ``shift_metric(zv', zt')`` at every ``lambda`` in ``shift_lambdas`` (default metric: ``mean_recall@1`` of
  one-caption-per-image retrieval, ranks on ``mesh``); it is stored under ``extra['shift_curve']`` and, with
  ``write_plots``, drawn to ``step_<k>_gap_shift.png`` beside a joint PCA of both modalities, ``step_<k>_pca.png``.
  """

  kind: ClassVar[str] = "structure"
  inputs: ClassVar[DataInputs] = DataInputs(sources={"data": "batches"}, captions=True, augmented_views=True,
                                            mesh=True)
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

  def compute(self, encode_image: EncodeFn, encode_text: EncodeFn, cache: FeatureCache | None = None) -> Result:
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
