"""Evaluators from config, and the encode functions that feed them from a model and its parameters.

    evals.zs_shape = {'kind': 'zeroshot', 'data': {...source...}, 'label': 'shape', 'every_steps': 500}
    evals.zs_in1k = {'kind': 'zeroshot', 'data': {'kind': 'imagefolder', 'root': 'imagenet/val'}}
    evals.zs_in_a = {'kind': 'zeroshot', 'data': {'kind': 'tfds', 'name': 'imagenet_a', 'split': 'test'},
                     'class_subset': 'imagenet_a', 'templates': 'clip_imagenet'}
    evals.retrieval = {'kind': 'retrieval', 'data': {...}, 'captions': 5}
    evals.probe = {'kind': 'linear_probe', 'train_data': {...}, 'test_data': {...}, 'label': 'shape'}
    evals.few = {'kind': 'few_shot', 'train_data': {...}, 'test_data': {...}, 'label': 'colour'}
    evals.probes = {'kind': 'label_probes', 'train_data': {...}, 'test_data': {...}, 'label': ['shape', 'size']}
    evals.structure = {'kind': 'structure', 'data': {...}}

Which keys name data sources (lmstruct.data.sources configs), and what else an evaluator is given, comes from the
evaluator class's own declaration (`Evaluator.inputs`, lmstruct.eval.evaluators.DataInputs); this module has no
per-kind code. Besides the evaluator's fields (validated by lmstruct.eval.registry), an entry may hold:

  label         the class label to read (scenes: shape, colour, size, material, count; otherwise the source's
                `label` column), for evaluators that read labels; a list for `label_probes`;
  class_names   the class names, for evaluators that need them: a list, a file (one per line, or a JSON list) or a
                registered list (imagenet, imagenet_a, imagenet_r, cifar10, cifar100). Default: the source's own
                names (ImageFolder folders, the tfds label feature), ImageNet WordNet ids and indices mapped to
                human names;
  class_subset  'imagenet_a', 'imagenet_r' or a list of labels: score only those classes (ImageNet-A/-R read with
                ImageNet-1K's 1000 labels);
  captions      how many captions per image to read, for evaluators that read captions (default 1);
  prepare       how to prepare the dataset: when given, a dataset that is not there is reported once with this
                command and its evaluators are skipped, instead of stopping the run.

Across processes, each process reads its own contiguous block of every evaluation dataset into global batches over
the mesh and encodes only those rows; the evaluators gather the embeddings their metrics need
(lmstruct.eval.features), so every process computes the single-process results, and process 0 writes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from lmstruct import multihost
from lmstruct.choices import did_you_mean
from lmstruct.data import augment, classnames, pipeline, sources
from lmstruct.eval.evaluators import DataInputs, Evaluator
from lmstruct.eval.registry import EVALUATORS, get_evaluator
from lmstruct.train.sharding import batch_sharding

log = logging.getLogger(__name__)

#: Entry keys read here rather than by the evaluator (module docstring).
ENTRY_KEYS = ("label", "class_names", "class_subset", "captions", "prepare")


def make_encoders(model: nn.Module, variables: Mapping[str, Any], mesh: Mesh) -> tuple[Callable, Callable]:
  """(encode_image, encode_text): this process's rows of a batch → the model's per-example outputs for them
  (`zv`, `zv_ind`, `hv` / `zt`, `zt_ind`) as host arrays.

  Every process calls the encoders together, each with its own rows. A global `jax.Array` batch sharded over the
  mesh's first (data) axis, as the eval pipeline gives, is encoded where it lies. Host rows (tokenized prompts) are
  padded to a multiple of this process's data devices, assembled into a global array over the mesh
  (`jax.make_array_from_process_local_data`; every process passes as many rows), and the padding is cut off again.
  """
  data_axis = mesh.axis_names[0]
  if mesh.shape[data_axis] % jax.process_count():
    raise ValueError(
      f"the mesh's data axis {data_axis!r} has {mesh.shape[data_axis]} devices; evaluation shards "
      f"its rows over the {jax.process_count()} processes, so it needs a multiple of that"
    )
  sharding = batch_sharding(mesh, (data_axis,))
  local_devices = mesh.shape[data_axis] // jax.process_count()

  def per_example(outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: v for k, v in outputs.items() if v.ndim}

  image_fn = jax.jit(lambda v, x: per_example(model.apply(v, images=x)), out_shardings=sharding)
  text_fn = jax.jit(lambda v, x: per_example(model.apply(v, texts=x)), out_shardings=sharding)

  def run(fn: Callable, inputs: Any) -> dict[str, np.ndarray]:
    if isinstance(inputs, jax.Array) and inputs.sharding.is_equivalent_to(sharding, inputs.ndim):
      size, placed = multihost.process_row_count(inputs), inputs
    else:
      rows = multihost.process_rows(inputs)
      size = rows.shape[0]
      padding = np.zeros((math.ceil(size / local_devices) * local_devices - size, *rows.shape[1:]), rows.dtype)
      placed = jax.make_array_from_process_local_data(sharding, np.concatenate([rows, padding]))
    return {k: multihost.process_rows(v)[:size] for k, v in fn(variables, placed).items()}

  return (lambda images: run(image_fn, images)), (lambda tokens: run(text_fn, tokens))


@dataclasses.dataclass(frozen=True)
class EvalData:
  """One evaluation dataset as a batch source: each call starts a fresh pass (captions 0..captions-1 chained).

  `cache_key` names the data and its preprocessing, so encoded features can be cached (lmstruct.eval.features).
  """

  source: Any
  config: Mapping[str, Any]
  batch_size: int
  image_size: int
  mesh: Mesh
  tokenize: Callable | None = None
  captions: int = 1
  augmentation: augment.ImageAugmentation | None = None
  augment_seed: int = 0

  def __call__(self) -> Iterator[dict[str, Any]]:
    return itertools.chain.from_iterable(
      pipeline.eval_pipeline(
        self.source,
        global_batch_size=self.batch_size,
        image_size=self.image_size,
        tokenize=self.tokenize,
        caption_index=c,
        augmentation=self.augmentation,
        augment_seed=self.augment_seed,
        mesh=self.mesh,
        data_axes=self.mesh.axis_names[:1],
      )
      for c in range(self.captions)
    )

  @property
  def cache_key(self) -> str:
    """A digest of the source config and the image size (what the image features depend on)."""
    text = json.dumps({"source": dict(self.config), "image_size": self.image_size}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _evaluator_class(name: str, kind: Any) -> type[Evaluator]:
  """The registered evaluator class of `kind`; a ValueError names the valid kinds and the closest one."""
  if kind not in EVALUATORS:
    raise ValueError(
      f"evals.{name}.kind must be one of {sorted(EVALUATORS)}, got {kind!r}{did_you_mean(str(kind), EVALUATORS)}"
    )
  if EVALUATORS[kind].inputs is None:
    raise ValueError(
      f"evals.{name}: a {kind!r} evaluator reads a fusion model's inference functions; it runs with task = 'albef'"
    )
  return EVALUATORS[kind]


def _check_entry_keys(name: str, kind: str, inputs: DataInputs, entry: Mapping[str, Any]) -> None:
  """Rejects entry keys (ENTRY_KEYS) that the evaluator's declared inputs give no use to."""
  used = {
    "label": inputs.labels,
    "class_names": inputs.class_names or inputs.num_classes,
    "class_subset": inputs.class_names,
    "captions": inputs.captions,
    "prepare": True,
  }
  for key, value in entry.items():
    if value is not None and not used[key]:
      raise ValueError(f"evals.{name}.{key} does not apply to a {kind!r} evaluator")


def _open_sources(name: str, inputs: DataInputs, cfg: dict[str, Any], data_dir: str) -> dict[str, tuple[Any, Any]]:
  """Pops every source config the evaluator declares from `cfg` and opens it: {field: (source, source config)}."""
  opened = {}
  for key, field in {**inputs.sources, **inputs.optional_sources}.items():
    if key not in cfg:
      if key in inputs.sources:
        raise ValueError(f"evals.{name} needs {key!r}: a data-source config")
      continue
    config = dict(cfg.pop(key))
    opened[field] = (sources.build_source(config, data_dir, where=f"evals.{name}.{key}"), config)
  return opened


def _candidate_classes(name: str, subset: Any, names: Sequence[str]) -> list[int] | None:
  """Labels of `class_subset`: a named ImageNet subset (needs the 1000 ImageNet-1K labels) or a list of labels."""
  if subset is None:
    return None
  if isinstance(subset, str):
    if subset not in classnames.SUBSETS:
      raise ValueError(
        f"evals.{name}.class_subset must be one of {list(classnames.SUBSETS)} or a list of labels, "
        f"got {subset!r}{did_you_mean(subset, classnames.SUBSETS)}"
      )
    if len(names) != len(classnames.imagenet_wnids()):
      raise ValueError(
        f"evals.{name}.class_subset {subset!r} selects from the 1000 ImageNet-1K labels, but the "
        f"dataset has {len(names)} classes (an ImageFolder of {subset} already holds only its own "
        "classes: leave class_subset out)"
      )
    return list(classnames.subset_indices(subset))
  return sorted(int(c) for c in subset)


def build_evaluators(
  evals: Mapping[str, Mapping[str, Any]],
  *,
  data_dir: str,
  batch_size: int,
  image_size: int,
  tokenize: Callable,
  mesh: Mesh,
  augment_config: Mapping[str, Any] | None = None,
  seed: int = 0,
) -> list[Evaluator]:
  """One evaluator per entry of `evals` (module docstring), fed as its class's `inputs` declare.

  Augmented views (for evaluators that read them) use the training augmentation of `augment_config` (the run's
  `data.augment`; empty means the defaults, as in training), seeded by `seed` and each example's index.
  """
  evaluators = []
  reported: set[str] = set()
  for name, raw in evals.items():
    cfg = dict(raw)
    kind = cfg.pop("kind", None)
    cls = _evaluator_class(name, kind)
    inputs = cls.inputs
    entry = {key: cfg.pop(key, None) for key in ENTRY_KEYS}
    _check_entry_keys(name, kind, inputs, entry)
    try:
      opened = _open_sources(name, inputs, cfg, data_dir)
    except FileNotFoundError as error:
      if entry["prepare"] is None:
        raise
      if entry["prepare"] not in reported:
        log.warning(
          "evals.%s: dataset not found, so its evaluators are skipped (%s); prepare it with: %s",
          name,
          error,
          entry["prepare"],
        )
        reported.add(entry["prepare"])
      continue
    augmentation = augment.training_augmentation(augment_config) if inputs.augmented_views else None
    fields: dict[str, Any] = {"name": name}
    for field, (source, config) in opened.items():
      fields[field] = EvalData(
        source,
        config,
        batch_size,
        image_size,
        mesh,
        tokenize=tokenize if inputs.captions else None,
        captions=int(entry["captions"] or 1),
        augmentation=augmentation,
        augment_seed=seed,
      )
    first = opened[next(iter(inputs.sources.values()))][0]
    if inputs.several_labels:
      labels = list(entry["label"]) if isinstance(entry["label"], (list, tuple)) else [entry["label"]]
      fields["label_keys"] = {label: sources.label_key(first, label) for label in labels}
      fields["num_classes"] = {label: len(sources.class_names(first, label)) for label in labels}
    elif inputs.labels:
      fields["label_key"] = sources.label_key(first, entry["label"])
    if inputs.class_names or inputs.num_classes:
      names = (
        classnames.load_class_names(entry["class_names"])
        if entry["class_names"] is not None
        else sources.class_names(first, entry["label"])
      )
      if inputs.num_classes:
        fields["num_classes"] = len(names)
      if inputs.class_names:
        fields.update(
          class_names=names, tokenize=tokenize, candidate_classes=_candidate_classes(name, entry["class_subset"], names)
        )
        default = sources.default_templates(first, entry["label"])
        if default is not None and "templates" not in cfg:
          fields["templates"] = default
    if inputs.mesh:
      fields["mesh"] = mesh
    evaluators.append(get_evaluator(kind, {**fields, **cfg}))
  return evaluators
