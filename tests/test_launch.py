"""The launch recipes of docs/launch.md: the dry run (`lmstruct plan`, then two training steps in two processes on
8 fake CPU devices from local webdataset shards), the SLURM script's process layout under a fake `srun`, and the
TPU pod script's usage."""

import io
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from lmstruct.train import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def write_shard(shared_data: pathlib.Path, path: pathlib.Path, count: int = 8) -> None:
  """An img2dataset-style shard of real COCO photos: NNNN.jpg + NNNN.txt."""
  with tarfile.open(path, "w") as tar:
    for i, image in enumerate(sorted((shared_data / "coco-mini" / "train2017").glob("*.jpg"))[:count]):
      tar.add(image, arcname=f"{i:04d}.jpg")
      caption = f"a photo number {i}".encode()
      info = tarfile.TarInfo(f"{i:04d}.txt")
      info.size = len(caption)
      tar.addfile(info, io.BytesIO(caption))


def script_env(**extra: str) -> dict[str, str]:
  return {
    **os.environ,
    "PYTHON": sys.executable,
    **extra,
    "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
  }


def test_dry_run_plans_and_trains_in_two_processes_on_fake_devices(shared_data, tmp_path):
  (tmp_path / "shards").mkdir()
  for shard in range(2):
    write_shard(shared_data, tmp_path / "shards" / f"{shard:05d}.tar")
  config = f"configs/paper_cc3m.py:variant=test,devices=8,shards={tmp_path / 'shards'}/{{00000..00001}}.tar"
  run = subprocess.run(
    [
      str(SCRIPTS / "dry_run.sh"),
      config,
      "8",
      "2",
      "--config.data.global_batch_size=16",
      "--config.data.worker_count=0",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=script_env(DRY_RUN_WORKDIR=str(tmp_path / "run")),
  )
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert f"plan of {config} on 8 devices" in run.stdout and "fits:" in run.stdout
  assert checkpoint.make_manager(tmp_path / "run" / "checkpoints").latest_step() == 2


def test_dry_run_refuses_devices_that_do_not_split_over_the_processes():
  run = subprocess.run(
    [str(SCRIPTS / "dry_run.sh"), "configs/paper_cc3m.py", "8", "3"],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=script_env(),
  )
  assert run.returncode == 2 and "DEVICES (8) must be a multiple of PROCESSES (3)" in run.stderr


def fake_cluster(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """(bin folder with fake `srun` and `scontrol`, a venv whose `lmstruct` prints its arguments and device ids)."""
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  bin_dir.mkdir()
  commands = {
    bin_dir / "srun": '#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n',
    bin_dir / "scontrol": '#!/usr/bin/env bash\necho "scontrol $*"\n',
    venv / "bin" / "lmstruct": '#!/usr/bin/env bash\necho "lmstruct $*"\necho "ids=$JAX_LOCAL_DEVICE_IDS"\n',
    venv / "bin" / "python": f'#!/usr/bin/env bash\nexec {sys.executable} "$@"\n',
  }
  for path, text in commands.items():
    path.write_text(text)
    path.chmod(0o755)
  return bin_dir, venv


@pytest.mark.parametrize("tasks_per_node, ids", [("8", ""), ("1", "0,1,2,3,4,5,6,7")])
def test_slurm_script_launches_every_gpu_and_requeues_an_unfinished_run(tmp_path, tasks_per_node, ids):
  bin_dir, venv = fake_cluster(tmp_path)
  env = script_env(
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    VENV=str(venv),
    SLURM_JOB_ID="77",
    SLURM_JOB_NUM_NODES="4",
    SLURM_GPUS_ON_NODE="8",
    SLURM_NTASKS_PER_NODE=tasks_per_node,
    CONFIG="configs/paper_cc3m.py:shards=/data/cc3m,reg=gc",
    WORKDIR=str(tmp_path / "run"),
  )
  env.pop("JAX_LOCAL_DEVICE_IDS", None)
  run = subprocess.run(["bash", str(SCRIPTS / "slurm_train.sbatch")], cwd=REPO, capture_output=True, text=True, env=env)
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == [
    f"lmstruct train --distributed --config configs/paper_cc3m.py:shards=/data/cc3m,reg=gc,devices=32 "
    f"--workdir {tmp_path / 'run'}",
    f"ids={ids}",
    "scontrol requeue 77",
  ]
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "results.json").write_text("{}")
  finished = subprocess.run(
    ["bash", str(SCRIPTS / "slurm_train.sbatch")], cwd=REPO, capture_output=True, text=True, env=env
  )
  assert "scontrol" not in finished.stdout


def test_tpu_pod_script_lists_its_commands():
  run = subprocess.run(["bash", str(SCRIPTS / "tpu_pod.sh")], capture_output=True, text=True)
  assert run.returncode == 2
  assert all(command in run.stdout for command in ("create", "install", "train", "logs", "resume", "delete"))
