"""The training driver: config → sharded state → pipeline → jitted updates, with logging, evaluation,
checkpointing, resumption, preemption handling and profiling. `train_and_evaluate` is what `lmstruct train` runs.
"""
import difflib
import functools
import importlib
import json
import logging
import math
import pathlib
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from lmstruct import paths
from lmstruct.config import validate_config
from lmstruct.data import pipeline, sources
from lmstruct.data.tokenize import get_tokenizer
from lmstruct.losses.objective import compute_objective, validate_objective_config
from lmstruct.models import build_model, input_shapes
from lmstruct.train import checkpoint
from lmstruct.train.evaluation import build_evaluators, make_encoders
from lmstruct.train.metrics import IntervalAverages, MetricWriter, Progress
from lmstruct.train.optimizer import learning_rate_schedule, make_optimizer
from lmstruct.train.sharding import DEFAULT_RULES, FSDP_RULES, make_mesh
from lmstruct.train.step import init_train_state, make_train_step
from lmstruct.eval.registry import run_evaluators

NAMED_RULES = {"replicate": DEFAULT_RULES, "fsdp": FSDP_RULES}


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
    logging.warning("received %s: finishing this step, saving a checkpoint and exiting",
                    signal.Signals(signum).name)
    self.signal = signum

  def __exit__(self, *exc: Any) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def sharding_rules(rules: Any) -> tuple:
  """'replicate' | 'fsdp' | a list of (regex, spec) pairs."""
  if isinstance(rules, str):
    if rules not in NAMED_RULES:
      raise ValueError(f"unknown sharding.rules {rules!r}; valid names: {sorted(NAMED_RULES)} or a list of "
                       "(regex, spec) pairs")
    return NAMED_RULES[rules]
  return tuple((pattern, tuple(spec) if isinstance(spec, list) else spec) for pattern, spec in rules)


def objective_function(objective: Mapping[str, Any], mesh: Any, data_axes: tuple[str, ...]):
  """The objective implementation: 'global' (GSPMD over the whole batch) or 'ring' (lmstruct.losses.ring);
  'auto' takes the ring when the data axis spans more than one device."""
  impl = objective.get("impl", "auto")
  if impl not in ("auto", "global", "ring"):
    raise ValueError(f"objective.impl must be 'auto', 'global' or 'ring', got {impl!r}")
  devices = math.prod(mesh.shape[a] for a in data_axes)
  if impl == "global" or (impl == "auto" and devices == 1):
    return compute_objective
  from lmstruct.losses.ring import compute_objective_ring
  return functools.partial(compute_objective_ring, mesh=mesh, data_axis=data_axes[0])


def objective_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The objective section as a plain dict without the implementation switch (which the losses do not read)."""
  objective = config.objective.to_dict()
  objective.pop("impl", None)
  validate_objective_config(objective)
  return objective


def _resolved_optimizer(config: ml_collections.ConfigDict) -> dict[str, Any]:
  optimizer = config.optimizer.to_dict()
  optimizer["total_steps"] = optimizer["total_steps"] or config.train.steps
  optimizer["trainable"] = list(optimizer.get("trainable") or [])
  return optimizer


def _nonfinite_terms(metrics: Mapping[str, Any]) -> list[str]:
  bad = [k for k, v in metrics.items() if k.startswith("loss/") and not np.isfinite(v)]
  return bad or ["gradient"]


def results_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A markdown table: one row per evaluator metric."""
  lines = ["| evaluator | metric | value |", "|---|---|---|"]
  for name, metrics in results.items():
    for key, value in metrics.items():
      lines.append(f"| {name} | {key} | {value:.4f} |")
  return "\n".join(lines)


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
    self.manager = checkpoint.make_manager(self.workdir / "checkpoints", config.train.keep_checkpoints,
                                           config.train.best_metric, config.train.best_mode)

  def build(self) -> None:
    """The model, optimizer, tokenizer and sharded state (`state`, `shardings`) of a two-tower run."""
    config = self.config
    self.model_config = config.model.to_dict()
    self.model = build_model(self.model_config)
    self.objective = objective_config(config)
    self.optimizer_config = _resolved_optimizer(config)
    self.tx = make_optimizer(self.optimizer_config)
    self.image_shape, self.context_length = input_shapes(self.model_config)
    tokenizer_args = {"path": config.data.tokenizer_path} if config.data.tokenizer_path else {}
    self.tokenize = get_tokenizer(config.data.tokenizer, context_length=self.context_length, **tokenizer_args)
    self.state, self.shardings = init_train_state(
        self.model, self.tx, self.image_shape, self.context_length, self.mesh, sharding_rules(config.sharding.rules),
        config.seed, self.data_axes)
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
    self.state = self.state.replace(params=jax.device_put(merged["params"], self.shardings.params),
                                    batch_stats=jax.device_put(merged.get("batch_stats", {}), self.shardings.batch_stats))
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

  def train_batches(self) -> pipeline.TrainBatches:
    """The training input: two views of image and caption, global batches sharded over the data axes."""
    config = self.config
    source = sources.build_source(config.data.train.to_dict(), config.data.data_dir, where="data.train")
    return pipeline.train_pipeline(
        source, tokenize=self.tokenize, global_batch_size=config.data.global_batch_size, seed=config.seed,
        image_size=self.image_shape[0], augment_config=config.data.augment.to_dict() or None,
        eda_config=config.data.eda.to_dict() or None, mesh=self.mesh, data_axes=self.data_axes,
        worker_count=config.data.worker_count, read_threads=config.data.read_threads,
        caption_choice=config.data.caption_choice)

  def train_step(self):
    """The jitted update (state, batch) → (state, metrics)."""
    config = self.config
    return make_train_step(self.model, self.tx, self.objective, self.mesh, self.shardings,
                           learning_rate_schedule(self.optimizer_config), self.data_axes,
                           objective_function(config.objective, self.mesh, self.data_axes),
                           config.train.accumulation_steps, self.optimizer_config["trainable"])

  def evaluators(self) -> list:
    return build_evaluators(self.config.evals.to_dict(), data_dir=self.config.data.data_dir,
                            batch_size=self.config.data.eval_batch_size, image_size=self.image_shape[0],
                            tokenize=self.tokenize, mesh=self.mesh)

  def encoders(self):
    variables = {"params": self.state.params}
    if self.state.batch_stats:
      variables["batch_stats"] = self.state.batch_stats
    return make_encoders(self.model, variables, self.mesh)

  def evaluate(self, evaluators: list, step: int, only_due: bool = True) -> dict[str, dict[str, float]]:
    """Runs the evaluators (only those due at `step` with `only_due`) on the current parameters."""
    return run_evaluators(evaluators, *self.encoders(), step=step, workdir=self.workdir, only_due=only_due)


#: Trainer of each `task` (a model family), as 'module:class' so that a family is imported only when used.
TRAINERS: dict[str, str] = {"clip": "lmstruct.train.loop:Trainer", "albef": "lmstruct.train.albef_trainer:AlbefTrainer"}


def make_trainer(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Trainer:
  """The trainer of `config.task` (a key of TRAINERS) for this run."""
  task = config.get("task", "clip")
  if task not in TRAINERS:
    close = difflib.get_close_matches(str(task), list(TRAINERS), n=1)
    raise ValueError(f"unknown config key value task={task!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                     f"valid choices: {sorted(TRAINERS)}")
  module, name = TRAINERS[task].split(":")
  return getattr(importlib.import_module(module), name)(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, dict[str, float]]:
  """Trains `config.train.steps` updates (resuming from the workdir's latest checkpoint), evaluating every
  evaluator at its interval and once at the end; returns the final evaluation results."""
  trainer = make_trainer(config, workdir)
  cfg = config.train
  is_main = jax.process_index() == 0
  writer = MetricWriter(trainer.workdir, enabled=is_main)
  writer.write_config(config.to_dict())
  batches = trainer.train_batches()
  data_state = trainer.restore_latest()
  if data_state is not None:
    batches.set_state(data_state)
  step_fn = trainer.train_step()
  evaluators = trainer.evaluators()
  step = int(jax.device_get(trainer.state.step))
  progress = Progress(cfg.steps, step, config.data.global_batch_size, cfg.progress_bar)
  averages, skipped = IntervalAverages(), 0
  profile_stop = cfg.profile_start_step + cfg.profile_steps if cfg.profile_start_step >= 0 else -1
  last_eval: dict[str, dict[str, float]] = {}
  with StopRequest() as stop:
    while step < cfg.steps:
      if step == cfg.profile_start_step:
        jax.profiler.start_trace(str(trainer.workdir / "profile"))
      batch = next(batches)
      trainer.state, metrics = step_fn(trainer.state, batch)
      step += 1
      if step == profile_stop:
        jax.profiler.stop_trace()
      metrics = jax.device_get(metrics)
      if int(metrics["nonfinite"]):
        if cfg.nonfinite == "stop":
          raise NonFiniteError(f"non-finite loss or gradient at step {step}: {_nonfinite_terms(metrics)}; "
                               "the update was rejected (set train.nonfinite='skip' to skip and count instead)")
        skipped += 1
      averages.add(metrics)
      if step % cfg.log_every == 0 or step == cfg.steps:
        scalars = averages.pop()
        scalars.update(progress.update(step, scalars))
        scalars["train/skipped_nonfinite"] = skipped
        writer.write_scalars(step, scalars)
      else:
        progress.update(step)
      due = [e for e in evaluators if e.due(step)]
      if due:
        last_eval = trainer.evaluate(due, step)
        writer.write_scalars(step, {f"eval/{n}/{k}": v for n, m in last_eval.items() for k, v in m.items()})
      if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop.signal is not None:
        flat = {f"{n}/{k}": v for n, m in last_eval.items() for k, v in m.items()}
        checkpoint.save(trainer.manager, trainer.state, batches.global_state(), config.to_dict(),
                        flat if cfg.best_metric in flat else None)
      if stop.signal is not None:
        break
  trainer.manager.wait_until_finished()
  progress.close()
  batches.close()
  results: dict[str, dict[str, float]] = {}
  if stop.signal is None and evaluators:
    results = trainer.evaluate(evaluators, step, only_due=False)
    writer.write_scalars(step, {f"eval/{n}/{k}": v for n, m in results.items() for k, v in m.items()})
    if is_main:
      (trainer.workdir / "results.json").write_text(json.dumps({"step": step, "results": results}, indent=2))
      (trainer.workdir / "results.md").write_text(results_table(results) + "\n")
  writer.close()
  trainer.manager.close()
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                        step: int | None = None) -> dict[str, dict[str, float]]:
  """Runs every evaluator of `config` on checkpoint `step` (default: the latest) of `workdir`."""
  trainer = make_trainer(config, workdir)
  step = trainer.manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {trainer.workdir / 'checkpoints'}")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainer.state)
  trainer.state, _ = checkpoint.restore(trainer.manager, step, abstract, trainer.shardings)
  results = trainer.evaluate(trainer.evaluators(), step, only_due=False)
  trainer.manager.close()
  return results
