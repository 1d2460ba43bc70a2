"""The runs of the study and the configs they train with.

Three experiments share one set of runs on the scenes benchmark with a two-way information gap (preset
`two_way_gap`: size is shown by the image only, material is stated by the text only; shape, colour and count are in
both):

* information gap (Theorem 3.1): the paper's base loss (in-modal) with a forced-alignment weight λ ∈ {0, 0.1, 1} on
  the well-posed alignment term, and the full objective;
* gap study (§3.1): the same alignment weights, read as points (modality gap, zero-shot / retrieval);
* ablation (Tables 1–3): `clip`, `cyclip`, `inmodal`, `sep`, `br`, `gc`, `full`.

A run is one (objective, alignment weight, seed); runs that two experiments need (λ = 0 is the ablation's
`inmodal`, the full objective is in both) are trained once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from lmstruct.data import scenes

#: The scenes preset every run trains and evaluates on.
SCENES_PRESET = "two_way_gap"
#: Forced-alignment weights λ of the information-gap and gap-study runs.
ALIGNMENT_WEIGHTS: tuple[float, ...] = (0.0, 0.1, 1.0)
#: The objectives of the ablation (names of configs/clip_scenes.py).
ABLATION_OBJECTIVES: tuple[str, ...] = ("clip", "cyclip", "inmodal", "sep", "br", "gc", "full")
#: Each regulariser's base (the paper adds each to L_Con, the in-modal loss), and the baselines of its tables.
REGULARIZER_BASE = {"sep": "inmodal", "br": "inmodal", "gc": "inmodal", "full": "inmodal", "cyclip": "clip"}
#: Every scene label, and the labels that zero-shot, probes and few-shot report.
LABELS: tuple[str, ...] = tuple(scenes.SCENE_LABELS)
#: Feature kinds the linear probes read: the image encoder's pooled features, the projected image features, the
#: projected text features of the first caption, and both projections side by side.
PROBE_FEATURES: tuple[str, ...] = ("backbone", "projected", "text", "joint")


def study_evals(split_source: Callable[[str], dict], shots: Sequence[int], probe_exponents: Sequence[float]) -> dict:
  """The evaluators of every study run, over the scenes splits `split_source(split)` gives: zero-shot top-1/3/5 of
  every label (a label one modality lacks reads chance by construction), retrieval R@1/5/10 over five captions,
  linear probes of every label on every feature kind (test cross-entropy; L2 from 10^`probe_exponents` chosen by
  validation cross-entropy) with k-shot probes on backbone features for k in `shots`, trained on the validation
  split, and the structure diagnostics with the bridge residual and the embedding-shift curve, all on the test
  split."""
  test = split_source("test")
  evals = {f"zeroshot_{label}": {"kind": "zeroshot", "data": test, "label": label} for label in LABELS}
  evals["retrieval"] = {"kind": "retrieval", "data": test, "captions": 5}
  evals["probes"] = {
    "kind": "label_probes",
    "train_data": split_source("validation"),
    "test_data": test,
    "label": list(LABELS),
    "features": list(PROBE_FEATURES),
    "shots": list(shots),
    "criterion": "ce",
    "coarse_exponents": list(probe_exponents),
    "refine_steps": [1.0] if len(probe_exponents) > 1 else [],
  }
  evals["structure"] = {"kind": "structure", "data": test, "write_plots": True}
  return evals


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: an objective of configs/clip_scenes.py, a forced-alignment weight and a seed."""

  objective: str
  alignment: float
  seed: int

  @property
  def name(self) -> str:
    """A directory name: `<objective>_align<λ>_seed<k>`."""
    return f"{self.objective}_align{self.alignment:g}_seed{self.seed}"


def information_gap_runs(seeds: Sequence[int]) -> list[RunSpec]:
  """In-modal base with each alignment weight, and the full objective, for every seed."""
  runs = [RunSpec("inmodal", weight, seed) for weight in ALIGNMENT_WEIGHTS for seed in seeds]
  return runs + [RunSpec("full", 0.0, seed) for seed in seeds]


def ablation_runs(seeds: Sequence[int]) -> list[RunSpec]:
  """Every ablation objective without forced alignment, for every seed."""
  return [RunSpec(objective, 0.0, seed) for objective in ABLATION_OBJECTIVES for seed in seeds]


def all_runs(seeds: Sequence[int]) -> list[RunSpec]:
  """The union of both lists, each run once, in a fixed order (seed-major, so an interrupted study has every
  objective at the first seeds)."""
  unique = dict.fromkeys(information_gap_runs(seeds) + ablation_runs(seeds))
  return sorted(unique, key=lambda r: (r.seed, r.objective, r.alignment))
