"""The `lmstruct` CLI: help, one-line user errors, config loading and overrides; end to end in subprocesses:
train → checkpoint → eval (with the run's own config) → a rerun that does nothing, bitwise resume after SIGKILL,
clean exit on SIGTERM, and a 2-process run equal to a 1-process run."""

import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from driver_utils import REPO, TINY_ARG, checkpoint_steps, cli_command, cli_env, flatten, run_cli, saved_params

from lmstruct import cli
from lmstruct.config import apply_overrides, base_config, load_config, parse_arg_value
from lmstruct.eval.io import read_metrics
from lmstruct.train.loop import format_metric, results_table

CONFIG = f"{REPO / 'configs' / 'clip_scenes.py'}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The tiny scenes dataset, built once so that concurrent processes only read it."""
  path = tmp_path_factory.mktemp("data")
  code = (
    "import importlib.util, sys; from lmstruct.data import sources; "
    f"spec = importlib.util.spec_from_file_location('c', '{REPO}/configs/clip_scenes.py'); "
    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
    "cfg = m.get_config('variant=test,train_size=64,eval_size=32'); "
    "[sources.build_source(dict(cfg.data.train, split=s), sys.argv[1]) for s in ('train', 'validation', 'test')]"
  )
  subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=REPO, env=cli_env(1))
  return path


@pytest.fixture
def restore_logging():
  """`cli.main` installs its own log handler; put pytest's back afterwards."""
  root = logging.getLogger()
  handlers, level = list(root.handlers), root.level
  yield
  root.handlers[:] = handlers
  root.setLevel(level)


def run_main(capsys, *argv):
  """(exit status, stdout, stderr) of `lmstruct ARGV` run in this process."""
  status = cli.main(list(argv))
  out, err = capsys.readouterr()
  return status, out, err


def test_train_checkpoint_eval_and_a_finished_run_is_left_alone(data_dir, tmp_path, capsys, restore_logging):
  workdir = tmp_path / "run"
  trained = run_cli("train", workdir, data_dir, 4, "--config.train.log_every=2", "--config.train.checkpoint_every=2")
  assert checkpoint_steps(workdir) == [2, 4]
  assert "step 2/4" in trained.stderr and "step 4/4" in trained.stderr  # lmstruct's own log lines
  assert "Using custom data configuration" not in trained.stderr and "OpenCV" not in trained.stderr
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "loss/total" in m] == [2, 4]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 4
  record = json.loads((workdir / "results.json").read_text())
  results = record["results"]
  assert record["step"] == 4 and {"zeroshot_shape", "retrieval", "linear_probe_shape", "structure"} <= set(results)
  assert 0.0 <= results["zeroshot_shape"]["acc1"] <= results["zeroshot_shape"]["acc5"] <= 1.0
  assert results["retrieval"]["nonfinite_fraction"] == 0.0
  assert (workdir / "eval" / "structure" / "step_4_pca.png").stat().st_size > 0

  # eval without --config reads the run's config.json
  evaluated = subprocess.run(
    [sys.executable, "-m", "lmstruct.cli", "eval", f"--workdir={workdir}", "--step=2"],
    env=cli_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "| retrieval | image_retrieval_recall@1 |" in evaluated.stdout
  assert json.loads((workdir / "eval" / "retrieval" / "step_2.json").read_text())["step"] == 2
  status, _, err = run_main(capsys, "eval", f"--workdir={workdir}", "--step=3")
  assert (status, err) == (2, f"error: no checkpoint of step 3 under {workdir / 'checkpoints'}; saved steps: [2, 4]\n")

  # the same command again: nothing re-run, nothing appended, one line
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  again = run_cli("train", workdir, data_dir, 4, "--config.train.log_every=2", "--config.train.checkpoint_every=2")
  assert again.stdout == (
    f"{workdir} has finished: step 4 of 4 and its final evaluation ({workdir / 'results.md'}); nothing to do\n"
  )
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_help_lists_the_commands_and_each_command_its_own_flags(capsys, restore_logging):
  status, out, _ = run_main(capsys, "--help")
  assert status == 0 and all(f"    {command} " in out for command in ("train", "eval", "convert", "plan"))
  for command, flags in {
    "train": ["--config", "--workdir", "--debug", "--distributed", "--config.KEY=VALUE"],
    "eval": ["--config", "--workdir", "--step", "--debug"],
    "convert": ["CONVERTER", "data", "openclip"],
    "plan": ["--config", "--devices", "--json", "--debug", "--config.KEY=VALUE"],
  }.items():
    status, out, _ = run_main(capsys, command, "--help")
    assert status == 0 and out.startswith(f"usage: lmstruct {command} ")
    assert all(flag in out for flag in flags), (command, out)
  assert "--step" not in run_main(capsys, "train", "--help")[1]


USER_ERRORS = {
  # argv → the one line printed on stderr
  (
    "train",
    f"--config={CONFIG}",
    "--workdir=w",
    "--config.train.stpes=300",
  ): "unknown config key 'train.stpes' (did you mean 'steps'?); valid keys in 'train': ['accumulation_steps', "
  "'best_metric', 'best_mode', 'checkpoint_every', 'keep_checkpoints', 'log_every', 'nonfinite', "
  "'profile_start_step', 'profile_steps', 'progress_bar', 'steps']",
  (
    "train",
    f"--config={CONFIG}:variant=tinny",
    "--workdir=w",
  ): "unknown variant 'tinny' (did you mean 'tiny'?); valid choices: ['small', 'small_vit', 'test', 'tiny']",
  (
    "train",
    f"--config={CONFIG}:varaint=tiny",
    "--workdir=w",
  ): "unknown config argument 'varaint' (did you mean 'variant'?); valid choices: ['align', 'batch', "
  "'eval_size', 'objective', 'rotation', 'scenes', 'steps', 'train_size', 'variant']",
  (
    "train",
    f"--config={REPO / 'configs' / 'clip_scene.py'}",
    "--workdir=w",
  ): f"config file {REPO / 'configs' / 'clip_scene.py'} not found (did you mean '{CONFIG}'?)",
  (
    "train",
    f"--config={CONFIG}",
    "--workdir=w",
    "--config.train.steps=many",
  ): "config key 'train.steps' must be of type int like its default 250, got 'many'",
  (
    "train",
    f"--config={CONFIG}",
    "--wokdir=w",
  ): "unknown argument '--wokdir' (did you mean '--workdir'?); valid choices: ['--config', '--coordinator_address', "
  "'--debug', '--distributed', '--help', '--num_processes', '--process_id', '--workdir', '-h'] or "
  "--config.KEY=VALUE",
  (
    "trian",
  ): "unknown command 'trian' (did you mean 'train'?); valid choices: ['convert', 'eval', 'plan', 'study', 'train']",
  ("plan", f"--config={CONFIG}", "--devices=0"): "lmstruct plan: --devices must be at least 1, got 0",
  ("plan", f"--config={CONFIG}"): "lmstruct plan: the following arguments are required: --devices",
  ("convert", "dta"): "lmstruct convert: argument CONVERTER: unknown converter 'dta' (did you mean 'data'?); "
  "valid choices: ['data', 'openclip']",
  ("eval", "--workdir=never-trained"): "--config is required: never-trained/config.json does not exist",
  ("eval", f"--config={CONFIG}", "--workdir=never-trained"): "no checkpoint under never-trained/checkpoints",
}


@pytest.mark.parametrize("argv", list(USER_ERRORS), ids=lambda argv: " ".join(a.split("/")[-1] for a in argv))
def test_a_user_error_is_one_line_and_exit_status_2(argv, capsys, restore_logging, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  status, out, err = run_main(capsys, *argv)
  assert (status, out, err) == (2, "", f"error: {USER_ERRORS[argv]}\n")


def test_an_empty_or_missing_dataset_is_one_line(capsys, restore_logging, tmp_path):
  empty = tmp_path / "empty.tsv"
  empty.write_text("filepath\tcaption\n")
  for path, message in (
    (empty, "data.train ('table' source) has no examples"),
    (tmp_path / "missing.tsv", f"caption table not found: {tmp_path / 'missing.tsv'}"),
  ):
    status, _, err = run_main(
      capsys,
      "train",
      f"--config={CONFIG}:variant=test",
      f"--workdir={tmp_path / 'run'}",
      f"--config.data.train={{'kind': 'table', 'path': '{path}'}}",
      "--config.evals={}",
    )
    assert (status, err) == (2, f"error: {message}\n")
  assert not (tmp_path / "run").exists()  # nothing was written for a run that could not start


def test_debug_adds_the_traceback(capsys, restore_logging):
  status, _, err = run_main(capsys, "train", f"--config={CONFIG}:variant=tinny", "--workdir=w", "--debug")
  assert status == 2 and err.startswith("Traceback (most recent call last):")
  assert err.endswith(
    "\nerror: unknown variant 'tinny' (did you mean 'tiny'?); valid choices: ['small', 'small_vit', 'test', 'tiny']\n"
  )


def test_default_verbosity_hides_library_chatter_but_not_warnings(restore_logging):
  cli.configure_logging(debug=False)
  quiet = logging.getLogger().handlers[0].filters[0]

  def record(path, level, message):
    return logging.LogRecord("absl", level, path, 1, message, (), None)

  tfds = "/site-packages/tensorflow_datasets/core/dataset_builder.py"
  assert not quiet.filter(record(tfds, logging.WARNING, "Using custom data configuration: %s"))
  assert not quiet.filter(record(tfds, logging.WARNING, "OpenCV is not installed. We recommend using OpenCV"))
  assert quiet.filter(record(tfds, logging.WARNING, "a real warning"))
  assert not quiet.filter(record("/site-packages/orbax/checkpoint/manager.py", logging.INFO, "saving"))
  assert quiet.filter(record(str(REPO / "lmstruct" / "train" / "metrics.py"), logging.INFO, "step 2/4"))
  cli.configure_logging(debug=True)
  assert not logging.getLogger().handlers[0].filters


def test_config_values_and_overrides():
  value = lambda text, default: parse_arg_value("key", text, default)
  assert value("false", True) is False and value("True", False) is True and value("1", False) is True
  assert value("5", 1.0) == 5.0 and isinstance(value("5", 1.0), float)
  assert value("'runs/x'", "") == "runs/x" and value("123", "") == "123"
  assert value("(1, 2)", None) == (1, 2) and value("{}", {"a": 1}) == {} and value("[3]", (1, 2)) == (3,)
  with pytest.raises(ValueError, match=r"config argument 'key' must be of type int like its default 3, got 'off'"):
    value("off", 3)
  with pytest.raises(ValueError, match=r"config argument 'key' is a bool: use one of"):
    value("yes", True)
  config = apply_overrides(
    base_config(), {"train.steps": "7", "model.image.width": "64", "optimizer.learning_rate": "1"}
  )
  assert config.train.steps == 7 and config.model.image.width == 64 and config.optimizer.learning_rate == 1.0
  with pytest.raises(ValueError, match=r"config key 'train.steps' must be of type int"):
    apply_overrides(base_config(), {"train.steps": "off"})
  with pytest.raises(ValueError, match=r"cannot override config key 'train.steps.x': 'train.steps' is not a mapping"):
    apply_overrides(base_config(), {"train.steps.x": "1"})


def test_rotation_argument_renders_every_split_of_the_run_with_that_rotation():
  def knobs(config):
    sources = [config.data.train] + [
      e[k] for e in config.evals.values() for k in ("data", "train_data", "test_data") if k in e
    ]
    return [dict(source.knobs) for source in sources]

  assert all(k == {"image_size": 64} for k in knobs(load_config(CONFIG)))
  upright = knobs(load_config(f"{CONFIG}:rotation=0"))
  assert len(upright) == 9 and all(k == {"image_size": 64, "max_rotation": 0.0} for k in upright)


def test_a_runs_config_json_loads_back_to_the_same_config(tmp_path):
  config = load_config(f"{CONFIG}:{TINY_ARG.format(steps=3)}", {"evals": "{}", "data.data_dir": "elsewhere"})
  assert config.train.steps == 3 and config.evals.to_dict() == {} and config.data.data_dir == "elsewhere"
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict(), default=str))
  assert load_config(str(tmp_path / "config.json")).to_dict() == json.loads(json.dumps(config.to_dict()))


def test_results_table_keeps_small_values_readable():
  assert [format_metric(v) for v in (0.0, 0.5, 1e-3, 2.5e-4, 1e-6, -3e-7, 12.0, 123456.0)] == [
    "0.0000",
    "0.5000",
    "0.0010",
    "0.00025",
    "1e-06",
    "-3e-07",
    "12.0000",
    "1.235e+05",
  ]
  assert results_table({"linear_probe": {"acc1": 0.25, "l2": 1e-6}}).splitlines() == [
    "| evaluator | metric | value |",
    "|---|---|---|",
    "| linear_probe | acc1 | 0.2500 |",
    "| linear_probe | l2 | 1e-06 |",
  ]


def test_resume_after_sigkill_equals_an_uninterrupted_run_bitwise(data_dir, tmp_path):
  k = 6
  common = ("--config.evals={}", f"--config.train.checkpoint_every={k}", "--config.train.log_every=1")
  run_cli("train", tmp_path / "straight", data_dir, 2 * k, *common)
  interrupted = tmp_path / "interrupted"
  process = subprocess.Popen(
    cli_command("train", interrupted, data_dir, 2 * k, *common),
    env=cli_env(),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while k not in checkpoint_steps(interrupted) and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert checkpoint_steps(interrupted) == [k], "the run must be killed between its two checkpoints"
  run_cli("train", interrupted, data_dir, 2 * k, *common)
  straight, resumed = flatten(saved_params(tmp_path / "straight", 2 * k)), flatten(saved_params(interrupted, 2 * k))
  assert straight.keys() == resumed.keys()
  for name in straight:
    np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_sigterm_finishes_the_step_saves_and_exits_cleanly(data_dir, tmp_path):
  workdir = tmp_path / "run"
  process = subprocess.Popen(
    cli_command(
      "train",
      workdir,
      data_dir,
      10_000,
      "--config.evals={}",
      "--config.train.log_every=1",
      "--config.train.checkpoint_every=100000",
    ),
    env=cli_env(),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  steps = checkpoint_steps(workdir)
  assert len(steps) == 1 and 2 <= steps[0] < 10_000
  assert "received SIGTERM" in stderr


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_to_the_same_parameters_as_one(data_dir, tmp_path):
  common = ("--config.evals={}", "--config.train.checkpoint_every=3")
  run_cli("train", tmp_path / "one", data_dir, 3, *common)
  port = _free_port()
  processes = [
    subprocess.Popen(
      cli_command(
        "train",
        tmp_path / "two",
        data_dir,
        3,
        *common,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      env=cli_env(devices=4),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  one, two = flatten(saved_params(tmp_path / "one", 3)), flatten(saved_params(tmp_path / "two", 3))
  for name in one:
    # Each process reads its own shard, so the global batch holds the same examples in another order; the loss
    # is permutation invariant, and only float summation order differs.
    a, b = two[name], one[name]
    if name.endswith("attn/qkv/bias"):
      # The key bias adds a constant to every logit of a query and cancels in the softmax: its gradient is
      # rounding noise, which Adam scales to ±lr, so only the query and value biases are compared.
      width = a.shape[-1] // 3
      a, b = np.delete(a, np.s_[width : 2 * width], -1), np.delete(b, np.s_[width : 2 * width], -1)
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name)


def _eval_records(workdir):
  return {path.parent.name: read_metrics(path) for path in (workdir / "eval").glob("*/step_1.json")}


def test_two_processes_evaluate_a_checkpoint_to_the_results_of_one(data_dir, tmp_path):
  # 24-row global batches: the 32 test examples give one process 2 batches with 16 padding rows, and each of two
  # processes its 16 examples in 2 batches of 12 with 8 padding rows; every device encodes 3 rows in both runs.
  common = ("--config.data.eval_batch_size=24",)
  workdir, port = tmp_path / "run", _free_port()
  run_cli("train", workdir, data_dir, 1, *common)
  one = _eval_records(workdir)
  assert set(one) == set(load_config(f"{CONFIG}:{TINY_ARG.format(steps=1)}").evals)
  shutil.rmtree(workdir / "eval")
  processes = [
    subprocess.Popen(
      cli_command(
        "eval",
        workdir,
        data_dir,
        1,
        *common,
        "--step=1",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      env=cli_env(devices=4),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  two = _eval_records(workdir)
  assert set(two) == set(one)
  for name, record in one.items():
    # Every process encodes its own half, the rows are gathered in source order, and the metrics (including the
    # probe's seeded validation split and the separability's seeded test split) are those of one process.
    assert two[name]["metrics"] == pytest.approx(record["metrics"], rel=1e-6, abs=1e-7, nan_ok=True), name
    extra, extra_two = flatten(record["extra"]), flatten(two[name]["extra"])
    assert set(extra_two) == set(extra), name
    for key, value in extra.items():
      exact = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
      assert extra_two[key] == (value if exact else pytest.approx(value, rel=1e-6, abs=1e-7)), key
  assert one["retrieval"]["extra"] == {"num_images": 32, "num_texts": 160}
  # Process 0 alone writes: each record and figure once, no temporary file left by the other process.
  assert sorted(p.name for p in (workdir / "eval" / "structure").iterdir()) == [
    "step_1.json",
    "step_1_gap_shift.png",
    "step_1_pca.png",
  ]


STREAM_CONFIG = """
import importlib.util
spec = importlib.util.spec_from_file_location("clip_scenes", "{repo}/configs/clip_scenes.py")
clip_scenes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(clip_scenes)


def get_config(arg=None):
  config = clip_scenes.get_config(arg)
  config.data.train = {{"kind": "webdataset", "shards": "{shards}", "streaming": True, "shuffle_buffer": 4}}
  config.evals = {{}}
  return config
"""


def _write_numbered_shards(shared_data, folder, sizes=(13, 11, 14, 12, 10)):
  """Shards of coco-mini photos captioned 'a photo number <i>' (i unique across shards)."""
  import io
  import tarfile

  photos = sorted((shared_data / "coco-mini" / "train2017").glob("*.jpg"))
  folder.mkdir()
  number = 0
  for shard, size in enumerate(sizes):
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
      for _ in range(size):
        for name, data in (
          (f"{number:04d}.jpg", photos[number % len(photos)].read_bytes()),
          (f"{number:04d}.txt", f"a photo number {number}".encode()),
        ):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
        number += 1
  return number


def _data_state(workdir, step):
  return (
    json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())
    if (workdir / "checkpoints" / str(step) / "data" / "metadata").exists()
    else json.loads(next((workdir / "checkpoints" / str(step) / "data").glob("*")).read_text())
  )


def test_streaming_run_of_two_processes_on_eight_devices_resumes_on_one_process_with_two(shared_data, tmp_path):
  from lmstruct.data import pipeline, streaming

  total = _write_numbered_shards(shared_data, tmp_path / "shards")
  config = tmp_path / "stream_config.py"
  config.write_text(STREAM_CONFIG.format(repo=REPO, shards=tmp_path / "shards"))
  workdir, port = tmp_path / "run", _free_port()
  common = ("--config.train.checkpoint_every=3", "--config.train.log_every=3", "--config.data.global_batch_size=8")
  processes = [
    subprocess.Popen(
      cli_command(
        "train",
        workdir,
        tmp_path / "data",
        3,
        *common,
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        config=config,
      ),
      env=cli_env(devices=4),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  saved = _data_state(workdir, 3)
  assert [p["process_index"] for p in saved["processes"]] == [0, 1]
  run_cli("train", workdir, tmp_path / "data", 6, *common, devices=2, config=config)
  resumed = _data_state(workdir, 6)
  assert len(resumed["processes"]) == 1

  # The same plan offline: what the two processes read in 3 steps of 4 examples each, then what one process reads
  # in 3 steps of 8 after the remap; the positions match the CLI's checkpoints and, all within the first epoch of
  # 60 examples, no example comes twice.
  def ids(batch):
    return [int(t) for t in np.asarray(batch["text"])[:, 4]]

  def tokenize(texts):
    out = np.zeros((len(texts), 8), np.int32)
    for row, text in enumerate(texts):
      out[row, : len(text.split()) + 1] = [1] + [int(w) if w.isdigit() else 3 for w in text.split()]
    return out

  def offline(index, count):
    return pipeline.train_pipeline(
      streaming.WebDatasetStream(tmp_path / "shards", shuffle_buffer=4),
      tokenize=tokenize,
      global_batch_size=8,
      seed=0,
      image_size=32,
      shard_index=index,
      shard_count=count,
      synonyms=lambda word: (),
    )

  first = [offline(k, 2) for k in range(2)]
  seen = [i for it in first for _ in range(3) for i in ids(next(it))]
  assert [it.get_state()["readers"] for it in first] == [p["readers"] for p in saved["processes"]]
  after = offline(0, 1)
  after.set_state(pipeline.combine_states([it.get_state() for it in first]))
  seen += [i for _ in range(3) for i in ids(next(after))]
  assert after.get_state()["readers"] == resumed["processes"][0]["readers"]
  assert total == 60 and len(seen) == len(set(seen)) == 48
