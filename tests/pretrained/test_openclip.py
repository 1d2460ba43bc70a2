"""open_clip / OpenAI CLIP checkpoint import: parity with open_clip 3.3.0 golden outputs, real-size key layouts,
the converter command, and its errors."""

import json
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmstruct.data.tokenize import get_tokenizer
from lmstruct.models import build_model
from lmstruct.models.layout import is_scanned
from lmstruct.pretrained import openclip
from lmstruct.pretrained.export import load_pretrained, merge_pretrained
from lmstruct.pretrained.mapping import flatten
from lmstruct.pretrained.torch_reader import CheckpointError, read_state_dict

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "openclip_golden.json").read_text())
GOLDEN = dict(np.load(FIXTURES / "openclip_golden.npz"))
EOT, SMALL_VOCAB = 49407, 256
TOLERANCE = 1e-5


def small_vocab(ids: np.ndarray) -> np.ndarray:
  """The fixtures' map from CLIP ids into the 256-token test vocabulary (see scripts/make_openclip_golden.py)."""
  return np.where(ids == EOT, SMALL_VOCAB - 1, ids % (SMALL_VOCAB - 1)).astype(np.int32)


def run_model(config, variables, images, tokens):
  """Unnormalised image and text embeddings (projected tower outputs) and the image→text logits of the model's
  outputs, in one compiled call."""

  def outputs(m, x, t):
    out = m(x, t)
    return {
      "image_features": m.image_projection(m.image_tower(x)),
      "text_features": m.text_projection(m.text_tower(t)),
      "logits": out["logit_scale"] * out["zv"] @ out["zt"].T,
    }

  model = build_model(config)
  return jax.jit(lambda v, x, t: model.apply(v, x, t, method=outputs))(variables, images, tokens)


def initial_variables(config):
  """Zeros in the model's variable shapes: a stand-in for the training init (which, for the ResNet, takes XLA
  many seconds to compile); the compared outputs do not read the variables left fresh."""
  shapes = openclip.expected_variables(config)
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def assert_matches_golden(outputs, case):
  for key, value in outputs.items():
    error = float(np.abs(np.asarray(value) - GOLDEN[f"{case}/{key}"]).max())
    assert error <= TOLERANCE, f"{case} {key}: max abs error {error:.2e}"


def test_fixture_tokens_are_lmstruct_clip_tokenizer_ids():
  raw = get_tokenizer("clip", context_length=16)(META["texts"])
  np.testing.assert_array_equal(raw, GOLDEN["raw_tokens"])
  np.testing.assert_array_equal(small_vocab(raw), GOLDEN["tokens"])


LAYOUTS = {"unrolled": {}, "scanned": {"scan_layers": True}}


@pytest.mark.parametrize("params_layout", sorted(LAYOUTS))
@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_converted_weights_reproduce_open_clip(case, params_layout):
  spec = META["cases"][case]
  config = {**spec["lmstruct_model"], **LAYOUTS[params_layout]}
  converted = openclip.convert_openclip(read_state_dict(FIXTURES / spec["file"]), config, spec["file"])
  assert is_scanned(converted) == (params_layout == "scanned")
  variables, fresh = merge_pretrained(initial_variables(config), converted)
  assert {p for p in fresh if "_ind/" not in p} == {"params/logit_bias"}
  assert all("_projection_ind/" in p for p in fresh if p != "params/logit_bias")
  assert_matches_golden(run_model(config, variables, GOLDEN[f"{case}/images"], GOLDEN["tokens"]), case)


@pytest.mark.parametrize("params_layout", sorted(LAYOUTS))
@pytest.mark.parametrize("preset", ["RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_real_size_open_clip_layouts_map_onto_presets(preset, params_layout):
  shapes = json.loads((FIXTURES / "openclip_preset_shapes.json").read_text())[preset]
  state_dict = {k: jax.ShapeDtypeStruct(tuple(v), jnp.float16) for k, v in shapes.items()}
  config = {**openclip.model_config_for(preset, "quick_gelu"), **LAYOUTS[params_layout]}
  converted = jax.eval_shape(lambda sd: openclip.convert_openclip(sd, config, preset), state_dict)
  expected = flatten(openclip.expected_variables(config))
  got = flatten(converted)
  assert set(expected) - set(got) == {p for p in expected if "_projection_ind/" in p or p == "params/logit_bias"}
  for path, leaf in got.items():
    assert (leaf.shape, leaf.dtype) == (expected[path].shape, jnp.float32), path


def write_safetensors(path: pathlib.Path, tensors: dict) -> None:
  """A safetensors file written from its specification (8-byte header size, JSON header, raw data)."""
  header, blobs, offset = {}, [], 0
  for name, value in tensors.items():
    data = np.ascontiguousarray(value).tobytes()
    header[name] = {
      "dtype": {np.float16: "F16", np.float32: "F32"}[value.dtype.type],
      "shape": list(value.shape),
      "data_offsets": [offset, offset + len(data)],
    }
    blobs.append(data)
    offset += len(data)
  encoded = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_convert_command_writes_a_loadable_model(tmp_path, capsys):
  # The TorchScript fixture is the `test` preset with a 256-token vocabulary; give it the preset's 49,408 rows,
  # with the end-of-text embedding at 49407, and the golden outputs must come back through the command.
  state_dict = read_state_dict(FIXTURES / "openclip_vit_openai_fp16_torchscript.pt")
  small = state_dict["token_embedding.weight"]
  table = np.zeros((EOT + 1, small.shape[1]), small.dtype)
  table[: SMALL_VOCAB - 1], table[EOT] = small[: SMALL_VOCAB - 1], small[SMALL_VOCAB - 1]
  checkpoint = tmp_path / "vit_test.safetensors"
  write_safetensors(checkpoint, {**state_dict, "token_embedding.weight": table})
  out = tmp_path / "converted"
  assert openclip.main(["--checkpoint", str(checkpoint), "--model", "test", "--out", str(out)]) == 0
  assert "independent heads and logit_bias start from the training init" in capsys.readouterr().out
  config, pretrained = load_pretrained(out)
  assert config == {"preset": "test", "text": {"activation": "quick_gelu"}, "image": {"activation": "quick_gelu"}}
  variables, _ = merge_pretrained(initial_variables(config), pretrained)
  tokens = np.where(GOLDEN["tokens"] == SMALL_VOCAB - 1, EOT, GOLDEN["tokens"])
  assert_matches_golden(run_model(config, variables, GOLDEN["vit_openai/images"], tokens), "vit_openai")


def test_resnet_model_config_keeps_image_activation_out():
  assert openclip.model_config_for("RN50", "quick_gelu") == {"preset": "RN50", "text": {"activation": "quick_gelu"}}
  assert openclip.model_config_for("ViT-B-32", "gelu")["image"] == {"activation": "gelu"}


@pytest.fixture(scope="module")
def vit_state_dict():
  return read_state_dict(FIXTURES / "openclip_vit_gelu.safetensors")


VIT_CONFIG = META["cases"]["vit_gelu"]["lmstruct_model"]


def test_missing_key_is_named(vit_state_dict):
  broken = {k: v for k, v in vit_state_dict.items() if k != "visual.proj"}
  with pytest.raises(CheckpointError, match=r"missing keys: 'visual\.proj' \(for params/image_projection/kernel\)"):
    openclip.convert_openclip(broken, VIT_CONFIG, "vit.safetensors")


def test_wrong_shape_is_named(vit_state_dict):
  broken = {**vit_state_dict, "visual.positional_embedding": np.zeros((50, 32), np.float32)}
  with pytest.raises(
    CheckpointError,
    match=r"'visual\.positional_embedding' has shape \(50, 32\), giving \(50, 32\) "
    r"for params/image_tower/positional_embedding which needs \(17, 32\)",
  ):
    openclip.convert_openclip(broken, VIT_CONFIG, "vit.safetensors")


def test_unexpected_key_is_named(vit_state_dict):
  broken = {**vit_state_dict, "visual.transformer.resblocks.2.ln_1.weight": np.ones(32, np.float32)}
  with pytest.raises(CheckpointError, match=r"unexpected keys: visual\.transformer\.resblocks\.2\.ln_1\.weight"):
    openclip.convert_openclip(broken, VIT_CONFIG, "vit.safetensors")


def test_checkpoint_of_another_family_is_refused(vit_state_dict):
  rn_config = META["cases"]["rn_openai"]["lmstruct_model"]
  with pytest.raises(CheckpointError) as error:
    openclip.convert_openclip(vit_state_dict, rn_config, "vit.safetensors")
  message = str(error.value)
  assert "missing keys: 'visual.layer1.0.bn1.running_mean' (for batch_stats/image_tower/layer1_0/bn1/mean)" in message
  assert (
    "'visual.conv1.weight' has shape (32, 3, 8, 8), giving (8, 8, 3, 32) for params/image_tower/stem_conv1" in message
  )
  assert "unexpected keys: visual.class_embedding, visual.ln_post.bias" in message


def test_unsupported_architecture_names_the_valid_ones(tmp_path, capsys):
  checkpoint = str(FIXTURES / "openclip_vit_gelu.safetensors")
  assert openclip.main(["--checkpoint", checkpoint, "--model", "ViT-H-14", "--out", str(tmp_path / "o")]) == 1
  message = capsys.readouterr().err
  assert "unsupported architecture 'ViT-H-14'" in message
  for preset in ("RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14"):
    assert f"'{preset}'" in message
  assert "LiT-EfficientNetLite0-MiniLM" not in openclip.clip_presets()
  with pytest.raises(CheckpointError, match="cannot fill a model with a 'efficientnet' image tower"):
    openclip.convert_openclip({}, {"preset": "LiT-EfficientNetLite0-MiniLM"})
  assert (
    openclip.main(["--checkpoint", checkpoint, "--model", "test", "--activation", "relu", "--out", str(tmp_path / "o")])
    == 1
  )
  assert "unknown activation 'relu'" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()
  (tmp_path / "o").mkdir()
  (tmp_path / "o" / "model.json").write_text("{}")
  assert openclip.main(["--checkpoint", checkpoint, "--model", "test", "--out", str(tmp_path / "o")]) == 1
  assert "already exists and is not empty" in capsys.readouterr().err
  assert (
    openclip.main(["--checkpoint", str(tmp_path / "none.pt"), "--model", "test", "--out", str(tmp_path / "p")]) == 1
  )
  assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("params_layout", sorted(LAYOUTS))
def test_training_starts_from_a_converted_checkpoint(tmp_path, params_layout):
  from lmstruct.config import base_config
  from lmstruct.train.loop import Trainer

  checkpoint = tmp_path / "vit.safetensors"
  state_dict = read_state_dict(FIXTURES / "openclip_vit_openai_fp16_torchscript.pt")
  small = state_dict["token_embedding.weight"]
  table = np.zeros((EOT + 1, small.shape[1]), small.dtype)
  table[: SMALL_VOCAB - 1], table[EOT] = small[: SMALL_VOCAB - 1], small[SMALL_VOCAB - 1]
  write_safetensors(checkpoint, {**state_dict, "token_embedding.weight": table})
  assert openclip.main(["--checkpoint", str(checkpoint), "--model", "test", "--out", str(tmp_path / "conv")]) == 0
  model_config, pretrained = load_pretrained(tmp_path / "conv")
  config = base_config()
  config.model = {**model_config, **LAYOUTS[params_layout]}
  config.init.pretrained = str(tmp_path / "conv")
  config.mesh.shape = {"data": 1}
  params = jax.device_get(Trainer(config, tmp_path / "run").state.params)
  np.testing.assert_array_equal(
    params["image_tower"]["patch_embed"]["kernel"], pretrained["params"]["image_tower"]["patch_embed"]["kernel"]
  )
  np.testing.assert_array_equal(params["text_projection"]["kernel"], pretrained["params"]["text_projection"]["kernel"])
  blocks = params["image_tower"]["transformer"]
  for i in range(2):  # the converted directory holds unrolled blocks; the run's model may scan them
    block = (
      blocks["blocks"]["attn"]["qkv"]["kernel"][i]
      if params_layout == "scanned"
      else (blocks[f"block_{i}"]["attn"]["qkv"]["kernel"])
    )
    np.testing.assert_array_equal(
      block, pretrained["params"]["image_tower"]["transformer"][f"block_{i}"]["attn"]["qkv"]["kernel"]
    )
  assert "image_projection_ind" not in pretrained["params"]
  assert np.abs(params["image_projection_ind"]["kernel"]).sum() > 0  # the independent head keeps its random init
