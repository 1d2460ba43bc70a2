"""What an objective term is: the features it reads, its global formula and its ring decomposition, as one value.

A term's module (clip.py, bridge.py, …) defines its `Term` beside its formula, as open_clip's `SigLipLoss` holds its
distributed variants next to its plain form:

    Term(name, role, reads, formula, ring, option=None, draw=None)

- `reads`: the `Features` fields it reads, from which the objective derives whether the update must encode the
  augmented view or the independent heads (nothing else lists them);
- `formula(features, option, draw)`: its value on the whole (global) batch;
- `ring`: the same value from one device's rows and a few global statistics that the ring machinery of
  `losses/ring.py` computes without forming the B×B matrix: the InfoNCE cross-entropies CE(s·A·Bᵀ) of named feature
  pairs, and pair sums Σ_j Σ_k φ(x_j, y_k) given by a block function;
- `option`: the key of the `objective` config section the term owns (its default and its parser), if any;
- `draw(option, B, rng)`: per-example random inputs (e.g. the bridge times), drawn once over the global batch, so the
  global and ring forms see the same values.

Every function here and in the term modules works on L2-normalised features in float32.
"""
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

AxisName = str | tuple[str, ...]
Tree = Any
# (this device's rows, a visiting block of columns, replicated scalars, own = the block on the global diagonal) ↦ Σ
PairSumBlock = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array], Mapping[str, jax.Array], bool], jax.Array]
Draw = float | jax.Array | None

ROLES = ("base", "regularizer")


def _feature(*, augmented: bool = False, independent: bool = False, scalar: bool = False,
             required: bool = False) -> Any:
  """A Features field with its kind as metadata (the objective derives what the update must compute from it)."""
  metadata = {"augmented": augmented, "independent": independent, "scalar": scalar}
  if required:
    return dataclasses.field(metadata=metadata)
  return dataclasses.field(default=None, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Features:
  """L2-normalised features of one batch: original and augmented views, shared and independent heads, and the
  learnable logit scale s and bias b (scalars, replicated on every device)."""
  zv: jax.Array = _feature(required=True)
  zt: jax.Array = _feature(required=True)
  logit_scale: jax.Array = _feature(scalar=True, required=True)
  logit_bias: jax.Array | None = _feature(scalar=True)
  zv_aug: jax.Array | None = _feature(augmented=True)
  zt_aug: jax.Array | None = _feature(augmented=True)
  zv_ind: jax.Array | None = _feature(independent=True)
  zt_ind: jax.Array | None = _feature(independent=True)
  zv_ind_aug: jax.Array | None = _feature(augmented=True, independent=True)
  zt_ind_aug: jax.Array | None = _feature(augmented=True, independent=True)


def feature_fields(kind: str | None = None) -> tuple[str, ...]:
  """The names of the Features fields, all or only those of one kind ('augmented', 'independent', 'scalar')."""
  return tuple(f.name for f in dataclasses.fields(Features) if kind is None or f.metadata[kind])


@dataclasses.dataclass(frozen=True)
class ShardView:
  """What one device holds inside the ring objective: its rows of every feature (and of every term's draw), the
  global pair sums and InfoNCE cross-entropies of the active terms, and the global batch size B."""
  local: Mapping[str, jax.Array]
  pair_sums: Mapping[str, jax.Array]
  cross_entropy: Mapping[tuple[str, str], jax.Array]
  batch_size: int
  axis_name: AxisName

  def mean(self, local_mean: jax.Array) -> jax.Array:
    """The global mean from this device's mean over its rows (every device holds the same number of rows)."""
    return jax.lax.pmean(local_mean, self.axis_name)


@dataclasses.dataclass(frozen=True)
class PairSum:
  """Σ_j Σ_k φ(x_j, y_k) over all pairs of the global batch, computed block by block: `block(rows, cols, params,
  own)` sums φ over one block, `visiting` names the features that travel the ring as columns. The name is its key
  in `ShardView.pair_sums`; terms that share a sum share its definition, and it is computed once."""
  name: str
  visiting: tuple[str, ...]
  block: PairSumBlock


@dataclasses.dataclass(frozen=True)
class RingForm:
  """A term's ring decomposition: the global statistics it needs and `combine(shard, option, draw)`, which turns them
  (with this device's rows and its rows of the term's draw) into the term's global value, the same on every device."""
  combine: Callable[[ShardView, Any, jax.Array | None], jax.Array]
  cross_entropies: tuple[tuple[str, str], ...] = ()
  pair_sums: tuple[PairSum, ...] = ()


@dataclasses.dataclass(frozen=True)
class Option:
  """A key of the `objective` config section owned by one term: its default and `parse`, which validates a config
  value (raising a one-line ValueError naming `objective.<key>`) and returns its normalised plain form."""
  key: str
  default: Any
  parse: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Term:
  """One objective term: its global formula and its ring form side by side (see the module docstring)."""
  name: str
  role: str
  reads: tuple[str, ...]
  formula: Callable[[Features, Any, Draw], jax.Array]
  ring: RingForm
  option: Option | None = None
  draw: Callable[[Any, int, jax.Array], float | jax.Array] | None = None

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f"term {self.name!r}: role must be one of {list(ROLES)}, got {self.role!r}")
    unknown = sorted(set(self.reads) - set(feature_fields()))
    if unknown:
      raise ValueError(f"term {self.name!r} reads {unknown}, which are not Features fields: {list(feature_fields())}")

  @property
  def reads_augmented_view(self) -> bool:
    """Whether the term reads a feature of the augmented view."""
    return bool(set(self.reads) & set(feature_fields("augmented")))

  @property
  def reads_independent_features(self) -> bool:
    """Whether the term reads a feature of the independent heads."""
    return bool(set(self.reads) & set(feature_fields("independent")))
