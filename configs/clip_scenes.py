"""The embedded default: a small CLIP modified ResNet + text transformer trained on the rendered scenes dataset with
the paper's objective (in-modal base + separation + Brownian bridge + geometric consistency), evaluated by zero-shot
classification, retrieval, a linear probe and the modality-structure diagnostics.

    lmstruct train --config configs/clip_scenes.py --workdir runs/default
    lmstruct train --config configs/clip_scenes.py:objective=cyclip,steps=600 --workdir runs/cyclip

Arguments:
  variant    model size: 'test' (seconds, for tests), 'small' (the main job: a small ResNet), 'small_vit' (a ViT of
             similar cost), 'tiny' (the benchmark size)
  objective  a named objective (`lmstruct.losses.objective.NAMED_OBJECTIVES`): 'full' (all three regularisers),
             'clip', 'inmodal', 'cyclip', 'sep', 'br', 'gc' (one regulariser)
  align      weight of the forced-alignment term gap_alignment (0: off; the information-gap experiment's λ)
  steps      training steps
  batch      global batch size
  scenes     scenes preset: default, material_text, no_size_text, two_way_gap, grey_out, occlusion
  train_size number of training examples rendered (the dataset is built on first use)
  rotation   maximum object rotation in degrees (the scenes' default 45; README "The main job" measures 0 and 15)
"""

from lmstruct.choices import unknown_choice
from lmstruct.config import base_config, parse_arg
from lmstruct.data import augment, scenes
from lmstruct.losses.objective import named_objective

VARIANTS = {
  "test": dict(model={"preset": "test", "image": {"image_size": 32}}, image_size=32, learning_rate=1e-3),
  # The main job: a small modified ResNet (CLIP's RN layout at width 16, one block per stage) and a 4-layer text
  # transformer. At this scale on CPU it learns colour, size and count from the captions, where a ViT of similar
  # cost (`small_vit`) learns colour only (README, "The main job").
  "small": dict(
    model={
      "preset": "tiny",
      "image": {"kind": "resnet", "size": "test", "width": 16, "stage_blocks": (1, 1, 1, 1)},
      "text": {"width": 128, "layers": 4, "heads": 4, "context_length": 32},
      "embed_dim": 128,
    },
    image_size=64,
    learning_rate=2e-3,
  ),
  "small_vit": dict(
    model={
      "preset": "tiny",
      "image": {"width": 128, "layers": 4, "heads": 4, "patch": 8},
      "text": {"width": 128, "layers": 4, "heads": 4, "context_length": 32},
      "embed_dim": 128,
    },
    image_size=64,
    learning_rate=1e-3,
  ),
  "tiny": dict(model={"preset": "tiny"}, image_size=64, learning_rate=1e-3),
}

LABELS = ("shape", "colour", "size", "count")


def rotation_knob(rotation: float) -> dict:
  """The `max_rotation` scene knob when it differs from the scenes' default (so default runs keep their config)."""
  return {} if rotation == scenes.SceneConfig.max_rotation else {"max_rotation": rotation}


def scenes_source(split: str, arg) -> dict:
  """One split of the scenes preset `arg.scenes`, rendered at the variant's image size, with only the splits the
  run reads (train, validation, test) built."""
  return {
    "kind": "scenes",
    "split": split,
    "preset": arg.scenes,
    "knobs": {"image_size": VARIANTS[arg.variant]["image_size"], **rotation_knob(arg.rotation)},
    "split_sizes": {"train": arg.train_size, "validation": arg.eval_size, "test": arg.eval_size},
  }


def get_config(arg: str | None = None):
  arg = parse_arg(
    arg,
    variant="small",
    objective="full",
    align=0.0,
    steps=250,
    batch=64,
    scenes="default",
    train_size=6000,
    eval_size=500,
    rotation=scenes.SceneConfig.max_rotation,
  )
  if arg.variant not in VARIANTS:
    raise unknown_choice("variant", arg.variant, VARIANTS)
  config = base_config()
  config.model = VARIANTS[arg.variant]["model"]
  config.objective = named_objective(arg.objective, arg.align).to_dict()
  config.optimizer.learning_rate = VARIANTS[arg.variant]["learning_rate"]
  config.optimizer.warmup_steps = max(1, arg.steps // 10)
  config.optimizer.weight_decay = 0.1
  config.data.train = scenes_source("train", arg)
  config.data.global_batch_size = arg.batch
  config.data.eval_batch_size = 128
  # The augmented view must keep the caption true (`augment.caption_contradictions` checks it): scene captions name
  # each object's shape, colour and size, their count, and left/right order. A zoom-out keeps every object whole and
  # in place relative to the others, and brightness/contrast jitter keeps every hue; no flip (left/right), no crop
  # (count, objects near the border), no hue or saturation change (colour names).
  config.data.augment = augment.caption_safe_augment_config()
  # EDA on the augmented caption without random swap, which could exchange two colours or shapes; synonym
  # replacement, insertion and deletion add no object, colour or side the image could contradict.
  config.data.eda = {"alpha_rs": 0.0}
  config.train.steps = arg.steps
  config.train.log_every = 20
  config.train.checkpoint_every = max(1, arg.steps // 2)
  test = scenes_source("test", arg)
  config.evals = {
    **{f"zeroshot_{label}": {"kind": "zeroshot", "data": test, "label": label} for label in LABELS},
    "retrieval": {"kind": "retrieval", "data": test, "captions": 5},
    "linear_probe_shape": {
      "kind": "linear_probe",
      "train_data": scenes_source("validation", arg),
      "test_data": test,
      "label": "shape",
    },
    "structure": {"kind": "structure", "data": test, "write_plots": True},
  }
  return config
