"""Summaries over seeds and paired comparisons, with Student-t 95 % intervals.

For values x_1 … x_n (one per seed):

    mean = (1/n) Σ x_i,   std = √( Σ (x_i − mean)² / (n − 1) ),   CI₉₅ = mean ± t_{0.975, n−1} · std / √n.

A paired comparison of a method A against its base B runs both on the same seeds and summarises the differences
d_i = A_i − B_i the same way. Its verdict, for a metric where larger is better (`higher_is_better`), is

    'better'  when the whole interval lies above 0,
    'worse'   when it lies below 0,
    'no difference' otherwise (the interval contains 0, or there are fewer than two seeds),

with the roles swapped when smaller is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
  """t_{(1 + confidence)/2, n − 1}, the two-sided Student-t quantile for n samples (NaN for n < 2)."""
  if n < 2:
    return math.nan
  return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float | int | list[float]]:
  """{'mean', 'std', 'n', 'ci95': [low, high], 'values'} of `values` (module docstring); std and the interval are
  NaN for a single value."""
  x = np.asarray(values, dtype=np.float64)
  if x.size == 0:
    raise ValueError("summarize needs at least one value")
  mean = float(x.mean())
  std = float(x.std(ddof=1)) if x.size > 1 else math.nan
  half = t_quantile(x.size, confidence) * std / math.sqrt(x.size) if x.size > 1 else math.nan
  return {
    "mean": mean,
    "std": std,
    "n": int(x.size),
    "ci95": [mean - half, mean + half],
    "values": [float(v) for v in x],
  }


def paired_difference(
  method: Sequence[float], base: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, float | int | list[float]]:
  """The summary (`summarize`) of d_i = method_i − base_i over seeds paired by position."""
  method, base = np.asarray(method, np.float64), np.asarray(base, np.float64)
  if method.shape != base.shape:
    raise ValueError(f"paired values need the same seeds: {method.shape} vs {base.shape}")
  return summarize(method - base, confidence)


def verdict(difference: dict, higher_is_better: bool = True) -> str:
  """'better', 'worse' or 'no difference' from a paired difference's interval (module docstring)."""
  low, high = difference["ci95"]
  if math.isnan(low) or math.isnan(high):
    return "no difference"
  if not higher_is_better:
    low, high = -high, -low
  if low > 0:
    return "better"
  if high < 0:
    return "worse"
  return "no difference"


def format_summary(summary: dict, scale: float = 1.0, digits: int = 1) -> str:
  """'mean ± std' of a summary, both multiplied by `scale` (e.g. 100 for percentages)."""
  mean, std = summary["mean"] * scale, summary["std"] * scale
  return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_interval(summary: dict, scale: float = 1.0, digits: int = 1) -> str:
  """'mean [low, high]' of a (difference) summary, multiplied by `scale`."""
  low, high = (v * scale for v in summary["ci95"])
  mean = summary["mean"] * scale
  if math.isnan(low):
    return f"{mean:+.{digits}f}"
  return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
