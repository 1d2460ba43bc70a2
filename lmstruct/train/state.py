"""The training state: everything a step reads and writes, as one pytree."""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step, parameters, batch-norm statistics (empty for LayerNorm-only models), optimizer state, base RNG key."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
