"""The training state: everything a step reads and writes, as one pytree."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step, parameters, `batch_stats` (the state an update carries besides the parameters: batch-norm statistics,
  empty for LayerNorm-only models; ALBEF's momentum encoders and feature queues), optimizer state, and the base RNG
  key as raw uint32 key data (so checkpoints hold plain arrays; `jax.random.wrap_key_data` turns it back)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
