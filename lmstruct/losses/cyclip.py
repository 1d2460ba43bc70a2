"""CyCLIP's cyclic-consistency regulariser (Goel et al. 2022), the baseline the paper compares against."""
from collections.abc import Mapping
from typing import Any

import jax

from lmstruct.choices import did_you_mean
from lmstruct.losses.geometric import (CROSSMODAL_SYMMETRY_PAIRS, STRUCTURE_PAIRS, crossmodal_symmetry_error,
                                       similarity_structure_error)
from lmstruct.losses.term import Option, RingForm, ShardView, Term

DEFAULT_WEIGHTS = {"inmodal_weight": 0.25, "crossmodal_weight": 0.25}


def cyclip_loss(zv: jax.Array, zt: jax.Array, inmodal_weight: float = 0.25,
                crossmodal_weight: float = 0.25) -> jax.Array:
  """λ_cross·(1/N) Σ_jk (⟨zv_j, zt_k⟩ − ⟨zv_k, zt_j⟩)² + λ_in·(1/N) Σ_jk (⟨zv_j, zv_k⟩ − ⟨zt_j, zt_k⟩)².

  The two halves of L_GC, weighted (CyCLIP's defaults λ = 0.25 each).
  """
  return (crossmodal_weight * crossmodal_symmetry_error(zv, zt)
          + inmodal_weight * similarity_structure_error(zv, zt))


def parse_cyclip_weights(value: Any) -> dict[str, float]:
  """`objective.cyclip`: {inmodal_weight: λ_in, crossmodal_weight: λ_cross}, numbers; a missing one is 0.25."""
  if not isinstance(value, Mapping):
    raise ValueError(f"objective.cyclip must be a mapping with keys {sorted(DEFAULT_WEIGHTS)}, got {value!r}")
  for key, weight in value.items():
    if key not in DEFAULT_WEIGHTS:
      raise ValueError(f"unknown objective.cyclip key {key!r}{did_you_mean(key, DEFAULT_WEIGHTS)}; "
                       f"valid keys: {sorted(DEFAULT_WEIGHTS)}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
      raise ValueError(f"objective.cyclip.{key} must be a number, got {weight!r}")
  return {key: float(value.get(key, default)) for key, default in DEFAULT_WEIGHTS.items()}


def _cyclip_from_shard(shard: ShardView, option: Mapping[str, float], draw: None) -> jax.Array:
  """λ_cross·(1/B) Σ_jk (⟨zv_j, zt_k⟩ − ⟨zv_k, zt_j⟩)² + λ_in·(1/B) Σ_jk (⟨zv_j, zv_k⟩ − ⟨zt_j, zt_k⟩)² from the two
  global pair sums it shares with L_GC."""
  s = shard.pair_sums
  return (option["crossmodal_weight"] * s["crossmodal_symmetry"] / shard.batch_size
          + option["inmodal_weight"] * s["structure_zv_zt"] / shard.batch_size)


TERMS = (
    Term(name="cyclip", role="regularizer", reads=("zv", "zt"),
         formula=lambda f, option, draw: cyclip_loss(f.zv, f.zt, **option),
         ring=RingForm(combine=_cyclip_from_shard, pair_sums=(CROSSMODAL_SYMMETRY_PAIRS, STRUCTURE_PAIRS)),
         option=Option(key="cyclip", default=DEFAULT_WEIGHTS, parse=parse_cyclip_weights)),
)
