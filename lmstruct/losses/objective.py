"""The training objective: a base contrastive loss plus weighted structure regularisers, and its config schema.

    L = L_base + Σ_r λ_r · L_r

over the terms of `losses/registry.py` (bases: clip, inmodal, sigmoid; regularisers: separation, bridge, geometric,
cyclip, alignment, gap_alignment). The `objective` config section is one `ObjectiveConfig`, with every default here:

    base: 'inmodal'                                         # the base loss; 'none': no base term
    weights: {separation: 1., bridge: 1., geometric: 1.}    # λ_r; absent or 0 switches a term off
    impl: 'auto'                                            # auto | global | ring (losses/ring.py)
    bridge_t: 0.25                                          # owned by the bridge term: [0, 1] or 'uniform'
    cyclip: {inmodal_weight: .25, crossmodal_weight: .25}   # owned by the cyclip term

A key left out takes its default; `weights`, when given, replaces the default weights (so `{'base': 'clip',
'weights': {}}` is plain CLIP). Every term that is on, and the total, are returned as metrics (`loss/<term>` and
`loss/total`).

With base 'none' the objective is the weighted regularisers alone: a model family whose own losses are the base
(ALBEF's ITC-MD + ITM + MLM, `lmstruct.train.albef`) adds them through the same global and ring implementations.
"""

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.choices import did_you_mean, unknown_choice
from lmstruct.losses.registry import TERMS, names
from lmstruct.losses.term import Draw, Features, Option, Term, feature_fields

PAPER_WEIGHTS = types.MappingProxyType({"separation": 1.0, "bridge": 1.0, "geometric": 1.0})
IMPLS = ("auto", "global", "ring")
#: The `base` of an objective without a base term (only regularisers).
NO_BASE = "none"
_FIXED_KEYS = ("base", "weights", "impl")


def _term_options() -> dict[str, Option]:
  """{config key: its Option} for every key a registered term owns."""
  return {term.option.key: term.option for term in TERMS.values() if term.option is not None}


def _plain(value: Any) -> Any:
  """`value` with every mapping turned into a dict (what a ConfigDict or JSON takes)."""
  return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def _weight(name: str, value: Any) -> float:
  """λ_r as a float; anything but a finite number ≥ 0 is a ValueError naming objective.weights.<name>."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
    raise ValueError(f"objective.weights.{name} must be a finite number ≥ 0, got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """The `objective` config section, validated (see the module docstring for the keys and their defaults).

  `options` holds the keys owned by terms (their `Option`s), each parsed; construct from a config mapping with
  `from_dict`, which takes those keys at the top level, as configs write them.
  """

  base: str = "inmodal"
  weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: PAPER_WEIGHTS)
  impl: str = "auto"
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.base not in (*names("base"), NO_BASE):
      raise unknown_choice("objective.base", self.base, (*names("base"), NO_BASE))
    if not isinstance(self.weights, Mapping):
      raise ValueError(f"objective.weights must be a mapping {{regularizer: weight}}, got {self.weights!r}")
    for name in self.weights:
      if name not in names("regularizer"):
        raise unknown_choice("objective.weights key", name, names("regularizer"))
    if self.impl not in IMPLS:
      raise ValueError(
        f"objective.impl must be one of {list(IMPLS)}, got {self.impl!r}{did_you_mean(self.impl, IMPLS)}"
      )
    owned = _term_options()
    for key in self.options:
      if key not in owned:
        raise self._unknown_key(key)
    options = {
      key: option.parse(self.options[key] if key in self.options else option.default) for key, option in owned.items()
    }
    weights = {name: _weight(name, value) for name, value in self.weights.items()}
    object.__setattr__(self, "weights", types.MappingProxyType(weights))
    object.__setattr__(self, "options", types.MappingProxyType(options))

  @staticmethod
  def _unknown_key(key: str) -> ValueError:
    valid = sorted((*_FIXED_KEYS, *_term_options()))
    return ValueError(f"unknown objective key {key!r}{did_you_mean(key, valid)}; valid keys: {valid}")

  @classmethod
  def from_dict(cls, config: "ObjectiveConfig | Mapping[str, Any]") -> "ObjectiveConfig":
    """The schema of a config mapping (a dict or ConfigDict; an ObjectiveConfig is returned as is)."""
    if isinstance(config, cls):
      return config
    config = _plain(config.to_dict() if hasattr(config, "to_dict") else config)
    owned = _term_options()
    for key in config:
      if key not in _FIXED_KEYS and key not in owned:
        raise cls._unknown_key(key)
    return cls(
      **{key: config[key] for key in _FIXED_KEYS if key in config},
      options={key: config[key] for key in owned if key in config},
    )

  def to_dict(self) -> dict[str, Any]:
    """The config mapping this schema reads back (term-owned keys at the top level)."""
    return {"base": self.base, "weights": dict(self.weights), "impl": self.impl, **_plain(self.options)}

  @property
  def regularizers(self) -> dict[str, float]:
    """The regularisers that are on (non-zero weight), {name: λ}, sorted by name."""
    return {name: weight for name, weight in sorted(self.weights.items()) if weight != 0.0}

  @property
  def has_base(self) -> bool:
    """Whether there is a base term (base is not 'none')."""
    return self.base != NO_BASE

  @property
  def terms(self) -> tuple[Term, ...]:
    """The active terms: the base (unless 'none'), then the regularisers that are on, by name."""
    return tuple(TERMS[name] for name in ((self.base,) if self.has_base else ()) + tuple(self.regularizers))

  def option(self, term: Term) -> Any:
    """The parsed value of the config key `term` owns, or None."""
    return None if term.option is None else self.options[term.option.key]

  @property
  def needs_augmented_view(self) -> bool:
    """Whether an active term reads the augmented view (so the update must encode it)."""
    return any(term.reads_augmented_view for term in self.terms)

  @property
  def needs_independent_features(self) -> bool:
    """Whether an active term reads the independent heads (so the model must have them)."""
    return any(term.reads_independent_features for term in self.terms)


#: The objectives the paper compares (Tables 1–3) by name, as configs select them: the in-modal base L_Con alone and
#: with each regulariser, all three (`full`, the paper's method), plain CLIP and CyCLIP.
NAMED_OBJECTIVES: types.MappingProxyType = types.MappingProxyType(
  {
    "full": ObjectiveConfig(base="inmodal", weights=PAPER_WEIGHTS),
    "clip": ObjectiveConfig(base="clip", weights={}),
    "inmodal": ObjectiveConfig(base="inmodal", weights={}),
    "cyclip": ObjectiveConfig(base="clip", weights={"cyclip": 1.0}),
    "sep": ObjectiveConfig(base="inmodal", weights={"separation": 1.0}),
    "br": ObjectiveConfig(base="inmodal", weights={"bridge": 1.0}),
    "gc": ObjectiveConfig(base="inmodal", weights={"geometric": 1.0}),
  }
)


def named_objective(name: str, gap_alignment: float = 0.0) -> ObjectiveConfig:
  """The objective called `name` (`NAMED_OBJECTIVES`), plus the forced-alignment term at weight `gap_alignment`
  when it is > 0 (the information-gap experiment's λ)."""
  if name not in NAMED_OBJECTIVES:
    raise unknown_choice("objective", name, NAMED_OBJECTIVES)
  objective = NAMED_OBJECTIVES[name]
  if gap_alignment == 0:
    return objective
  return dataclasses.replace(objective, weights={**objective.weights, "gap_alignment": gap_alignment})


def term_draws(config: ObjectiveConfig, batch_size: int, rng: jax.Array) -> dict[str, Draw]:
  """The per-example random inputs of every active term that draws any, over the global batch: the base draws from
  `rng`, the r-th active regulariser (by name) from `fold_in(rng, r)`."""
  keys = {config.base: rng, **{name: jax.random.fold_in(rng, index) for index, name in enumerate(config.regularizers)}}
  return {
    term.name: term.draw(config.option(term), batch_size, keys[term.name])
    for term in config.terms
    if term.draw is not None
  }


def check_features(features: Features, config: ObjectiveConfig) -> None:
  """Raises a ValueError naming the active term and the features it reads that `features` lacks (None)."""
  for term in config.terms:
    missing = [name for name in term.reads if getattr(features, name) is None]
    if missing:
      raise ValueError(
        f"objective term {term.name!r} reads {missing}, which the model did not produce"
        + (" (its independent heads are off)" if term.reads_independent_features else "")
      )


def weighted_total(values: Mapping[str, jax.Array], config: ObjectiveConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(L, metrics) with L = L_base + Σ_r λ_r·L_r from the terms' values (L_base = 0 with base 'none'); metrics hold
  each term and the total."""
  total = values[config.base] if config.has_base else jnp.zeros((), jnp.float32)
  for name, weight in config.regularizers.items():
    total = total + weight * values[name]
  metrics = {f"loss/{term.name}": values[term.name] for term in config.terms}
  metrics["loss/total"] = total
  return total, {key: jnp.asarray(value, jnp.float32) for key, value in metrics.items()}


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


def compute_objective(
  features: Features, config: ObjectiveConfig | Mapping[str, Any], rng: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = L_base + Σ_r λ_r·L_r from each term's global formula; returns (L, metrics) with each unweighted term under
  `loss/<name>`. `config` is an ObjectiveConfig or a mapping it parses.

  Works on features sharded over Auto mesh axes (GSPMD), over Explicit axes (gathered first) and unsharded.
  """
  config = ObjectiveConfig.from_dict(config)
  check_features(features, config)
  features = Features(**{name: _gathered_if_explicit(getattr(features, name)) for name in feature_fields()})
  draws = term_draws(config, features.zv.shape[0], rng)
  values = {term.name: term.formula(features, config.option(term), draws.get(term.name)) for term in config.terms}
  return weighted_total(values, config)
