"""One JSON record per evaluator per step: ``<workdir>/eval/<name>/step_<step>.json``.

Record layout (strict JSON; non-finite floats are written as ``null`` and read back as ``nan``)::

    {"evaluator": <name>, "step": <int>, "metrics": {<key>: <float>, ...}, "extra": {...}}

``extra`` holds JSON-serialisable detail such as the embedding-shift curve. Files are written atomically
(temporary file + rename), so a reader never sees a partial record.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any


def eval_dir(workdir: str | pathlib.Path, name: str) -> pathlib.Path:
  """``<workdir>/eval/<name>``."""
  return pathlib.Path(workdir) / "eval" / name


def feature_cache_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  """``<workdir>/feature_cache``: encoded features kept between evaluators (``features.FeatureCache``)."""
  return pathlib.Path(workdir) / "feature_cache"


def metrics_path(workdir: str | pathlib.Path, name: str, step: int) -> pathlib.Path:
  """``<workdir>/eval/<name>/step_<step>.json``."""
  return eval_dir(workdir, name) / f"step_{int(step)}.json"


def finite_or_none(value: float) -> float | None:
  """``float(value)``, or ``None`` when it is NaN or infinite."""
  value = float(value)
  return value if math.isfinite(value) else None


def write_metrics(workdir: str | pathlib.Path, name: str, step: int, metrics: Mapping[str, float],
                  extra: Mapping[str, Any] | None = None) -> pathlib.Path:
  """Writes the record for ``(name, step)`` atomically and returns its path (layout in the module docstring)."""
  path = metrics_path(workdir, name, step)
  path.parent.mkdir(parents=True, exist_ok=True)
  record = {"evaluator": name, "step": int(step),
            "metrics": {str(k): finite_or_none(v) for k, v in metrics.items()},
            "extra": dict(extra or {})}
  tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
  try:
    with open(tmp, "x") as f:
      json.dump(record, f, indent=2, sort_keys=True, allow_nan=False)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def read_metrics(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads a record written by ``write_metrics``; ``null`` metric values come back as ``nan``."""
  record = json.loads(pathlib.Path(path).read_text())
  record["metrics"] = {k: math.nan if v is None else float(v) for k, v in record["metrics"].items()}
  return record
