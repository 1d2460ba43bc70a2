"""How much shape the main job's image tower can learn in the main job's example budget, supervised.

    PYTHONPATH=$PWD python scripts/shape_budget.py [--rotations 45,0] [--seeds 0,1,2] [--steps 250] [--batch 64] \
        [--train-size 16000] [--test-size 1000] [--config configs/clip_scenes.py] \
        [--out docs/main_job/shape_budget.jsonl]

The main job (`make train`, `configs/clip_scenes.py`) sees 250 × 64 = 16,000 training examples, and its zero-shot
shape accuracy stays near chance (README, "The main job"). This script separates the two reasons that could have:
the image tower cannot learn shape from that many examples at all, or the contrastive objective does not ask it to.

For each maximum object rotation and seed it trains the main job's image tower (the `small` variant's modified
ResNet, at its image size, learning rate, warm-up and optimizer) with a linear head on its pooled backbone features
hv, by softmax cross-entropy on the shape of the leftmost object, the label zero-shot shape is scored on:

    min over (tower, head) of  −(1/B) Σᵢ log softmax(W·hv(xᵢ) + b)[shapeᵢ]

on batches of `--batch` drawn from `--train-size` rendered training scenes, for `--steps` updates; then it reports
the head's top-1 accuracy on `--test-size` scenes of the test split, every `--eval-every` updates. The scenes are
the main job's (`scenes=default` at its image size), with `max_rotation` replaced; everything else about them is
unchanged. Chance is 1/7.

One JSON line per (rotation, seed) is printed and appended to `--out`, with the commit, machine and date.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmstruct import provenance
from lmstruct.config import load_config
from lmstruct.data import augment, scenes
from lmstruct.models.factory import build_model
from lmstruct.train.optimizer import make_optimizer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MAIN_JOB_CONFIG = REPO_ROOT / "configs" / "clip_scenes.py"


def render_split(config: scenes.SceneConfig, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` scenes of `split` as CLIP-preprocessed images float32 [N, S, S, 3] and the shape class of each
  scene's leftmost object int32 [N] (`scenes.scene_labels`)."""
  images, labels = [], []
  for index in range(count):
    scene, _ = scenes.example_scenes(config, split, index)
    images.append(augment.clip_preprocess(scenes.render_scene(scene, config), config.image_size))
    labels.append(scenes.scene_labels(scene)["shape"])
  return np.stack(images), np.asarray(labels, np.int32)


def train_shape_classifier(
  main_job: Any,
  train: tuple[np.ndarray, np.ndarray],
  test: tuple[np.ndarray, np.ndarray],
  *,
  steps: int,
  batch: int,
  eval_every: int,
  seed: int,
) -> dict[int, float]:
  """Test top-1 accuracy {update: accuracy} of the main job's image tower + a linear head on hv, trained by
  cross-entropy on the leftmost shape with the main job's optimizer over `steps` updates."""
  model = build_model(main_job.model)
  head = nn.Dense(len(scenes.SHAPES))
  images, labels = train
  init_key, head_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.asarray(images[:2]), method=model.encode_image)
  width = model.apply(variables, jnp.asarray(images[:2]), method=model.encode_image)["hv"].shape[-1]
  params = {"model": variables["params"], "head": head.init(head_key, jnp.zeros((1, width)))["params"]}
  batch_stats = variables.get("batch_stats", {})  # none for a ViT
  optimizer = make_optimizer({**main_job.optimizer.to_dict(), "total_steps": steps})
  opt_state = optimizer.init(params)

  def logits(params, batch_stats, x, train):
    variables = {"params": params["model"], **({"batch_stats": batch_stats} if batch_stats else {})}
    if train:
      out, updates = model.apply(variables, x, train=True, method=model.encode_image, mutable=["batch_stats"])
    else:
      out, updates = model.apply(variables, x, method=model.encode_image), {"batch_stats": batch_stats}
    return head.apply({"params": params["head"]}, out["hv"]), updates.get("batch_stats", {})

  @jax.jit
  def update(params, opt_state, batch_stats, x, y):
    def loss(params):
      scores, new_stats = logits(params, batch_stats, x, True)
      return optax.softmax_cross_entropy_with_integer_labels(scores, y).mean(), new_stats

    (_, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, batch_stats

  @jax.jit
  def predict(params, batch_stats, x):
    return logits(params, batch_stats, x, False)[0].argmax(-1)

  def accuracy() -> float:
    chunks = [test[0][i : i + 250] for i in range(0, len(test[0]), 250)]
    predictions = np.concatenate([np.asarray(predict(params, batch_stats, chunk)) for chunk in chunks])
    return float(np.mean(predictions == test[1]))

  order = np.random.default_rng(seed)
  curve = {}
  for step in range(1, steps + 1):
    rows = order.integers(0, len(images), batch)
    params, opt_state, batch_stats = update(params, opt_state, batch_stats, images[rows], labels[rows])
    if step % eval_every == 0 or step == steps:
      curve[step] = accuracy()
  return curve


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rotations", default="45,0", help="comma-separated max_rotation values in degrees")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (initialisation and batch order)")
  parser.add_argument("--steps", type=int, default=250, help="updates (the main job's 250)")
  parser.add_argument("--batch", type=int, default=64, help="batch size (the main job's 64)")
  parser.add_argument("--train-size", type=int, default=16000, help="rendered training scenes")
  parser.add_argument("--test-size", type=int, default=1000, help="rendered test scenes")
  parser.add_argument("--eval-every", type=int, default=50, help="updates between test evaluations")
  parser.add_argument(
    "--config", default=str(MAIN_JOB_CONFIG), help="the training config whose model, optimizer and image size are used"
  )
  parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON-lines file the records are appended to")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  main_job = load_config(args.config)
  image_size = main_job.data.train.knobs["image_size"]
  records = []
  for rotation in [float(r) for r in args.rotations.split(",")]:
    config = scenes.SceneConfig(image_size=image_size, max_rotation=rotation)  # scenes=default, rotation replaced
    train, test = render_split(config, "train", args.train_size), render_split(config, "test", args.test_size)
    for seed in [int(s) for s in args.seeds.split(",")]:
      started = time.time()
      curve = train_shape_classifier(
        main_job, train, test, steps=args.steps, batch=args.batch, eval_every=args.eval_every, seed=seed
      )
      record = {
        "max_rotation": rotation,
        "seed": seed,
        "steps": args.steps,
        "batch": args.batch,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "test_accuracy": curve[args.steps],
        "curve": {str(step): value for step, value in curve.items()},
        "chance": 1 / len(scenes.SHAPES),
        "wall_seconds": round(time.time() - started, 1),
        "commit": provenance.git_commit(),
        "machine": provenance.host(),
        "date": provenance.utc_date(),
      }
      records.append(record)
      line = json.dumps(record)
      print(line, flush=True)
      if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
          handle.write(line + "\n")
  return records


if __name__ == "__main__":
  main()
