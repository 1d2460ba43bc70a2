"""ALBEF training inside the one jitted, sharded update of `train/step.py` (`make_update`, `loss_gradients`).

The state is a `TrainState` whose `batch_stats` carries, for pre-training,

    momentum        the EMA copy of every parameter but the ITM head and τ (visual, bert with its fusion layers
                    and MLM head, the projections): θ_m ← m·θ_m + (1 − m)·θ, m = 0.995, before the momentum forward
    queue           {'image', 'text': unit feature queues [Q, D] (replicated), 'ptr': the next slot}; the global
                    batch's momentum features are written at ptr, ptr ← (ptr + B) mod Q (Q divisible by B)
    examples_seen   how many examples the queue took so far (capped), for α's ramp over the first epoch

and the pre-training loss of one (global) batch is

    L = L_itc-md + L_itm + L_mlm-md + Σ_r λ_r·L_r,

with the paper's regularisers L_r (separation, bridge, geometric consistency, or any other regulariser of
`lmstruct.losses.registry`) on the unimodal [CLS] features zv, zt, the momentum features standing in for the
augmented views: zv_aug = zv_m, zt_aug = zt_m (and the independent heads' zv_ind, zt_ind with their momentum
copies), logit scale 1/τ. They are the `objective` config section with base 'none' (`ObjectiveConfig`), computed
by the implementation `objective.impl` selects (`train.step.objective_function`: global or ring), so they see the
global batch as in the CLIP update. A rejected (non-finite) update keeps the momentum encoders and queues as they
were, as it keeps the parameters.

Downstream updates (no momentum model): VQA's answer-weighted LM loss, NLVR²'s 2-way cross-entropy (and on
text-assignment rows the 3-way one), SNLI-VE's 3-way cross-entropy. `AlbefFunctions` holds the jitted inference
the evaluators call (encoders, ITM scores, VQA answer ranking, classification).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lmstruct.choices import did_you_mean, unknown_choice
from lmstruct.eval.vl_tasks import rank_answers
from lmstruct.losses import albef as albef_losses
from lmstruct.losses.common import l2_normalize
from lmstruct.losses.objective import ObjectiveConfig
from lmstruct.losses.term import Features
from lmstruct.models.albef import TASKS, TEMPERATURE_RANGE, Albef, AlbefClassifier, AlbefVqa
from lmstruct.train.sharding import batch_sharding
from lmstruct.train.step import ObjectiveFn

#: Parameters of the online model that the momentum model does not copy.
ONLINE_ONLY = ("itm_head", "temp")
#: Keys of the `albef` config section, with their defaults.
ALBEF_DEFAULTS: dict[str, Any] = {
  "task": "pretrain",
  "queue_size": 65536,
  "momentum": 0.995,
  "alpha": 0.4,
  "alpha_ramp_examples": 0,
  "mlm_probability": 0.15,
  "answer_list": "scenes",
  "answer_length": 8,
  "answer_slots": 1,
  "answer_k": 128,
  "ta_steps": 0,
  "ta_data": {},
  "init": {"pretrain": "", "bert": "", "vit": ""},
}
_INIT_KEYS = ("pretrain", "bert", "vit")


@dataclasses.dataclass(frozen=True)
class AlbefOptions:
  """The validated `albef` config section (see ALBEF_DEFAULTS; README 'ALBEF' says what each key means)."""

  task: str
  queue_size: int
  momentum: float
  alpha: float
  alpha_ramp_examples: int
  mlm_probability: float
  answer_list: str
  answer_length: int
  answer_slots: int
  answer_k: int
  ta_steps: int
  ta_data: dict[str, Any]
  init: dict[str, str]


def albef_options(section: Mapping[str, Any]) -> AlbefOptions:
  """The `albef` section with defaults filled in; unknown keys and tasks are one-line errors naming the key, the
  valid choices and the closest one."""
  section = dict(section)
  for key in section:
    if key not in ALBEF_DEFAULTS:
      raise ValueError(
        f"unknown config key albef.{key}{did_you_mean(key, ALBEF_DEFAULTS)}; valid keys: {sorted(ALBEF_DEFAULTS)}"
      )
  values = {**ALBEF_DEFAULTS, **section}
  if values["task"] not in TASKS:
    raise unknown_choice("albef.task", values["task"], TASKS)
  init = dict(values["init"])
  for key in init:
    if key not in _INIT_KEYS:
      raise ValueError(
        f"unknown config key albef.init.{key}{did_you_mean(key, _INIT_KEYS)}; valid keys: {list(_INIT_KEYS)}"
      )
  if not 0.0 <= float(values["momentum"]) < 1.0:
    raise ValueError(f"albef.momentum must lie in [0, 1), got {values['momentum']}")
  if not 0.0 <= float(values["alpha"]) <= 1.0:
    raise ValueError(f"albef.alpha must lie in [0, 1], got {values['alpha']}")
  if not 0.0 < float(values["mlm_probability"]) < 1.0:
    raise ValueError(f"albef.mlm_probability must lie in (0, 1), got {values['mlm_probability']}")
  for key in ("queue_size", "answer_length", "answer_slots", "answer_k"):
    if int(values[key]) < 1:
      raise ValueError(f"albef.{key} must be a positive integer, got {values[key]}")
  return AlbefOptions(
    task=values["task"],
    queue_size=int(values["queue_size"]),
    momentum=float(values["momentum"]),
    alpha=float(values["alpha"]),
    alpha_ramp_examples=int(values["alpha_ramp_examples"]),
    mlm_probability=float(values["mlm_probability"]),
    answer_list=str(values["answer_list"]),
    answer_length=int(values["answer_length"]),
    answer_slots=int(values["answer_slots"]),
    answer_k=int(values["answer_k"]),
    ta_steps=int(values["ta_steps"]),
    ta_data=dict(values["ta_data"]),
    init={key: str(init.get(key, "")) for key in _INIT_KEYS},
  )


def check_queue_size(queue_size: int, global_batch_size: int) -> None:
  """The queue takes whole global batches: Q must be a multiple of B (a config error naming both keys)."""
  if queue_size % global_batch_size:
    raise ValueError(
      f"albef.queue_size={queue_size} is not divisible by data.global_batch_size="
      f"{global_batch_size}: the queue takes whole global batches"
    )


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """The tokenizer's ids that MLM and answer decoding need, and its vocabulary size."""

  pad: int
  cls: int
  sep: int
  mask: int
  vocab_size: int

  @classmethod
  def of(cls, tokenizer: Any, model_vocab_size: int) -> SpecialTokens:
    """From a WordPiece tokenizer ([PAD] = 0, [CLS], [SEP], [MASK]); its vocabulary must fit the model's."""
    lookup = getattr(getattr(tokenizer, "tokenizer", None), "token_to_id", None)
    if lookup is None:
      raise ValueError(
        "ALBEF needs a BERT WordPiece tokenizer (data.tokenizer='wordpiece'): masked language "
        "modelling uses its [MASK] token"
      )
    ids = {name: lookup(f"[{name.upper()}]") for name in ("pad", "cls", "sep", "mask")}
    missing = [f"[{name.upper()}]" for name, value in ids.items() if value is None]
    if missing:
      raise ValueError(f"the tokenizer has no {missing} token; ALBEF needs a BERT WordPiece vocabulary")
    if tokenizer.vocab_size > model_vocab_size:
      raise ValueError(
        f"the tokenizer's vocabulary ({tokenizer.vocab_size}) is larger than model.text.vocab_size={model_vocab_size}"
      )
    return cls(vocab_size=model_vocab_size, **ids)


# ---------------------------------------------------------------------------------------------------------------
# Momentum encoders and queues.


def momentum_part(params: Mapping[str, Any]) -> dict[str, Any]:
  """The parameters the momentum model copies: all but ONLINE_ONLY."""
  return {name: value for name, value in params.items() if name not in ONLINE_ONLY}


def ema_update(momentum: Any, params: Any, m: float) -> Any:
  """θ_m ← m·θ_m + (1 − m)·θ, leaf by leaf."""
  return jax.tree.map(lambda mom, p: m * mom + (1.0 - m) * p, momentum, params)


def init_queue(rng: jax.Array, size: int, dim: int) -> dict[str, jax.Array]:
  """Queues of `size` random unit vectors [size, dim] (as ALBEF starts them) and ptr = 0."""
  image_rng, text_rng = jax.random.split(rng)
  return {
    "image": l2_normalize(jax.random.normal(image_rng, (size, dim))),
    "text": l2_normalize(jax.random.normal(text_rng, (size, dim))),
    "ptr": jnp.zeros((), jnp.int32),
  }


def enqueue(queue: Mapping[str, jax.Array], image: jax.Array, text: jax.Array) -> dict[str, jax.Array]:
  """Rows ptr … ptr + B − 1 of both queues ← the batch's features [B, D]; ptr ← (ptr + B) mod Q.

  Q is a multiple of B (`check_queue_size`), so a batch never straddles the end and the queue wraps around whole.
  On a mesh the (sharded) features of every device land in the (replicated) queues.
  """
  size, batch = queue["image"].shape[0], image.shape[0]
  start = (queue["ptr"], jnp.zeros((), jnp.int32))
  return {
    "image": jax.lax.dynamic_update_slice(queue["image"], image.astype(queue["image"].dtype), start),
    "text": jax.lax.dynamic_update_slice(queue["text"], text.astype(queue["text"].dtype), start),
    "ptr": (queue["ptr"] + batch) % size,
  }


def pretrain_carried(params: Mapping[str, Any], rng: jax.Array, queue_size: int, embed_dim: int) -> dict[str, Any]:
  """The initial `batch_stats` of pre-training: momentum = a copy of the parameters, random queues, nothing seen."""
  return {
    "momentum": jax.tree.map(jnp.array, momentum_part(params)),
    "queue": init_queue(rng, queue_size, embed_dim),
    "examples_seen": jnp.zeros((), jnp.int32),
  }


#: Sharding rule of the feature queues: every device holds (and enqueues into) the whole queue.
QUEUE_RULES: tuple[tuple[str, str], ...] = (("^batch_stats/queue/", "replicate"),)


def init_pretrain_variables(model: Any, rng: jax.Array, inputs: Sequence[jax.Array], queue_size: int) -> dict:
  """{'params': model.init(rng, *inputs)['params'], 'batch_stats': pretrain_carried(params, fold_in(rng, 1),
  queue_size, model.embed_dim)}: the initial variables of pre-training (`inputs`: a dummy image and token batch)."""
  params = model.init(rng, *inputs)["params"]
  carried = pretrain_carried(params, jax.random.fold_in(rng, 1), queue_size, model.embed_dim)
  return {"params": params, "batch_stats": carried}


def project_temperature(params: Mapping[str, Any]) -> dict[str, Any]:
  """τ back into [0.001, 0.5] after the update (ALBEF clamps it in place), so the clamp never stalls its gradient."""
  if "temp" not in params:
    return dict(params)
  return {**params, "temp": {"value": jnp.clip(params["temp"]["value"], *TEMPERATURE_RANGE)}}


# ---------------------------------------------------------------------------------------------------------------
# Losses.


def unimodal_features(
  image: Mapping[str, jax.Array],
  text: Mapping[str, jax.Array],
  image_m: Mapping[str, jax.Array],
  text_m: Mapping[str, jax.Array],
  temperature: jax.Array,
) -> Features:
  """The regularisers' Features of ALBEF's unimodal [CLS] features: zv, zt (and zv_ind, zt_ind) of the online
  encoders, their momentum copies as the augmented views, logit scale 1/τ."""
  return Features(
    zv=image["zv"],
    zt=text["zt"],
    logit_scale=1.0 / temperature,
    zv_aug=image_m["zv"],
    zt_aug=text_m["zt"],
    zv_ind=image.get("zv_ind"),
    zt_ind=text.get("zt_ind"),
    zv_ind_aug=image_m.get("zv_ind"),
    zt_ind_aug=text_m.get("zt_ind"),
  )


def alpha_at(examples_seen: jax.Array, alpha: float, ramp_examples: int) -> jax.Array:
  """α·min(1, seen / ramp): the distillation weight ramps up over the first `ramp_examples` examples (one epoch)."""
  if ramp_examples <= 0:
    return jnp.asarray(alpha, jnp.float32)
  return alpha * jnp.minimum(1.0, examples_seen.astype(jnp.float32) / ramp_examples)


def make_pretrain_loss(
  model: Albef,
  options: AlbefOptions,
  special: SpecialTokens,
  *,
  ramp_examples: int,
  objective: ObjectiveConfig,
  objective_fn: ObjectiveFn,
) -> Callable:
  """loss(params, carried, batch, rng) → (L, (metrics, carried')) of ALBEF pre-training (module docstring);
  `objective` (base 'none') holds the regularisers and `objective_fn` computes them (global or ring).

  batch: image [B, H, W, 3], text [B, L] (zero-padded token ids), image_key [B] (rows with equal keys show the
  same image: they are never each other's ITM negatives).
  """
  if objective.has_base:
    raise ValueError(
      f"objective.base = {objective.base!r}: ALBEF's base loss is its own (ITC-MD + ITM + MLM); "
      "set objective.base = 'none'"
    )
  apply = lambda params, method, *args: model.apply({"params": params}, *args, method=method)

  def loss_fn(params, carried, batch, rng):
    momentum = ema_update(carried["momentum"], jax.lax.stop_gradient(momentum_part(params)), options.momentum)
    queue = carried["queue"]
    images, tokens = batch["image"], batch["text"]
    temperature = apply(params, Albef.temperature)
    alpha = alpha_at(carried["examples_seen"], options.alpha, ramp_examples)
    image, text = apply(params, Albef.encode_image, images), apply(params, Albef.encode_text, tokens)
    image_m = jax.lax.stop_gradient(apply(momentum, Albef.encode_image, images))
    text_m = jax.lax.stop_gradient(apply(momentum, Albef.encode_text, tokens))
    itc = albef_losses.itc_md_loss(
      image["zv"], text["zt"], image_m["zv"], text_m["zt"], queue["image"], queue["text"], temperature, alpha
    )

    image_rng, text_rng, mask_rng, reg_rng = jax.random.split(rng, 4)
    keys = batch.get("image_key", jnp.arange(tokens.shape[0]))
    same = keys[:, None] == keys[None, :]
    negative_image, image_valid = albef_losses.hard_negatives(
      text["zt"] @ image_m["zv"].T / temperature, same, image_rng
    )
    negative_text, text_valid = albef_losses.hard_negatives(image["zv"] @ text_m["zt"].T / temperature, same, text_rng)
    states, image_tokens = text["text_states"], image["image_tokens"]
    fused_positive = apply(params, Albef.fuse, states, tokens, image_tokens)
    fused_negative = apply(
      params,
      Albef.fuse,
      jnp.concatenate([states, states[negative_text]]),
      jnp.concatenate([tokens, tokens[negative_text]]),
      jnp.concatenate([image_tokens[negative_image], image_tokens]),
    )
    itm = albef_losses.itm_loss(
      apply(params, Albef.itm_logits, fused_positive),
      apply(params, Albef.itm_logits, fused_negative),
      jnp.concatenate([image_valid, text_valid]),
    )

    masked, selected = albef_losses.mask_tokens(
      tokens,
      mask_rng,
      vocab_size=special.vocab_size,
      mask_token_id=special.mask,
      special_ids=(special.pad, special.cls, special.sep),
      probability=options.mlm_probability,
    )

    def mlm_logits(variables, image_tokens):
      fused = apply(
        variables, Albef.fuse, apply(variables, Albef.encode_text, masked)["text_states"], masked, image_tokens
      )
      return apply(variables, Albef.mlm_logits, fused)

    mlm = albef_losses.mlm_md_loss(
      mlm_logits(params, image_tokens),
      tokens,
      selected,
      jax.lax.stop_gradient(mlm_logits(momentum, image_m["image_tokens"])),
      alpha,
    )

    reg_metrics = {}
    regularization = jnp.zeros((), jnp.float32)
    if objective.regularizers:
      features = unimodal_features(image, text, image_m, text_m, temperature)
      regularization, reg_metrics = objective_fn(features, objective, reg_rng)
      del reg_metrics["loss/total"]
    total = itc + itm + mlm + regularization
    seen = carried["examples_seen"] + tokens.shape[0]
    carried = {
      "momentum": momentum,
      "queue": enqueue(queue, image_m["zv"], text_m["zt"]),
      "examples_seen": jnp.minimum(seen, max(ramp_examples, 1)).astype(jnp.int32),
    }
    metrics = {
      "loss/itc": itc,
      "loss/itm": itm,
      "loss/mlm": mlm,
      **reg_metrics,
      "loss/total": total,
      "temperature": temperature,
      "alpha": alpha,
    }
    return total, (metrics, carried)

  return loss_fn


def make_vqa_loss(model: AlbefVqa, pad_token_id: int = 0) -> Callable:
  """loss(params, carried, batch, rng) of VQA fine-tuning: the answer-weighted LM loss of the answer decoder.

  batch: image, text [B, Lq] (questions), answers [B, A, La], answer_weights [B, A].
  """

  def loss_fn(params, carried, batch, rng):
    del rng
    apply = functools.partial(model.apply, {"params": params})
    questions, answers = batch["text"], batch["answers"]
    slots, length = answers.shape[1:]
    states = apply(batch["image"], questions, method=AlbefVqa.question_states)
    flat = answers.reshape(-1, length)
    logits = apply(
      flat, jnp.repeat(states, slots, axis=0), jnp.repeat(questions, slots, axis=0), method=AlbefVqa.answer_logits
    )
    loss = albef_losses.answer_weighted_lm_loss(logits, flat, batch["answer_weights"], pad_token_id)
    return loss, ({"loss/vqa": loss, "loss/total": loss}, carried)

  return loss_fn


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """−log softmax(logits)[label] per row."""
  return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  weight = mask.astype(jnp.float32)
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def make_classification_loss(model: AlbefClassifier, task: str) -> Callable:
  """loss(params, carried, batch, rng) of SNLI-VE ('ve': image, text, label) or NLVR² ('nlvr': image, image2, text,
  label, assignment): cross-entropy of the MLP head; on rows with assignment = True (the text-assignment pre-step)
  the 3-way cross-entropy of the assignment head instead."""
  image_keys = ("image", "image2") if task == "nlvr" else ("image",)

  def loss_fn(params, carried, batch, rng):
    del rng
    out = model.apply({"params": params}, tuple(batch[k] for k in image_keys), batch["text"])
    labels = batch["label"]
    if task != "nlvr":
      ce = _cross_entropy(out["logits"], labels)
      loss = jnp.mean(ce)
      accuracy = jnp.mean((jnp.argmax(out["logits"], -1) == labels).astype(jnp.float32))
      return loss, ({f"loss/{task}": loss, "loss/total": loss, f"{task}/train_accuracy": accuracy}, carried)
    assignment = batch["assignment"]
    ce_task = _cross_entropy(out["logits"], jnp.clip(labels, 0, 1))
    ce_ta = _cross_entropy(out["assignment_logits"], labels)
    loss = jnp.mean(jnp.where(assignment, ce_ta, ce_task))
    correct = jnp.where(assignment, jnp.argmax(out["assignment_logits"], -1), jnp.argmax(out["logits"], -1)) == labels
    metrics = {
      "loss/nlvr": _masked_mean(ce_task, ~assignment),
      "loss/ta": _masked_mean(ce_ta, assignment),
      "nlvr/train_accuracy": _masked_mean(correct, ~assignment),
      "ta/train_accuracy": _masked_mean(correct, assignment),
      "loss/total": loss,
    }
    return loss, (metrics, carried)

  return loss_fn


# ---------------------------------------------------------------------------------------------------------------
# Inference.


class AlbefFunctions:
  """Jitted inference of an ALBEF model with the parameters last given to `bind`, on `mesh`: every call pads its
  rows to a multiple of the data devices, shards them, and returns host arrays cut back to the input rows."""

  def __init__(self, model: Any, mesh: Mesh, answer_tokens: np.ndarray | None = None, answer_k: int = 128):
    self.model, self.mesh = model, mesh
    self._sharding = batch_sharding(mesh, mesh.axis_names[:1])
    self._devices = mesh.shape[mesh.axis_names[0]]
    self._params = None
    self.answer_tokens = None if answer_tokens is None else jnp.asarray(answer_tokens, jnp.int32)
    self.answer_k = answer_k
    apply = lambda params, method, *args: model.apply({"params": params}, *args, method=method)
    if isinstance(model, Albef):
      self._image = jax.jit(lambda p, x: apply(p, Albef.encode_image, x))
      self._text = jax.jit(lambda p, x: {k: v for k, v in apply(p, Albef.encode_text, x).items() if k.startswith("z")})
      self._itm = jax.jit(self._itm_log_probability)
    elif isinstance(model, AlbefVqa):
      self._vqa = jax.jit(self._rank)
    else:
      self._classify = jax.jit(lambda p, images, tokens: model.apply({"params": p}, images, tokens)["logits"])

  def bind(self, params: Any) -> AlbefFunctions:
    """Use `params` from now on; returns self."""
    self._params = params
    return self

  def _call(self, fn: Callable, *inputs: Any) -> Any:
    if self._params is None:
      raise RuntimeError("AlbefFunctions.bind(params) must be called before inference")
    leaves = jax.tree.leaves(inputs)
    size = leaves[0].shape[0]
    padded = math.ceil(size / self._devices) * self._devices

    def put(x):
      x = np.asarray(x)
      if padded != size:
        x = np.concatenate([x, np.zeros((padded - size, *x.shape[1:]), x.dtype)])
      return jax.device_put(x, self._sharding)

    out = fn(self._params, *jax.tree.map(put, inputs))
    return jax.tree.map(lambda v: np.asarray(v)[:size], out)

  def encode_image(self, images: Any) -> dict[str, np.ndarray]:
    """{'zv', 'image_tokens', …} of images [B, H, W, 3] (pre-training model)."""
    return self._call(self._image, images)

  def encode_text(self, tokens: Any) -> dict[str, np.ndarray]:
    """{'zt', …} of token ids [B, L] (pre-training model)."""
    return self._call(self._text, tokens)

  def _itm_log_probability(self, params, image_tokens, tokens):
    model = self.model
    states = model.apply({"params": params}, tokens, method=Albef.encode_text)["text_states"]
    fused = model.apply({"params": params}, states, tokens, image_tokens, method=Albef.fuse)
    return jax.nn.log_softmax(model.apply({"params": params}, fused, method=Albef.itm_logits), axis=-1)[:, 1]

  def itm_scores(self, image_tokens: Any, tokens: Any) -> np.ndarray:
    """log p(match) [N] of N (image tokens, token ids) pairs from the ITM head."""
    return self._call(self._itm, image_tokens, tokens)

  def _rank(self, params, images, questions):
    model, answers = self.model, self.answer_tokens
    apply = functools.partial(model.apply, {"params": params})
    states = apply(images, questions, method=AlbefVqa.question_states)
    first = apply(answers[:1, :1].repeat(questions.shape[0], axis=0), states, questions, method=AlbefVqa.answer_logits)[
      :, 0
    ]

    def likelihoods(candidates):
      batch, k = candidates.shape[:2]
      flat = candidates.reshape(batch * k, -1)
      logits = apply(
        flat, jnp.repeat(states, k, axis=0), jnp.repeat(questions, k, axis=0), method=AlbefVqa.answer_logits
      )
      return albef_losses.sequence_log_likelihood(logits, flat).reshape(batch, k)

    best, _, _ = rank_answers(
      jax.nn.log_softmax(first, axis=-1), answers, min(self.answer_k, answers.shape[0]), likelihoods
    )
    return best

  def vqa_answers(self, images: Any, questions: Any) -> np.ndarray:
    """The answer-list index [B] ranked first for each (image, question): top-k answers by the probability of
    their first token, re-scored by their full likelihood (`rank_answers`)."""
    return self._call(self._vqa, images, questions)

  def classify(self, images: Sequence[Any], tokens: Any) -> np.ndarray:
    """Class logits [B, C] of (images, text) pairs (SNLI-VE: one image array; NLVR²: two)."""
    return self._call(self._classify, tuple(images), tokens)
