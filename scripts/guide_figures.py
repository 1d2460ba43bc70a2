"""The figures and reference values of docs/guide.md: one real run per objective, and real vs random CLIP.

    PYTHONPATH=$PWD python scripts/guide_figures.py [--steps 250] [--objectives clip,sep,br,gc,full] \
        [--runs runs/guide | --study STUDY_OUT] [--out docs/guide]

For each objective of `configs/clip_scenes.py` (the `small` variant, the main job's size) it trains a run of
`--steps` updates with only the structure evaluator (the other evaluators do not change the figures), then copies
the run's final joint-PCA and gap-shift plots to `OUT/pca_<objective>.png` and `OUT/gap_shift_<objective>.png`.
With `--study STUDY_OUT` it trains nothing and takes each objective's first-seed run of a finished `lmstruct study`
instead (the runs whose numbers docs/study.md reports).
It then reads the real CLIP features (`$LMSTRUCT_SHARED_DATA/clip-features/`, default `../shared/data` beside the
checkout: OpenAI CLIP ViT-B/16 and a random CLIP on 500 COCO val2017 pairs), computes every structure diagnostic
and one-caption retrieval among the 500 pairs, and draws their PCA plots (`OUT/pca_clip_vitb16.png`,
`OUT/pca_clip_random.png`).

One JSON line per run or feature set is printed and written to `OUT/structure.jsonl`, each with the machine,
commit and date. Runs already finished are not retrained (rerunning only collects).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lmstruct import paths, provenance

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
OBJECTIVES = ("clip", "sep", "br", "gc", "full")
FEATURE_SETS = {"clip_vitb16": "features_clip.npy", "clip_random": "features_clip_random.npy"}


def measured_where() -> dict[str, Any]:
  """The commit, machine and date every record carries (`lmstruct.provenance`)."""
  return {
    "commit": provenance.git_commit(),
    "machine": provenance.describe(provenance.host()),
    "date": provenance.utc_date(with_time=False),
  }


def train_objective(objective: str, steps: int, runs: pathlib.Path) -> tuple[pathlib.Path, int, dict[str, float]]:
  """Trains (or finds finished) `configs/clip_scenes.py:objective=<objective>,steps=<steps>` with only the
  structure evaluator; returns (its structure evaluation folder, final step, structure metrics)."""
  from lmstruct.config import load_config
  from lmstruct.train.loop import train_and_evaluate

  config = load_config(str(REPO_ROOT / f"configs/clip_scenes.py:objective={objective},steps={steps}"))
  config.unlock()
  config.evals = {"structure": config.evals.structure.to_dict()}
  config.lock()
  workdir = runs / objective
  results = train_and_evaluate(config, workdir)
  step = json.loads((workdir / "results.json").read_text())["step"]
  return workdir / "eval" / "structure", step, results["structure"]


def study_objective(objective: str, study: pathlib.Path) -> tuple[pathlib.Path, int, dict[str, float], str]:
  """The first-seed run of `objective` (no forced alignment) of a finished `lmstruct study` in `study`: (its
  structure evaluation folder, final step, structure metrics, its config)."""
  workdir = study / "runs" / f"{objective}_align0_seed0"
  payload = json.loads((workdir / "results.json").read_text())
  config = json.loads((workdir / "config.json").read_text())
  train = config["data"]["train"]
  description = (
    f"lmstruct study run {workdir.name}: configs/clip_scenes.py objective={objective}, "
    f"{config['train']['steps']} steps, batch {config['data']['global_batch_size']}, scenes preset {train['preset']}"
  )
  return workdir / "eval" / "structure", payload["step"], payload["results"]["structure"], description


def clip_features(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(zv, zt) [500, 512] of one shared CLIP feature file, rows re-normalised to unit length."""
  from lmstruct.eval.features import l2_normalize

  features = np.load(paths.shared_data() / "clip-features" / FEATURE_SETS[name])
  return l2_normalize(features[0]), l2_normalize(features[1])


def feature_set_record(name: str, out: pathlib.Path) -> dict[str, Any]:
  """Every structure diagnostic and retrieval among the pairs of one CLIP feature set; draws its PCA plot."""
  from lmstruct.eval import plots, retrieval, structure

  zv, zt = clip_features(name)
  metrics = structure.structure_metrics(zv, zt)
  metrics.update(retrieval.retrieval_metrics(zv, zt, np.arange(zv.shape[0])))
  plots.plot_modality_pca(zv, zt, out / f"pca_{name}.png")
  return {"kind": "clip_features", "name": name, "pairs": int(zv.shape[0]), "metrics": metrics}


def emit(record: Mapping[str, Any], sink: Any) -> None:
  line = json.dumps(record, sort_keys=True)
  print(line, flush=True)
  sink.write(line + "\n")
  sink.flush()


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=250)
  parser.add_argument("--objectives", default=",".join(OBJECTIVES))
  parser.add_argument("--runs", default="runs/guide")
  parser.add_argument(
    "--study", default=None, help="take each objective's first-seed run from this `lmstruct study` output instead"
  )
  parser.add_argument("--out", default="docs/guide")
  args = parser.parse_args(argv)
  out, runs = pathlib.Path(args.out), pathlib.Path(args.runs)
  out.mkdir(parents=True, exist_ok=True)
  facts = measured_where()
  with (out / "structure.jsonl").open("w") as sink:
    for name in FEATURE_SETS:
      emit({**feature_set_record(name, out), **facts}, sink)
    for objective in args.objectives.split(","):
      if args.study:
        folder, step, metrics, config = study_objective(objective, pathlib.Path(args.study))
      else:
        folder, step, metrics = train_objective(objective, args.steps, runs)
        config = f"configs/clip_scenes.py:objective={objective},steps={step}"
      for figure in ("pca", "gap_shift"):
        shutil.copyfile(folder / f"step_{step}_{figure}.png", out / f"{figure}_{objective}.png")
      emit(
        {
          "kind": "run",
          "name": objective,
          "config": config,
          "step": step,
          "metrics": metrics,
          **facts,
        },
        sink,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
