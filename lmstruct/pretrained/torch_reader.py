"""Reads PyTorch checkpoints into ``{name: np.ndarray}`` without PyTorch and without running pickled code.

Four file kinds are recognised from their bytes:

* **safetensors** — an 8-byte little-endian header length, a JSON header (dtype, shape, byte range per tensor), then
  the raw little-endian data;
* **PyTorch zip** (``torch.save`` since 1.6) — a zip holding ``<root>/data.pkl`` and one ``<root>/data/<key>`` file
  per storage;
* **TorchScript zip** (``torch.jit.save``, e.g. OpenAI's released CLIP ``.pt`` files) — the same layout plus
  ``<root>/constants.pkl`` and ``<root>/code/``; ``data.pkl`` pickles the module tree, and its parameters and buffers
  are returned under their dotted attribute paths, as ``state_dict()`` names them;
* **legacy PyTorch** (``torch.save`` before 1.6) — consecutive pickles (magic number, protocol version, system info,
  the object, the storage keys) followed by each storage's element count and raw data.

Pickles are read by an unpickler that resolves only the few globals a tensor state dict needs (tensor and storage
rebuilders, ``collections.OrderedDict``, TorchScript's list builders, and — in TorchScript archives only —
``__torch__.*`` module classes, which become inert attribute holders). Any other global is refused with a
:class:`CheckpointError` naming it, before anything is called. Tensors keep their stored dtype (bfloat16 through
``ml_dtypes``); callers cast.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import pathlib
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES: dict[str, np.dtype] = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
}

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}


class CheckpointError(ValueError):
  """A checkpoint cannot be read or does not match the model: names the file, key, shape or global at fault."""


class StorageType:
  """Stands for a ``torch.<Dtype>Storage`` class in a pickle: only its element dtype is used."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


@dataclasses.dataclass(frozen=True)
class StorageRef:
  """A storage named in a pickle: its key in the archive, element dtype and element count."""

  key: str
  dtype: np.dtype
  numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """A tensor rebuilt from a pickle, before its storage bytes are read: a strided view of ``storage``."""

  storage: StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


class TorchScriptObject:
  """Inert stand-in for a pickled TorchScript module: keeps the attribute dict that ``BUILD`` hands it."""

  attributes: dict[str, Any]

  def __new__(cls, *args: Any) -> TorchScriptObject:
    del args
    obj = super().__new__(cls)
    obj.attributes = {}
    return obj

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, dict):
      raise CheckpointError(f"TorchScript object state is a {type(state).__name__}, expected an attribute dict")
    self.attributes = state


def rebuild_tensor(
  storage: StorageRef, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...], *unused: Any
) -> TensorRef:
  """``torch._utils._rebuild_tensor_v2``: a reference to the strided view; requires-grad flags, hooks and
  metadata (``unused``) are dropped."""
  del unused
  if not isinstance(storage, StorageRef):
    raise CheckpointError(f"a tensor is rebuilt from a {type(storage).__name__}, not from a storage")
  return TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def rebuild_parameter(data: TensorRef, requires_grad: bool, backward_hooks: Any, *unused: Any) -> TensorRef:
  """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is read as its data."""
  del requires_grad, backward_hooks, unused
  return data


def build_list(values: list[Any]) -> list[Any]:
  """TorchScript's typed-list builders (``torch.jit._pickle.build_intlist`` …) are read as plain lists."""
  return list(values)


SAFE_GLOBALS: dict[tuple[str, str], Any] = {
  ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
  ("collections", "OrderedDict"): collections.OrderedDict,
  **{("torch.jit._pickle", f"build_{kind}list"): build_list for kind in ("int", "double", "bool", "tensor")},
  **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
}


class RestrictedUnpickler(pickle.Unpickler):
  """Resolves only :data:`SAFE_GLOBALS` (plus ``__torch__.*`` classes when ``torchscript``); every storage it
  meets is recorded in ``storages`` and stands in the result as a :class:`StorageRef`."""

  def __init__(self, stream: io.BytesIO, source: str, torchscript: bool = False):
    super().__init__(stream)
    self.source = source
    self.torchscript = torchscript
    self.storages: dict[str, StorageRef] = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in SAFE_GLOBALS:
      return SAFE_GLOBALS[(module, name)]
    if self.torchscript and module.split(".")[0] == "__torch__":
      return TorchScriptObject
    allowed = sorted(f"{m}.{n}" for m, n in SAFE_GLOBALS)
    raise CheckpointError(
      f"{self.source}: refusing to load global {module}.{name}: a tensor checkpoint needs only "
      f"{allowed}" + (" and __torch__.* classes" if self.torchscript else "")
    )

  def persistent_load(self, pid: Any) -> StorageRef:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], StorageType)):
      raise CheckpointError(f"{self.source}: unsupported persistent id {pid!r} (expected a tensor storage)")
    _, storage_type, key, _location, numel = pid[:5]
    if len(pid) > 5 and pid[5] is not None:
      raise CheckpointError(f"{self.source}: storage {key!r} is a legacy storage view, which is not supported")
    ref = StorageRef(str(key), storage_type.dtype, int(numel))
    return self.storages.setdefault(ref.key, ref)


def flat_array(buffer: bytes, dtype: np.dtype, numel: int, what: str) -> np.ndarray:
  """``numel`` little-endian elements of ``dtype`` read from ``buffer``, checking the byte count."""
  if len(buffer) != numel * dtype.itemsize:
    raise CheckpointError(f"{what} holds {len(buffer)} bytes, expected {numel} × {dtype.itemsize}")
  return np.frombuffer(buffer, dtype=dtype.newbyteorder("<"), count=numel)


def tensor_from_ref(ref: TensorRef, storage: np.ndarray) -> np.ndarray:
  """The array ``ref`` views in its flat ``storage``, copied out (bounds are checked)."""
  if len(ref.size) != len(ref.stride):
    raise CheckpointError(f"tensor of size {ref.size} has a stride of another rank: {ref.stride}")
  if any(n == 0 for n in ref.size):
    return np.zeros(ref.size, storage.dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if ref.offset < 0 or any(s < 0 for s in ref.stride) or last >= storage.size:
    raise CheckpointError(
      f"tensor of size {ref.size}, stride {ref.stride} at offset {ref.offset} does not fit "
      f"storage {ref.storage.key!r} of {storage.size} elements"
    )
  view = np.lib.stride_tricks.as_strided(
    storage[ref.offset :], ref.size, tuple(s * storage.itemsize for s in ref.stride), writeable=False
  )
  return np.array(view)


def materialize(obj: Any, storages: Mapping[str, np.ndarray]) -> Any:
  """``obj`` with every :class:`TensorRef` inside dicts, lists, tuples and TorchScript objects replaced by its
  array."""
  if isinstance(obj, TensorRef):
    return tensor_from_ref(obj, storages[obj.storage.key])
  if isinstance(obj, TorchScriptObject):
    obj.attributes = materialize(obj.attributes, storages)
    return obj
  if isinstance(obj, dict):
    return type(obj)((key, materialize(value, storages)) for key, value in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(materialize(value, storages) for value in obj)
  return obj


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of a ``.safetensors`` file, in its stored dtype."""
  data = pathlib.Path(path).read_bytes()
  if len(data) < 8:
    raise CheckpointError(f"{path}: too short for a safetensors file")
  (header_size,) = struct.unpack("<Q", data[:8])
  if 8 + header_size > len(data):
    raise CheckpointError(f"{path}: safetensors header of {header_size} bytes runs past the end of the file")
  header = json.loads(data[8 : 8 + header_size])
  body = memoryview(data)[8 + header_size :]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in SAFETENSORS_DTYPES:
      raise CheckpointError(
        f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}; supported: {sorted(SAFETENSORS_DTYPES)}"
      )
    dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"])
    begin, end = info["data_offsets"]
    if not 0 <= begin <= end <= len(body):
      raise CheckpointError(f"{path}: tensor {name!r} byte range {begin}..{end} lies outside the data section")
    tensors[name] = flat_array(body[begin:end], dtype, math.prod(shape), f"{path}: tensor {name!r}").reshape(shape)
  return tensors


def _archive_root(archive: zipfile.ZipFile, path: str | pathlib.Path) -> str:
  """The top folder of a PyTorch zip archive (the one holding ``data.pkl``), with its trailing slash."""
  roots = [
    name[: -len("data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1
  ]
  if len(roots) != 1:
    raise CheckpointError(f"{path}: a zip file but not a PyTorch checkpoint (found {len(roots)} '<root>/data.pkl')")
  return roots[0]


def script_tensors(obj: TorchScriptObject, prefix: str = "") -> dict[str, np.ndarray]:
  """The tensors of a TorchScript module tree under their dotted attribute paths (``visual.conv1.weight``)."""
  tensors = {}
  for name, value in obj.attributes.items():
    if isinstance(value, np.ndarray):
      tensors[prefix + name] = value
    elif isinstance(value, TorchScriptObject):
      tensors.update(script_tensors(value, f"{prefix}{name}."))
  return tensors


def read_torch_zip(path: str | pathlib.Path) -> Any:
  """The object pickled in a PyTorch zip archive; for a TorchScript archive, the ``{name: array}`` dict of its
  module tree's tensors."""
  with zipfile.ZipFile(path) as archive:
    root = _archive_root(archive, path)
    names = set(archive.namelist())
    byteorder = archive.read(f"{root}byteorder").decode().strip() if f"{root}byteorder" in names else "little"
    if byteorder != "little":
      raise CheckpointError(f"{path}: big-endian checkpoints are not supported (byteorder: {byteorder!r})")
    torchscript = f"{root}constants.pkl" in names
    unpickler = RestrictedUnpickler(io.BytesIO(archive.read(f"{root}data.pkl")), str(path), torchscript)
    obj = unpickler.load()
    storages = {}
    for key, ref in unpickler.storages.items():
      member = f"{root}data/{key}"
      if member not in names:
        raise CheckpointError(f"{path}: storage {member!r} is missing from the archive")
      storages[key] = flat_array(archive.read(member), ref.dtype, ref.numel, f"{path}: storage {member!r}")
  obj = materialize(obj, storages)
  if not torchscript:
    return obj
  if not isinstance(obj, TorchScriptObject):
    raise CheckpointError(f"{path}: TorchScript data.pkl holds a {type(obj).__name__}, not a module")
  return script_tensors(obj)


def read_torch_legacy(path: str | pathlib.Path) -> Any:
  """The object pickled in a pre-1.6 ``torch.save`` file."""
  stream = io.BytesIO(pathlib.Path(path).read_bytes())
  load = lambda: RestrictedUnpickler(stream, str(path)).load()
  try:
    magic = load()
  except (pickle.UnpicklingError, EOFError) as error:
    raise CheckpointError(
      f"{path}: not a checkpoint (neither safetensors, a PyTorch zip archive nor a legacy PyTorch pickle: {error})"
    ) from None
  if magic != LEGACY_MAGIC:
    raise CheckpointError(f"{path}: a pickle, but not a PyTorch checkpoint (no legacy magic number)")
  load()  # protocol version
  sys_info = load()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
  unpickler = RestrictedUnpickler(stream, str(path))
  obj = unpickler.load()
  storages = {}
  for key in load():
    ref = unpickler.storages.get(str(key))
    if ref is None:
      raise CheckpointError(f"{path}: storage {key!r} is listed but no tensor uses it")
    (count,) = struct.unpack("<q", stream.read(8))
    if count != ref.numel:
      raise CheckpointError(f"{path}: storage {key!r} records {count} elements, expected {ref.numel}")
    storages[ref.key] = flat_array(
      stream.read(ref.numel * ref.dtype.itemsize), ref.dtype, ref.numel, f"{path}: storage {key!r}"
    )
  return materialize(obj, storages)


def read_checkpoint(path: str | pathlib.Path) -> Any:
  """The object stored in ``path`` — safetensors, PyTorch zip, TorchScript zip or legacy PyTorch — with every
  tensor as a NumPy array."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  with open(path, "rb") as f:
    head = f.read(9)
  if zipfile.is_zipfile(path):
    return read_torch_zip(path)
  if len(head) == 9 and head[8:9] == b"{":
    return read_safetensors(path)
  return read_torch_legacy(path)


def find_state_dict(obj: Any, path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The ``{name: array}`` state dict inside a loaded checkpoint: the object itself, or its ``'state_dict'`` entry
  (open_clip training checkpoints); a ``module.`` prefix (DistributedDataParallel) is removed."""
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise CheckpointError(f"{path}: no tensor state dict found (top level is a {type(obj).__name__})")
  if obj and all(name.startswith("module.") for name in obj):
    return {name[len("module.") :]: value for name, value in obj.items()}
  return dict(obj)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """``{name: array}`` from any supported checkpoint file (see the module docstring)."""
  return find_state_dict(read_checkpoint(path), path)
