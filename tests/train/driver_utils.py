"""Helpers for the training-driver tests: tiny configs, running the CLI in a subprocess, webdataset shards."""
import importlib.util
import io
import os
import pathlib
import subprocess
import sys
import tarfile

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_ARG = "variant=test,steps={steps},train_size=64,eval_size=32,batch=16"


def load_config(name: str, arg: str):
  """configs/<name>.py's config for `arg`."""
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def cli_env(devices: int = 8) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO)
  return env


def cli_command(command: str, workdir: pathlib.Path, data_dir: pathlib.Path, steps: int, *overrides: str,
                config: str = "configs/clip_scenes.py") -> list[str]:
  return [sys.executable, "-m", "lmstruct.cli", command, f"--config={REPO / config}:{TINY_ARG.format(steps=steps)}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", "--config.train.progress_bar=off", *overrides]


def run_cli(*args, devices: int = 8, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(cli_command(*args, **kwargs), env=cli_env(devices), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  root = workdir / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def saved_params(workdir: pathlib.Path, step: int) -> dict:
  """The parameters of checkpoint `step`, as NumPy arrays, read back without a model."""
  with ocp.CheckpointManager(workdir / "checkpoints", item_handlers={"state": ocp.StandardCheckpointHandler()}) as m:
    saved = m.item_metadata(step)["state"].tree
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), saved)
    restored = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return _to_numpy(restored["state"]["params"])


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}/{k}"))
    return out
  return {prefix: tree}


def write_webdataset(shared_data: pathlib.Path, path: pathlib.Path, count: int = 16) -> None:
  """An img2dataset-style shard from real COCO images: NNNN.jpg + NNNN.txt."""
  images = sorted((shared_data / "coco-mini" / "train2017").glob("*.jpg"))[:count]
  with tarfile.open(path, "w") as tar:
    for i, image in enumerate(images):
      tar.add(image, arcname=f"{i:04d}.jpg")
      caption = f"a photo number {i}".encode()
      info = tarfile.TarInfo(f"{i:04d}.txt")
      info.size = len(caption)
      tar.addfile(info, io.BytesIO(caption))
