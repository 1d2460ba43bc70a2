"""`lmstruct study --preset smoke`: every run, evaluator, analysis and figure of the study, end to end (CI size)."""

import json

from lmstruct import cli
from lmstruct.study import experiments


def test_smoke_study_writes_every_experiment_and_a_rerun_reads_its_runs(tmp_path, capsys):
  out = tmp_path / "study"
  assert cli.main(["study", "--preset", "smoke", "--out", str(out), "--data-dir", str(tmp_path / "data")]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  study = json.loads((out / "study.json").read_text())
  assert {"information_gap", "gap_study", "ablation", "meta"} <= set(study)
  assert {p.name for p in out.glob("*.png")} == {"information_gap.png", "gap_study.png", "ablation.png"}
  # The Markdown report: every experiment, a row per label, and every claim with its outcome.
  report = (out / "study.md").read_text()
  for heading in ("## 1. Information gap", "## 2. Gap study", "## 3. Ablation", "### Real photos (LiT)"):
    assert heading in report
  assert "| material | text |" in report and "| count | both |" in report
  claims = study["ablation"]["claims"] + study["ablation"]["real_photos"]["claims"] + study["gap_study"]["claims"]
  assert all(c["claim"] in report for c in claims) and "**not measured**" in report
  runs = {spec.name for spec in experiments.all_runs([0])}
  assert {p.name for p in (out / "runs").iterdir()} == runs and len(runs) == 9
  # The information-gap table: every label, with its modality and Δp from the dataset's label_sources.
  labels = study["information_gap"]["labels"]
  assert labels["size"]["source"] == "image" and labels["material"]["source"] == "text"
  assert labels["shape"]["delta_p_nats"] == 0.0 and labels["size"]["delta_p_nats"] > 0.0
  probes = labels["size"]["features"]["joint"]["arms"]["λ=1"]
  assert probes["test_ce"]["n"] == 1 and probes["acc1"]["mean"] >= 0.0
  # One seed gives no interval, so no claim is judged.
  assert {c["outcome"] for c in study["ablation"]["claims"]} == {"not measured"}
  assert [outcome for _, outcome in printed["claims"]] == ["not measured"] * len(study["ablation"]["claims"])
  assert set(study["ablation"]["real_photos"]["metrics"]["mean_recall@1"]) == set(experiments.ABLATION_OBJECTIVES)
  # A rerun trains nothing: every run's results and the real-photo comparison are read back as they are.
  before = {p: p.stat().st_mtime_ns for p in [*(out / "runs").glob("*/results.json"), out / "lit/comparison.json"]}
  assert cli.main(["study", "--preset", "smoke", "--out", str(out), "--data-dir", str(tmp_path / "data")]) == 0
  assert {p: p.stat().st_mtime_ns for p in before} == before
