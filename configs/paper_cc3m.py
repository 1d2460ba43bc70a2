"""The paper's CLIP setup (Jiang et al. 2023, §5.1, after CyCLIP): RN50 image tower and CLIP's text transformer
trained from scratch on CC3M (img2dataset webdataset shards), batch 128 per device, AdamW lr 5e-4, weight decay
0.1, 10k warm-up steps, cosine decay, 64 epochs, in-modal base loss plus one regulariser.

    lmstruct train --config configs/paper_cc3m.py:shards=/data/cc3m,devices=8,reg=gc --workdir runs/cc3m_gc
    lmstruct train --config 'configs/paper_cc3m.py:shards=gs://bucket/cc3m/{00000..00331}.tar' \
                   --workdir gs://bucket/runs/cc3m_gc                               # from a bucket (docs/launch.md)

The shards are streamed (`{'kind': 'webdataset', 'streaming': True}`): each process reads its own shards through
an in-shard shuffle buffer, so start-up and memory do not grow with the dataset, and the iterator position is
checkpointed (lmstruct/data/streaming.py).

Arguments:
  shards     CC3M `*.tar` shards: a folder, a glob, a brace pattern or a bucket URL (or a converted `records` prefix
             with records=1)
  buffer     samples in each reader's in-shard shuffle buffer
  reg        regulariser: sep, br, gc (the paper's OURS_Sep/Br/GC), all, none (in-modal base only) or cyclip
  devices    number of data-parallel devices (the global batch is 128 × devices)
  examples   training examples per epoch (CC3M as downloaded: about 2.9M)
  epochs     epochs (64 in CyCLIP)
  imagenet   optional ImageFolder of ImageNet validation images for zero-shot top-1/3/5 (its WordNet-id folders
             get CLIP's class names); configs/paper_eval.py runs the paper's whole evaluation suite
  variant    'paper' (RN50, 224 px) or 'test' (a tiny ResNet, for tests)
"""
from lmstruct.choices import unknown_choice
from lmstruct.config import base_config, parse_arg
from lmstruct.data import augment
from lmstruct.losses.objective import ObjectiveConfig

REGULARIZERS = {
    "none": {}, "sep": {"separation": 1.0}, "br": {"bridge": 1.0}, "gc": {"geometric": 1.0},
    "all": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}, "cyclip": {"cyclip": 1.0},
}
MODELS = {"paper": {"preset": "RN50"}, "test": {"preset": "test-rn"}}
ARGS = dict(shards="", records=0, buffer=1000, reg="gc", devices=8, examples=2_900_000, epochs=64, imagenet="",
            variant="paper")


def get_config(arg: str | None = None):
  return config_from_args(parse_arg(arg, **ARGS))


def config_from_args(arg):
  """The config of parsed arguments `arg` (ARGS's keys; configs/paper_eval.py adds its own)."""
  if arg.reg not in REGULARIZERS:
    raise unknown_choice("reg", arg.reg, REGULARIZERS)
  if arg.variant not in MODELS:
    raise unknown_choice("variant", arg.variant, MODELS)
  config = base_config()
  config.model = MODELS[arg.variant]
  config.objective = ObjectiveConfig(base="clip" if arg.reg == "cyclip" else "inmodal",
                                     weights=REGULARIZERS[arg.reg]).to_dict()
  batch = 128 * arg.devices
  steps = arg.examples * arg.epochs // batch
  config.optimizer.learning_rate = 5e-4
  config.optimizer.weight_decay = 0.1
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.warmup_steps = min(10_000, steps // 10)
  config.data.train = ({"kind": "records", "path": arg.shards} if arg.records else
                       {"kind": "webdataset", "shards": arg.shards, "streaming": True, "shuffle_buffer": arg.buffer})
  config.data.global_batch_size = batch
  config.data.worker_count = 8
  # CyCLIP's augmented views (a RandAugment-style policy on images, EDA on captions), restricted to what cannot
  # contradict a caption (`augment.caption_contradictions` checks it): CC3M captions name colours, sides and
  # objects, so the image policy draws only photometric ops that keep hues (brightness, contrast, sharpness) after a
  # zoom-out that keeps every object whole; no flip, crop, translation, rotation, shear or colour op. EDA replaces
  # words by WordNet synonyms, inserts synonyms and deletes words, at rate 0.1: it adds no object, colour or side
  # that the image could contradict; random swap, which could exchange two colours or objects, is off.
  config.data.augment = {"random_zoom_out": {"scale": (0.8, 1.0)},
                         "rand_augment": {"num_ops": 2, "magnitude": 9, "ops": augment.CAPTION_SAFE_OPS}}
  config.data.eda = {"alpha_rs": 0.0}
  config.train.steps = steps
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.train.keep_checkpoints = 3
  if arg.get("imagenet"):  # configs/paper_eval.py has no `imagenet`: its suite has ImageNet
    imagenet = {"kind": "imagefolder", "root": arg.imagenet}
    config.evals = {"zeroshot_imagenet": {"kind": "zeroshot", "data": imagenet, "templates": "paper",
                                          "every_steps": 10_000}}
  return config
