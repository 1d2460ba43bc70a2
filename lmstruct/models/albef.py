"""ALBEF (Li et al. 2021, "Align before Fuse"): a ViT that returns every image token, one BERT whose first layers
encode the text and whose last layers fuse it with the image tokens through cross-attention, and the heads of
pre-training and of the downstream tasks.

    image [B, H, W, 3] → ViT (all tokens, LN_post on each) ──────────────────────────→ image tokens [B, 1 + P, W_v]
    tokens [B, L] → BERT embeddings → text layers 0 … T−1 → text states → fusion layers T … T+F−1 → fused [B, L, W]
                                                                         (self-attention, cross-attention to the
                                                                          image tokens, MLP; each post-LN)
    zv = normalize(vision_proj(image tokens[:, 0])),  zt = normalize(text_proj(text states[:, 0]))      (ITC)
    itm_head(fused[:, 0]) → 2 logits (ITM);  BertMLMHead(fused) → vocabulary logits, tied to the word embeddings

The modules compose the same named parts (`visual`, `bert`), so a pre-trained subtree drops into every task:

* `Albef` — pre-training: visual, bert (T + F layers, MLM head), vision_proj, text_proj, itm_head, temp (the
  learnable temperature τ, clamped to [0.001, 0.5]), and with `independent_heads` the parallel projections
  vision_proj_ind / text_proj_ind the separation regulariser reads.
* `AlbefClassifier` — SNLI-VE (one image, a 3-way MLP head on the fused [CLS]) and NLVR² (two images: each fusion
  layer is replicated into two consecutive blocks, the first cross-attending the left image and the second the
  right one, both initialised from the pre-trained layer; a 2-way MLP head and the 3-way text-assignment head of
  ALBEF's NLVR² pre-step).
* `AlbefVqa` — VQA as generation: the question is fused with the image by visual + bert, and an answer decoder (BERT
  embeddings, F causal layers cross-attending the fused question, an LM head) — initialised from the fusion
  layers — scores answers token by token.

The model config of an ALBEF run (`model` section):

    model.preset = 'albef-test'                             # a key of ALBEF_PRESETS
    model.image = {'size': 'B/16', 'image_size': 256}       # ViT overrides: size, image_size, width, layers, …
    model.text = {'size': 'base', 'context_length': 30}     # BERT overrides; text.layers is the whole depth
    model.fusion_layers = 6                                 # the last 6 BERT layers fuse, the first 6 encode text
    model.embed_dim = 256                                   # ITC projection width
    model.independent_heads = False                         # True when the separation regulariser is on
    model.dtype = 'float32'                                 # or 'bfloat16'
    model.remat_policy = 'none'                             # what each ViT block and BERT layer keeps for the
                                                            # backward pass (`models.layers.REMAT_POLICIES`)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmstruct.choices import unknown_choice
from lmstruct.losses.common import l2_normalize
from lmstruct.models.bert import BERT_SIZES, BertEmbeddings, BertLayer, BertMLMHead, padding_mask
from lmstruct.models.layers import check_remat_policy, rematerialised
from lmstruct.models.vit import VIT_SIZES, VisionTransformer

TEMPERATURE_RANGE = (0.001, 0.5)
#: Contexts a fusion layer may cross-attend: (states [B, L_c, W_c], key mask broadcastable to [B, 1, 1, L_c] or None).
Context = tuple[jax.Array, jax.Array | None]

ALBEF_PRESETS: dict[str, dict[str, Any]] = {
  # CPU-sized: tests and the scenes experiments.
  "albef-test": dict(
    image=dict(size="test", image_size=32),
    text=dict(width=32, layers=2, heads=2, mlp_dim=64, vocab_size=30522, max_positions=64, context_length=16),
    fusion_layers=1,
    embed_dim=16,
  ),
  # all-MiniLM-L6-v2's six layers, split 3 text + 3 fusion, under a ViT-S/16 of the same width.
  "albef-MiniLM": dict(
    image=dict(size="S/16", image_size=224),
    text=dict(size="MiniLM-L6", context_length=30),
    fusion_layers=3,
    embed_dim=256,
  ),
  # The paper's: ViT-B/16 at 256 px and BERT-base, 6 text + 6 fusion layers.
  "albef-base": dict(
    image=dict(size="B/16", image_size=256), text=dict(size="base", context_length=30), fusion_layers=6, embed_dim=256
  ),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_MODEL_KEYS = ("preset", "image", "text", "fusion_layers", "embed_dim", "independent_heads", "dtype", "remat_policy")
_IMAGE_KEYS = ("size", "image_size", "width", "layers", "heads", "patch", "activation")
_TEXT_KEYS = ("size", "width", "layers", "heads", "mlp_dim", "vocab_size", "max_positions", "context_length")
_TEXT_FIELDS = ("width", "layers", "heads", "mlp_dim", "vocab_size")


def _check_keys(given: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
  for key in given:
    if key not in valid:
      raise unknown_choice(f"key of {where}", key, valid)


def _tower(
  preset: Mapping[str, Any], override: Mapping[str, Any], sizes: Mapping[str, Mapping[str, int]], where: str
) -> dict[str, Any]:
  """One tower's fields: the preset's, with a `size` expanded from `sizes`; a `size` in `override` replaces the
  preset's size (and every field that size sets), and the override's other fields apply last."""

  def expand(part: Mapping[str, Any]) -> dict[str, Any]:
    part = dict(part)
    if "size" not in part:
      return part
    size = part.pop("size")
    if size not in sizes:
      raise unknown_choice(f"{where}.size", size, sizes)
    return {**sizes[size], **part}

  _check_keys(override, _IMAGE_KEYS if where.endswith("image") else _TEXT_KEYS, where)
  base = expand(preset)
  if "size" in override:
    sized = expand({"size": override["size"]})
    base = {**{k: v for k, v in base.items() if k not in sized}, **sized}
  return {**base, **{k: v for k, v in override.items() if k != "size"}}


def resolve_albef_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The preset `config['preset']` with every other field merged over it, sizes expanded and checked.

  Returns {'image': ViT fields + image_size, 'text': BERT fields + max_positions + context_length, 'fusion_layers',
  'embed_dim', 'independent_heads', 'dtype', 'remat_policy'}. A fusion depth greater than the BERT depth is an error
  naming both keys.
  """
  config = dict(config)
  _check_keys(config, _MODEL_KEYS, "model")
  preset = config.get("preset", "albef-test")
  if preset not in ALBEF_PRESETS:
    raise unknown_choice("model.preset", preset, ALBEF_PRESETS)
  resolved = copy.deepcopy(ALBEF_PRESETS[preset])
  resolved.update({k: v for k, v in config.items() if k not in ("preset", "image", "text")})
  image = _tower(resolved["image"], dict(config.get("image", {})), VIT_SIZES, "model.image")
  text = _tower(resolved["text"], dict(config.get("text", {})), BERT_SIZES, "model.text")
  missing = [f"model.text.{f}" for f in _TEXT_FIELDS if f not in text]
  if missing:
    raise ValueError(f"the ALBEF text config needs {missing} (or a model.text.size from {sorted(BERT_SIZES)})")
  text.setdefault("max_positions", 512)
  text.setdefault("context_length", 30)
  image.setdefault("image_size", 224)
  fusion = int(resolved.get("fusion_layers", 0))
  if not 1 <= fusion <= text["layers"]:
    raise ValueError(
      f"model.fusion_layers={fusion} must lie in [1, model.text.layers={text['layers']}]: the "
      "fusion layers are the last layers of the BERT"
    )
  if text["context_length"] > text["max_positions"]:
    raise ValueError(
      f"model.text.context_length={text['context_length']} exceeds model.text.max_positions={text['max_positions']}"
    )
  dtype = resolved.get("dtype", "float32")
  if dtype not in DTYPES:
    raise unknown_choice("model.dtype", dtype, DTYPES)
  remat_policy = resolved.get("remat_policy", "none")
  check_remat_policy(remat_policy)
  return {
    "image": image,
    "text": text,
    "fusion_layers": fusion,
    "embed_dim": int(resolved.get("embed_dim", 256)),
    "independent_heads": bool(resolved.get("independent_heads", False)),
    "dtype": dtype,
    "remat_policy": remat_policy,
  }


def albef_input_shapes(config: Mapping[str, Any]) -> tuple[tuple[int, int, int], int]:
  """((H, W, 3), context_length) of the configured ALBEF."""
  cfg = resolve_albef_config(config)
  size = cfg["image"]["image_size"]
  return (size, size, 3), cfg["text"]["context_length"]


def causal_padding_mask(tokens: jax.Array, pad_token_id: int = 0) -> jax.Array:
  """Attention mask [B, 1, L, L]: query q may attend key k iff k ≤ q and k is not padding."""
  length = tokens.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
  return causal[None, None] & (tokens != pad_token_id)[:, None, None, :]


class AlbefEncoder(nn.Module):
  """BERT layers named `layer_i` (the Hugging Face layout). Layers 0 … text_layers − 1 only self-attend; then come
  `fusion_layers` fusion layers, each as `images` consecutive blocks that also cross-attend: block i ≥ text_layers
  attends context (i − text_layers) mod `images`."""

  text_layers: int
  fusion_layers: int
  heads: int
  mlp_dim: int
  images: int = 1
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32

  @property
  def depth(self) -> int:
    """Number of layers: text_layers + images · fusion_layers."""
    return self.text_layers + self.images * self.fusion_layers

  @nn.compact
  def __call__(
    self, x: jax.Array, mask: jax.Array | None, start: int, stop: int, contexts: Sequence[Context] = ()
  ) -> jax.Array:
    """Layers start … stop − 1 over x [B, L, W] (`mask` True where self-attention is allowed)."""
    layer = rematerialised(BertLayer, self.remat_policy)
    for i in range(start, stop):
      fusion = i >= self.text_layers
      context, context_mask = contexts[(i - self.text_layers) % self.images] if fusion else (None, None)
      x = layer(self.heads, self.mlp_dim, fusion, self.dtype, name=f"layer_{i}")(x, mask, context, context_mask)
    return x


class AlbefBert(nn.Module):
  """BERT embeddings, `AlbefEncoder` and the tied MLM / LM head (`mlm`). With `causal`, self-attention only looks
  back (the VQA answer decoder)."""

  width: int
  text_layers: int
  fusion_layers: int
  heads: int
  mlp_dim: int
  vocab_size: int
  max_positions: int = 512
  images: int = 1
  causal: bool = False
  pad_token_id: int = 0
  remat_policy: str = "none"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embeddings = BertEmbeddings(self.vocab_size, self.width, self.max_positions, dtype=self.dtype)
    self.encoder = AlbefEncoder(
      self.text_layers, self.fusion_layers, self.heads, self.mlp_dim, self.images, self.remat_policy, self.dtype
    )
    self.mlm = BertMLMHead(self.dtype)

  def attention_mask(self, tokens: jax.Array) -> jax.Array:
    """Self-attention mask of `tokens`: padding only, or causal and padding."""
    if self.causal:
      return causal_padding_mask(tokens, self.pad_token_id)
    return padding_mask(tokens, self.pad_token_id)

  def text(self, tokens: jax.Array) -> jax.Array:
    """Token ids [B, L] → text states [B, L, W] (embeddings and the text layers)."""
    return self.encoder(self.embeddings(tokens), self.attention_mask(tokens), 0, self.text_layers)

  def fuse(self, states: jax.Array, tokens: jax.Array, contexts: Sequence[Context]) -> jax.Array:
    """Text states [B, L, W] of `tokens` → fused states [B, L, W] (the fusion layers, cross-attending `contexts`)."""
    return self.encoder(states, self.attention_mask(tokens), self.text_layers, self.encoder.depth, contexts)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Hidden states [B, L, W] → vocabulary logits [B, L, V], float32."""
    return self.mlm(hidden, self.embeddings.word_embedding_matrix()).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, contexts: Sequence[Context]) -> jax.Array:
    """Vocabulary logits of every position of `tokens` fused with `contexts` (MLM; the decoder's LM)."""
    return self.logits(self.fuse(self.text(tokens), tokens, contexts))


class Temperature(nn.Module):
  """The learnable ITC temperature τ (initialised to `init`), returned clamped to TEMPERATURE_RANGE."""

  init: float = 0.07

  @nn.compact
  def __call__(self) -> jax.Array:
    return jnp.clip(self.param("value", nn.initializers.constant(self.init), ()), *TEMPERATURE_RANGE)


class MlpHead(nn.Module):
  """ALBEF's task head on the fused [CLS]: Dense(width) → ReLU → Dense(classes), float32 logits."""

  classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(x.shape[-1], dtype=self.dtype, name="hidden")(x))
    return nn.Dense(self.classes, dtype=self.dtype, name="out")(x).astype(jnp.float32)


def _image_contexts(visual: nn.Module, images: Sequence[jax.Array]) -> tuple[Context, ...]:
  """Every image through one ViT pass (stacked on the batch axis): one (tokens, None) context per image."""
  tokens = visual(jnp.concatenate(list(images), axis=0))
  return tuple((part, None) for part in jnp.split(tokens, len(images), axis=0))


class Albef(nn.Module):
  """The pre-training model (see the module docstring); outputs are float32, features unit-norm."""

  visual: nn.Module
  bert: AlbefBert
  embed_dim: int = 256
  independent_heads: bool = False
  init_temperature: float = 0.07
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    dense = lambda features: nn.Dense(features, dtype=self.dtype)
    self.vision_proj = dense(self.embed_dim)
    self.text_proj = dense(self.embed_dim)
    if self.independent_heads:
      self.vision_proj_ind = dense(self.embed_dim)
      self.text_proj_ind = dense(self.embed_dim)
    self.itm_head = dense(2)
    self.temp = Temperature(self.init_temperature)

  def encode_image(self, images: jax.Array) -> dict[str, jax.Array]:
    """{'image_tokens': [B, 1 + P, W_v], 'zv': [B, D] (and 'zv_ind' with independent heads)}."""
    tokens = self.visual(images)
    out = {"image_tokens": tokens, "zv": l2_normalize(self.vision_proj(tokens[:, 0]).astype(jnp.float32))}
    if self.independent_heads:
      out["zv_ind"] = l2_normalize(self.vision_proj_ind(tokens[:, 0]).astype(jnp.float32))
    return out

  def encode_text(self, tokens: jax.Array) -> dict[str, jax.Array]:
    """{'text_states': [B, L, W], 'zt': [B, D] (and 'zt_ind' with independent heads)}."""
    states = self.bert.text(tokens)
    out = {"text_states": states, "zt": l2_normalize(self.text_proj(states[:, 0]).astype(jnp.float32))}
    if self.independent_heads:
      out["zt_ind"] = l2_normalize(self.text_proj_ind(states[:, 0]).astype(jnp.float32))
    return out

  def fuse(self, text_states: jax.Array, tokens: jax.Array, image_tokens: jax.Array) -> jax.Array:
    """Fused states [B, L, W] of text states (of `tokens`) cross-attending the image tokens."""
    return self.bert.fuse(text_states, tokens, ((image_tokens, None),))

  def itm_logits(self, fused: jax.Array) -> jax.Array:
    """ITM logits [B, 2] (index 1: the pair matches) from the fused [CLS]."""
    return self.itm_head(fused[:, 0]).astype(jnp.float32)

  def mlm_logits(self, fused: jax.Array) -> jax.Array:
    """MLM logits [B, L, V] of fused states."""
    return self.bert.logits(fused)

  def temperature(self) -> jax.Array:
    """τ clamped to [0.001, 0.5]."""
    return self.temp()

  def __call__(self, images: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
    """Everything once (initialisation): features, ITM logits and MLM logits of the matched pairs, τ."""
    image, text = self.encode_image(images), self.encode_text(tokens)
    fused = self.fuse(text["text_states"], tokens, image["image_tokens"])
    return {
      **image,
      **text,
      "itm_logits": self.itm_logits(fused),
      "mlm_logits": self.mlm_logits(fused),
      "temperature": self.temperature(),
    }


class AlbefClassifier(nn.Module):
  """Classification of an (images, text) pair from the fused [CLS] by an MLP head (`cls_head`): SNLI-VE with one
  image and 3 classes, NLVR² with two images (the bert built with images=2) and 2 classes. With
  `assignment_head`, also the 3-way text-assignment logits (`ta_head`: first image, second image, neither)."""

  visual: nn.Module
  bert: AlbefBert
  classes: int
  assignment_head: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.cls_head = MlpHead(self.classes, self.dtype)
    if self.assignment_head:
      self.ta_head = nn.Dense(3, dtype=self.dtype)

  def fused_cls(self, images: Sequence[jax.Array], tokens: jax.Array) -> jax.Array:
    """The fused [CLS] state [B, W] of the text with its `bert.images` images."""
    if len(images) != self.bert.images:
      raise ValueError(f"this classifier fuses {self.bert.images} image(s) per text, got {len(images)}")
    return self.bert.fuse(self.bert.text(tokens), tokens, _image_contexts(self.visual, images))[:, 0]

  def __call__(self, images: Sequence[jax.Array], tokens: jax.Array) -> dict[str, jax.Array]:
    """{'logits': [B, classes]} and, with the assignment head, {'assignment_logits': [B, 3]}."""
    cls = self.fused_cls(images, tokens)
    out = {"logits": self.cls_head(cls)}
    if self.assignment_head:
      out["assignment_logits"] = self.ta_head(cls).astype(jnp.float32)
    return out


class AlbefVqa(nn.Module):
  """VQA as generation: the question fused with the image (`visual`, `bert`) is the context of a causal answer
  decoder (`decoder`, an AlbefBert with text_layers = 0 and causal self-attention)."""

  visual: nn.Module
  bert: AlbefBert
  decoder: AlbefBert

  def question_states(self, images: jax.Array, questions: jax.Array) -> jax.Array:
    """Fused question states [B, Lq, W] (the decoder's context)."""
    return self.bert.fuse(self.bert.text(questions), questions, _image_contexts(self.visual, [images]))

  def answer_logits(self, answers: jax.Array, states: jax.Array, questions: jax.Array) -> jax.Array:
    """Next-token logits [N, La, V] of answer tokens [N, La] ([CLS] answer [SEP] padding) given the fused states
    [N, Lq, W] of their questions: position t predicts token t + 1."""
    return self.decoder(answers, ((states, padding_mask(questions)),))

  def __call__(self, images: jax.Array, questions: jax.Array, answers: jax.Array) -> jax.Array:
    """Answer logits of one answer per question (initialisation)."""
    return self.answer_logits(answers, self.question_states(images, questions), questions)


TASKS = ("pretrain", "vqa", "nlvr", "ve")


def build_albef(config: Mapping[str, Any], task: str = "pretrain") -> nn.Module:
  """The ALBEF module of `task` ('pretrain', 'vqa', 'nlvr', 've') described by the model `config`."""
  if task not in TASKS:
    raise unknown_choice("albef.task", task, TASKS)
  cfg = resolve_albef_config(config)
  dtype, remat_policy = DTYPES[cfg["dtype"]], cfg["remat_policy"]
  image = {k: v for k, v in cfg["image"].items() if k != "image_size"}
  visual = VisionTransformer(**image, remat_policy=remat_policy, all_tokens=True, dtype=dtype)
  text = cfg["text"]
  fusion = cfg["fusion_layers"]

  def bert(images: int = 1, decoder: bool = False) -> AlbefBert:
    return AlbefBert(
      width=text["width"],
      text_layers=0 if decoder else text["layers"] - fusion,
      fusion_layers=fusion,
      heads=text["heads"],
      mlp_dim=text["mlp_dim"],
      vocab_size=text["vocab_size"],
      max_positions=text["max_positions"],
      images=images,
      causal=decoder,
      remat_policy=remat_policy,
      dtype=dtype,
    )

  if task == "pretrain":
    return Albef(
      visual=visual, bert=bert(), embed_dim=cfg["embed_dim"], independent_heads=cfg["independent_heads"], dtype=dtype
    )
  if task == "vqa":
    return AlbefVqa(visual=visual, bert=bert(), decoder=bert(decoder=True))
  if task == "nlvr":
    return AlbefClassifier(visual=visual, bert=bert(images=2), classes=2, assignment_head=True, dtype=dtype)
  return AlbefClassifier(visual=visual, bert=bert(), classes=3, dtype=dtype)
