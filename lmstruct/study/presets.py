"""Scales of the study: one command, three sizes.

`smoke` proves the whole chain in CI (minutes, one seed, numbers meaningless); `cpu` is the measured study on two
CPU cores (≤ 90 min); `accelerator` is the same study scaled up for a GPU or TPU host (longer training, more data,
more seeds). Only the scale changes between presets; the runs, evaluators and analysis are identical.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LitScale:
  """The real-photo comparison: LiT heads on cached tower features of COCO-format captions."""

  max_steps: int  # upper bound on training steps per run
  eval_every: int  # validation retrieval interval (steps)
  patience: int  # evaluations without improvement before stopping
  batch: int  # global batch size
  augmented_views: int  # augmented image views (and EDA captions) cached per example


@dataclasses.dataclass(frozen=True)
class StudyScale:
  """Training and evaluation sizes of every scenes run of the study."""

  name: str
  description: str
  variant: str  # configs/clip_scenes.py model variant
  steps: int
  batch: int
  train_size: int  # rendered training scenes
  eval_size: int  # rendered validation and test scenes (each)
  seeds: int  # default number of seeds
  shots: tuple[int, ...]  # k of the few-shot probes (every class of the validation split has at least k examples)
  probe_exponents: tuple[float, ...]  # the probes' L2 sweep, 10^e (refined by ±1 when it has several points)
  lit: LitScale


PRESETS: dict[str, StudyScale] = {
  "smoke": StudyScale(
    name="smoke",
    description="CI smoke size: every run, evaluator and plot at a toy scale (one seed).",
    variant="test",
    steps=6,
    batch=16,
    train_size=96,
    eval_size=48,
    seeds=1,
    shots=(1,),
    probe_exponents=(0.0,),
    lit=LitScale(max_steps=6, eval_every=3, patience=1, batch=16, augmented_views=1),
  ),
  "cpu": StudyScale(
    name="cpu",
    description="The measured study on two CPU cores (the main job's model, half its training).",
    variant="small",
    steps=125,
    batch=64,
    train_size=6000,
    eval_size=500,
    seeds=3,
    shots=(1, 4, 16),
    probe_exponents=(-6.0, -4.0, -2.0, 0.0, 2.0),
    lit=LitScale(max_steps=400, eval_every=20, patience=5, batch=32, augmented_views=4),
  ),
  "accelerator": StudyScale(
    name="accelerator",
    description="A GPU/TPU host: longer training on more scenes, five seeds.",
    variant="small",
    steps=3000,
    batch=256,
    train_size=60000,
    eval_size=2000,
    seeds=5,
    shots=(1, 4, 16),
    probe_exponents=(-6.0, -4.0, -2.0, 0.0, 2.0),
    lit=LitScale(max_steps=2000, eval_every=50, patience=8, batch=64, augmented_views=8),
  ),
}


def get_preset(name: str) -> StudyScale:
  """The preset called `name`; an unknown name lists the valid ones."""
  if name not in PRESETS:
    raise ValueError(f"unknown study preset {name!r}; valid presets: {sorted(PRESETS)}")
  return PRESETS[name]
