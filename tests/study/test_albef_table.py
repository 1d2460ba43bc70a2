"""`python -m lmstruct.study.albef_table`: the summary against hand-worked numbers, the Markdown tables, the
argument errors, and the command end to end at CI size (one seed, one task, two steps) with a rerun that reads."""

import collections
import json

import pytest

from lmstruct.config import config_module
from lmstruct.data.sources import build_source
from lmstruct.study import albef_table

T_975_2 = 4.302652729911275  # Student-t 0.975 quantile, 2 degrees of freedom (tables)


def _records(values: dict[str, list[float]], task: str = "ve") -> list[dict]:
  evaluator, key = albef_table.METRICS["VE accuracy"][1:]
  return [
    {"reg": reg, "seed": seed, "task": task, "results": {evaluator: {key: value}}}
    for reg, seeds in values.items()
    for seed, value in enumerate(seeds)
  ]


def test_summary_and_paired_differences_match_hand_worked_numbers():
  records = _records({"none": [0.5, 0.6, 0.7], "gc": [0.6, 0.8, 0.7], "sep": [0.6, 0.71, 0.82]})
  records.append({"reg": "br", "seed": 0, "task": "ve", "results": None})  # unfinished: not counted
  table = albef_table.summarize_table(records, ["none", "sep", "br", "gc"])
  assert set(table) == {"VE accuracy"} and set(table["VE accuracy"]) == {"none", "sep", "gc"}
  none, gc, sep = (table["VE accuracy"][r] for r in ("none", "gc", "sep"))
  assert none["summary"]["mean"] == pytest.approx(0.6) and none["summary"]["std"] == pytest.approx(0.1)
  assert "paired" not in none
  # gc − none = [0.1, 0.2, 0.0]: mean 0.1, std 0.1, half-width t·0.1/√3.
  half = T_975_2 * 0.1 / 3**0.5
  assert gc["paired"]["mean"] == pytest.approx(0.1) and gc["paired"]["ci95"] == pytest.approx([0.1 - half, 0.1 + half])
  assert gc["verdict"] == "no difference"
  # sep − none = [0.1, 0.11, 0.12]: mean 0.11, std 0.01, the interval above 0.
  half = T_975_2 * 0.01 / 3**0.5
  assert sep["paired"]["ci95"] == pytest.approx([0.11 - half, 0.11 + half]) and sep["verdict"] == "better"


def test_markdown_rows_and_the_paired_table():
  records = _records({"none": [0.5, 0.6, 0.7], "sep": [0.6, 0.71, 0.82]})
  text = albef_table.render_markdown(
    albef_table.summarize_table(records, ["none", "sep", "gc"]), ["none", "sep", "gc"], 3, {"VE accuracy": 0.375}
  )
  lines = text.splitlines()
  assert lines[0] == "| pre-training (3 seeds) | VE accuracy |"
  assert "| ALBEF | 60.0 ± 10.0 |" in lines and "| ALBEF + sep | 71.0 ± 11.0 |" in lines
  assert "| ALBEF + gc | not run |" in lines
  assert "| constant guess (majority class; retrieval: chance) | 37.5 |" in lines
  half = 100 * T_975_2 * 0.01 / 3**0.5
  assert f"| + sep | +11.0 [{11 - half:+.1f}, {11 + half:+.1f}] better |" in lines


def test_constant_guess_accuracy_on_hand_worked_targets():
  assert albef_table.constant_guess_accuracy([2, 0, 2, 1, 2, 0, 1, 2]) == 0.5
  assert albef_table.constant_guess_accuracy(["yes"]) == 1.0
  with pytest.raises(ValueError, match="no targets"):
    albef_table.constant_guess_accuracy([])


def test_regularisers_and_tasks_are_the_configs_choices():
  config = config_module(albef_table.ALBEF_CONFIG)
  assert set(albef_table.REGULARIZERS) == set(config.REGULARIZERS)
  assert set(albef_table.TASKS) | {"pretrain"} == set(config.TASKS)


def test_arguments_name_the_closest_choice_and_require_the_base(capsys):
  with pytest.raises(SystemExit) as exit_info:
    albef_table.parse_args(["--out", "x", "--regs", "none,gcc"])
  assert exit_info.value.code == 2 and "'gc'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    albef_table.parse_args(["--out", "x", "--regs", "sep"])
  assert "must include 'none'" in capsys.readouterr().err


def test_the_command_at_ci_size_then_a_rerun_reads_its_runs(tmp_path, capsys):
  out, data = tmp_path / "table", str(tmp_path / "data")
  argv = ["--out", str(out), "--variant", "test", "--seeds", "1", "--regs", "none", "--tasks", "ve", "--steps", "2"]
  document = albef_table.main([*argv, "--data-dir", data])
  assert [(r["run"], r["status"]) for r in document["runs"]] == [
    ("none_seed0/pretrain", "trained"),
    ("none_seed0/ve", "trained"),
  ]
  saved = json.loads((out / "albef_table.json").read_text())
  assert set(saved["summary"]) == {"VE accuracy", "retrieval R@1"} and saved["setup"]["seeds"] == 1
  assert {"command", "commit", "machine", "date", "wall_seconds"} <= set(saved["setup"])
  assert 0.0 <= saved["summary"]["VE accuracy"]["none"]["summary"]["mean"] <= 1.0
  assert (out / "albef_table.md").read_text().startswith("| pre-training (1 seed) | VE accuracy | retrieval R@1 |")
  assert (out / "runs/none/seed0/ve/results.json").is_file()
  # The baselines, counted here from the raw test splits: VE's majority label, retrieval's 1 / #images.
  config = config_module(albef_table.ALBEF_CONFIG)
  ve_split = build_source(config.get_config("variant=test,task=ve").evals["ve"].data.to_dict(), data)
  ve_labels = collections.Counter(ve_split[i]["target"] for i in range(len(ve_split)))
  images = build_source(config.get_config("variant=test,task=pretrain").evals["retrieval"].data.to_dict(), data)
  assert saved["baselines"] == pytest.approx(
    {"VE accuracy": max(ve_labels.values()) / len(ve_split), "retrieval R@1": 1 / len(images)}
  )
  printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
  assert {p["kind"] for p in printed} == {"run", "summary"}
  rerun = albef_table.main([*argv, "--data-dir", data, "--no-train"])
  assert [r["status"] for r in rerun["runs"]] == ["read", "read"] and json.dumps(rerun["summary"]) == json.dumps(
    document["summary"]
  )
