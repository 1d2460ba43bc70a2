"""The ALBEF trainer (config `task = 'albef'`): what the training loop needs for ALBEF pre-training and its
downstream tasks (`albef.task`: pretrain, vqa, nlvr, ve), built from the config.

The loop (`train/loop.py`) is the CLIP family's: the same mesh, sharding rules, optimizer, checkpoints, metrics,
resumption, preemption handling and evaluator registry. This trainer supplies the model (`models/albef.py`), the
state (momentum encoders and queues in `batch_stats`, the queues replicated), the batches
(`data/vl_pipeline.py`), the update (`train/albef.py` through `train/step.make_update`), the initial weights
(`pretrained/albef.py`) and the evaluators: the vision-language kinds (`itm_retrieval`, `vqa`, `nlvr`, `ve`) get
ALBEF's inference functions; every other kind (zeroshot, retrieval, structure, …) gets the unimodal encoders of the
pre-training model (zv, zt).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmstruct.config import check_objective_fits_model
from lmstruct.data import pipeline, sources, streaming
from lmstruct.data import vl_pipeline as vl
from lmstruct.data.tokenize import get_tokenizer
from lmstruct.eval.registry import get_evaluator, run_evaluators
from lmstruct.eval.vl_tasks import VL_EVALUATORS
from lmstruct.losses.objective import ObjectiveConfig
from lmstruct.models.albef import albef_input_shapes, build_albef, resolve_albef_config
from lmstruct.pretrained import albef as albef_weights
from lmstruct.pretrained import export
from lmstruct.pretrained.bert import minilm_tokenizer_path
from lmstruct.train import albef
from lmstruct.train.loop import Trainer, resolved_optimizer, sharding_rules
from lmstruct.train.optimizer import learning_rate_schedule, make_optimizer
from lmstruct.train.step import init_sharded_state, loss_gradients, make_update, objective_function, state_initializer

VL_KINDS = {cls.kind for cls in VL_EVALUATORS}
#: The vision-language task each evaluator kind reads its rows as.
_ROW_TASKS = {"vqa": "vqa", "nlvr": "nlvr", "ve": "ve"}


class AlbefTrainer(Trainer):
  """Everything one ALBEF run needs (module docstring)."""

  def build(self) -> None:
    config = self.config
    self.options = albef.albef_options(config.albef.to_dict())
    task = self.options.task
    self.model_config = config.model.to_dict()
    resolved = resolve_albef_config(self.model_config)
    self.text_layers = resolved["text"]["layers"] - resolved["fusion_layers"]
    self.fusion_layers = resolved["fusion_layers"]
    self.model = build_albef(self.model_config, task)
    self.image_shape, self.context_length = albef_input_shapes(self.model_config)
    if config.data.eda.to_dict():
      raise ValueError(
        "data.eda is the two-tower family's text augmentation; ALBEF's training rows take none (leave data.eda empty)"
      )
    if config.train.accumulation_steps != 1:
      raise ValueError(
        f"train.accumulation_steps={config.train.accumulation_steps}: accumulation is the two-tower update's "
        "(feature caching); ALBEF's ITM and MLM losses read the fusion layers, not cached features, so it trains on "
        "whole batches (set train.accumulation_steps=1 and size data.global_batch_size to memory)"
      )
    if config.data.tokenizer != "wordpiece":
      raise ValueError(
        f"data.tokenizer={config.data.tokenizer!r}: ALBEF needs 'wordpiece' (a BERT vocabulary with [MASK])"
      )
    tokenizer_path = config.data.tokenizer_path or str(minilm_tokenizer_path())
    self.tokenize = get_tokenizer("wordpiece", path=tokenizer_path, context_length=self.context_length)
    self.special = albef.SpecialTokens.of(self.tokenize, resolved["text"]["vocab_size"])
    self.objective = ObjectiveConfig.from_dict(config.objective)
    check_objective_fits_model(self.objective, resolved["independent_heads"])
    if task != "pretrain" and self.objective.regularizers:
      raise ValueError(
        f"objective.weights {dict(self.objective.regularizers)} regularise pre-training; albef.task is {task!r}"
      )
    if task == "pretrain":
      albef.check_queue_size(self.options.queue_size, config.data.global_batch_size)
    self.optimizer_config = resolved_optimizer(config)
    self.tx = make_optimizer(self.optimizer_config)
    self.ramp_examples = self._ramp_examples()
    self.answer_tokens = None
    if task == "vqa":
      self.answer_list = vl.load_answer_list(self.options.answer_list, self.train_source)
      self.answer_tokenize = get_tokenizer("wordpiece", path=tokenizer_path, context_length=self.options.answer_length)
      self.answer_tokens = np.asarray(self.answer_tokenize(list(self.answer_list.answers)), np.int32)
    rules = (*albef.QUEUE_RULES, *sharding_rules(config.sharding.rules))
    self.state, self.shardings = init_sharded_state(
      state_initializer(self._init_variables, self.tx),
      mesh=self.mesh,
      rules=rules,
      seed=config.seed,
      data_axes=self.data_axes,
    )
    if any(self.options.init.values()):
      self._load_initial_weights()
    self._functions: albef.AlbefFunctions | None = None

  def _ramp_examples(self) -> int:
    """Examples over which α ramps up: albef.alpha_ramp_examples, or one epoch of the training source."""
    if self.options.task != "pretrain" or self.options.alpha_ramp_examples > 0:
      return self.options.alpha_ramp_examples
    if isinstance(self.train_source, streaming.WebDatasetStream):
      raise ValueError(
        "a streaming training source has no length: set albef.alpha_ramp_examples (the examples of one epoch)"
      )
    return len(self.train_source)

  def _dummy_inputs(self) -> tuple:
    images = jnp.zeros((1, *self.image_shape), jnp.float32)
    tokens = jnp.zeros((1, self.context_length), jnp.int32)
    task = self.options.task
    if task == "pretrain":
      return images, tokens
    if task == "vqa":
      return images, tokens, jnp.zeros((1, self.options.answer_length), jnp.int32)
    return (images, images) if task == "nlvr" else (images,), tokens

  def _init_variables(self, rng: jax.Array) -> dict[str, Any]:
    if self.options.task == "pretrain":
      return albef.init_pretrain_variables(self.model, rng, self._dummy_inputs(), self.options.queue_size)
    return {"params": self.model.init(rng, *self._dummy_inputs())["params"]}

  def _load_initial_weights(self) -> None:
    """albef.init: BERT / ViT checkpoints and a pre-training run, in the pre-training layout, moved into the task's
    (`pretrained.albef.task_layout`); parameters none of them holds keep their initialisation."""
    init = self.options.init
    pretrain_model = build_albef(self.model_config, "pretrain")
    expected = jax.eval_shape(
      pretrain_model.init,
      jax.random.key(0),
      jnp.zeros((1, *self.image_shape)),
      jnp.zeros((1, self.context_length), jnp.int32),
    )["params"]
    partial: dict[str, Any] = {}
    if init["bert"]:
      partial["bert"] = albef_weights.bert_params(init["bert"], expected["bert"])
    if init["vit"]:
      activation = resolve_albef_config(self.model_config)["image"].get("activation", "gelu")
      partial["visual"] = albef_weights.vit_params(init["vit"], expected["visual"], activation)
    if init["pretrain"]:
      run = albef_weights.pretrain_run_params(init["pretrain"], self.model_config)
      visual = dict(run["visual"])
      visual["positional_embedding"] = albef_weights.resize_positional_embedding(
        visual["positional_embedding"], expected["visual"]["positional_embedding"].shape[0]
      )
      partial = {**partial, **run, "visual": visual}
    weights = albef_weights.task_layout(partial, self.options.task, self.text_layers, self.fusion_layers)
    merged, fresh = export.merge_pretrained(jax.device_get(self.state.params), weights)
    params = jax.device_put(merged, self.shardings.params)
    batch_stats = self.state.batch_stats
    if self.options.task == "pretrain":
      batch_stats = {
        **batch_stats,
        "momentum": jax.device_put(albef.momentum_part(merged), self.shardings.batch_stats["momentum"]),
      }
    self.state = self.state.replace(params=params, batch_stats=batch_stats)
    logging.info("ALBEF initialised from %s; freshly initialised: %s", {k: v for k, v in init.items() if v}, fresh)

  # --- training -----------------------------------------------------------------------------------------------

  def _pipeline(self, source: Any, task: str) -> pipeline.TrainBatches:
    config = self.config
    if not isinstance(source, streaming.WebDatasetStream):
      source = vl.MissingImagesCounted(source)
    transform = vl.VLTransform(
      task=task,
      tokenize=self.tokenize,
      image_size=self.image_shape[0],
      augmentation=pipeline.view_augmentation(config.data.augment.to_dict() or None),
      answer_tokenize=getattr(self, "answer_tokenize", None),
      answer_slots=self.options.answer_slots,
      source=source if task == "ta" else None,
    )
    return pipeline.transform_pipeline(
      source,
      transform,
      global_batch_size=config.data.global_batch_size,
      seed=config.seed,
      mesh=self.mesh,
      data_axes=self.data_axes,
      worker_count=config.data.worker_count,
      read_threads=config.data.read_threads,
    )

  def train_batches(self) -> Any:
    """The task's training batches; NLVR² with albef.ta_steps > 0 first gives that many text-assignment batches."""
    task = self.options.task
    if task != "nlvr" or self.options.ta_steps == 0:
      return self._pipeline(self.train_source, task)
    if not self.options.ta_data:
      raise ValueError("albef.ta_steps > 0 needs albef.ta_data: a caption source for the text-assignment pre-step")
    ta_source = sources.build_source(self.options.ta_data, self.config.data.data_dir, where="albef.ta_data")
    return vl.PhasedBatches(
      [
        (self.options.ta_steps, lambda: self._pipeline(ta_source, "ta")),
        (0, lambda: self._pipeline(self.train_source, "nlvr")),
      ]
    )

  def train_step(self):
    task = self.options.task
    if task == "pretrain":
      loss_fn = albef.make_pretrain_loss(
        self.model,
        self.options,
        self.special,
        ramp_examples=self.ramp_examples,
        objective=self.objective,
        objective_fn=objective_function(self.objective, self.mesh, self.data_axes),
      )
    elif task == "vqa":
      loss_fn = albef.make_vqa_loss(self.model, self.special.pad)
    else:
      loss_fn = albef.make_classification_loss(self.model, task)
    return make_update(
      loss_gradients(loss_fn),
      self.tx,
      mesh=self.mesh,
      state_shardings=self.shardings,
      learning_rate=learning_rate_schedule(self.optimizer_config),
      data_axes=self.data_axes,
      project_params=albef.project_temperature,
    )

  # --- evaluation ---------------------------------------------------------------------------------------------

  def functions(self) -> albef.AlbefFunctions:
    """The model's inference functions bound to the current parameters (the evaluators' `model`)."""
    if self._functions is None:
      self._functions = albef.AlbefFunctions(self.model, self.mesh, self.answer_tokens, self.options.answer_k)
    return self._functions.bind(self.state.params)

  def _vl_evaluator(self, name: str, cfg: dict[str, Any]) -> Any:
    kind = cfg.pop("kind")
    if "data" not in cfg:
      raise ValueError(f"evals.{name} ({kind}) needs 'data': a data-source config")
    source = sources.build_source(cfg.pop("data"), self.config.data.data_dir, where=f"evals.{name}.data")
    batch_size = self.config.data.eval_batch_size
    size = self.image_shape[0]
    if kind == "itm_retrieval":
      if self.options.task != "pretrain":
        raise ValueError(f"evals.{name}: itm_retrieval evaluates the pre-training model (albef.task='pretrain')")
      captions = int(cfg.pop("captions", 1))

      def batches():
        return itertools.chain.from_iterable(
          pipeline.eval_pipeline(
            source, global_batch_size=batch_size, image_size=size, tokenize=self.tokenize, caption_index=c
          )
          for c in range(captions)
        )
    else:
      if self.options.task != kind:
        raise ValueError(f"evals.{name}: a {kind!r} evaluator needs albef.task={kind!r}, not {self.options.task!r}")
      row = vl.VLEvalRow(_ROW_TASKS[kind], self.tokenize, size, getattr(self, "answer_list", None))
      wrapped = vl.MissingImagesCounted(source)

      def batches():
        return pipeline.eval_pipeline(
          wrapped, global_batch_size=batch_size, image_size=size, row_fn=row, template=row.template(self.context_length)
        )

    return get_evaluator(kind, {"name": name, "batches": batches, "model": self.functions, **cfg})

  def evaluators(self) -> list:
    evals = self.config.evals.to_dict()
    fusion = {name: dict(cfg) for name, cfg in evals.items() if dict(cfg).get("kind") in VL_KINDS}
    unimodal = {name: cfg for name, cfg in evals.items() if name not in fusion}
    if unimodal and self.options.task != "pretrain":
      raise ValueError(
        f"evals {sorted(unimodal)} read unimodal features, which only the pre-training model has; "
        f"valid kinds for albef.task={self.options.task!r}: {sorted(VL_KINDS)}"
      )
    built = [self._vl_evaluator(name, cfg) for name, cfg in fusion.items()]
    if unimodal:
      built += self.registry_evaluators(unimodal)
    return built

  def encoders(self):
    """(encode_image, encode_text) of the unimodal features zv, zt (pre-training model)."""
    functions = self.functions()
    return functions.encode_image, functions.encode_text

  def evaluate(self, evaluators: list, step: int) -> dict[str, dict[str, float]]:
    if self.options.task == "pretrain":
      encode_image, encode_text = self.encoders()
    else:
      self.functions()
      encode_image = encode_text = _no_unimodal_encoder
    return run_evaluators(evaluators, encode_image, encode_text, step=step, workdir=self.workdir, only_due=False)


def _no_unimodal_encoder(inputs: Any) -> Mapping[str, Any]:
  raise ValueError("a downstream ALBEF model has no unimodal encoder; only the vision-language evaluators apply")
