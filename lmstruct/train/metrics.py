"""Training metrics: clu averages over each logging interval, written to JSONL and TensorBoard event files.

clu's metric writers import TensorFlow; lmstruct writes TensorBoard events through the `tensorboard` package's own
event-file writer instead, so no TensorFlow is needed. Files under the workdir:
`metrics.jsonl` (one JSON object per logged step), `tensorboard/events.out.tfevents.*`, `config.json`. The workdir
may be an object-store URL (:mod:`lmstruct.paths`): an object cannot be appended to, so there `metrics.jsonl` is
rewritten whole at each logging step (the event writer handles URLs itself).
"""

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import clu.metrics
import jax.numpy as jnp
import numpy as np
import tqdm
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lmstruct import paths


class IntervalAverages:
  """Running clu `Average` of every scalar metric since the last `pop`."""

  def __init__(self):
    self._averages: dict[str, clu.metrics.Average] = {}

  def add(self, metrics: Mapping[str, Any]) -> None:
    for name, value in metrics.items():
      update = clu.metrics.Average.from_model_output(jnp.asarray(value, jnp.float32))
      self._averages[name] = self._averages[name].merge(update) if name in self._averages else update

  def pop(self) -> dict[str, float]:
    """The averages so far as floats, and a fresh interval."""
    values = {name: float(avg.compute()) for name, avg in self._averages.items()}
    self._averages = {}
    return values


class MetricWriter:
  """Scalars to `metrics.jsonl` and TensorBoard; the run's config to `config.json` and a TensorBoard text summary."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self._workdir = paths.as_path(workdir)
    self._enabled = enabled
    if enabled:
      self._workdir.mkdir(parents=True, exist_ok=True)
      self._events = EventFileWriter(os.fspath(self._workdir / "tensorboard"))
      self._metrics_path = self._workdir / "metrics.jsonl"
      self._rewrite = paths.is_url(self._workdir)
      self._lines = (
        self._metrics_path.read_text().splitlines(keepends=True)
        if self._rewrite and self._metrics_path.exists()
        else []
      )
      self._jsonl = None if self._rewrite else self._metrics_path.open("a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    line = json.dumps({"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}) + "\n"
    if self._rewrite:
      self._lines.append(line)
      self._metrics_path.write_text("".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._events.add_event(
      event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
    )
    self._events.flush()

  def write_config(self, config: Mapping[str, Any]) -> None:
    """Records the run's hyper-parameters (config.json and a TensorBoard text summary at step 0)."""
    if not self._enabled:
      return
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    (self._workdir / "config.json").write_text(text, encoding="utf-8")
    tensor = tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      string_val=[text.encode()],
      tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
    )
    value = summary_pb2.Summary.Value(
      tag="config",
      tensor=tensor,
      metadata=summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text")),
    )
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary_pb2.Summary(value=[value])))
    self._events.flush()

  def close(self) -> None:
    if self._enabled:
      self._events.close()
      if self._jsonl is not None:
        self._jsonl.close()


class Progress:
  """A tqdm bar (step, examples/s, ETA, loss) on a terminal; plain log lines every `log_every` steps otherwise."""

  def __init__(self, total_steps: int, first_step: int, batch_size: int, mode: str = "auto"):
    self._bar = None
    use_bar = mode == "on" or (mode == "auto" and sys.stderr.isatty())
    if use_bar:
      self._bar = tqdm.tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)
    self._batch_size = batch_size
    self._total = total_steps
    self._last_time = time.perf_counter()
    self._last_step = first_step

  def update(self, step: int, scalars: Mapping[str, float] | None = None) -> dict[str, float]:
    """Advances to `step`; with `scalars` (a logging step) also reports them. Returns throughput scalars."""
    now = time.perf_counter()
    elapsed, steps = now - self._last_time, step - self._last_step
    rates = {"perf/steps_per_sec": steps / elapsed if elapsed > 0 else float("nan")}
    rates["perf/examples_per_sec"] = rates["perf/steps_per_sec"] * self._batch_size
    if self._bar is not None:
      self._bar.update(steps)
      if scalars:
        self._bar.set_postfix(
          loss=f"{scalars.get('loss/total', float('nan')):.4f}", ex_s=f"{rates['perf/examples_per_sec']:.1f}"
        )
    elif scalars is not None:
      remaining = (self._total - step) / rates["perf/steps_per_sec"] if steps else float("nan")
      logging.info(
        "step %d/%d  loss %.4f  %.1f examples/s  ETA %s",
        step,
        self._total,
        scalars.get("loss/total", float("nan")),
        rates["perf/examples_per_sec"],
        time.strftime("%H:%M:%S", time.gmtime(remaining)) if np.isfinite(remaining) else "?",
      )
    self._last_time, self._last_step = now, step
    return rates

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
