"""From the runs' final metrics to the three experiments' tables and verdicts (pure functions, no training).

Input: `RunResult`s, each the final evaluator metrics of one run (`{evaluator: {metric: value}}`) and its
embedding-shift curve. Output: plain dicts (JSON-ready) of per-seed summaries (`stats.summarize`) and paired
differences (`stats.paired_difference`), with one verdict per claim.

Metric names used here are `evaluator/metric`, e.g. `zeroshot_shape/acc1`, `retrieval/mean_recall@1`,
`structure/modality_gap`, `probes/size/joint/test_ce` (see `experiments.study_evals`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lmstruct.study import stats
from lmstruct.study.experiments import ABLATION_OBJECTIVES, ALIGNMENT_WEIGHTS, PROBE_FEATURES, REGULARIZER_BASE, RunSpec


@dataclasses.dataclass(frozen=True)
class RunResult:
  """The final metrics of one run, flattened to `evaluator/metric`, and its embedding-shift curve."""

  spec: RunSpec
  metrics: Mapping[str, float]
  shift_curve: Mapping[str, Sequence[float]] | None = None


@dataclasses.dataclass(frozen=True)
class LabelInfo:
  """What each modality carries about one label, in nats: I(X;Y) = H(Y) when the modality determines the label,
  0 when it carries nothing; Δp = |I(X_T;Y) − I(X_V;Y)|."""

  source: str  # 'both', 'image', 'text' or 'none'
  entropy: float  # H(Y), nats, from the label's empirical distribution
  image_information: float  # I(X_V; Y)
  text_information: float  # I(X_T; Y)

  @property
  def information_gap(self) -> float:
    """Δp = |I(X_T; Y) − I(X_V; Y)|."""
    return abs(self.text_information - self.image_information)


def empirical_entropy(labels: Sequence[int]) -> float:
  """H(Y) = −Σ_y p(y) log p(y) (nats) of the empirical label distribution."""
  _, counts = np.unique(np.asarray(labels), return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def label_info(source: str, labels: Sequence[int]) -> LabelInfo:
  """`LabelInfo` of a label that the image and/or the text state in full (`source` from
  `scenes.label_sources`)."""
  entropy = empirical_entropy(labels)
  in_image = source in ("both", "image")
  in_text = source in ("both", "text")
  return LabelInfo(source, entropy, entropy if in_image else 0.0, entropy if in_text else 0.0)


def _values(runs: Iterable[RunResult], objective: str, alignment: float, metric: str) -> dict[int, float]:
  """{seed: value} of `metric` over the runs of (objective, alignment) that report it."""
  return {
    r.spec.seed: float(r.metrics[metric])
    for r in runs
    if r.spec.objective == objective
    and r.spec.alignment == alignment
    and metric in r.metrics
    and math.isfinite(float(r.metrics[metric]))
  }


def _summary(runs: Sequence[RunResult], objective: str, alignment: float, metric: str) -> dict | None:
  values = _values(runs, objective, alignment, metric)
  return stats.summarize([values[s] for s in sorted(values)]) if values else None


def _paired(runs: Sequence[RunResult], method: tuple[str, float], base: tuple[str, float], metric: str) -> dict | None:
  """The paired difference method − base over the seeds both have, or None when fewer than two (no interval, so no
  claim can be judged: its outcome is 'not measured')."""
  a, b = _values(runs, *method, metric), _values(runs, *base, metric)
  seeds = sorted(set(a) & set(b))
  if len(seeds) < 2:
    return None
  return stats.paired_difference([a[s] for s in seeds], [b[s] for s in seeds])


# --------------------------------------------------------------------------------------------------------------
# Information gap (Theorem 3.1).


def probe_metric(label: str, features: str, kind: str) -> str:
  """`probes/<label>/<features>/<kind>` (kind: test_ce or acc1)."""
  return f"probes/{label}/{features}/{kind}"


INFORMATION_GAP_ARMS: tuple[tuple[str, float], ...] = tuple(
  [("inmodal", w) for w in ALIGNMENT_WEIGHTS] + [("full", 0.0)]
)


def arm_name(arm: tuple[str, float]) -> str:
  """'λ=0.1' for an alignment arm of the base loss, the objective's name otherwise."""
  objective, weight = arm
  return f"λ={weight:g}" if objective == "inmodal" else objective


def information_gap(runs: Sequence[RunResult], labels: Mapping[str, LabelInfo]) -> dict:
  """Per label and feature kind: the probe's test cross-entropy and accuracy of every arm, and the increase of
  cross-entropy over λ = 0 (paired), next to the label's Δp; plus the achieved alignment of every arm and a
  verdict per label (module `verdict_information_gap`)."""
  base = INFORMATION_GAP_ARMS[0]
  table: dict = {}
  for label, info in labels.items():
    entry = {"source": info.source, "entropy_nats": info.entropy, "delta_p_nats": info.information_gap, "features": {}}
    for features in PROBE_FEATURES:
      ce_metric, acc_metric = probe_metric(label, features, "test_ce"), probe_metric(label, features, "acc1")
      per_arm = {
        arm_name(arm): {"test_ce": _summary(runs, *arm, ce_metric), "acc1": _summary(runs, *arm, acc_metric)}
        for arm in INFORMATION_GAP_ARMS
      }
      cost = {arm_name(arm): _paired(runs, arm, base, ce_metric) for arm in INFORMATION_GAP_ARMS[1:]}
      entry["features"][features] = {"arms": per_arm, "ce_increase_over_lambda0": cost}
    entry["verdict"] = verdict_information_gap(entry)
    table[label] = entry
  alignment = {
    arm_name(arm): {m: _summary(runs, *arm, f"structure/{m}") for m in ("mean_paired_distance", "modality_gap")}
    for arm in INFORMATION_GAP_ARMS
  }
  return {
    "labels": table,
    "achieved_alignment": alignment,
    "strongest_alignment": arm_name(INFORMATION_GAP_ARMS[len(ALIGNMENT_WEIGHTS) - 1]),
  }


#: Least information about a label (nats) the unaligned probe must recover for its cost to be measurable.
MIN_RECOVERED_NATS = 0.05


def verdict_information_gap(entry: Mapping) -> dict:
  """What the theorem predicts for this label and whether the runs agree.

  The bound concerns predictions from both aligned features, so it is read on the `joint` probe at the strongest
  alignment. A label with Δp = 0 should cost nothing: 'holds' when the increase's interval contains 0 or lies
  below it. A single-modality label (Δp > 0) should cost at least Δp at perfect alignment: 'holds' when the
  increase is ≥ Δp, 'direction only' when it is significantly positive but below Δp (alignment is not perfect),
  'fails' otherwise. The increase can only be measured where there is something to lose: when the unaligned
  (λ = 0) probe recovers less than `MIN_RECOVERED_NATS` of the label, H(Y) − CE(λ = 0) < 0.05 nats, the features
  carry no information about it before any forced alignment, and the outcome is 'untestable'.
  """
  strongest = arm_name(INFORMATION_GAP_ARMS[len(ALIGNMENT_WEIGHTS) - 1])
  increase = entry["features"]["joint"]["ce_increase_over_lambda0"][strongest]
  delta_p = entry["delta_p_nats"]
  if increase is None:
    return {"prediction": "", "outcome": "not measured"}
  low, high = increase["ci95"]
  mean = increase["mean"]
  unaligned = entry["features"]["joint"]["arms"][arm_name(INFORMATION_GAP_ARMS[0])]["test_ce"]
  recovered = entry["entropy_nats"] - unaligned["mean"]
  if delta_p > 0 and recovered < MIN_RECOVERED_NATS:
    prediction = f"single-modality label: forced alignment costs ≥ Δp = {delta_p:.3f} nats at perfect alignment"
    return {
      "prediction": prediction,
      "outcome": "untestable",
      "increase_nats": mean,
      "ci95": [low, high],
      "recovered_at_lambda0_nats": recovered,
    }
  if delta_p == 0:
    outcome = "holds" if math.isnan(low) or low <= 0 else "fails"
    prediction = "shared label: forced alignment costs nothing"
  else:
    prediction = f"single-modality label: forced alignment costs ≥ Δp = {delta_p:.3f} nats at perfect alignment"
    if mean >= delta_p:
      outcome = "holds"
    elif not math.isnan(low) and low > 0:
      outcome = "direction only"
    else:
      outcome = "fails"
  return {
    "prediction": prediction,
    "outcome": outcome,
    "increase_nats": mean,
    "ci95": [low, high],
    "recovered_at_lambda0_nats": recovered,
  }


# --------------------------------------------------------------------------------------------------------------
# Gap study (§3.1).

GAP_METRICS = ("structure/modality_gap", "structure/mean_paired_distance")
GAP_STUDY_OUTCOMES = ("retrieval/mean_recall@1", "zeroshot_shape/acc1", "zeroshot_colour/acc1", "zeroshot_count/acc1")


def gap_study(runs: Sequence[RunResult]) -> dict:
  """For each alignment weight: both gap measures and the outcomes (summaries), the embedding-shift curves of every
  seed, and the paper's claim — retrieval barely changes as the gap changes — tested as the paired difference of
  retrieval R@1 between the strongest alignment and none."""
  points = []
  for weight in ALIGNMENT_WEIGHTS:
    arm = ("inmodal", weight)
    point = {"lambda": weight}
    for metric in GAP_METRICS + GAP_STUDY_OUTCOMES:
      point[metric] = _summary(runs, *arm, metric)
    point["shift_curves"] = [
      dict(r.shift_curve)
      for r in runs
      if r.spec.objective == "inmodal" and r.spec.alignment == weight and r.shift_curve
    ]
    points.append(point)
  strongest = ("inmodal", ALIGNMENT_WEIGHTS[-1])
  gap_change = _paired(runs, strongest, ("inmodal", 0.0), "structure/mean_paired_distance")
  claims = []
  for metric in GAP_STUDY_OUTCOMES:
    diff = _paired(runs, strongest, ("inmodal", 0.0), metric)
    outcome = (
      "not measured"
      if diff is None
      else {"no difference": "reproduced", "better": "not reproduced", "worse": "not reproduced"}[stats.verdict(diff)]
    )
    claims.append(
      {
        "claim": f"{metric} barely changes when forced alignment shrinks the gap",
        "metric": metric,
        "difference": diff,
        "outcome": outcome,
      }
    )
  return {"points": points, "gap_change": gap_change, "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# Ablation (Tables 1–3).


def ablation_metrics(labels: Sequence[str], shots: Sequence[int]) -> list[str]:
  """Every metric the ablation tables report."""
  metrics = []
  for label in labels:
    metrics += [f"zeroshot_{label}/acc{k}" for k in (1, 3, 5)]
    metrics += [probe_metric(label, f, "acc1") for f in ("backbone", "projected", "text")]
    metrics += [f"probes/{label}/backbone/{k}shot_acc1" for k in shots]
  metrics += [f"retrieval/{d}_recall@{k}" for d in ("image_retrieval", "text_retrieval", "mean") for k in (1, 5, 10)]
  metrics += [
    f"structure/{m}"
    for m in (
      "modality_gap",
      "mean_paired_distance",
      "cross_modal_symmetry_error",
      "in_modal_symmetry_error",
      "bridge_residual",
      "uniformity_image",
      "uniformity_text",
      "separability",
    )
  ]
  return metrics


#: Metrics where smaller is better (every other one: larger is better).
LOWER_IS_BETTER = (
  "test_ce",
  "modality_gap",
  "mean_paired_distance",
  "symmetry_error",
  "bridge_residual",
  "uniformity",
  "separability",
)


def higher_is_better(metric: str) -> bool:
  """False for losses, gaps, errors and uniformity; True for accuracies and recalls."""
  return not any(token in metric for token in LOWER_IS_BETTER)


def mean_over(runs: Sequence[RunResult], metrics: Sequence[str], name: str) -> list[RunResult]:
  """`runs` with one more metric `name`: the mean of `metrics` in each run (all must be present)."""
  out = []
  for r in runs:
    values = [float(r.metrics[m]) for m in metrics if m in r.metrics]
    extra = {name: float(np.mean(values))} if len(values) == len(metrics) else {}
    out.append(dataclasses.replace(r, metrics={**r.metrics, **extra}))
  return out


def paper_claims() -> list[dict]:
  """The paper's CLIP-side claims, each as (method, baseline, metric): Tables 1–2 (zero-shot top-1), Table 3
  (linear probe on the encoder's features) and the mechanism each regulariser is built for (separation's
  independent features hold modality-specific information: read on `two_way_gap`'s text-only label, material)."""
  claims = []
  for reg, name in (("sep", "separation"), ("br", "Brownian bridge"), ("gc", "geometric consistency")):
    for baseline in ("clip", "cyclip", REGULARIZER_BASE[reg]):
      claims.append(
        {
          "claim": f"{name} improves zero-shot top-1 over {baseline} (Tables 1–2)",
          "method": reg,
          "baseline": baseline,
          "metric": "mean/zeroshot_shared_acc1",
        }
      )
      claims.append(
        {
          "claim": f"{name} improves linear-probe accuracy over {baseline} (Table 3)",
          "method": reg,
          "baseline": baseline,
          "metric": "mean/probe_backbone_acc1",
        }
      )
  claims.append(
    {
      "claim": "geometric consistency makes the cross-modal similarities symmetric",
      "method": "gc",
      "baseline": "inmodal",
      "metric": "structure/cross_modal_symmetry_error",
    }
  )
  claims.append(
    {
      "claim": "geometric consistency equalises the in-modal similarity structures",
      "method": "gc",
      "baseline": "inmodal",
      "metric": "structure/in_modal_symmetry_error",
    }
  )
  claims.append(
    {
      "claim": "separation keeps text-only information (material) in the text features",
      "method": "sep",
      "baseline": "inmodal",
      "metric": probe_metric("material", "text", "acc1"),
    }
  )
  claims.append(
    {
      "claim": "the Brownian bridge puts augmented images on the image–text bridge",
      "method": "br",
      "baseline": "inmodal",
      "metric": "structure/bridge_residual",
    }
  )
  claims.append(
    {
      "claim": "CyCLIP performs on par with CLIP (Tables 1–3)",
      "method": "cyclip",
      "baseline": "clip",
      "metric": "mean/zeroshot_shared_acc1",
      "parity": True,
    }
  )
  return claims


def ablation(
  runs: Sequence[RunResult], shared_labels: Sequence[str], all_labels: Sequence[str], shots: Sequence[int]
) -> dict:
  """Mean ± std of every metric per objective; the paired difference of each regulariser against its base and
  against CLIP; and a verdict per paper claim: 'reproduced' (significantly better), 'not reproduced' (the
  interval contains 0) or 'reversed' (significantly worse). A parity claim is reproduced when the interval
  contains 0."""
  runs = [r for r in runs if r.spec.alignment == 0.0]
  runs = mean_over(runs, [f"zeroshot_{label}/acc1" for label in shared_labels], "mean/zeroshot_shared_acc1")
  runs = mean_over(runs, [probe_metric(label, "backbone", "acc1") for label in all_labels], "mean/probe_backbone_acc1")
  metrics = ["mean/zeroshot_shared_acc1", "mean/probe_backbone_acc1"] + ablation_metrics(all_labels, shots)
  table = {m: {obj: _summary(runs, obj, 0.0, m) for obj in ABLATION_OBJECTIVES} for m in metrics}
  table = {m: row for m, row in table.items() if any(v is not None for v in row.values())}
  paired: dict = {}
  for method in ABLATION_OBJECTIVES:
    baselines = {REGULARIZER_BASE.get(method), "clip"} - {None, method}
    for baseline in sorted(baselines):
      paired[f"{method}-{baseline}"] = {m: _paired(runs, (method, 0.0), (baseline, 0.0), m) for m in table}
  verdicts = []
  for claim in paper_claims():
    diff = _paired(runs, (claim["method"], 0.0), (claim["baseline"], 0.0), claim["metric"])
    if diff is None:
      outcome = "not measured"
    elif claim.get("parity"):
      outcome = "reproduced" if stats.verdict(diff) == "no difference" else "not reproduced"
    else:
      outcome = {"better": "reproduced", "no difference": "not reproduced", "worse": "reversed"}[
        stats.verdict(diff, higher_is_better(claim["metric"]))
      ]
    verdicts.append({**claim, "difference": diff, "outcome": outcome})
  return {"objectives": list(ABLATION_OBJECTIVES), "metrics": table, "paired": paired, "claims": verdicts}
