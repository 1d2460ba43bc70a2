"""The study's figures, drawn from the analysis dicts (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from lmstruct.eval.plots import save_figure


def _panels(count: int, width: float, height: float) -> tuple[Figure, list]:
  """A figure with `count` side-by-side axes."""
  fig = Figure(figsize=(width * count, height), layout="constrained")
  return fig, [fig.add_subplot(1, count, i + 1) for i in range(count)]


def _mean_std(summary: Mapping | None) -> tuple[float, float]:
  """(mean, std) of a summary; (NaN, 0) when absent; std 0 when there is a single seed."""
  if summary is None:
    return float("nan"), 0.0
  std = summary["std"]
  return summary["mean"], 0.0 if np.isnan(std) else std


def plot_information_gap(result: Mapping, path: str | pathlib.Path, features: str = "joint") -> pathlib.Path:
  """Per label: the increase of the probe's test cross-entropy over λ = 0 for every other arm (bars, ± std over
  seeds), and the label's Δp (a black tick): Theorem 3.1's lower bound at perfect alignment."""
  labels = list(result["labels"])
  arms = list(next(iter(result["labels"].values()))["features"][features]["ce_increase_over_lambda0"])
  fig, (ax,) = _panels(1, 1.6 * len(labels) + 2, 3.6)
  width = 0.8 / max(len(arms), 1)
  x = np.arange(len(labels))
  for i, arm in enumerate(arms):
    stats = [
      _mean_std(result["labels"][label]["features"][features]["ce_increase_over_lambda0"][arm]) for label in labels
    ]
    ax.bar(
      x + (i - (len(arms) - 1) / 2) * width,
      [m for m, _ in stats],
      width,
      yerr=[s for _, s in stats],
      label=arm,
      capsize=2,
    )
  delta_p = [result["labels"][label]["delta_p_nats"] for label in labels]
  ax.scatter(x, delta_p, marker="_", s=900, color="black", zorder=3, label="Δp (bound at perfect alignment)")
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_xticks(x, [f"{label}\n({result['labels'][label]['source']})" for label in labels])
  ax.set_ylabel(f"Δ test cross-entropy vs λ=0 (nats, {features} probe)")
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_gap_study(
  result: Mapping,
  path: str | pathlib.Path,
  outcomes: Sequence[str] = ("retrieval/mean_recall@1", "zeroshot_colour/acc1"),
) -> pathlib.Path:
  """Left panels: each outcome against the mean paired distance (the paper's gap), one point per alignment
  weight (± std over seeds). Right panel: the embedding-shift curves (modality gap against retrieval R@1) of every
  run, coloured by alignment weight."""
  fig, axes = _panels(len(outcomes) + 1, 4.2, 3.6)
  colours = colormaps["viridis"](np.linspace(0, 0.9, len(result["points"])))
  for ax, outcome in zip(axes, outcomes):
    for colour, point in zip(colours, result["points"]):
      gx, gs = _mean_std(point["structure/mean_paired_distance"])
      oy, os_ = _mean_std(point[outcome])
      ax.errorbar(gx, oy, xerr=gs, yerr=os_, fmt="o", color=colour, capsize=3, label=f"λ={point['lambda']:g}")
    ax.set_xlabel("mean paired distance ‖zv − zt‖")
    ax.set_ylabel(outcome)
    ax.legend(fontsize=8)
  ax = axes[-1]
  for colour, point in zip(colours, result["points"]):
    for i, curve in enumerate(point["shift_curves"]):
      ax.plot(
        curve["gap"], curve["metric"], "-", color=colour, alpha=0.7, label=f"λ={point['lambda']:g}" if i == 0 else None
      )
  ax.set_xlabel("modality gap ‖mean zv − mean zt‖ after shifting")
  ax.set_ylabel("retrieval mean R@1")
  ax.set_title("embedding shift", fontsize=9)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_ablation(result: Mapping, path: str | pathlib.Path, metrics: Sequence[str]) -> pathlib.Path:
  """One panel per metric: the mean ± std over seeds of every objective."""
  metrics = [m for m in metrics if m in result["metrics"]]
  fig, axes = _panels(len(metrics), 3.2, 3.4)
  objectives = result["objectives"]
  for ax, metric in zip(axes, metrics):
    stats = [_mean_std(result["metrics"][metric].get(obj)) for obj in objectives]
    ax.bar(
      np.arange(len(objectives)),
      [m for m, _ in stats],
      yerr=[s for _, s in stats],
      capsize=2,
      color=colormaps["tab10"](np.arange(len(objectives))),
    )
    ax.set_xticks(np.arange(len(objectives)), objectives, rotation=45, fontsize=8)
    ax.set_title(metric, fontsize=8)
  return save_figure(fig, path)
