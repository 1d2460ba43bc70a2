"""`lmstruct study`: train every run of the study (resuming), analyse them, write `study.json` and the figures.

    lmstruct study --preset cpu --out runs/study [--seeds 3]

Every run is an ordinary training run (`train_and_evaluate`) in `OUT/runs/<name>/`, so it can be inspected,
re-evaluated with `lmstruct eval` and resumed: a run whose `results.json` exists is read, not retrained; an
interrupted one continues from its last checkpoint; the real-photo comparison is kept in `OUT/lit/comparison.json`.
`study.json` has the keys `information_gap`, `gap_study`, `ablation` (with the real-photo comparison under
`ablation.real_photos`) and `meta`; `study.md` renders it as Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

import jax
import ml_collections

from lmstruct import provenance
from lmstruct.config import load_config, validate_config
from lmstruct.data import scenes, sources
from lmstruct.eval import io
from lmstruct.study import analysis, experiments, lit, plots, report
from lmstruct.study.presets import StudyScale, get_preset
from lmstruct.train.loop import train_and_evaluate

SCENES_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "clip_scenes.py"


def run_config(spec: experiments.RunSpec, scale: StudyScale, data_dir: str) -> ml_collections.ConfigDict:
  """The training config of one run: configs/clip_scenes.py at the preset's scale on the study's scenes, with the
  run's objective, alignment weight and seed, and the study's evaluators (`experiments.study_evals`)."""
  arg = (
    f"variant={scale.variant},objective={spec.objective},align={spec.alignment!r},steps={scale.steps},"
    f"batch={scale.batch},scenes={experiments.SCENES_PRESET},train_size={scale.train_size},"
    f"eval_size={scale.eval_size}"
  )
  overrides = {"seed": str(spec.seed), "data.data_dir": data_dir, "train.progress_bar": "off"}
  config = load_config(f"{SCENES_CONFIG}:{arg}", overrides)
  train_source = config.data.train.to_dict()
  with config.unlocked():
    config.evals = experiments.study_evals(
      lambda split: {**train_source, "split": split}, scale.shots, scale.probe_exponents
    )
  validate_config(config)
  return config


def read_run(spec: experiments.RunSpec, workdir: pathlib.Path) -> analysis.RunResult | None:
  """The finished run's final metrics (`evaluator/metric`) and shift curve, or None when it has not finished."""
  results_path = workdir / "results.json"
  if not results_path.exists():
    return None
  payload = json.loads(results_path.read_text())
  flat = {f"{name}/{key}": value for name, metrics in payload["results"].items() for key, value in metrics.items()}
  structure = io.metrics_path(workdir, "structure", payload["step"])
  curve = io.read_metrics(structure)["extra"].get("shift_curve") if structure.exists() else None
  return analysis.RunResult(spec, flat, curve)


def train_or_read(spec: experiments.RunSpec, scale: StudyScale, out: pathlib.Path, data_dir: str) -> analysis.RunResult:
  """Reads a finished run; otherwise trains it (resuming from its checkpoints) and reads it."""
  workdir = out / "runs" / spec.name
  result = read_run(spec, workdir)
  if result is not None:
    logging.info("study: %s already finished, read from %s", spec.name, workdir)
    return result
  started = time.time()
  train_and_evaluate(run_config(spec, scale, data_dir), workdir)
  jax.clear_caches()
  logging.info("study: %s trained in %.0f s", spec.name, time.time() - started)
  result = read_run(spec, workdir)
  if result is None:
    raise RuntimeError(f"run {spec.name} ended without results (was it interrupted?); rerun the study to resume")
  return result


def scenes_label_info(config: ml_collections.ConfigDict) -> dict[str, analysis.LabelInfo]:
  """`LabelInfo` of every scene label of a run's test split (its structure evaluator's data): which modality
  states it (the dataset's `label_sources` metadata) and H(Y) from its test labels."""
  test = sources.build_source(config.evals.structure.data.to_dict(), config.data.data_dir)
  origin = test.metadata["label_sources"]
  labels = {label: [test[i]["labels"][label] for i in range(len(test))] for label in scenes.SCENE_LABELS}
  return {label: analysis.label_info(origin[label], labels[label]) for label in scenes.SCENE_LABELS}


def real_photo_comparison(scale: StudyScale, out: pathlib.Path, seeds: list[int]) -> dict:
  """The LiT comparison (`lit.run_comparison`), read from `OUT/comparison.json` when a previous run of the study
  finished it for the same seeds, else run and saved there."""
  path = out / "comparison.json"
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get("seeds") == seeds:
      return saved["comparison"]
  comparison = lit.run_comparison(scale.lit, out, seeds)
  out.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"seeds": seeds, "comparison": comparison}, indent=1, allow_nan=True))
  return comparison


def run_study(preset: str, out: str | pathlib.Path, seeds: int | None = None, data_dir: str = "data") -> dict:
  """Trains (or reads) every run, analyses them and writes `OUT/study.json`, its Markdown report `OUT/study.md`
  (`lmstruct.study.report`) and `OUT/*.png`; returns the study."""
  scale = get_preset(preset)
  out = pathlib.Path(out)
  seed_list = list(range(seeds or scale.seeds))
  started = time.time()
  runs = experiments.all_runs(seed_list)
  results = [train_or_read(spec, scale, out, data_dir) for spec in runs]
  labels = scenes_label_info(run_config(runs[0], scale, data_dir))
  shared = [label for label, info in labels.items() if info.source == "both"]
  study = {
    "information_gap": analysis.information_gap(results, labels),
    "gap_study": analysis.gap_study(results),
    "ablation": analysis.ablation(results, shared, list(labels), scale.shots),
  }
  study["ablation"]["real_photos"] = real_photo_comparison(scale, out / "lit", seed_list)
  study["meta"] = {
    "preset": preset,
    "seeds": seed_list,
    "scale": scale_description(scale),
    "commit": provenance.git_commit(),
    "machine": provenance.describe({**provenance.host(), **provenance.accelerator()}),
    "wall_seconds": round(time.time() - started, 1),
    "date": provenance.utc_date(with_time=False),
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / "study.json").write_text(json.dumps(study, indent=1, allow_nan=True))
  (out / "study.md").write_text(report.render(study))
  plots.plot_information_gap(study["information_gap"], out / "information_gap.png")
  plots.plot_gap_study(study["gap_study"], out / "gap_study.png")
  plots.plot_ablation(
    study["ablation"],
    out / "ablation.png",
    [
      "mean/zeroshot_shared_acc1",
      "mean/probe_backbone_acc1",
      "retrieval/mean_recall@1",
      "structure/mean_paired_distance",
      "structure/cross_modal_symmetry_error",
      "structure/bridge_residual",
    ],
  )
  return study


def scale_description(scale: StudyScale) -> dict:
  """The preset's sizes as a JSON dict."""
  return {
    "variant": scale.variant,
    "steps": scale.steps,
    "batch": scale.batch,
    "train_size": scale.train_size,
    "eval_size": scale.eval_size,
  }


def main(args: argparse.Namespace) -> int:
  """`lmstruct study` (module docstring; flags parsed by `lmstruct.cli`): prints one JSON line with the output
  folder, the wall time and each claim's outcome."""
  study = run_study(args.preset, args.out, args.seeds, args.data_dir)
  print(
    json.dumps(
      {
        "out": str(args.out),
        "wall_seconds": study["meta"]["wall_seconds"],
        "claims": [(c["claim"], c["outcome"]) for c in study["ablation"]["claims"]],
      }
    )
  )
  return 0
