"""One JSON record per evaluator per step: ``<workdir>/eval/<name>/step_<step>.json``.

Record layout (strict JSON; non-finite floats, in ``metrics`` and anywhere in ``extra``, are written as ``null``;
metric values are read back as ``nan``)::

    {"evaluator": <name>, "step": <int>, "metrics": {<key>: <float>, ...}, "extra": {...}}

``extra`` holds JSON-serialisable detail such as the embedding-shift curve. Files are written atomically
(temporary file + rename), so a reader never sees a partial record. The workdir may be an object-store URL
(:mod:`lmstruct.paths`).
"""
from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from typing import Any

from etils import epath

from lmstruct import paths


def eval_dir(workdir: str | os.PathLike, name: str) -> epath.Path:
  """``<workdir>/eval/<name>``."""
  return paths.as_path(workdir) / "eval" / name


def feature_cache_dir(workdir: str | os.PathLike) -> epath.Path:
  """``<workdir>/feature_cache``: encoded features kept between evaluators (``features.FeatureCache``)."""
  return paths.as_path(workdir) / "feature_cache"


def metrics_path(workdir: str | os.PathLike, name: str, step: int) -> epath.Path:
  """``<workdir>/eval/<name>/step_<step>.json``."""
  return eval_dir(workdir, name) / f"step_{int(step)}.json"


def finite_or_none(value: float) -> float | None:
  """``float(value)``, or ``None`` when it is NaN or infinite."""
  value = float(value)
  return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
  """``value`` with every non-finite float inside (nested dicts, lists, tuples) replaced by ``None``."""
  if isinstance(value, Mapping):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, float):
    return finite_or_none(value)
  return value


def write_metrics(workdir: str | os.PathLike, name: str, step: int, metrics: Mapping[str, float],
                  extra: Mapping[str, Any] | None = None) -> epath.Path:
  """Writes the record for ``(name, step)`` atomically and returns its path (layout in the module docstring)."""
  path = metrics_path(workdir, name, step)
  path.parent.mkdir(parents=True, exist_ok=True)
  record = {"evaluator": name, "step": int(step),
            "metrics": {str(k): finite_or_none(v) for k, v in metrics.items()},
            "extra": _json_safe(dict(extra or {}))}
  tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
  try:
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, allow_nan=False))
    tmp.replace(path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a record written by ``write_metrics``; ``null`` metric values come back as ``nan``."""
  record = json.loads(paths.as_path(path).read_text())
  record["metrics"] = {k: math.nan if v is None else float(v) for k, v in record["metrics"].items()}
  return record
