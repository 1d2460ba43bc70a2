"""The training state: everything a step reads and writes, as one pytree."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step, parameters, batch-norm statistics (empty for LayerNorm-only models), optimizer state, and the base RNG
  key as raw uint32 key data (so checkpoints hold plain arrays; `jax.random.wrap_key_data` turns it back)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
