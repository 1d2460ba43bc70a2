"""The restricted checkpoint reader: every file kind, refusal of foreign pickled globals, malformed files."""

import collections
import io
import json
import pathlib
import pickle
import struct
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from lmstruct.pretrained import assets
from lmstruct.pretrained.torch_reader import (
  LEGACY_MAGIC,
  CheckpointError,
  find_state_dict,
  read_checkpoint,
  read_state_dict,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


class Exploit:
  """Pickles as a call to builtins.exec that would create `marker`."""

  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _zip(path: pathlib.Path, members: dict[str, bytes]) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return path


class Storage:
  """A float32 storage: pickled as PyTorch's persistent id ('storage', torch.FloatStorage, key, 'cpu', numel)."""

  def __init__(self, key: str, values: np.ndarray):
    self.key, self.values = key, values.astype("<f4")


class Tensor:
  """Pickled as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
    self.args = (storage, offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


@pytest.fixture
def torch_pickle(monkeypatch):
  """dumps(obj) → (pickle bytes in PyTorch's format, {key: storage}), built from the format's description with
  stand-in `torch` modules (PyTorch itself is not installed)."""
  torch_module, utils_module = types.ModuleType("torch"), types.ModuleType("torch._utils")
  float_storage = type("FloatStorage", (), {"__module__": "torch"})
  torch_module.FloatStorage = float_storage

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called while pickling")

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", torch_module)
  monkeypatch.setitem(sys.modules, "torch._utils", utils_module)

  def dumps(obj):
    storages = {}

    class Pickler(pickle.Pickler):
      def persistent_id(self, value):
        if isinstance(value, Storage):
          storages[value.key] = value
          return ("storage", float_storage, value.key, "cpu", value.values.size)
        return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue(), storages

  return dumps


def test_torch_zip_written_from_the_format_spec(tmp_path, torch_pickle):
  storage = Storage("0", np.arange(12, dtype=np.float32))
  transposed = Tensor(storage, 2, (3, 2), (1, 3))  # a strided view: element [i, j] = storage[2 + i + 3j]
  data, storages = torch_pickle(
    {
      "epoch": 7,
      "state_dict": collections.OrderedDict(
        [("module.visual.proj", transposed), ("module.logit_scale", Tensor(storage, 11, (), ()))]
      ),
    }
  )
  path = _zip(
    tmp_path / "ckpt.pt",
    {
      "ckpt/data.pkl": data,
      "ckpt/byteorder": b"little",
      **{f"ckpt/data/{k}": v.values.tobytes() for k, v in storages.items()},
    },
  )
  sd = read_state_dict(path)
  np.testing.assert_array_equal(sd["visual.proj"], [[2, 5], [3, 6], [4, 7]])
  assert sd["logit_scale"].shape == () and sd["logit_scale"] == 11
  out_of_range, _ = torch_pickle({"w": Tensor(storage, 4, (3, 3), (3, 1))})
  _zip(path, {"ckpt/data.pkl": out_of_range, "ckpt/data/0": storage.values.tobytes()})
  with pytest.raises(CheckpointError, match=r"size \(3, 3\), stride \(3, 1\) at offset 4 does not fit storage '0'"):
    read_checkpoint(path)


def test_legacy_file_written_from_the_format_spec(tmp_path, torch_pickle):
  storage = Storage("140", np.asarray([1.5, -2.0, 3.25], np.float32))
  data, _ = torch_pickle({"bias": Tensor(storage, 0, (3,), (1,))})
  header = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, {"little_endian": True}))
  path = tmp_path / "legacy.pth"
  path.write_bytes(header + data + pickle.dumps(["140"], protocol=2) + struct.pack("<q", 3) + storage.values.tobytes())
  np.testing.assert_array_equal(read_state_dict(path)["bias"], [1.5, -2.0, 3.25])
  path.write_bytes(header + data + pickle.dumps(["140"], protocol=2) + struct.pack("<q", 4) + storage.values.tobytes())
  with pytest.raises(CheckpointError, match="storage '140' records 4 elements, expected 3"):
    read_checkpoint(path)


def test_safetensors_fixture_reads_float32_tensors():
  sd = read_state_dict(FIXTURES / "openclip_vit_gelu.safetensors")
  assert sd["visual.conv1.weight"].shape == (32, 3, 8, 8)
  assert sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)
  assert {v.dtype for v in sd.values()} == {np.dtype(np.float32)}
  assert sd["logit_scale"].shape == () and float(sd["logit_scale"]) == pytest.approx(np.log(20.0))


def test_safetensors_bfloat16_and_integer_tensors(tmp_path):
  weights = np.asarray([[1.5, -2.25], [0.0, 3.0]], ml_dtypes.bfloat16).tobytes()
  counter = np.asarray(7, "<i8").tobytes()
  header = json.dumps(
    {
      "__metadata__": {"format": "pt"},
      "w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
      "n": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
    }
  ).encode()
  path = tmp_path / "mixed.safetensors"
  path.write_bytes(struct.pack("<Q", len(header)) + header + weights + counter)
  sd = read_state_dict(path)
  np.testing.assert_array_equal(sd["w"].astype(np.float32), [[1.5, -2.25], [0.0, 3.0]])
  assert sd["n"].dtype == np.int64 and sd["n"] == 7


def test_torch_zip_fixture_keeps_partial_float16_and_batch_norm_counters():
  sd = read_state_dict(FIXTURES / "openclip_rn_openai_fp16.pt")
  assert sd["visual.conv1.weight"].dtype == np.float16  # OpenAI-style: convolutions and linears in half precision
  assert sd["visual.bn1.running_var"].dtype == np.float32
  assert sd["visual.bn1.num_batches_tracked"].dtype == np.int64 and sd["visual.bn1.num_batches_tracked"].shape == ()
  assert (sd["visual.bn1.running_var"] > 0.5).all()  # the randomised statistics, not PyTorch's constant init


def test_torchscript_fixture_yields_module_tree_tensors():
  sd = read_state_dict(FIXTURES / "openclip_vit_openai_fp16_torchscript.pt")
  assert sd["visual.transformer.resblocks.1.attn.in_proj_weight"].dtype == np.float16
  assert sd["visual.ln_pre.weight"].dtype == np.float32
  assert "attn_mask" in sd and sd["attn_mask"].shape == (16, 16)  # a buffer in TorchScript's module tree
  assert not any(k.endswith("training") for k in sd)


def test_legacy_torch_save_file_reads_the_efficientnet_weights():
  sd = read_state_dict(assets.require("efficientnet_lite0", "efficientnet-lite0.pth"))
  assert len(sd) == 296
  assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_blocks.15._project_conv.weight"].shape == (
    320,
    1152,
    1,
    1,
  )
  assert sd["_fc.weight"].shape == (1000, 1280) and sd["_bn0.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("kind", ["zip", "torchscript", "legacy"])
def test_foreign_global_is_refused_without_running_it(tmp_path, kind):
  marker = tmp_path / "pwned"
  payload = pickle.dumps(Exploit(marker), protocol=2)
  if kind == "legacy":
    path = tmp_path / "model.pth"
    path.write_bytes(payload)
  else:
    extra = {"archive/constants.pkl": pickle.dumps(())} if kind == "torchscript" else {}
    path = _zip(tmp_path / "model.pt", {"archive/data.pkl": payload, "archive/byteorder": b"little", **extra})
  with pytest.raises(CheckpointError, match=r"refusing to load global (__builtin__|builtins)\.exec: "):
    read_checkpoint(path)
  assert not marker.exists()


def test_torchscript_classes_are_only_allowed_in_torchscript_archives(tmp_path):
  payload = b"\x80\x02c__torch__.model\nNet\nq\x00)\x81q\x01}q\x02b."  # NEWOBJ of a __torch__ class + BUILD
  with pytest.raises(CheckpointError, match=r"refusing to load global __torch__\.model\.Net"):
    read_checkpoint(_zip(tmp_path / "plain.pt", {"archive/data.pkl": payload}))
  scripted = _zip(
    tmp_path / "scripted.pt",
    {"archive/data.pkl": payload, "archive/constants.pkl": b"\x80\x02).", "archive/byteorder": b"little"},
  )
  assert read_checkpoint(scripted) == {}
  not_a_dict = _zip(
    tmp_path / "odd.pt",
    {"archive/data.pkl": payload.replace(b"}q\x02b", b"]q\x02b"), "archive/constants.pkl": b"\x80\x02)."},
  )
  with pytest.raises(CheckpointError, match="TorchScript object state is a list"):
    read_checkpoint(not_a_dict)


def test_malformed_files_name_the_problem(tmp_path):
  header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
  truncated = tmp_path / "short.safetensors"
  truncated.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
  with pytest.raises(CheckpointError, match="'w' byte range 0..16 lies outside"):
    read_checkpoint(truncated)
  wrong_dtype = tmp_path / "complex.safetensors"
  header = json.dumps({"z": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
  wrong_dtype.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
  with pytest.raises(CheckpointError, match="'z' has unsupported dtype C64"):
    read_checkpoint(wrong_dtype)
  text = tmp_path / "notes.txt"
  text.write_text("not a checkpoint at all")
  with pytest.raises(CheckpointError, match="not a checkpoint"):
    read_checkpoint(text)
  big = _zip(tmp_path / "big.pt", {"archive/data.pkl": pickle.dumps({}), "archive/byteorder": b"big"})
  with pytest.raises(CheckpointError, match="big-endian"):
    read_checkpoint(big)
  other_zip = _zip(tmp_path / "other.zip", {"readme.txt": b"hello"})
  with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
    read_checkpoint(other_zip)
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    read_checkpoint(tmp_path / "absent.pt")


def test_missing_storage_member_is_named(tmp_path):
  data = io.BytesIO()
  with zipfile.ZipFile(FIXTURES / "openclip_rn_openai_fp16.pt") as src, zipfile.ZipFile(data, "w") as dst:
    for info in src.infolist():
      if not info.filename.endswith("/data/0"):
        dst.writestr(info, src.read(info))
  path = tmp_path / "damaged.pt"
  path.write_bytes(data.getvalue())
  with pytest.raises(CheckpointError, match=r"storage '.*/data/0' is missing"):
    read_checkpoint(path)


def test_find_state_dict_unwraps_training_checkpoints():
  weight, scale = np.ones((2, 2), np.float32), np.asarray(2.0, np.float32)
  wrapped = {"epoch": 3, "state_dict": {"module.visual.proj": weight, "module.logit_scale": scale}}
  assert find_state_dict(wrapped, "ckpt") == {"visual.proj": weight, "logit_scale": scale}
  with pytest.raises(CheckpointError, match="ckpt: no tensor state dict found"):
    find_state_dict({"epoch": 3, "weights": [weight]}, "ckpt")
