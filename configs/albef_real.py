"""ALBEF on the real formats: pre-training on COCO captions (re-ranked retrieval on COCO val), then VQA v2, NLVR² and
SNLI-VE, each given its paths. Every path defaults to the small real samples of $LMSTRUCT_SHARED_DATA (else
../shared/data beside the checkout): coco-mini and vl-fixtures, where the tests run it end to end.

    lmstruct train --config configs/albef_real.py:task=pretrain,variant=base,coco=/data/coco --workdir runs/albef
    lmstruct train --config configs/albef_real.py:task=vqa,variant=base,init=runs/albef,\\
        vqa_questions=v2_OpenEnded_mscoco_train2014_questions.json,\\
        vqa_annotations=v2_mscoco_train2014_annotations.json,vqa_images=/data/coco/train2014 --workdir runs/vqa

Arguments:
  variant          'test' (the CPU model, 32 px) or 'base' (the paper's: ViT-B/16 at 256 px + BERT-base 6 + 6)
  task             pretrain, vqa, nlvr, ve
  init             a pre-training workdir that starts the task ('': from scratch)
  steps, batch     training steps, global batch size
  coco             a COCO folder (train2017/, val2017/, annotations/): pre-training captions and retrieval
  vqa_questions, vqa_annotations, vqa_images        VQA v2 files (training and evaluation)
  vqa_answers      the answer list: 'train:N' (the N most frequent training answers) or a JSON list
  nlvr, nlvr_images                                 NLVR² JSON lines and image folder
  ve, ve_images                                     SNLI-VE JSON lines and Flickr30k image folder

Each task trains and evaluates on the same files unless the user points the evaluator elsewhere
(`--config.evals.<task>.data.path=...`); the evaluator names carry the task (`vqa/accuracy`).
"""

from lmstruct.choices import unknown_choice
from lmstruct.config import base_config, parse_arg
from lmstruct.paths import shared_data

SHARED_DATA = shared_data()
FIXTURES = SHARED_DATA / "vl-fixtures"
VARIANTS = {
  "test": dict(
    model={"preset": "albef-test", "image": {"image_size": 32}, "text": {"context_length": 16}},
    batch=4,
    queue_size=16,
    learning_rate=1e-3,
    answer_length=6,
  ),
  "base": dict(model={"preset": "albef-base"}, batch=512, queue_size=65536, learning_rate=1e-4, answer_length=8),
}
TASKS = ("pretrain", "vqa", "nlvr", "ve")


def sources(arg) -> dict[str, dict]:
  """The training source of every task (retrieval evaluates on COCO val2017)."""
  coco = arg.coco
  return {
    "pretrain": {
      "kind": "coco",
      "annotations": f"{coco}/annotations/captions_train2017.json",
      "images": f"{coco}/train2017",
    },
    "retrieval": {
      "kind": "coco",
      "annotations": f"{coco}/annotations/captions_val2017.json",
      "images": f"{coco}/val2017",
    },
    "vqa": {
      "kind": "vqav2",
      "questions": arg.vqa_questions,
      "annotations": arg.vqa_annotations,
      "images": arg.vqa_images,
    },
    "nlvr": {"kind": "nlvr2", "path": arg.nlvr, "images": arg.nlvr_images},
    "ve": {"kind": "snli-ve", "path": arg.ve, "images": arg.ve_images},
  }


def get_config(arg: str | None = None):
  arg = parse_arg(
    arg,
    variant="test",
    task="pretrain",
    init="",
    steps=100,
    batch=0,
    coco=str(SHARED_DATA / "coco-mini"),
    vqa_questions=str(FIXTURES / "vqav2/questions.json"),
    vqa_annotations=str(FIXTURES / "vqav2/annotations.json"),
    vqa_images=str(FIXTURES / "images/vqav2"),
    vqa_answers="train:3129",
    nlvr=str(FIXTURES / "nlvr2/tiny-dev.json"),
    nlvr_images=str(FIXTURES / "images/nlvr2"),
    ve=str(FIXTURES / "visual_entailment/sample_pairs.jsonl"),
    ve_images=str(FIXTURES / "images/visual_entailment"),
  )
  if arg.variant not in VARIANTS:
    raise unknown_choice("argument variant", arg.variant, VARIANTS)
  if arg.task not in TASKS:
    raise unknown_choice("argument task", arg.task, TASKS)
  variant, task = VARIANTS[arg.variant], arg.task
  data = sources(arg)
  config = base_config()
  config.task = "albef"
  config.model = variant["model"]
  config.albef = {
    "task": task,
    "queue_size": variant["queue_size"],
    "answer_list": arg.vqa_answers,
    "answer_length": variant["answer_length"],
    "answer_k": 128,
    "init": {"pretrain": arg.init},
  }
  config.objective = {"base": "none", "weights": {}}
  config.optimizer.learning_rate = variant["learning_rate"]
  config.optimizer.warmup_steps = max(1, arg.steps // 10)
  config.optimizer.weight_decay = 0.02
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 0.0
  config.data.train = data[task]
  config.data.tokenizer = "wordpiece"
  config.data.global_batch_size = arg.batch or variant["batch"]
  config.data.eval_batch_size = 64
  config.data.augment = {}
  config.train.steps = arg.steps
  config.train.log_every = max(1, arg.steps // 10)
  config.train.checkpoint_every = arg.steps
  config.evals = (
    {"retrieval": {"kind": "itm_retrieval", "data": data["retrieval"], "captions": 5, "k": 16}}
    if task == "pretrain"
    else {task: {"kind": task, "data": data[task]}}
  )
  return config
