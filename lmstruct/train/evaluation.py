"""Evaluators from config, and the encode functions that feed them from a model and its parameters.

    evals.zs_shape = {'kind': 'zeroshot', 'data': {...source...}, 'label': 'shape', 'every_steps': 500}
    evals.retrieval = {'kind': 'retrieval', 'data': {...}, 'captions': 5}
    evals.probe = {'kind': 'linear_probe', 'train_data': {...}, 'test_data': {...}, 'label': 'shape'}
    evals.few = {'kind': 'few_shot', 'train_data': {...}, 'test_data': {...}, 'label': 'colour'}
    evals.structure = {'kind': 'structure', 'data': {...}}

`data`/`train_data`/`test_data` are data-source configs (lmstruct.data.sources); `label` picks the class label
(scenes: shape, colour, size, material, count; otherwise the source's `label` column with its class names);
`captions` is how many captions per image retrieval reads. Every other key is passed to the evaluator
(lmstruct.eval.registry validates it).

Across processes, each process reads its own contiguous block of every evaluation dataset into global batches over
the mesh and encodes only those rows; the evaluators gather the embeddings their metrics need
(lmstruct.eval.features), so every process computes the single-process results, and process 0 writes them.
"""
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from lmstruct import multihost
from lmstruct.data import pipeline, sources
from lmstruct.eval.registry import get_evaluator
from lmstruct.eval.evaluators import Evaluator
from lmstruct.train.sharding import batch_sharding

_DATA_KEYS = {"zeroshot": ("data",), "retrieval": ("data",), "structure": ("data",),
              "linear_probe": ("train_data", "test_data"), "few_shot": ("train_data", "test_data")}
_BATCH_FIELDS = {"data": "batches", "train_data": "train_batches", "test_data": "test_batches"}


def make_encoders(model: nn.Module, variables: Mapping[str, Any], mesh: Mesh) -> tuple[Callable, Callable]:
  """(encode_image, encode_text): this process's rows of a batch → the model's per-example outputs for them
  (`zv`, `zv_ind` / `zt`, `zt_ind`) as host arrays.

  Every process calls the encoders together, each with its own rows. A global `jax.Array` batch sharded over the
  mesh's first (data) axis, as the eval pipeline gives, is encoded where it lies. Host rows (tokenized prompts) are
  padded to a multiple of this process's data devices, assembled into a global array over the mesh
  (`jax.make_array_from_process_local_data`; every process passes as many rows), and the padding is cut off again.
  """
  data_axis = mesh.axis_names[0]
  if mesh.shape[data_axis] % jax.process_count():
    raise ValueError(f"the mesh's data axis {data_axis!r} has {mesh.shape[data_axis]} devices; evaluation shards "
                     f"its rows over the {jax.process_count()} processes, so it needs a multiple of that")
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


def _batches(source: Any, *, batch_size: int, image_size: int, tokenize: Callable, mesh: Mesh,
             captions: int = 1) -> Callable:
  """A zero-argument callable giving a fresh pass over `source` (captions 0..captions-1, chained): each process
  reads its own contiguous block into global batches sharded over the mesh's first axis."""
  def fresh():
    return itertools.chain.from_iterable(
        pipeline.eval_pipeline(source, global_batch_size=batch_size, image_size=image_size, tokenize=tokenize,
                               caption_index=c, mesh=mesh, data_axes=mesh.axis_names[:1]) for c in range(captions))
  return fresh


def build_evaluators(evals: Mapping[str, Mapping[str, Any]], *, data_dir: str, batch_size: int, image_size: int,
                     tokenize: Callable, mesh: Mesh) -> list[Evaluator]:
  """One evaluator per entry of `evals` (see the module docstring)."""
  evaluators = []
  for name, raw in evals.items():
    cfg = dict(raw)
    kind = cfg.pop("kind", None)
    if kind not in _DATA_KEYS:
      raise ValueError(f"evals.{name}.kind must be one of {sorted(_DATA_KEYS)}, got {kind!r}")
    label = cfg.pop("label", None)
    captions = int(cfg.pop("captions", 1))
    fields: dict[str, Any] = {"name": name}
    opened = {}
    for key in _DATA_KEYS[kind]:
      if key not in cfg:
        raise ValueError(f"evals.{name} ({kind}) needs {key!r}: a data-source config")
      opened[key] = sources.build_source(cfg.pop(key), data_dir, where=f"evals.{name}.{key}")
      fields[_BATCH_FIELDS[key]] = _batches(opened[key], batch_size=batch_size, image_size=image_size,
                                            tokenize=tokenize, mesh=mesh,
                                            captions=captions if kind == "retrieval" else 1)
    first = next(iter(opened.values()))
    if kind in ("zeroshot", "linear_probe", "few_shot"):
      fields["label_key"] = sources.label_key(first, label)
      names = sources.class_names(first, label)
      if kind == "zeroshot":
        fields["class_names"] = names
        fields["tokenize"] = tokenize
        if "templates" not in cfg and label is not None and fields["label_key"].startswith("labels/"):
          fields["templates"] = f"scenes_{label}"
      else:
        fields["num_classes"] = len(names)
    if kind in ("retrieval", "structure"):
      fields["mesh"] = mesh
    evaluators.append(get_evaluator(kind, {**fields, **cfg}))
  return evaluators
