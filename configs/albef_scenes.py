"""ALBEF on the rendered scenes: pre-training (ITC-MD + ITM + MLM-MD, optionally with the paper's regularisers) on
the caption splits, then VQA, NLVR and visual entailment on the scenes' task splits, each started from a
pre-training workdir.

    lmstruct train --config configs/albef_scenes.py:task=pretrain,reg=gc --workdir runs/albef_gc
    lmstruct train --config configs/albef_scenes.py:task=vqa,init=runs/albef_gc --workdir runs/albef_gc_vqa
    lmstruct train --config configs/albef_scenes.py:task=nlvr,init=runs/albef_gc --workdir runs/albef_gc_nlvr
    lmstruct train --config configs/albef_scenes.py:task=ve,init=runs/albef_gc --workdir runs/albef_gc_ve

Arguments:
  variant     'test' (CI: pre-training in seconds; each task trains from scratch above its test split's majority
              baseline in about a minute on 2 cores) or 'small' (minutes)
  task        pretrain, vqa, nlvr, ve
  reg         pre-training regularisers: none, sep, br, gc, all (the three together): those of the named objective
              (`lmstruct.losses.objective.NAMED_OBJECTIVES`) 'inmodal', 'sep', 'br', 'gc', 'full', added to ALBEF's
              own losses
  steps       training steps (0: the variant's default for the task)
  init        a pre-training workdir whose latest parameters start the task ('' : from scratch)
  seed        run seed (initialisation, data order, masking, negatives)
  batch       global batch size (0: the variant's)
  train_size  examples of every training split (0: the variant's)
  eval_size   examples of every test split (0: the variant's)

Evaluators: pretrain → `retrieval` (ITC top-k re-ranked by ITM on the caption test split, 5 captions per image);
vqa → `vqa/accuracy`; nlvr → `nlvr/accuracy`; ve → `ve/accuracy`. NLVR first runs ALBEF's text-assignment pre-step
on the caption split (a fifth of its steps).
"""

import dataclasses

from lmstruct.choices import unknown_choice
from lmstruct.config import base_config, parse_arg
from lmstruct.losses.objective import NO_BASE, named_objective

# Both variants train from random initialisation with the MiniLM WordPiece vocabulary (the BERT of either is much
# narrower than MiniLM's 384 wide, 6 deep layers: see README 'ALBEF' for starting from MiniLM instead).
VARIANTS = {
  "test": dict(
    model={"preset": "albef-test", "image": {"image_size": 32}, "text": {"context_length": 16}},
    image_size=32,
    batch=16,
    queue_size=64,
    answer_length=6,
    # Each task trains above its test split's majority baseline from scratch in these steps
    # (tests/train/test_albef_tasks_learn.py); VQA's answer decoder needs the most.
    steps={"pretrain": 30, "vqa": 300, "nlvr": 150, "ve": 150},
    learning_rate={"pretrain": 1e-3, "vqa": 3e-3, "nlvr": 3e-3, "ve": 3e-3},
    split_sizes={
      "train": 512,
      "test": 128,
      "vqa_train": 512,
      "vqa_test": 256,
      "nlvr_train": 512,
      "nlvr_test": 256,
      "ve_train": 512,
      "ve_test": 256,
    },
  ),
  "small": dict(
    model={
      "preset": "albef-test",
      "image": {"image_size": 48, "width": 96, "layers": 4, "heads": 4, "patch": 8},
      "text": {"width": 96, "layers": 4, "heads": 4, "mlp_dim": 384, "context_length": 24},
      "fusion_layers": 2,
      "embed_dim": 64,
    },
    image_size=48,
    batch=32,
    queue_size=1024,
    answer_length=6,
    steps={"pretrain": 400, "vqa": 300, "nlvr": 300, "ve": 300},
    learning_rate={"pretrain": 5e-4, "vqa": 5e-4, "nlvr": 5e-4, "ve": 5e-4},
    split_sizes={
      "train": 4000,
      "test": 300,
      "vqa_train": 2000,
      "vqa_test": 500,
      "nlvr_train": 2000,
      "nlvr_test": 500,
      "ve_train": 2000,
      "ve_test": 500,
    },
  ),
}
TASKS = ("pretrain", "vqa", "nlvr", "ve")
#: `reg` → the named objective whose regularisers (at its weights) pre-training adds; its base is ALBEF's own.
REGULARIZERS = {"none": "inmodal", "sep": "sep", "br": "br", "gc": "gc", "all": "full"}
TRAIN_SPLITS = {"pretrain": "train", "vqa": "vqa_train", "nlvr": "nlvr_train", "ve": "ve_train"}
TEST_SPLITS = {"pretrain": "test", "vqa": "vqa_test", "nlvr": "nlvr_test", "ve": "ve_test"}


def _choice(key: str, value: str, valid) -> str:
  """`value` when it is one of `valid`, else the one-line error naming the argument and the closest choice."""
  if value not in valid:
    raise unknown_choice(f"argument {key}", value, valid)
  return value


def split_sizes(variant: dict, train_size: int, eval_size: int) -> dict[str, int]:
  """The examples of every split: the variant's, with every training split set to `train_size` and every test
  split to `eval_size` when they are given (non-zero)."""
  return {
    split: (train_size if split.endswith("train") else eval_size) or size
    for split, size in variant["split_sizes"].items()
  }


def scenes_source(split: str, variant: dict, sizes: dict[str, int]) -> dict:
  """Split `split` of the default scenes preset at the variant's image size, with the split sizes `sizes` (one
  dataset build serves every task of a variant)."""
  return {
    "kind": "scenes",
    "split": split,
    "preset": "default",
    "knobs": {"image_size": variant["image_size"]},
    "split_sizes": sizes,
  }


def get_config(arg: str | None = None):
  arg = parse_arg(
    arg, variant="small", task="pretrain", reg="none", steps=0, init="", seed=0, batch=0, train_size=0, eval_size=0
  )
  variant = VARIANTS[_choice("variant", arg.variant, VARIANTS)]
  task = _choice("task", arg.task, TASKS)
  reg = _choice("reg", arg.reg, REGULARIZERS)
  if reg != "none" and task != "pretrain":
    raise ValueError(f"reg={reg!r} regularises pre-training; task {task!r} takes it from its init workdir")
  steps = arg.steps or variant["steps"][task]
  batch = arg.batch or variant["batch"]
  sizes = split_sizes(variant, arg.train_size, arg.eval_size)
  objective = dataclasses.replace(named_objective(REGULARIZERS[reg]), base=NO_BASE)
  config = base_config()
  config.task = "albef"
  config.seed = arg.seed
  config.model = {**variant["model"], "independent_heads": objective.needs_independent_features}
  config.albef = {
    "task": task,
    "queue_size": variant["queue_size"],
    "momentum": 0.995,
    "alpha": 0.4,
    "mlm_probability": 0.15,
    "answer_list": "scenes",
    "answer_length": variant["answer_length"],
    "answer_slots": 1,
    "answer_k": 8,
    "ta_steps": steps // 5 if task == "nlvr" else 0,
    "ta_data": scenes_source("train", variant, sizes) if task == "nlvr" else {},
    "init": {"pretrain": arg.init},
  }
  config.objective = objective.to_dict()
  config.optimizer.learning_rate = variant["learning_rate"][task]
  config.optimizer.warmup_steps = max(1, steps // 10)
  config.optimizer.weight_decay = 0.02
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 0.0
  config.data.train = scenes_source(TRAIN_SPLITS[task], variant, sizes)
  config.data.tokenizer = "wordpiece"
  config.data.global_batch_size = batch
  config.data.eval_batch_size = 64
  config.data.augment = {}
  config.train.steps = steps
  config.train.log_every = max(1, steps // 10)
  config.train.checkpoint_every = steps
  test = scenes_source(TEST_SPLITS[task], variant, sizes)
  config.evals = (
    {"retrieval": {"kind": "itm_retrieval", "data": test, "captions": 5, "k": 16}}
    if task == "pretrain"
    else {task: {"kind": task, "data": test}}
  )
  return config
