"""`study.json` as Markdown: the three experiments' tables and the verdict of every claim (pure rendering).

    python -m lmstruct.study.report OUT/study.json [--figures-prefix PATH] > report.md

`lmstruct study` writes `OUT/study.md` with it; `docs/study.md` quotes that report next to its discussion. Cells are
`mean ± std` over seeds (sample std), paired differences are `mean [95 % interval]` (Student t over seeds,
`lmstruct.study.stats`); accuracies and recalls in percent, cross-entropies and distances as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from collections.abc import Mapping, Sequence

from lmstruct.study.stats import format_interval, format_summary

#: Ablation rows, in order, with their display names.
ABLATION_ROWS: tuple[tuple[str, str], ...] = (
  ("mean/zeroshot_shared_acc1", "zero-shot top-1, mean of shared labels"),
  ("zeroshot_shape/acc1", "zero-shot shape top-1"),
  ("zeroshot_colour/acc1", "zero-shot colour top-1"),
  ("zeroshot_count/acc1", "zero-shot count top-1"),
  ("zeroshot_colour/acc3", "zero-shot colour top-3"),
  ("zeroshot_shape/acc5", "zero-shot shape top-5"),
  ("mean/probe_backbone_acc1", "linear probe (backbone), mean of all labels"),
  ("probes/shape/backbone/acc1", "linear probe shape (backbone)"),
  ("probes/size/backbone/acc1", "linear probe size (backbone)"),
  ("probes/shape/projected/acc1", "linear probe shape (projected)"),
  ("probes/size/projected/acc1", "linear probe size (projected)"),
  ("probes/material/text/acc1", "linear probe material (text features; a text-only label)"),
  ("probes/size/text/acc1", "linear probe size (text features; an image-only label)"),
  ("probes/colour/backbone/4shot_acc1", "4-shot colour (backbone)"),
  ("probes/shape/backbone/16shot_acc1", "16-shot shape (backbone)"),
  ("retrieval/mean_recall@1", "retrieval R@1 (mean of i→t, t→i)"),
  ("retrieval/mean_recall@5", "retrieval R@5"),
  ("retrieval/mean_recall@10", "retrieval R@10"),
  ("structure/modality_gap", "modality gap ‖mean z_v − mean z_t‖"),
  ("structure/mean_paired_distance", "mean paired distance ‖z_v − z_t‖"),
  ("structure/cross_modal_symmetry_error", "cross-modal symmetry error"),
  ("structure/in_modal_symmetry_error", "in-modal symmetry error"),
  ("structure/bridge_residual", "bridge residual"),
  ("structure/uniformity_image", "uniformity (image)"),
)
#: Paired comparisons shown in full, on these metrics.
PAIRED_METRICS: tuple[str, ...] = (
  "mean/zeroshot_shared_acc1",
  "mean/probe_backbone_acc1",
  "retrieval/mean_recall@1",
  "structure/cross_modal_symmetry_error",
  "structure/bridge_residual",
)
FEATURE_KINDS: tuple[str, ...] = ("joint", "backbone", "projected", "text")


def is_percent(metric: str) -> bool:
  """Accuracies and recalls are shown in percent."""
  return "acc" in metric or "recall" in metric


def cell(summary: Mapping | None, metric: str) -> str:
  """'mean ± std' of a summary (percent for accuracies and recalls), '–' when absent."""
  if summary is None:
    return "–"
  return format_summary(summary, 100.0, 1) if is_percent(metric) else format_summary(summary, 1.0, 3)


def difference(summary: Mapping | None, metric: str) -> str:
  """'mean [low, high]' of a paired difference (percent points for accuracies and recalls), '–' when absent."""
  if summary is None:
    return "–"
  return format_interval(summary, 100.0, 1) if is_percent(metric) else format_interval(summary, 1.0, 3)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def meta_section(meta: Mapping) -> list[str]:
  """Provenance of the run."""
  scale = meta.get("scale", {})
  minutes = meta.get("wall_seconds", math.nan) / 60
  return [
    f"- **Preset:** `{meta.get('preset')}`: variant `{scale.get('variant')}`, {scale.get('steps')} steps at batch "
    f"{scale.get('batch')}, {scale.get('train_size')} training scenes, {scale.get('eval_size')} validation and "
    f"{scale.get('eval_size')} test scenes; seeds {meta.get('seeds')}.",
    f"- **Commit:** `{meta.get('commit')}`; **machine:** {meta.get('machine')}; **date:** {meta.get('date')}; "
    f"**wall time:** {minutes:.1f} min.",
  ]


def information_gap_section(gap: Mapping) -> list[str]:
  """Per label: its Δp, the probe's test cross-entropy under every arm and the increase over λ = 0 (joint
  features), the same for the other feature kinds, and the verdict."""
  lines = []
  labels = gap["labels"]
  arms = list(next(iter(labels.values()))["features"]["joint"]["arms"])
  header = ["label", "carried by", "H(Y)", "Δp", *[f"CE {a}" for a in arms]]
  header += [f"ΔCE {a} − λ=0" for a in arms[1:]] + ["verdict"]
  for kind in FEATURE_KINDS:
    rows = []
    for label, entry in labels.items():
      features = entry["features"][kind]
      row = [label, entry["source"], f"{entry['entropy_nats']:.3f}", f"{entry['delta_p_nats']:.3f}"]
      row += [cell(features["arms"][a]["test_ce"], "test_ce") for a in arms]
      row += [difference(features["ce_increase_over_lambda0"][a], "test_ce") for a in arms[1:]]
      row.append(entry["verdict"]["outcome"] if kind == "joint" else "")
      rows.append(row)
    lines += ["", f"**Probe test cross-entropy (nats) on `{kind}` features**", ""] + table(header, rows)
  rows = []
  for label, entry in labels.items():
    features = entry["features"]["joint"]
    rows.append([label, *[cell(features["arms"][a]["acc1"], "acc1") for a in arms]])
  lines += ["", "**Probe test accuracy (%) on `joint` features**", ""] + table(["label", *arms], rows)
  alignment = gap["achieved_alignment"]
  rows = [[a, *[cell(alignment[a][m], m) for m in ("mean_paired_distance", "modality_gap")]] for a in alignment]
  lines += ["", "**Achieved alignment**", ""] + table(["arm", "mean paired distance", "modality gap"], rows)
  lines += ["", "**Verdicts (joint probe, strongest alignment against λ = 0)**", ""]
  for label, entry in labels.items():
    verdict = entry["verdict"]
    lines.append(f"- `{label}` ({entry['source']}): {verdict.get('prediction')}: **{verdict['outcome']}**")
  return lines


def gap_study_section(gap: Mapping) -> list[str]:
  """Both gap measures and the outcomes at each alignment weight, and the claims."""
  points = gap["points"]
  metrics = [m for m in points[0] if "/" in m]
  rows = [[f"{p['lambda']:g}", *[cell(p[m], m) for m in metrics]] for p in points]
  lines = [""] + table(["λ", *metrics], rows) + [""]
  if gap.get("gap_change"):
    lines.append(
      f"- Mean paired distance, λ = {points[-1]['lambda']:g} − λ = 0: "
      f"{difference(gap['gap_change'], 'structure/mean_paired_distance')}"
    )
  for claim in gap["claims"]:
    lines.append(f"- {claim['claim']}: {difference(claim['difference'], claim['metric'])} → **{claim['outcome']}**")
  return lines


def ablation_section(ablation: Mapping) -> list[str]:
  """Mean ± std of the chosen metrics per objective, the paired differences and the claims."""
  objectives = ablation["objectives"]
  metrics = ablation["metrics"]
  rows = [[name, *[cell(metrics[m].get(o), m) for o in objectives]] for m, name in ABLATION_ROWS if m in metrics]
  lines = [""] + table(["metric", *objectives], rows)
  paired = ablation["paired"]
  rows = [
    [pair, *[difference(paired[pair].get(m), m) for m in PAIRED_METRICS]]
    for pair in paired
    if any(paired[pair].get(m) for m in PAIRED_METRICS)
  ]
  lines += ["", "**Paired differences (method − baseline, same seeds; 95 % interval)**", ""]
  lines += table(["pair", *PAIRED_METRICS], rows)
  lines += ["", "**The paper's claims at this scale**", ""]
  rows = [[c["claim"], difference(c["difference"], c["metric"]), f"**{c['outcome']}**"] for c in ablation["claims"]]
  lines += table(["claim", "difference [95 % CI]", "outcome"], rows)
  return lines


def real_photos_section(real: Mapping) -> list[str]:
  """The LiT comparison: per objective test retrieval, paired differences and claims."""
  sizes = real["sizes"]
  lines = [
    "",
    f"LiT heads on cached tower features: {sizes['train_images']} training images × "
    f"{sizes['augmented_views']} augmented views, {sizes['val_images']} validation and {sizes['test_images']} "
    "test images (COCO-format captions).",
    "",
  ]
  metrics = real["metrics"]
  objectives = list(next(iter(metrics.values())))
  shown = [m for m in metrics if "recall" in m or m == "steps"]
  rows = [[m, *[cell(metrics[m][o], m) for o in objectives]] for m in shown]
  lines += table(["metric", *objectives], rows) + [""]
  rows = [[c["claim"], difference(c["difference"], c["metric"]), f"**{c['outcome']}**"] for c in real["claims"]]
  return lines + table(["claim", "difference [95 % CI]", "outcome"], rows)


def render(study: Mapping, figures_prefix: str = "") -> str:
  """The whole report."""
  lines = ["## Provenance", "", *meta_section(study["meta"])]
  lines += ["", "## 1. Information gap (Theorem 3.1)", "", f"![information gap]({figures_prefix}information_gap.png)"]
  lines += information_gap_section(study["information_gap"])
  lines += ["", "## 2. Gap study (§3.1)", "", f"![gap study]({figures_prefix}gap_study.png)"]
  lines += gap_study_section(study["gap_study"])
  lines += ["", "## 3. Ablation (Tables 1–3)", "", f"![ablation]({figures_prefix}ablation.png)"]
  lines += ablation_section(study["ablation"])
  if "real_photos" in study["ablation"]:
    lines += ["", "### Real photos (LiT)"] + real_photos_section(study["ablation"]["real_photos"])
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description="Render a study.json as Markdown.")
  parser.add_argument("study", type=pathlib.Path, help="path of study.json")
  parser.add_argument("--figures-prefix", default="", help="prefix of the figure links (e.g. 'study/')")
  args = parser.parse_args(argv)
  print(render(json.loads(args.study.read_text()), args.figures_prefix), end="")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
