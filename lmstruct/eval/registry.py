"""Evaluator registry: build evaluators by name from a config, and run the ones due at a training step."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from lmstruct.choices import did_you_mean, unknown_choice
from lmstruct.eval.evaluators import (
  Evaluator,
  FewShotEvaluator,
  LabelProbesEvaluator,
  LinearProbeEvaluator,
  RetrievalEvaluator,
  StructureEvaluator,
  ZeroShotEvaluator,
)
from lmstruct.eval.features import EncodeFn
from lmstruct.eval.vl_tasks import VL_EVALUATORS

EVALUATORS: dict[str, type[Evaluator]] = {
  cls.kind: cls
  for cls in (
    ZeroShotEvaluator,
    LinearProbeEvaluator,
    FewShotEvaluator,
    LabelProbesEvaluator,
    RetrievalEvaluator,
    StructureEvaluator,
    *VL_EVALUATORS,
  )
}


def available_evaluators() -> list[str]:
  """Sorted names accepted by ``get_evaluator``."""
  return sorted(EVALUATORS)


def get_evaluator(name: str, config: Mapping[str, Any] | None = None, /, **overrides: Any) -> Evaluator:
  """The evaluator registered as ``name``, with fields from ``config`` (a mapping or an ``ml_collections``
  ``ConfigDict``) updated by ``overrides``.

  Raises ``ValueError`` for an unknown name (listing the valid names), an unknown field or a missing required
  field (listing the valid / missing fields).
  """
  if name not in EVALUATORS:
    raise unknown_choice("evaluator", name, EVALUATORS)
  cls = EVALUATORS[name]
  values = {**(dict(config.items()) if config is not None else {}), **overrides}
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(
      f"unknown field(s) {unknown}{did_you_mean(unknown[0], fields)} for evaluator {name!r}; "
      f"valid fields: {sorted(fields)}"
    )
  missing = sorted(
    n
    for n, f in fields.items()
    if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
  )
  if missing:
    raise ValueError(f"evaluator {name!r} needs field(s) {missing}")
  return cls(**values)


def run_evaluators(
  evaluators: Iterable[Evaluator],
  encode_image: EncodeFn,
  encode_text: EncodeFn,
  *,
  step: int,
  workdir: str | pathlib.Path | None = None,
  only_due: bool = True,
) -> dict[str, dict[str, float]]:
  """Runs every evaluator (only those ``due(step)`` when ``only_due``) and returns ``{evaluator.name: metrics}``.

  Two evaluators with the same ``name`` would overwrite each other's files, so that raises ``ValueError``.
  """
  evaluators = list(evaluators)
  names = [e.name for e in evaluators]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"evaluator names must be unique; repeated: {duplicates}")
  return {
    e.name: e.run(encode_image, encode_text, step=step, workdir=workdir)
    for e in evaluators
    if not only_due or e.due(step)
  }
