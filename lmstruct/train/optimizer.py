"""AdamW with linear warm-up + cosine decay, global-norm clipping, and no decay on non-matrix parameters."""

import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import optax

NO_DECAY_NAMES = ("embedding", "positional_embedding", "class_embedding")
_OPTIMIZER_KEYS = {
  "learning_rate",
  "end_learning_rate",
  "warmup_steps",
  "total_steps",
  "weight_decay",
  "b1",
  "b2",
  "eps",
  "grad_clip_norm",
  "trainable",
}


def learning_rate_schedule(config: Mapping[str, Any]) -> optax.Schedule:
  """lr(k) = lr·k/W for k < W, then end + (lr − end)·½(1 + cos(π·(k − W)/(T − W))) until T (W warm-up, T total)."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config["learning_rate"],
    warmup_steps=config.get("warmup_steps", 0),
    decay_steps=max(config["total_steps"], config.get("warmup_steps", 0) + 1),
    end_value=config.get("end_learning_rate", 0.0),
  )


def weight_decay_mask(params: Any) -> Any:
  """True for weight matrices and convolution kernels; False for biases, norms, embeddings and scalars
  (the logit scale and bias)."""

  def decays(path, leaf) -> bool:
    name = str(path[-1].key) if hasattr(path[-1], "key") else str(path[-1])
    return leaf.ndim >= 2 and name not in NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def trainable_labels(params: Any, patterns: list[str] | tuple[str, ...]) -> Any:
  """'train' for every parameter whose path ('a/b/kernel') matches one of the regexes, else 'frozen'."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  labels = {path: "train" if any(re.search(p, path) for p in patterns) else "frozen" for path in flat}
  return flax.traverse_util.unflatten_dict(labels, sep="/")


def make_optimizer(config: Mapping[str, Any]) -> optax.GradientTransformation:
  """clip_by_global_norm(c) → AdamW(β₁, β₂, ε, λ·mask) under the warm-up + cosine schedule.

  With `trainable` (a list of regexes on parameter paths), only matching parameters are updated; the others
  (e.g. locked pretrained towers, LiT-style) get zero updates and keep no optimizer moments.
  """
  for key in dict(config):
    if key not in _OPTIMIZER_KEYS:
      raise ValueError(f"unknown key optimizer.{key}; valid keys: {sorted(_OPTIMIZER_KEYS)}")
  clip = config.get("grad_clip_norm", 1.0)
  tx = optax.chain(
    optax.clip_by_global_norm(clip) if clip else optax.identity(),
    optax.adamw(
      learning_rate_schedule(config),
      b1=config.get("b1", 0.9),
      b2=config.get("b2", 0.98),
      eps=config.get("eps", 1e-6),
      weight_decay=config.get("weight_decay", 0.1),
      mask=weight_decay_mask,
    ),
  )
  patterns = config.get("trainable")
  if not patterns:
    return tx
  return optax.multi_transform(
    {"train": tx, "frozen": optax.set_to_zero()}, lambda params: trainable_labels(params, tuple(patterns))
  )
