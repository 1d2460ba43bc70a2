"""Each ALBEF task learns: trained from scratch at `configs/albef_scenes.py` variant=test (its default steps), its test
accuracy beats the majority baseline of its test split, counted here from the raw split, with a one-sided exact
binomial p-value below 0.01."""

import collections
import math

import pytest
from driver_utils import load_config

from lmstruct.data.sources import build_source
from lmstruct.train.loop import train_and_evaluate

#: the raw field of a test example that the task predicts
TARGET_KEY = {"vqa": "answer", "nlvr": "target", "ve": "target"}


def binomial_upper_tail(successes: int, trials: int, p: float) -> float:
  """P(X ≥ successes) for X ~ Binomial(trials, p) = Σ_{i ≥ successes} C(trials, i) pⁱ (1 − p)^(trials − i)."""
  return math.fsum(math.comb(trials, i) * p**i * (1 - p) ** (trials - i) for i in range(successes, trials + 1))


def test_binomial_upper_tail_on_hand_worked_cases():
  assert binomial_upper_tail(0, 5, 0.3) == pytest.approx(1.0)
  assert binomial_upper_tail(2, 2, 0.5) == pytest.approx(0.25)
  # P(X ≥ 2), n = 3, p = 0.5: (3 + 1) / 8
  assert binomial_upper_tail(2, 3, 0.5) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("albef_scenes_test_variant")


@pytest.mark.parametrize("task", ["vqa", "nlvr", "ve"])
def test_each_task_trains_above_its_majority_baseline(task, data_dir, tmp_path):
  config = load_config("albef_scenes", f"variant=test,task={task}")
  config.mesh.shape = {"data": 1}
  config.data.data_dir = str(data_dir)
  config.train.progress_bar = "off"
  results = train_and_evaluate(config, tmp_path / task)[task]

  test_split = build_source(config.evals[task]["data"], str(data_dir))
  targets = collections.Counter(test_split[i][TARGET_KEY[task]] for i in range(len(test_split)))
  trials = len(test_split)
  majority = targets.most_common(1)[0][1] / trials
  assert results["questions" if task == "vqa" else "examples"] == trials
  # Scenes questions have one answer, so VQA accuracy min(#humans / 3, 1) is the fraction answered right.
  correct = round(results["accuracy"] * trials)
  p_value = binomial_upper_tail(correct, trials, majority)
  assert p_value < 0.01, f"{task}: accuracy {results['accuracy']:.3f} against majority {majority:.3f} (p={p_value:.3g})"
