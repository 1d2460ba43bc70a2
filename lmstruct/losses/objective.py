"""The training objective: a base contrastive loss plus weighted structure regularisers.

    L = L_base + Σ_r λ_r · L_r,   base ∈ {clip, inmodal, sigmoid},
    r ∈ {separation, bridge, geometric, cyclip, alignment}.

The objective is described by a small config (a dict or ml_collections.ConfigDict):

    base: 'inmodal'                       # the base loss
    weights: {separation: 1., bridge: 1., geometric: 1.}   # λ_r; absent or 0 switches a term off
    bridge_t: 0.25                        # a number in [0, 1], or 'uniform' for t ~ U(0, 1) per example
    cyclip: {inmodal_weight: .25, crossmodal_weight: .25}

Every term that is on, and the total, are returned as metrics (`loss/<term>` and `loss/total`).
"""
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.losses.alignment import alignment_loss
from lmstruct.losses.bridge import brownian_bridge_loss
from lmstruct.losses.clip import clip_loss
from lmstruct.losses.cyclip import cyclip_loss
from lmstruct.losses.geometric import geometric_consistency_loss
from lmstruct.losses.inmodal import inmodal_contrastive_loss
from lmstruct.losses.separation import separation_loss
from lmstruct.losses.sigmoid import sigmoid_loss


@dataclasses.dataclass(frozen=True)
class Features:
  """L2-normalised features of one batch: original and augmented views, shared and independent heads."""
  zv: jax.Array
  zt: jax.Array
  logit_scale: jax.Array
  logit_bias: jax.Array | None = None
  zv_aug: jax.Array | None = None
  zt_aug: jax.Array | None = None
  zv_ind: jax.Array | None = None
  zt_ind: jax.Array | None = None
  zv_ind_aug: jax.Array | None = None
  zt_ind_aug: jax.Array | None = None


Term = Callable[[Features, Mapping[str, Any], jax.Array], jax.Array]


def bridge_times(options: Mapping[str, Any], batch_size: int, rng: jax.Array) -> float | jax.Array:
  """The bridge time t: the configured constant, or one draw from U(0, 1) per example when 'uniform'."""
  t = options.get("bridge_t", 0.25)
  if t == "uniform":
    return jax.random.uniform(rng, (batch_size,))
  return float(t)


BASE_LOSSES: dict[str, Term] = {
    "clip": lambda f, o, r: clip_loss(f.zv, f.zt, f.logit_scale),
    "inmodal": lambda f, o, r: inmodal_contrastive_loss(f.zv, f.zt, f.zv_aug, f.zt_aug, f.logit_scale),
    "sigmoid": lambda f, o, r: sigmoid_loss(f.zv, f.zt, f.logit_scale, f.logit_bias),
}

REGULARIZERS: dict[str, Term] = {
    "separation": lambda f, o, r: separation_loss(f.zv, f.zt, f.zv_ind, f.zt_ind, f.zv_ind_aug, f.zt_ind_aug,
                                                  f.logit_scale),
    "bridge": lambda f, o, r: brownian_bridge_loss(f.zv, f.zt, f.zv_aug, bridge_times(o, f.zv.shape[0], r)),
    "geometric": lambda f, o, r: geometric_consistency_loss(f.zv, f.zt, f.zv_aug, f.zt_aug),
    "cyclip": lambda f, o, r: cyclip_loss(f.zv, f.zt, **dict(o.get("cyclip", {}))),
    "alignment": lambda f, o, r: alignment_loss(f.zv, f.zt),
}

_USES_AUGMENTED_VIEW = {"inmodal", "separation", "bridge", "geometric"}
_VALID_KEYS = {"base", "weights", "bridge_t", "cyclip", "impl"}


def active_regularizers(config: Mapping[str, Any]) -> dict[str, float]:
  """The regularisers with a non-zero weight, {name: λ}."""
  return {name: float(w) for name, w in dict(config.get("weights", {})).items() if float(w) != 0.0}


def validate_objective_config(config: Mapping[str, Any]) -> None:
  """Raises ValueError naming any unknown key, base loss, regulariser or bridge time, with the valid choices."""
  for key in dict(config):
    if key not in _VALID_KEYS:
      raise ValueError(f"unknown objective key {key!r}; valid keys: {sorted(_VALID_KEYS)}")
  base = config.get("base", "clip")
  if base not in BASE_LOSSES:
    raise ValueError(f"unknown base loss {base!r}; valid choices: {sorted(BASE_LOSSES)}")
  for name in dict(config.get("weights", {})):
    if name not in REGULARIZERS:
      raise ValueError(f"unknown regularizer {name!r} in objective.weights; valid choices: {sorted(REGULARIZERS)}")
  t = config.get("bridge_t", 0.25)
  if t != "uniform" and not (isinstance(t, (int, float)) and 0.0 <= t <= 1.0):
    raise ValueError(f"objective.bridge_t must be a number in [0, 1] or 'uniform', got {t!r}")
  cyclip = dict(config.get("cyclip", {}))
  for key in cyclip:
    if key not in ("inmodal_weight", "crossmodal_weight"):
      raise ValueError(f"unknown objective.cyclip key {key!r}; valid keys: ['crossmodal_weight', 'inmodal_weight']")


def needs_augmented_view(config: Mapping[str, Any]) -> bool:
  """Whether any active term reads the augmented view (so the update must encode it)."""
  terms = {config.get("base", "clip"), *active_regularizers(config)}
  return bool(terms & _USES_AUGMENTED_VIEW)


def needs_independent_features(config: Mapping[str, Any]) -> bool:
  """Whether the separation loss is on (so the model must produce independent features)."""
  return "separation" in active_regularizers(config)


def _gathered_if_explicit(x: jax.Array | None) -> jax.Array | None:
  """`x` replicated on every device when it is sharded over Explicit mesh axes (sharding in types), else `x`.

  Every term here forms B×B products such as z zᵀ, whose result would be sharded on both axes, which explicit
  sharding rejects. Gathering the [B, D] features first is what GSPMD does by itself for Auto axes. The ring
  objective (`losses/ring.py`) is the one that avoids it.
  """
  if x is None:
    return None
  sharding = jax.typeof(x).sharding
  explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(sharding.mesh, "axis_types", ()))
  if explicit and any(axis is not None for axis in sharding.spec):
    return jax.sharding.reshard(x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  return x


def compute_objective(features: Features, config: Mapping[str, Any],
                      rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = L_base + Σ_r λ_r·L_r; returns (L, metrics) with each unweighted term under `loss/<name>`.

  Works on features sharded over Auto mesh axes (GSPMD), over Explicit axes (gathered first) and unsharded.
  """
  features = Features(**{f.name: _gathered_if_explicit(getattr(features, f.name))
                         for f in dataclasses.fields(Features)})
  base = config.get("base", "clip")
  base_value = BASE_LOSSES[base](features, config, rng)
  metrics = {f"loss/{base}": base_value}
  total = base_value
  for index, (name, weight) in enumerate(sorted(active_regularizers(config).items())):
    value = REGULARIZERS[name](features, config, jax.random.fold_in(rng, index))
    metrics[f"loss/{name}"] = value
    total = total + weight * value
  metrics["loss/total"] = total
  return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
