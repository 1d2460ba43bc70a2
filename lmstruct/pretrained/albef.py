"""Initial weights of ALBEF models (`albef.init` in a config):

* ``bert`` — a Hugging Face BERT checkpoint (safetensors or torch file; ``all-MiniLM-L6-v2`` names the fetched
  asset) into the `bert` of the pre-training layout. BERT layer i fills ALBEF layer i, whatever the split: with
  preset albef-MiniLM, MiniLM's six layers become 3 text layers (0–2) and 3 fusion layers (3–5); with albef-base,
  BERT-base's twelve become 6 + 6, as in the paper. A fusion layer thus starts from its pre-trained self-attention
  and MLP; its cross-attention starts fresh unless the checkpoint is a BERT decoder that has one. The MLM head
  comes from the checkpoint when it has one (``BertForMaskedLM``, ``BertForPreTraining``), else it starts fresh
  (MiniLM is a bare ``BertModel``).
* ``vit`` — the image tower of a converted CLIP (`lmstruct convert openclip` output, a ViT) into `visual`, its
  positional embedding resized (bicubic) when the patch grid differs.
* ``pretrain`` — the parameters of an ALBEF pre-training run (its workdir's latest checkpoint), checked against
  the run's model config field by field.

Whatever the source, the weights are first put in the pre-training layout and then moved to the task's
(`task_layout`): SNLI-VE keeps it; NLVR² fills both blocks of every replicated fusion layer from the pre-trained
layer; VQA also starts its answer decoder from the fusion layers (decoder layer j ← layer T + j, the embeddings and
LM head from the pre-trained ones), as ALBEF does.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lmstruct.models.albef import resolve_albef_config
from lmstruct.models.factory import resolve_model_config
from lmstruct.pretrained import assets, bert, export
from lmstruct.pretrained.torch_reader import CheckpointError, read_state_dict
from lmstruct.train import checkpoint

#: Named BERT checkpoints (the asset cache) besides file paths.
BERT_CHECKPOINTS = {"all-MiniLM-L6-v2": lambda: assets.require("all-MiniLM-L6-v2", "model.safetensors")}
#: The BERT key map with the parts a plain BERT checkpoint does not hold, taken when it has them: the fusion layers'
#: cross-attention (a BERT decoder has it) and the MLM head; BertForPreTraining's next-sentence head is ignored.
ALBEF_BERT_KEYMAP = dataclasses.replace(
  bert.KEYMAP,
  optional=(r"params/encoder/layer_\d+/crossattention/.*", r"params/mlm/.*"),
  ignored=(*bert.KEYMAP.ignored, r"cls\.seq_relationship\..*"),
)


def bert_params(spec: str, expected: Mapping[str, Any]) -> dict[str, Any]:
  """The `bert` parameters (of shapes `expected`) from checkpoint `spec`: a name of BERT_CHECKPOINTS or a path.
  Fresh and absent-optional parameters are left out."""
  path = BERT_CHECKPOINTS[spec]() if spec in BERT_CHECKPOINTS else pathlib.Path(spec)
  converted = bert.convert_bert(read_state_dict(path), {"params": expected}, str(path), ALBEF_BERT_KEYMAP)
  return converted.get("params", {})


def resize_positional_embedding(embedding: np.ndarray, tokens: int) -> np.ndarray:
  """[1 + g², W] → [1 + G², W] with G² = tokens − 1: the class row kept, the g × g grid resized bicubically."""
  embedding = np.asarray(embedding, np.float32)
  if embedding.shape[0] == tokens:
    return embedding
  old, new = round((embedding.shape[0] - 1) ** 0.5), round((tokens - 1) ** 0.5)
  if old * old != embedding.shape[0] - 1 or new * new != tokens - 1:
    raise CheckpointError(
      f"positional embedding of {embedding.shape[0]} tokens cannot be resized to {tokens}: "
      "both need a class token and a square patch grid"
    )
  grid = embedding[1:].reshape(old, old, -1)
  resized = jax.image.resize(grid, (new, new, grid.shape[-1]), method="cubic")
  return np.concatenate([embedding[:1], np.asarray(resized).reshape(new * new, -1)])


def vit_params(directory: str, expected: Mapping[str, Any], activation: str) -> dict[str, Any]:
  """The `visual` parameters from a converted CLIP directory with a ViT image tower of the same width and depth."""
  saved_config, variables = export.load_pretrained(directory)
  image = resolve_model_config(saved_config)["image"]
  if image["kind"] != "vit":
    raise CheckpointError(f"{directory}: its image tower is a {image['kind']!r}, ALBEF's is a ViT")
  saved_activation = image.get("activation", "gelu")
  if saved_activation != activation:
    raise CheckpointError(
      f"{directory}: the ViT was trained with activation {saved_activation!r} but "
      f"model.image.activation is {activation!r}"
    )
  params = dict(variables["params"]["image_tower"])
  tokens = expected["positional_embedding"].shape[0]
  params["positional_embedding"] = resize_positional_embedding(params["positional_embedding"], tokens)
  return params


def _architecture(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The fields of an ALBEF model config that weights depend on (not image_size, context_length, dtype or
  remat_policy)."""
  cfg = resolve_albef_config(model_config)
  fields = {f"model.image.{k}": v for k, v in cfg["image"].items() if k != "image_size"}
  fields.update({f"model.text.{k}": v for k, v in cfg["text"].items() if k != "context_length"})
  fields.update({"model.fusion_layers": cfg["fusion_layers"], "model.embed_dim": cfg["embed_dim"]})
  return fields


def pretrain_run_params(workdir: str | pathlib.Path, model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The parameters (host arrays) of the latest checkpoint of the ALBEF pre-training run in `workdir`, after checking
  that it pre-trained the model `model_config` describes (CheckpointError naming the first differing field)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"albef.init.pretrain: no checkpoints under {directory}")
  manager = checkpoint.make_manager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"albef.init.pretrain: no checkpoint in {directory}")
    saved_config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    if saved_config.get("task") != "albef" or dict(saved_config.get("albef", {})).get("task", "pretrain") != "pretrain":
      raise CheckpointError(
        f"{workdir} is not an ALBEF pre-training run (task {saved_config.get('task')!r}, "
        f"albef.task {dict(saved_config.get('albef', {})).get('task')!r})"
      )
    saved, wanted = _architecture(saved_config["model"]), _architecture(model_config)
    for field in sorted(set(saved) | set(wanted)):
      if saved.get(field) != wanted.get(field):
        raise CheckpointError(
          f"{field} is {saved.get(field)!r} in the pre-training run {workdir} but {wanted.get(field)!r} in this config"
        )
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata = manager.item_metadata(step)["state"].tree
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=device), metadata)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  finally:
    manager.close()
  return jax.tree.map(np.asarray, dict(state["params"]))


def _layers(params: Mapping[str, Any]) -> dict[str, Any]:
  return dict(params.get("encoder", {}))


def task_layout(params: Mapping[str, Any], task: str, text_layers: int, fusion_layers: int) -> dict[str, Any]:
  """Pre-training-layout parameters (possibly partial) → those of `task`'s model (module docstring). Parts the task
  model lacks (the projections, the ITM head, τ, the MLM head of classifiers) are dropped."""
  params = dict(params)
  if task == "pretrain":
    return params
  out: dict[str, Any] = {}
  if "visual" in params:
    out["visual"] = params["visual"]
  source = dict(params.get("bert", {}))
  layers = _layers(source)
  encoder = {name: value for name, value in layers.items() if int(name.split("_")[1]) < text_layers}
  for j in range(fusion_layers):
    name = f"layer_{text_layers + j}"
    if name not in layers:
      continue
    if task == "nlvr":
      encoder[f"layer_{text_layers + 2 * j}"] = layers[name]
      encoder[f"layer_{text_layers + 2 * j + 1}"] = layers[name]
    else:
      encoder[name] = layers[name]
  text_part = {k: v for k, v in {"embeddings": source.get("embeddings"), "encoder": encoder}.items() if v}
  if text_part:
    out["bert"] = text_part
  if task == "vqa":
    decoder = {
      "embeddings": source.get("embeddings"),
      "mlm": source.get("mlm"),
      "encoder": {
        f"layer_{j}": layers[f"layer_{text_layers + j}"]
        for j in range(fusion_layers)
        if f"layer_{text_layers + j}" in layers
      },
    }
    decoder = {k: v for k, v in decoder.items() if v}
    if decoder:
      out["decoder"] = decoder
  return out
