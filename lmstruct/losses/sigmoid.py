"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), an alternative base loss."""
import jax
import jax.numpy as jnp

from lmstruct.losses.common import as_float32
from lmstruct.losses.term import PairSum, RingForm, ShardView, Term


def sigmoid_log_likelihood_sum(zv: jax.Array, zt: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array,
                               on_diagonal: bool) -> jax.Array:
  """Σ_j Σ_k log σ(y_jk · (s·⟨zv_j, zt_k⟩ + b)) over one block of pairs; y_jk = +1 if the block is on the diagonal
  of the batch (`on_diagonal`, zv_j and zt_j paired) and j = k, else −1."""
  logits = logit_scale * (zv @ zt.T) + logit_bias
  signs = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0 if on_diagonal else -1.0
  return jnp.sum(jax.nn.log_sigmoid(signs * logits))


def sigmoid_loss(zv: jax.Array, zt: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array) -> jax.Array:
  """L_sig = −(1/N) Σ_j Σ_k log σ(y_jk · (s·⟨zv_j, zt_k⟩ + b)), y_jk = +1 if j = k else −1."""
  zv, zt, logit_scale, logit_bias = as_float32(zv, zt, logit_scale, logit_bias)
  return -sigmoid_log_likelihood_sum(zv, zt, logit_scale, logit_bias, on_diagonal=True) / zv.shape[0]


SIGMOID_PAIRS = PairSum(
    name="sigmoid", visiting=("zt",),
    block=lambda rows, cols, params, own: sigmoid_log_likelihood_sum(rows["zv"], cols["zt"], params["logit_scale"],
                                                                     params["logit_bias"], on_diagonal=own))


def _sigmoid_from_shard(shard: ShardView, option: None, draw: None) -> jax.Array:
  """L_sig = −(1/B) Σ_j Σ_k log σ(y_jk·(s·⟨zv_j, zt_k⟩ + b)) from the global pair sum."""
  return -shard.pair_sums["sigmoid"] / shard.batch_size


TERMS = (
    Term(name="sigmoid", role="base", reads=("zv", "zt", "logit_scale", "logit_bias"),
         formula=lambda f, option, draw: sigmoid_loss(f.zv, f.zt, f.logit_scale, f.logit_bias),
         ring=RingForm(combine=_sigmoid_from_shard, pair_sums=(SIGMOID_PAIRS,))),
)
