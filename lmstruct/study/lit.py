"""The study's comparison on real photos: LiT (both pretrained towers locked, the projection heads trained) on
COCO-format captions, every ablation objective, several seeds, each trained until its validation retrieval stops
improving.

With the towers locked, a training step only needs the towers' pooled outputs, so they are computed once: for every
training image its CLIP-preprocessed view and `augmented_views` augmented views (the config's augmentation), for
every caption its tokens and `augmented_views` EDA variants; for the evaluation images and captions, their plain
views. The heads then train on these cached features with the library's own update (`make_train_step`) through a
`TwoTower` whose towers are `PooledFeatures` (identity) modules — the same projections, objective, optimizer and
logit scale as `configs/lit_coco.py`, with the augmentation drawn from a finite pool per example.

COCO-mini's val images are split by position into a validation half (early stopping: the step with the best
mean R@1, stopping after `patience` evaluations without improvement) and a test half (reported).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from lmstruct.config import load_config
from lmstruct.data import augment, eda, pipeline, sources
from lmstruct.eval.retrieval import retrieval_metrics
from lmstruct.models.two_tower import PooledFeatures, TwoTower
from lmstruct.study import stats
from lmstruct.study.analysis import higher_is_better
from lmstruct.study.experiments import ABLATION_OBJECTIVES, REGULARIZER_BASE
from lmstruct.study.presets import LitScale
from lmstruct.train.loop import Trainer
from lmstruct.train.optimizer import learning_rate_schedule, make_optimizer
from lmstruct.train.sharding import make_mesh, sharding_rules
from lmstruct.train.step import init_train_state, make_train_step

LIT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "lit_coco.py"
RETRIEVAL_KS = (1, 5, 10)


@dataclasses.dataclass(frozen=True)
class CachedSplit:
  """Pooled tower outputs of one split: images [N, V, Di] (view 0 plain, 1… augmented), captions
  [M, V, Dt] (variant 0 plain, 1… EDA) and the image of every caption [M]."""

  images: np.ndarray
  captions: np.ndarray
  caption_image: np.ndarray

  def subset(self, image_indices: np.ndarray) -> CachedSplit:
    """The images `image_indices` (renumbered 0…) with their captions."""
    renumber = -np.ones(self.images.shape[0], np.int64)
    renumber[image_indices] = np.arange(image_indices.size)
    keep = renumber[self.caption_image] >= 0
    return CachedSplit(self.images[image_indices], self.captions[keep], renumber[self.caption_image[keep]])


def _tower_functions(trainer: Trainer) -> tuple[Callable, Callable]:
  """Jitted pooled image and text tower outputs under the trainer's (pretrained) variables."""
  variables = {"params": trainer.state.params}
  if trainer.state.batch_stats:
    variables["batch_stats"] = trainer.state.batch_stats
  model = trainer.model
  image = jax.jit(lambda x: model.apply(variables, x, method=lambda m, x: m.image_tower(x, train=False)))
  text = jax.jit(lambda t: model.apply(variables, t, method=lambda m, t: m.text_tower(t)))
  return image, text


def _batched(fn: Callable, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
  """fn over `inputs` in batches, concatenated as float32 NumPy."""
  return np.concatenate([np.asarray(fn(inputs[i : i + batch]), np.float32) for i in range(0, len(inputs), batch)])


def cache_split(source: Any, trainer: Trainer, views: int, seed: int) -> CachedSplit:
  """Pooled features of every image and caption of `source` (module docstring); `views` = 0 caches plain views
  only. View k of example i is drawn from the generator seeded by (seed, i, k)."""
  config = trainer.config
  image_fn, text_fn = _tower_functions(trainer)
  augmentation = augment.augmentation_from_config(config.data.augment.to_dict() or None)
  text_augmentation = eda.eda_from_config(config.data.eda.to_dict() or None, eda.wordnet_synonyms)
  size = trainer.image_shape[0]
  images, captions, caption_image = [], [], []
  for i in range(len(source)):
    example = source[i]
    picture = pipeline.decode_pil(example)
    rngs = [np.random.default_rng((seed, i, k)) for k in range(views)]
    images.append([augment.clip_preprocess(picture, size)] + [augmentation(picture, r, size) for r in rngs])
    for caption in example["captions"]:
      variants = [caption] + [text_augmentation(caption, r) for r in rngs]
      captions.append(np.asarray(trainer.tokenize(variants), np.int32))
      caption_image.append(i)
  image_array = np.stack(images)
  pooled_images = _batched(image_fn, image_array.reshape(-1, *image_array.shape[2:]))
  caption_array = np.stack(captions)
  pooled_captions = _batched(text_fn, caption_array.reshape(-1, caption_array.shape[-1]))
  return CachedSplit(
    pooled_images.reshape(*image_array.shape[:2], -1),
    pooled_captions.reshape(*caption_array.shape[:2], -1),
    np.asarray(caption_image),
  )


def heads_model(lit_model: TwoTower) -> TwoTower:
  """The LiT model's heads over cached pooled features: the same projections, logit scale and bias."""
  return lit_model.clone(image_tower=PooledFeatures(), text_tower=PooledFeatures())


def sample_batch(train: CachedSplit, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
  """`batch` distinct training images, one random caption of each, a random augmented view and EDA variant."""
  images = rng.choice(train.images.shape[0], size=batch, replace=False)
  captions_of = [np.flatnonzero(train.caption_image == i) for i in images]
  captions = np.asarray([rng.choice(c) for c in captions_of])
  views = train.images.shape[1]
  aug_view = rng.integers(1, views, size=batch) if views > 1 else np.zeros(batch, np.int64)
  aug_text = rng.integers(1, views, size=batch) if views > 1 else np.zeros(batch, np.int64)
  return {
    "image": train.images[images, 0],
    "image_aug": train.images[images, aug_view],
    "text": train.captions[captions, 0],
    "text_aug": train.captions[captions, aug_text],
  }


def retrieval(model: TwoTower, params: Any, split: CachedSplit) -> dict[str, float]:
  """COCO-protocol retrieval recalls of the projected plain views."""
  out = model.apply({"params": params}, images=split.images[:, 0], texts=split.captions[:, 0])
  return retrieval_metrics(np.asarray(out["zv"]), np.asarray(out["zt"]), split.caption_image, RETRIEVAL_KS)


def train_heads(
  config: ml_collections.ConfigDict,
  model: TwoTower,
  train: CachedSplit,
  val: CachedSplit,
  test: CachedSplit,
  scale: LitScale,
  seed: int,
) -> dict[str, float]:
  """Trains the heads with early stopping on validation mean R@1; returns the test recalls of the best step,
  with `best_step` and `val_mean_recall@1`."""
  optimizer = {**config.optimizer.to_dict(), "total_steps": scale.max_steps, "trainable": []}
  tx = make_optimizer(optimizer)
  mesh = make_mesh({"data": 1})
  state, shardings = init_train_state(
    model,
    tx,
    image_shape=(train.images.shape[-1],),
    context_length=train.captions.shape[-1],
    mesh=mesh,
    rules=sharding_rules("replicate"),
    seed=seed,
  )
  step_fn = make_train_step(
    model,
    tx,
    objective=config.objective.to_dict(),
    mesh=mesh,
    state_shardings=shardings,
    learning_rate=learning_rate_schedule(optimizer),
  )
  rng = np.random.default_rng(seed)
  best, best_step, best_params, waited = -1.0, 0, None, 0
  for step in range(1, scale.max_steps + 1):
    state, _ = step_fn(state, sample_batch(train, rng, scale.batch))
    if step % scale.eval_every and step != scale.max_steps:
      continue
    params = jax.device_get(state.params)
    score = retrieval(model, params, val)["mean_recall@1"]
    if score > best:
      best, best_step, best_params, waited = score, step, params, 0
    else:
      waited += 1
      if waited >= scale.patience:
        break
  return {**retrieval(model, best_params, test), "best_step": best_step, "val_mean_recall@1": best}


def lit_config(objective: str, batch: int) -> ml_collections.ConfigDict:
  """configs/lit_coco.py with the named ablation objective."""
  return load_config(f"{LIT_CONFIG}:objective={objective},batch={batch}")


def run_comparison(scale: LitScale, out: pathlib.Path, seeds: Sequence[int]) -> dict:
  """Every ablation objective × seed on cached COCO features; summaries, paired differences against each
  regulariser's base and CLIP, and the claim 'each regulariser improves retrieval'."""
  base_config = lit_config("full", scale.batch)
  trainer = Trainer(base_config, out / "towers")
  train_source = sources.build_source(base_config.data.train.to_dict(), base_config.data.data_dir)
  val_source = sources.build_source(base_config.evals.retrieval_coco_val.data.to_dict(), base_config.data.data_dir)
  train = cache_split(train_source, trainer, scale.augmented_views, seed=0)
  evaluation = cache_split(val_source, trainer, 0, seed=0)
  positions = np.arange(evaluation.images.shape[0])
  val, test = evaluation.subset(positions[0::2]), evaluation.subset(positions[1::2])
  model = heads_model(trainer.model)
  runs: dict[str, dict[int, dict[str, float]]] = {}
  for objective in ABLATION_OBJECTIVES:
    config = lit_config(objective, scale.batch)
    runs[objective] = {seed: train_heads(config, model, train, val, test, scale, seed) for seed in seeds}
    logging.info("study/lit: %s %s", objective, {s: r["mean_recall@1"] for s, r in runs[objective].items()})
  return summarize_comparison(
    runs,
    {
      "train_images": int(train.images.shape[0]),
      "val_images": int(val.images.shape[0]),
      "test_images": int(test.images.shape[0]),
      "augmented_views": scale.augmented_views,
    },
  )


def summarize_comparison(runs: Mapping[str, Mapping[int, Mapping[str, float]]], sizes: Mapping[str, int]) -> dict:
  """Mean ± std per objective and metric, paired differences of each objective against its base and CLIP, and a
  verdict per regulariser on test mean R@1."""
  metrics = sorted({m for per_seed in runs.values() for r in per_seed.values() for m in r})
  table = {m: {obj: stats.summarize([runs[obj][s][m] for s in sorted(runs[obj])]) for obj in runs} for m in metrics}
  paired, claims = {}, []
  for method in runs:
    for baseline in sorted({REGULARIZER_BASE.get(method), "clip"} - {None, method}):
      seeds = sorted(set(runs[method]) & set(runs[baseline]))
      paired[f"{method}-{baseline}"] = {
        m: stats.paired_difference([runs[method][s][m] for s in seeds], [runs[baseline][s][m] for s in seeds])
        for m in metrics
      }
      if method in REGULARIZER_BASE and method != "cyclip":
        diff = paired[f"{method}-{baseline}"]["mean_recall@1"]
        outcome = {"better": "reproduced", "no difference": "not reproduced", "worse": "reversed"}[
          stats.verdict(diff, higher_is_better("mean_recall@1"))
        ]
        claims.append(
          {
            "claim": f"{method} improves retrieval over {baseline} on real photos (LiT)",
            "method": method,
            "baseline": baseline,
            "metric": "mean_recall@1",
            "difference": diff,
            "outcome": outcome,
          }
        )
  return {"sizes": dict(sizes), "metrics": table, "paired": paired, "claims": claims}
