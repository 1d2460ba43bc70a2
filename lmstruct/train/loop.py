"""The training driver: config → sharded state → pipeline → jitted updates, with logging, evaluation,
checkpointing, resumption, preemption handling and profiling. `train_and_evaluate` is what `lmstruct train` runs.

The loop body is one update; its periodic work has one named helper each: `Profiler` (the trace window),
`nonfinite_update` (the stop/skip policy), `TrainingLog` (interval averages, progress, throughput),
`run_evaluations` (evaluators that are due) and `checkpoint_due` / `Trainer.save` (checkpoints). A run that reached
`train.steps` writes `results.json`; rerunning it finds that record (`finished_step`) and does nothing.
"""

import functools
import importlib
import json
import logging
import pathlib
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lmstruct import paths
from lmstruct.config import validate_config
from lmstruct.data import pipeline, sources
from lmstruct.data.tokenize import get_tokenizer
from lmstruct.eval import tables
from lmstruct.eval.evaluators import Evaluator
from lmstruct.eval.registry import run_evaluators
from lmstruct.losses.objective import ObjectiveConfig
from lmstruct.models import build_model, input_shapes
from lmstruct.train import checkpoint
from lmstruct.train.evaluation import build_evaluators, make_encoders
from lmstruct.train.metrics import IntervalAverages, MetricWriter, Progress
from lmstruct.train.optimizer import learning_rate_schedule, make_optimizer
from lmstruct.train.sharding import make_mesh, sharding_rules
from lmstruct.train.step import init_train_state, make_train_step


class NonFiniteError(RuntimeError):
  """A non-finite loss or gradient with `train.nonfinite = 'stop'`."""


class StopRequest:
  """Set by SIGTERM/SIGINT: the loop finishes the current step, saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum: int, frame: Any) -> None:
    logging.warning("received %s: finishing this step, saving a checkpoint and exiting", signal.Signals(signum).name)
    self.signal = signum

  def __exit__(self, *exc: Any) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def resolved_optimizer(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The optimizer section as `make_optimizer` takes it: `total_steps` 0 means `train.steps`; `trainable` a list."""
  optimizer = config.optimizer.to_dict()
  optimizer["total_steps"] = optimizer["total_steps"] or config.train.steps
  optimizer["trainable"] = list(optimizer.get("trainable") or [])
  return optimizer


def _nonfinite_terms(metrics: Mapping[str, Any]) -> list[str]:
  bad = [k for k, v in metrics.items() if k.startswith("loss/") and not np.isfinite(v)]
  return bad or ["gradient"]


def format_metric(value: float) -> str:
  """Four decimals for 0 and for 1e-3 <= |value| < 1e4 (accuracies, recalls, distances); otherwise four
  significant digits (`:.4g`), so that an L2 strength of 1e-6 reads `1e-06`, not `0.0000`."""
  return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"


def results_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A markdown table: one row per evaluator metric (values by `format_metric`)."""
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for name, metrics in results.items():
    for key, value in metrics.items():
      lines.append(f"| {name} | {key} | {format_metric(value)} |")
  return "\n".join(lines)


def finished_step(workdir: str | pathlib.Path, steps: int) -> int | None:
  """The step of `<workdir>/results.json`, the record a run writes once it has made all its updates and its final
  evaluation, when that step is at least `steps`; otherwise (no record, or a shorter run) None."""
  path = paths.as_path(workdir) / "results.json"
  if not path.is_file():
    return None
  step = int(json.loads(path.read_text())["step"])
  return step if step >= steps else None


def write_results(workdir: epath.Path, step: int, results: Mapping[str, Mapping[str, float]]) -> None:
  """`results.md` (the table), the evaluation suite's tables when the results hold any (`paper_tables.md`,
  lmstruct.eval.tables) and then, by a rename, `results.json` ({"step", "results"}): the run's final record."""
  (workdir / "results.md").write_text(results_table(results) + "\n")
  tables.write_run_tables(workdir, results)
  temporary = workdir / f"results.json.{jax.process_index()}.tmp"
  temporary.write_text(json.dumps({"step": step, "results": results}, indent=2))
  temporary.replace(workdir / "results.json")


class Profiler:
  """A `jax.profiler` trace into `directory` of the updates that start at steps `start` … `start + steps - 1`
  (`start < 0`: no trace)."""

  def __init__(self, directory: pathlib.Path, start: int, steps: int):
    self.directory, self.start = directory, start
    self.stop = start + steps if start >= 0 else -1

  def before_update(self, step: int) -> None:
    if step == self.start:
      jax.profiler.start_trace(str(self.directory))

  def after_update(self, step: int) -> None:
    if step == self.stop:
      jax.profiler.stop_trace()


def nonfinite_update(metrics: Mapping[str, Any], step: int, policy: str) -> bool:
  """Whether update `step` was rejected as non-finite (the update step keeps the old state); with `policy`
  'stop' a rejected update raises NonFiniteError naming the non-finite loss terms."""
  if not int(metrics["nonfinite"]):
    return False
  if policy == "stop":
    raise NonFiniteError(
      f"non-finite loss or gradient at step {step}: {_nonfinite_terms(metrics)}; "
      "the update was rejected (set train.nonfinite='skip' to skip and count instead)"
    )
  return True


class TrainingLog:
  """The training metrics: clu averages over each `log_every` steps (and the last step) written with the
  throughput and the count of skipped non-finite updates; the progress bar advanced in between."""

  def __init__(self, writer: MetricWriter, progress: Progress, log_every: int, total_steps: int):
    self.writer, self.progress = writer, progress
    self.log_every, self.total_steps = log_every, total_steps
    self.averages, self.skipped = IntervalAverages(), 0

  def record(self, step: int, metrics: Mapping[str, Any], skipped: bool) -> None:
    """Adds update `step`'s metrics (`skipped`: the update was rejected) and writes the interval when due."""
    self.skipped += skipped
    self.averages.add(metrics)
    if step % self.log_every == 0 or step == self.total_steps:
      scalars = self.averages.pop()
      scalars.update(self.progress.update(step, scalars))
      scalars["train/skipped_nonfinite"] = self.skipped
      self.writer.write_scalars(step, scalars)
    else:
      self.progress.update(step)


def run_evaluations(
  trainer: "Trainer", evaluators: Sequence[Evaluator], writer: MetricWriter, step: int
) -> dict[str, dict[str, float]]:
  """Runs `evaluators` (none: nothing) on the current parameters and writes their metrics as `eval/<name>/<key>`."""
  if not evaluators:
    return {}
  results = trainer.evaluate(evaluators, step)
  writer.write_scalars(step, {f"eval/{n}/{k}": v for n, m in results.items() for k, v in m.items()})
  return results


def checkpoint_due(step: int, cfg: ml_collections.ConfigDict, stopping: bool) -> bool:
  """Every `checkpoint_every` steps, at the last step, and when a stop was requested."""
  return step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping


def training_update(
  config: ml_collections.ConfigDict, *, model: Any, tx: Any, mesh: Any, shardings: Any, data_axes: Sequence[str]
):
  """The jitted update that a run of `config` trains with: `make_train_step` with the config's objective,
  learning-rate schedule, accumulation steps and trainable patterns. `lmstruct plan` compiles this same update."""
  optimizer = resolved_optimizer(config)
  return make_train_step(
    model,
    tx,
    objective=ObjectiveConfig.from_dict(config.objective),
    mesh=mesh,
    state_shardings=shardings,
    learning_rate=learning_rate_schedule(optimizer),
    data_axes=data_axes,
    accumulation_steps=config.train.accumulation_steps,
    trainable=optimizer["trainable"],
  )


class Trainer:
  """Everything one two-tower run needs, built once from the config. The loop asks a trainer for its state,
  `train_batches`, `train_step`, `evaluators` and `evaluate`; other model families subclass it (`TRAINERS`)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    validate_config(config)
    self.config = config
    self.workdir = paths.absolute(workdir)
    self.mesh = make_mesh(config.mesh.shape.to_dict())
    self.data_axes = (self.mesh.axis_names[0],)
    self.build()

  @functools.cached_property
  def manager(self) -> ocp.CheckpointManager:
    """The run's checkpoint manager, created on first use (it creates `<workdir>/checkpoints`)."""
    cfg = self.config.train
    return checkpoint.make_manager(self.workdir / "checkpoints", cfg.keep_checkpoints, cfg.best_metric, cfg.best_mode)

  def build(self) -> None:
    """The model, optimizer, tokenizer and sharded state (`state`, `shardings`) of a two-tower run."""
    config = self.config
    self.model_config = config.model.to_dict()
    self.model = build_model(self.model_config)
    self.objective = ObjectiveConfig.from_dict(config.objective)
    self.optimizer_config = resolved_optimizer(config)
    self.tx = make_optimizer(self.optimizer_config)
    self.image_shape, self.context_length = input_shapes(self.model_config)
    tokenizer_args = {"path": config.data.tokenizer_path} if config.data.tokenizer_path else {}
    self.tokenize = get_tokenizer(config.data.tokenizer, context_length=self.context_length, **tokenizer_args)
    self.state, self.shardings = init_train_state(
      self.model,
      self.tx,
      image_shape=self.image_shape,
      context_length=self.context_length,
      mesh=self.mesh,
      rules=sharding_rules(config.sharding.rules),
      seed=config.seed,
      data_axes=self.data_axes,
    )
    if config.init.pretrained or config.init.towers:
      self._load_pretrained()

  def _load_pretrained(self) -> None:
    """Overwrites the fresh initialisation with pretrained weights: a converted checkpoint (`init.pretrained`,
    from `lmstruct convert openclip`) and/or named pretrained towers (`init.towers`). Parameters the weights do
    not cover (e.g. the independent heads) keep their initialisation."""
    from lmstruct.pretrained import export, towers

    pretrained: dict[str, Any] = {}
    if self.config.init.pretrained:
      saved_config, pretrained = export.load_pretrained(self.config.init.pretrained)
      export.check_architecture(saved_config, self.model_config)
    if self.config.init.towers:
      loaded = towers.load_towers(list(self.config.init.towers))
      pretrained = {kind: {**pretrained.get(kind, {}), **loaded.get(kind, {})} for kind in {*pretrained, *loaded}}
    initial = jax.device_get({"params": self.state.params, "batch_stats": self.state.batch_stats})
    merged, fresh = export.merge_pretrained(initial, pretrained)
    self.state = self.state.replace(
      params=jax.device_put(merged["params"], self.shardings.params),
      batch_stats=jax.device_put(merged.get("batch_stats", {}), self.shardings.batch_stats),
    )
    logging.info("initialised from pretrained weights; freshly initialised: %s", fresh)

  def restore_latest(self) -> dict[str, Any] | None:
    """Restores the newest checkpoint into `self.state`; returns its data-iterator state (None: fresh run)."""
    step = self.manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.state)
    self.state, data_state = checkpoint.restore(self.manager, step, abstract, self.shardings)
    logging.info("resumed from %s at step %d", self.manager.directory, step)
    return data_state

  def save(self, data_state: Mapping[str, Any], last_eval: Mapping[str, Mapping[str, float]]) -> None:
    """Starts saving a checkpoint of the state, the data-iterator state and the config, ranked by
    `train.best_metric` when the last evaluation reported it."""
    flat = {f"{n}/{k}": v for n, m in last_eval.items() for k, v in m.items()}
    checkpoint.save(
      self.manager,
      self.state,
      data_state,
      self.config.to_dict(),
      flat if self.config.train.best_metric in flat else None,
    )

  @functools.cached_property
  def train_source(self) -> Any:
    """The training data source (`data.train`), opened on first use."""
    return sources.build_source(self.config.data.train.to_dict(), self.config.data.data_dir, where="data.train")

  def train_batches(self) -> pipeline.TrainBatches:
    """The training input: two views of image and caption, global batches sharded over the data axes."""
    config = self.config
    return pipeline.train_pipeline(
      self.train_source,
      tokenize=self.tokenize,
      global_batch_size=config.data.global_batch_size,
      seed=config.seed,
      image_size=self.image_shape[0],
      augment_config=config.data.augment.to_dict() or None,
      eda_config=config.data.eda.to_dict() or None,
      mesh=self.mesh,
      data_axes=self.data_axes,
      worker_count=config.data.worker_count,
      read_threads=config.data.read_threads,
      caption_choice=config.data.caption_choice,
    )

  def train_step(self):
    """The jitted update (state, batch) → (state, metrics) of this run (`training_update`)."""
    return training_update(
      self.config, model=self.model, tx=self.tx, mesh=self.mesh, shardings=self.shardings, data_axes=self.data_axes
    )

  def evaluators(self) -> list:
    return self.registry_evaluators(self.config.evals.to_dict())

  def registry_evaluators(self, specs: Mapping[str, Any]) -> list:
    """The evaluators of `specs` (name → config, `train.evaluation.build_evaluators`) on this run's data
    directory, tokenizer, image size, mesh, augmentation and seed."""
    return build_evaluators(
      specs,
      data_dir=self.config.data.data_dir,
      batch_size=self.config.data.eval_batch_size,
      image_size=self.image_shape[0],
      tokenize=self.tokenize,
      mesh=self.mesh,
      augment_config=self.config.data.augment.to_dict(),
      seed=self.config.seed,
    )

  def encoders(self):
    variables = {"params": self.state.params}
    if self.state.batch_stats:
      variables["batch_stats"] = self.state.batch_stats
    return make_encoders(self.model, variables, self.mesh)

  def evaluate(self, evaluators: Sequence[Evaluator], step: int) -> dict[str, dict[str, float]]:
    """Runs `evaluators` on the current parameters."""
    return run_evaluators(evaluators, *self.encoders(), step=step, workdir=self.workdir, only_due=False)


#: Trainer of each `task` (a model family), as 'module:class' so that a family is imported only when used.
TRAINERS: dict[str, str] = {"clip": "lmstruct.train.loop:Trainer", "albef": "lmstruct.train.albef_trainer:AlbefTrainer"}


def make_trainer(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Trainer:
  """The trainer of `config.task` (`config.TASKS`, each a key of TRAINERS) for this run."""
  validate_config(config)
  module, name = TRAINERS[config.task].split(":")
  return getattr(importlib.import_module(module), name)(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, dict[str, float]]:
  """Trains `config.train.steps` updates (resuming from the workdir's latest checkpoint), evaluating every
  evaluator at its interval and once at the end; returns the final evaluation results. A run that already finished
  (`finished_step`) is left as it is and its recorded results are returned."""
  cfg = config.train
  done = finished_step(workdir, cfg.steps)
  if done is not None:
    logging.info("%s already finished step %d of %d; nothing to do", workdir, done, cfg.steps)
    return json.loads((paths.as_path(workdir) / "results.json").read_text())["results"]
  trainer = make_trainer(config, workdir)
  trainer.train_source  # opened before anything is written: a run whose training data cannot be read leaves none
  evaluators = trainer.evaluators()
  is_main = jax.process_index() == 0
  writer = MetricWriter(trainer.workdir, enabled=is_main)
  writer.write_config(config.to_dict())
  batches = trainer.train_batches()
  data_state = trainer.restore_latest()
  if data_state is not None:
    batches.set_state(data_state)
  step_fn = trainer.train_step()
  step = int(jax.device_get(trainer.state.step))
  progress = Progress(cfg.steps, step, config.data.global_batch_size, cfg.progress_bar)
  log = TrainingLog(writer, progress, cfg.log_every, cfg.steps)
  profiler = Profiler(trainer.workdir / "profile", cfg.profile_start_step, cfg.profile_steps)
  last_eval: dict[str, dict[str, float]] = {}
  with StopRequest() as stop:
    while step < cfg.steps:
      profiler.before_update(step)
      trainer.state, metrics = step_fn(trainer.state, next(batches))
      step += 1
      profiler.after_update(step)
      metrics = jax.device_get(metrics)
      log.record(step, metrics, skipped=nonfinite_update(metrics, step, cfg.nonfinite))
      last_eval = run_evaluations(trainer, [e for e in evaluators if e.due(step)], writer, step) or last_eval
      if checkpoint_due(step, cfg, stopping=stop.signal is not None):
        trainer.save(batches.global_state(), last_eval)
      if stop.signal is not None:
        break
  trainer.manager.wait_until_finished()
  progress.close()
  batches.close()
  results: dict[str, dict[str, float]] = {}
  if stop.signal is None:
    results = run_evaluations(trainer, evaluators, writer, step)
    if is_main:
      write_results(trainer.workdir, step, results)
  writer.close()
  trainer.manager.close()
  return results


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, step: int | None = None
) -> dict[str, dict[str, float]]:
  """Runs every evaluator of `config` on checkpoint `step` (default: the latest) of `workdir`."""
  step = checkpoint.saved_step(paths.as_path(workdir) / "checkpoints", step)
  trainer = make_trainer(config, workdir)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainer.state)
  trainer.state, _ = checkpoint.restore(trainer.manager, step, abstract, trainer.shardings)
  results = trainer.evaluate(trainer.evaluators(), step)
  if jax.process_index() == 0:
    tables.write_run_tables(trainer.workdir, results)
  trainer.manager.close()
  return results
