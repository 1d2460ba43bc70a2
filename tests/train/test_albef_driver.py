"""ALBEF through the training driver from `configs/albef_scenes.py` (variant=test): pre-training with the three
regularisers and re-ranked retrieval, then each task (VQA, NLVR with its text-assignment pre-step, VE) started from
the pre-training workdir; and the config errors."""

import importlib.util
import json

import pytest
from driver_utils import REPO

from lmstruct.config import validate_config
from lmstruct.train.albef_trainer import AlbefTrainer
from lmstruct.train.loop import train_and_evaluate

SIZES = "variant=test,train_size=64,eval_size=32,batch=16"


def albef_config(arg: str, data_dir, steps: int):
  spec = importlib.util.spec_from_file_location("albef_scenes", REPO / "configs" / "albef_scenes.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"{SIZES},steps={steps},{arg}")
  config.mesh.shape = {"data": 1}
  config.data.data_dir = str(data_dir)
  config.train.progress_bar = "off"
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("albef_scenes")


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("albef_pretrain")
  config = albef_config("task=pretrain,reg=all", data_dir, steps=3)
  config.albef.queue_size = 32
  return workdir, train_and_evaluate(config, workdir)


def test_pretraining_logs_every_term_and_reports_reranked_retrieval(pretrained):
  workdir, results = pretrained
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = {key for line in lines for key in line}
  for term in ("itc", "itm", "mlm", "separation", "bridge", "geometric", "total"):
    assert f"loss/{term}" in logged, term
  metrics = results["retrieval"]
  for key in ("image_retrieval_recall@1", "text_retrieval_recall@1", "mean_recall@1", "itc_mean_recall@1"):
    assert 0.0 <= metrics[key] <= 1.0, key


@pytest.mark.parametrize("task", ["vqa", "nlvr", "ve"])
def test_each_task_starts_from_the_pretraining_workdir(task, pretrained, data_dir, tmp_path):
  # NLVR's 5 steps begin with one step of the text-assignment pre-step (a fifth of them).
  config = albef_config(f"task={task},init={pretrained[0]}", data_dir, steps=5 if task == "nlvr" else 2)
  assert config.albef.ta_steps == (1 if task == "nlvr" else 0)
  results = train_and_evaluate(config, tmp_path / task)
  metrics = results[task]
  assert 0.0 <= metrics["accuracy"] <= 1.0
  assert metrics["skipped"] == 0
  assert metrics["questions" if task == "vqa" else "examples"] == 32


def test_config_errors_name_the_keys(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"did you mean 'vqa'"):
    albef_config("task=vqx", data_dir, steps=1)
  with pytest.raises(ValueError, match=r"reg='gc' regularises pre-training"):
    albef_config("task=vqa,reg=gc", data_dir, steps=1)
  config = albef_config("task=pretrain", data_dir, steps=1)
  config.objective.base = "inmodal"
  with pytest.raises(ValueError, match=r"objective.base = 'inmodal' with task = 'albef'"):
    validate_config(config)
  config = albef_config("task=pretrain", data_dir, steps=1)
  config.albef.queue_size = 40
  with pytest.raises(ValueError, match=r"albef.queue_size=40 is not divisible by data.global_batch_size=16"):
    AlbefTrainer(config, tmp_path / "run")
  config = albef_config("task=pretrain", data_dir, steps=1)
  config.train.accumulation_steps = 2
  with pytest.raises(ValueError, match=r"train.accumulation_steps=2: accumulation is the two-tower update's"):
    AlbefTrainer(config, tmp_path / "run")
  config = albef_config("task=pretrain,reg=sep", data_dir, steps=1)
  config.model.independent_heads = False
  with pytest.raises(ValueError, match=r"objective.weights.separation = 1.0 needs model.independent_heads"):
    AlbefTrainer(config, tmp_path / "run")


def real_config(arg: str):
  spec = importlib.util.spec_from_file_location("albef_real", REPO / "configs" / "albef_real.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.mesh.shape = {"data": 1}
  config.train.progress_bar = "off"
  return config


@pytest.mark.parametrize("task", ["pretrain", "vqa", "nlvr", "ve"])
def test_the_real_formats_config_is_valid_for_every_task(task, shared_data):
  config = real_config(f"task={task}")
  validate_config(config)
  assert config.data.train.kind == {"pretrain": "coco", "vqa": "vqav2", "nlvr": "nlvr2", "ve": "snli-ve"}[task]


def test_vqa_v2_trains_and_evaluates_on_the_real_fixture(shared_data, tmp_path):
  config = real_config("task=vqa,steps=2,batch=2")
  results = train_and_evaluate(config, tmp_path / "vqa")
  # The fixture's three questions (one image): the answer list is every answer humans gave them.
  assert results["vqa"]["questions"] == 3 and results["vqa"]["skipped"] == 0
  assert 0.0 <= results["vqa"]["accuracy"] <= 1.0
