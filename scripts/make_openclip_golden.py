"""Write golden open_clip 3.3.0 checkpoints and outputs for lmstruct's checkpoint-import parity tests.

The outputs, under ``tests/pretrained/fixtures/``, are committed; this script is run once, by hand, in a separate
virtual environment that has open_clip (it is not a dependency of lmstruct):

    python3 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0
    /work/peer-venv/bin/python scripts/make_openclip_golden.py

Three small random-weight CLIP models, one per architecture family and checkpoint kind:

* ``vit_gelu``: a ViT with GELU, float32, saved as safetensors;
* ``vit_openai``: a ViT with QuickGELU, partially float16 as OpenAI ships its weights, saved as a TorchScript
  archive (``torch.jit.script`` + ``torch.jit.save``, the kind of file OpenAI released);
* ``rn_openai``: a modified ResNet with QuickGELU, partially float16, saved as a ``torch.save`` zip state dict.

Their sizes are lmstruct's ``test`` / ``test-rn`` presets with a 256-token vocabulary (the real 49,408-row token
embedding would make the fixtures megabytes). Norm, batch-norm and bias parameters are randomised too (PyTorch
initialises them to constants, which would hide a swapped mapping), and the logit scale is set to 20. Golden
outputs are computed in float32 from the weights exactly as stored (float16 ones included).

Texts are real captions tokenised by ``open_clip.tokenize`` (context 16); the raw ids are stored, and the model
input maps them into the small vocabulary: end-of-text 49407 → 255, every other id i → i mod 255 (so that
open_clip's argmax pooling and lmstruct's first-end-of-text pooling pick the same position).

``openclip_preset_shapes.json`` lists the state-dict key shapes of the full-size RN50, ViT-B-32, ViT-B-16 and
ViT-L-14 models (plus the ``input_resolution`` / ``context_length`` / ``vocab_size`` entries OpenAI's files hold),
so the key mapping is checked at real sizes without real weights.
"""

import io
import json
import pathlib
import zipfile

import numpy as np
import open_clip
import safetensors.torch
import torch
from open_clip.model import CLIP, convert_weights_to_lp

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "pretrained" / "fixtures"
VOCAB, CONTEXT, EOT = 256, 16, 49407
TEXTS = [
  "A man riding a wave on top of a surfboard.",
  "Two dogs playing with a frisbee in the park!",
  "a photo of a cat",
]
TEXT_CFG = dict(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=2)
VIT_CFG = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32)
RN_CFG = dict(layers=(1, 1, 1, 1), width=4, head_width=64, image_size=64)
SMALL_TEXT = {"vocab_size": VOCAB, "eot_token_id": VOCAB - 1}
CASES = {
  "vit_gelu": dict(
    vision=VIT_CFG,
    quick_gelu=False,
    fp16=False,
    file="openclip_vit_gelu.safetensors",
    lmstruct={"preset": "test", "text": SMALL_TEXT},
  ),
  "vit_openai": dict(
    vision=VIT_CFG,
    quick_gelu=True,
    fp16=True,
    file="openclip_vit_openai_fp16_torchscript.pt",
    lmstruct={
      "preset": "test",
      "image": {"activation": "quick_gelu"},
      "text": {**SMALL_TEXT, "activation": "quick_gelu"},
    },
  ),
  "rn_openai": dict(
    vision=RN_CFG,
    quick_gelu=True,
    fp16=True,
    file="openclip_rn_openai_fp16.pt",
    lmstruct={
      "preset": "test-rn",
      "image": {"width": 4, "image_size": 64},
      "text": {**SMALL_TEXT, "activation": "quick_gelu"},
    },
  ),
}
PRESETS = ("RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14")


def small_vocab(ids: np.ndarray) -> np.ndarray:
  """Raw CLIP ids → ids of the 256-token test vocabulary (end-of-text → 255, others mod 255)."""
  return np.where(ids == EOT, VOCAB - 1, ids % (VOCAB - 1)).astype(np.int64)


def randomise_constants(model: torch.nn.Module, generator: torch.Generator) -> None:
  """Random values for the parameters and buffers PyTorch initialises to constants."""
  with torch.no_grad():
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
      if not tensor.is_floating_point():
        continue
      if name.endswith("running_var") or (tensor.ndim == 1 and name.endswith(".weight")):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith(("running_mean", "bias")):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    model.logit_scale.fill_(float(np.log(20.0)))


def build(case: dict, seed: int) -> CLIP:
  """A random CLIP of the case's architecture (weights rounded to float16 where OpenAI's are)."""
  torch.manual_seed(seed)
  model = CLIP(16, case["vision"], TEXT_CFG, quick_gelu=case["quick_gelu"]).eval()
  randomise_constants(model, torch.Generator().manual_seed(seed))
  if case["fp16"]:
    convert_weights_to_lp(model, torch.float16)
  return model


def golden(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, np.ndarray]:
  """Unnormalised embeddings and image→text logits, computed in float32 from the stored weights."""
  model = model.float()
  with torch.no_grad():
    image = model.encode_image(images)
    text = model.encode_text(tokens)
    out = model(images, tokens)
    logits = out[2] * out[0] @ out[1].T
  return {"image_features": image.numpy(), "text_features": text.numpy(), "logits": logits.numpy()}


def without_debug_info(data: bytes) -> bytes:
  """A TorchScript archive without its ``*.debug_pkl`` source maps (they are most of a small archive's size)."""
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
    for info in src.infolist():
      if not info.filename.endswith(".debug_pkl"):
        dst.writestr(info, src.read(info))
  return out.getvalue()


def save(model: CLIP, case: dict, path: pathlib.Path) -> None:
  """Write the case's checkpoint file and check that PyTorch reads back the same state dict."""
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if path.suffix == ".safetensors":
    safetensors.torch.save_file(state, str(path))
    back = safetensors.torch.load_file(str(path))
  elif "torchscript" in path.name:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    path.write_bytes(without_debug_info(buffer.getvalue()))
    back = torch.jit.load(str(path)).state_dict()
  else:
    torch.save(state, str(path))
    back = torch.load(str(path), weights_only=True)
  for key, value in state.items():
    assert torch.equal(back[key], value) and back[key].dtype == value.dtype, key


def preset_shapes() -> dict[str, dict[str, list[int]]]:
  """State-dict key → shape of the full-size open_clip models (built on the meta device, no weights)."""
  shapes = {}
  for name in PRESETS:
    with torch.device("meta"):
      model = open_clip.create_model(name, pretrained=None, device="meta")
    shapes[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    shapes[name].update({"input_resolution": [], "context_length": [], "vocab_size": []})
  return shapes


def main() -> None:
  """Write every fixture."""
  FIXTURES.mkdir(parents=True, exist_ok=True)
  raw = open_clip.tokenize(TEXTS, context_length=CONTEXT).numpy()
  tokens = torch.from_numpy(small_vocab(raw))
  generator = torch.Generator().manual_seed(1234)
  arrays = {"raw_tokens": raw.astype(np.int32), "tokens": tokens.numpy().astype(np.int32)}
  meta = {"generator": f"open_clip {open_clip.__version__}, torch {torch.__version__}", "texts": TEXTS, "cases": {}}
  for seed, (name, case) in enumerate(CASES.items()):
    size = case["vision"]["image_size"]
    images = torch.randn((3, 3, size, size), generator=generator)
    model = build(case, seed)
    save(model, case, FIXTURES / case["file"])
    arrays[f"{name}/images"] = images.permute(0, 2, 3, 1).numpy()
    arrays.update({f"{name}/{key}": value for key, value in golden(model, images, tokens).items()})
    meta["cases"][name] = {
      "file": case["file"],
      "lmstruct_model": case["lmstruct"],
      "open_clip": {
        "vision_cfg": case["vision"],
        "text_cfg": TEXT_CFG,
        "quick_gelu": case["quick_gelu"],
        "fp16": case["fp16"],
      },
    }
  np.savez_compressed(FIXTURES / "openclip_golden.npz", **arrays)
  (FIXTURES / "openclip_golden.json").write_text(json.dumps(meta, indent=1) + "\n")
  (FIXTURES / "openclip_preset_shapes.json").write_text(json.dumps(preset_shapes(), separators=(",", ":")) + "\n")
  print(f"wrote {len(CASES)} cases and {len(PRESETS)} preset shape lists to {FIXTURES}")


if __name__ == "__main__":
  main()
