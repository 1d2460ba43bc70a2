"""BERT (Devlin et al. 2019) as reusable pieces: embeddings, post-LayerNorm encoder layers with optional
cross-attention, a masked-language-model head, and a pooled text tower.

The layout and names follow Hugging Face's ``BertModel`` so its checkpoints map one-to-one
(``lmstruct.pretrained.bert``). A fusion encoder in the style of ALBEF (Li et al. 2021) is a
``BertEncoder(cross_attention=True)`` over text states with the image tokens as ``encoder_states``, and its masked
language modelling uses ``BertMLMHead`` tied to ``BertEmbeddings``' word embeddings. There is no dropout.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.models.layers import exact_gelu as gelu  # BERT's hidden_act='gelu' is the exact-erf GELU
from lmstruct.models.layers import rematerialised

LAYER_NORM_EPSILON = 1e-12

BERT_SIZES: dict[str, dict[str, int]] = {
  # name: width, layers, heads, mlp_dim, vocab_size
  "MiniLM-L6": dict(width=384, layers=6, heads=12, mlp_dim=1536, vocab_size=30522),
  "base": dict(width=768, layers=12, heads=12, mlp_dim=3072, vocab_size=30522),
}


def layer_norm(name: str, dtype: jnp.dtype) -> nn.LayerNorm:
  """BERT's LayerNorm: ε = 1e-12, variance computed as E[(x − μ)²] (the one-pass E[x²] − μ² loses precision at
  this ε)."""
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, dtype=dtype, name=name)


def padding_mask(tokens: jax.Array, pad_token_id: int = 0) -> jax.Array:
  """Attention mask [B, 1, 1, L]: True at the keys that are not padding."""
  return (tokens != pad_token_id)[:, None, None, :]


class BertEmbeddings(nn.Module):
  """Token ids [B, L] → LayerNorm(word + absolute position + token-type-0 embeddings) [B, L, width]."""

  vocab_size: int
  width: int
  max_positions: int = 512
  type_vocab_size: int = 2
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    embed = lambda n, name: nn.Embed(
      n, self.width, embedding_init=nn.initializers.normal(0.02), dtype=self.dtype, name=name
    )
    self.word_embeddings = embed(self.vocab_size, "word_embeddings")
    self.position_embeddings = embed(self.max_positions, "position_embeddings")
    self.token_type_embeddings = embed(self.type_vocab_size, "token_type_embeddings")
    self.layer_norm = layer_norm("layer_norm", self.dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[-1]
    if length > self.max_positions:
      raise ValueError(f"token sequences of length {length} exceed BERT's {self.max_positions} positions")
    x = (
      self.word_embeddings(tokens)
      + self.position_embeddings(jnp.arange(length))[None]
      + self.token_type_embeddings(jnp.zeros_like(tokens))
    )
    return self.layer_norm(x)

  def word_embedding_matrix(self) -> jax.Array:
    """The [vocab_size, width] word-embedding table (tied to the MLM head's output layer)."""
    return self.word_embeddings.embedding


class BertAttention(nn.Module):
  """LN(x + W_o · MultiHead(Q = x, K = V = context)): self-attention when `context` is `x`, cross-attention
  otherwise. `mask` (boolean, broadcastable to [B, heads, L_x, L_context]) is True where attention is allowed."""

  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.heads
    project = lambda source, name: nn.Dense(width, dtype=self.dtype, name=name)(source).reshape(
      batch, source.shape[1], self.heads, head_dim
    )
    q, k, v = project(x, "query"), project(context, "key"), project(context, "value")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head_dim).astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
    return layer_norm("layer_norm", self.dtype)(x + nn.Dense(width, dtype=self.dtype, name="output")(out))


class BertLayer(nn.Module):
  """Self-attention → (cross-attention to `encoder_states`) → LN(x + W₂ · GELU(W₁ · x)), each post-LN."""

  heads: int
  mlp_dim: int
  cross_attention: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array | None = None,
    encoder_states: jax.Array | None = None,
    encoder_mask: jax.Array | None = None,
  ) -> jax.Array:
    x = BertAttention(self.heads, self.dtype, name="attention")(x, x, mask)
    if self.cross_attention:
      if encoder_states is None:
        raise ValueError("a BertLayer with cross_attention=True needs encoder_states")
      x = BertAttention(self.heads, self.dtype, name="crossattention")(x, encoder_states, encoder_mask)
    h = gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="intermediate")(x))
    h = nn.Dense(x.shape[-1], dtype=self.dtype, name="output")(h)
    return layer_norm("output_layer_norm", self.dtype)(x + h)


class BertEncoder(nn.Module):
  """`layers` BertLayers over [B, L, width]; with `cross_attention`, every layer also attends to
  `encoder_states` [B, L_enc, width_enc] (masked by `encoder_mask`, True where allowed)."""

  layers: int
  heads: int
  mlp_dim: int
  cross_attention: bool = False
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array | None = None,
    encoder_states: jax.Array | None = None,
    encoder_mask: jax.Array | None = None,
  ) -> jax.Array:
    layer = rematerialised(BertLayer, self.remat_policy)
    for i in range(self.layers):
      x = layer(self.heads, self.mlp_dim, self.cross_attention, self.dtype, name=f"layer_{i}")(
        x, mask, encoder_states, encoder_mask
      )
    return x


class BertMLMHead(nn.Module):
  """Hidden states [B, L, width] → vocabulary logits [B, L, vocab]: LN(GELU(Dense(h))) · Eᵀ + b, with E the word
  embedding table passed in (weights tied as in BERT)."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array, word_embeddings: jax.Array) -> jax.Array:
    h = gelu(nn.Dense(hidden.shape[-1], dtype=self.dtype, name="transform")(hidden))
    h = layer_norm("layer_norm", self.dtype)(h)
    bias = self.param("bias", nn.initializers.zeros, (word_embeddings.shape[0],))
    return h @ word_embeddings.astype(self.dtype).T + bias.astype(self.dtype)


class BertTextTower(nn.Module):
  """Token ids [B, L] (zero-padded) → pooled feature [B, width]: the mean of the final hidden states over the
  non-padding tokens (`pooling='mean'`, as sentence-transformers) or the first ([CLS]) state (`pooling='cls'`)."""

  width: int
  layers: int
  heads: int
  mlp_dim: int
  vocab_size: int
  max_positions: int = 512
  type_vocab_size: int = 2
  pad_token_id: int = 0
  pooling: str = "mean"
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    if self.pooling not in ("mean", "cls"):
      raise ValueError(f"unknown BERT pooling {self.pooling!r}; valid choices: ['cls', 'mean']")
    x = BertEmbeddings(
      self.vocab_size, self.width, self.max_positions, self.type_vocab_size, self.dtype, name="embeddings"
    )(tokens)
    mask = padding_mask(tokens, self.pad_token_id)
    x = BertEncoder(
      self.layers, self.heads, self.mlp_dim, remat_policy=self.remat_policy, dtype=self.dtype, name="encoder"
    )(x, mask)
    if self.pooling == "cls":
      return x[:, 0]
    weights = (tokens != self.pad_token_id).astype(jnp.float32)[..., None]
    return ((x.astype(jnp.float32) * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)).astype(self.dtype)
