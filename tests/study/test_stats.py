"""Seed summaries and paired comparisons, against hand-worked values and the published t-table."""

import math

import pytest

from lmstruct.study import stats

# Two-sided 95 % Student-t quantiles from the standard table (t_{0.975, df}).
T_TABLE = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163}


@pytest.mark.parametrize("df", sorted(T_TABLE))
def test_t_quantile_matches_the_table(df):
  assert stats.t_quantile(df + 1) == pytest.approx(T_TABLE[df], rel=1e-8)


def test_summary_of_three_seeds_by_hand():
  s = stats.summarize([1.0, 2.0, 3.0])
  # mean 2, sample std √((1 + 0 + 1)/2) = 1, half-width 4.302652730 · 1/√3.
  half = 4.302652730 / math.sqrt(3)
  assert s["mean"] == 2.0 and s["std"] == pytest.approx(1.0) and s["n"] == 3
  assert s["ci95"] == pytest.approx([2.0 - half, 2.0 + half])


def test_single_value_has_no_spread_and_no_verdict():
  s = stats.summarize([0.5])
  assert s["mean"] == 0.5 and math.isnan(s["std"]) and all(math.isnan(v) for v in s["ci95"])
  assert stats.verdict(s) == "no difference"


def test_paired_difference_removes_the_shared_seed_effect():
  # Seeds shift both methods alike (0.1, 0.5, 0.9); the method is always 0.02 better: a tight positive interval,
  # although the unpaired spreads overlap completely.
  base = [0.10, 0.50, 0.90]
  method = [0.12, 0.52, 0.93]
  d = stats.paired_difference(method, base)
  assert d["mean"] == pytest.approx((0.02 + 0.02 + 0.03) / 3)
  assert stats.verdict(d) == "better"
  assert stats.verdict(d, higher_is_better=False) == "worse"


def test_verdict_is_no_difference_when_the_interval_contains_zero():
  d = stats.paired_difference([0.5, 0.4, 0.6], [0.45, 0.45, 0.55])
  assert d["ci95"][0] < 0 < d["ci95"][1]
  assert stats.verdict(d) == "no difference"


def test_paired_difference_needs_the_same_seeds():
  with pytest.raises(ValueError, match="same seeds"):
    stats.paired_difference([1.0, 2.0], [1.0])


def test_formatting():
  assert stats.format_summary(stats.summarize([0.1, 0.2, 0.3]), scale=100) == "20.0 ± 10.0"
  assert stats.format_interval({"mean": 0.01, "ci95": [-0.02, 0.04]}, scale=100) == "+1.0 [-2.0, +4.0]"
