"""The paper's Tables 1-3 from suite results: layout, missing cells, the average, and merging runs."""
import pytest

from lmstruct.eval import io, tables
from lmstruct.eval.suite import TABLE3


def table_lines(text, title):
  """The markdown lines (header, rule, rows) of the table whose caption starts with `title`."""
  block = text.split(title, 1)[1].split("\n\n")[1]
  return block.splitlines()


def test_zero_shot_tables_hand_worked():
  runs = {"CLIP": {"zeroshot_cifar10": {"acc1": 0.4495, "acc3": 0.7258, "acc5": 0.883},
                   "zeroshot_imagenet_a": {"acc1": 0.0281, "acc3": 0.0731, "acc5": 0.1132}},
          "GC": {"zeroshot_cifar100": {"acc1": 0.227, "acc3": 0.4166, "acc5": 0.5178}}}
  text = tables.paper_tables(runs)
  header, rule, clip, gc = table_lines(text, "Table 1")
  assert header == ("| Method | C10 T1 | C10 T3 | C10 T5 | C100 T1 | C100 T3 | C100 T5 | IN1K T1 | IN1K T3 | "
                    "IN1K T5 |")
  assert rule == "|" + "---|" * 10
  assert clip == "| CLIP | 44.95 | 72.58 | 88.30 | – | – | – | – | – | – |"
  assert gc == "| GC | – | – | – | 22.70 | 41.66 | 51.78 | – | – | – |"
  header, _, clip, _ = table_lines(text, "Table 2")
  assert header.startswith("| Method | V2 T1 | V2 T3 | V2 T5 | Sketch T1 |") and "| A T1 | A T3 | A T5 | R T1" in header
  assert clip == "| CLIP | – | – | – | – | – | – | 2.81 | 7.31 | 11.32 | – | – | – |"


def test_linear_probe_table_averages_only_complete_rows():
  accuracies = {key: 0.5 + 0.01 * i for i, key in enumerate(TABLE3)}
  complete = {f"linear_probe_{key}": {"acc1": value} for key, value in accuracies.items()}
  partial = dict(complete)
  del partial["linear_probe_gtsrb"]
  text = tables.paper_tables({"all": complete, "partial": partial})
  header, _, all_row, partial_row = table_lines(text, "Table 3")
  assert header == ("| Method | Cal101 | SVHN | STL10 | C10 | C100 | DTD | Aircraft | Pets | SST2 | Food101 | GTSRB | "
                    "Cars | Flowers | IN1K | Avg |")
  cells = all_row.strip("| ").split(" | ")
  assert cells[1:3] == ["50.00", "51.00"] and cells[-1] == "56.50"  # mean of 50..63
  partial_cells = partial_row.strip("| ").split(" | ")
  assert partial_cells[11] == "–" and partial_cells[-1] == "–"


def test_runs_merge_from_their_workdirs(tmp_path, capsys):
  for run, early, late in (("clip", 0.2, 0.3), ("gc", 0.3, 0.4)):
    io.write_metrics(tmp_path / run, "zeroshot_cifar10", 100, {"acc1": early, "acc3": 0.5, "acc5": 0.6})
    io.write_metrics(tmp_path / run, "zeroshot_cifar10", 200, {"acc1": late, "acc3": 0.5, "acc5": 0.6})
    io.write_metrics(tmp_path / run, "not_in_the_suite", 200, {"acc1": 1.0})
  assert tables.run_results(tmp_path / "clip") == {"zeroshot_cifar10": {"acc1": 0.3, "acc3": 0.5, "acc5": 0.6}}
  assert tables.run_results(tmp_path / "clip", step=100)["zeroshot_cifar10"]["acc1"] == 0.2
  out = tmp_path / "tables.md"
  assert tables.main([f"CLIP={tmp_path / 'clip'}", str(tmp_path / "gc"), "--out", str(out)]) == 0
  _, _, clip, gc = table_lines(out.read_text(), "Table 1")
  assert clip.startswith("| CLIP | 30.00 | 50.00 | 60.00 |") and gc.startswith("| gc | 40.00 |")
  assert tables.main([str(tmp_path / "clip"), "--step", "100"]) == 0
  assert "| clip | 20.00 |" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    tables.main([str(tmp_path / "clip"), f"clip={tmp_path / 'gc'}"])
  assert "share the label 'clip'" in capsys.readouterr().err


def test_run_tables_are_written_only_for_suite_results(tmp_path):
  assert tables.write_run_tables(tmp_path, {"retrieval": {"mean_recall@1": 0.5}}) is None
  path = tables.write_run_tables(tmp_path, {"zeroshot_imagenet": {"acc1": float("nan"), "acc3": 0.5, "acc5": 0.6}},
                                 label="run")
  assert "| run | – | – | – | – | – | – | – | 50.00 | 60.00 |" in path.read_text()
  assert '"acc1": null' in (tmp_path / "paper_tables.json").read_text()
