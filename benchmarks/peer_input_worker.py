"""The peers of benchmarks/input_rate_peers.py: the same input work in open_clip's webdataset + torch DataLoader
(``--side open_clip``, in the peer virtualenv) or in tf.data (``--side tf.data``, in a ``tensorflow-cpu``
virtualenv), run as a worker process answering ``rate`` commands (benchmarks/common.py's ``serve``).

Both import lmstruct's ``eda`` (numpy only) for the caption augmentation, which neither peer has; tf.data also uses
lmstruct's CLIP BPE (ftfy, regex), as a tf.data user without tensorflow-text would, through ``tf.numpy_function``.
Virtualenvs (never dependencies of lmstruct):

    python3 -m venv ../peer-venv && ../peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        open-clip-torch==3.3.0 webdataset==1.0.2
    python3 -m venv ../tf-venv && ../tf-venv/bin/pip install tensorflow-cpu==2.21.0 ftfy regex
"""

from __future__ import annotations

import glob
import json
import pathlib
import sys
import tarfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _eda():
  from lmstruct.data import eda

  return eda.eda_from_config(None, eda.wordnet_synonyms)


class OpenClipSide:
  """webdataset → decode → (eval view, train view, tokens) → batched → WebLoader(num_workers=0); one thread."""

  def __init__(self, spec: dict[str, Any]):
    import numpy as np
    import open_clip
    import torch
    import webdataset as wds
    from torchvision import transforms

    torch.set_num_threads(1)
    self.spec, self.np, self.torch, self.wds = spec, np, torch, wds
    size = spec["image_size"]
    self.original = open_clip.image_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    self.augmented = transforms.Compose(
      [
        transforms.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
      ]
    )
    self.tokenizer = open_clip.get_tokenizer("ViT-B-32")
    self.eda = _eda()
    self.versions = {"torch": torch.__version__, "open_clip": open_clip.__version__, "webdataset": wds.__version__}

  def _example(self, sample: tuple[Any, str], rng) -> tuple[Any, ...]:
    image, caption = sample
    tokens = self.tokenizer([caption, self.eda(caption, rng)])
    return self.original(image), self.augmented(image), tokens[0], tokens[1]

  def rate(self, batches: int, warmup: int, seed: int) -> dict[str, Any]:
    rng = self.np.random.default_rng(seed)
    self.torch.manual_seed(seed)
    urls = sorted(glob.glob(f"{self.spec['shards']}/*.tar"))
    dataset = (
      self.wds.WebDataset(urls, shardshuffle=False, empty_check=False)
      .repeat()
      .shuffle(100)
      .decode("pilrgb")
      .to_tuple("jpg", "txt")
      .map(lambda s: self._example(s, rng))
      .batched(self.spec["batch"])
    )
    loader = iter(self.wds.WebLoader(dataset, batch_size=None, num_workers=0))
    for _ in range(warmup):
      next(loader)
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(loader)
    seconds = time.perf_counter() - start
    return {
      "examples_per_s": batches * self.spec["batch"] / seconds,
      "seconds": seconds,
      "shapes": [list(x.shape) for x in batch],
      "versions": self.versions,
    }


class TfDataSide:
  """from_generator(tar samples) → map(decode, two tf.image views, EDA + BPE via numpy_function) → batch; one
  thread everywhere."""

  def __init__(self, spec: dict[str, Any]):
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from lmstruct.data.tokenize import get_tokenizer

    self.spec, self.np, self.tf = spec, np, tf
    self.tokenize = get_tokenizer("clip", context_length=spec["context"])
    self.eda = _eda()
    self.versions = {"tensorflow": tf.__version__}

  def _samples(self):
    for path in sorted(glob.glob(f"{self.spec['shards']}/*.tar")):
      with tarfile.open(path) as tar:
        members: dict[str, dict[str, bytes]] = {}
        for member in tar:
          key, _, ext = member.name.partition(".")
          members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for parts in members.values():
          yield parts["jpg"], parts["txt"].decode()

  def _views(self, jpeg, caption, rng_seed):
    tf, size = self.tf, self.spec["image_size"]
    image = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
    mean, std = tf.constant(CLIP_MEAN), tf.constant(CLIP_STD)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scaled = tf.cast(tf.round(shape * size / tf.reduce_min(shape)), tf.int32)
    resized = tf.image.resize(image, scaled, method="bicubic")
    original = tf.image.resize_with_crop_or_pad(resized, size, size)
    box_begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      tf.zeros([1, 0, 4]),
      seed=rng_seed,
      area_range=(0.5, 1.0),
      aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0.0,
      use_image_if_no_bounding_boxes=True,
    )
    crop = tf.image.resize(tf.slice(image, box_begin, box_size), (size, size), method="bicubic")
    crop = tf.image.stateless_random_flip_left_right(crop, seed=rng_seed)
    jitter = tf.random.stateless_uniform([], seed=rng_seed) < 0.8
    crop = tf.cond(
      jitter,
      lambda: tf.image.stateless_random_hue(
        tf.image.stateless_random_saturation(
          tf.image.stateless_random_contrast(
            tf.image.stateless_random_brightness(crop, 0.4, seed=rng_seed), 0.6, 1.4, seed=rng_seed
          ),
          0.6,
          1.4,
          seed=rng_seed,
        ),
        0.1,
        seed=rng_seed,
      ),
      lambda: crop,
    )
    tokens = tf.numpy_function(self._tokens, [caption, rng_seed], tf.int32)
    tokens.set_shape([2, self.spec["context"]])
    return (
      (tf.clip_by_value(original, 0, 1) - mean) / std,
      (tf.clip_by_value(crop, 0, 1) - mean) / std,
      tokens[0],
      tokens[1],
    )

  def _tokens(self, caption, seed):
    text = caption.decode()
    return self.tokenize([text, self.eda(text, self.np.random.default_rng(seed.tolist()))])

  def rate(self, batches: int, warmup: int, seed: int) -> dict[str, Any]:
    tf = self.tf
    samples = (
      tf.data.Dataset.from_generator(
        self._samples, output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string))
      )
      .repeat()
      .shuffle(100, seed=seed)
    )
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = (
      tf.data.Dataset.zip((samples, seeds))
      .map(lambda s, r: self._views(s[0], s[1], r), num_parallel_calls=1)
      .batch(self.spec["batch"])
    )
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    iterator = iter(dataset.with_options(options))
    for _ in range(warmup):
      next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    seconds = time.perf_counter() - start
    return {
      "examples_per_s": batches * self.spec["batch"] / seconds,
      "seconds": seconds,
      "shapes": [list(x.shape) for x in batch],
      "versions": self.versions,
    }


def main() -> None:
  if len(sys.argv) != 4 or sys.argv[1] != "--side":
    sys.exit(__doc__)
  spec = json.loads(sys.argv[3])
  side = {"open_clip": OpenClipSide, "tf.data": TfDataSide}[sys.argv[2]](spec)

  def handle(command: dict[str, Any]) -> dict[str, Any]:
    if command["cmd"] == "rate":
      return side.rate(int(command["batches"]), int(command["warmup"]), int(command["seed"]))
    raise ValueError(f"unknown command {command['cmd']!r}")

  common.serve(handle)


if __name__ == "__main__":
  main()
