"""The suite's results laid out as the paper's Tables 1-3, one row per run, so that runs line up.

    python -m lmstruct.eval.tables CLIP=runs/cc3m_clip GC=runs/cc3m_gc runs/cc3m_sep --out tables.md [--step N]

Each argument is a run's workdir, optionally labelled (``LABEL=WORKDIR``; default label: the folder name). A run's
row holds, per suite evaluator (``lmstruct.eval.suite``), the metrics of its record ``eval/<name>/step_<k>.json`` at
``--step`` or else at its newest step. Values are percentages with two decimals; a dataset a run did not evaluate
shows "–". Table 3's average is the mean of the 14 linear-probe accuracies and is shown only when all 14 are present,
as in the paper.

* Table 1: zero-shot top-1/3/5 (``acc1``/``acc3``/``acc5``) on CIFAR-10, CIFAR-100, ImageNet-1K;
* Table 2: the same on ImageNet-V2, -Sketch, -A, -R;
* Table 3: linear-probe top-1 (``acc1``) on the 14 datasets, and their average.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence

from lmstruct.eval import io
from lmstruct.eval.suite import BY_KEY, TABLE1, TABLE2, TABLE3, linear_probe_name, zeroshot_name

Results = Mapping[str, Mapping[str, float]]
TOP_K = (1, 3, 5)
MISSING = "–"
_STEP_FILE = re.compile(r"^step_(\d+)\.json$")


def _cell(value: float | None) -> str:
  """A fraction as a percentage with two decimals, or the missing mark."""
  return MISSING if value is None or not math.isfinite(value) else f"{100.0 * value:.2f}"


def _value(results: Results, evaluator: str, metric: str) -> float | None:
  """``results[evaluator][metric]``, or None when absent."""
  value = results.get(evaluator, {}).get(metric)
  return None if value is None else float(value)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def zero_shot_table(runs: Mapping[str, Results], keys: Sequence[str]) -> str:
  """Rows ``run | <dataset> T1 | T3 | T5 | ...`` of zero-shot top-k accuracy for the datasets ``keys``."""
  header = ["Method"] + [f"{BY_KEY[key].title} T{k}" for key in keys for k in TOP_K]
  rows = [[label] + [_cell(_value(results, zeroshot_name(key), f"acc{k}")) for key in keys for k in TOP_K]
          for label, results in runs.items()]
  return _markdown(header, rows)


def linear_probe_table(runs: Mapping[str, Results]) -> str:
  """Rows ``run | <dataset> ... | Avg`` of linear-probe top-1 on Table 3's datasets; Avg only when all are present."""
  header = ["Method"] + [BY_KEY[key].title for key in TABLE3] + ["Avg"]
  rows = []
  for label, results in runs.items():
    values = [_value(results, linear_probe_name(key), "acc1") for key in TABLE3]
    average = None if any(v is None for v in values) else sum(values) / len(values)
    rows.append([label] + [_cell(v) for v in values] + [_cell(average)])
  return _markdown(header, rows)


def paper_tables(runs: Mapping[str, Results]) -> str:
  """The three tables (module docstring) for ``runs`` = {row label: {evaluator name: metrics}}, in that order."""
  return "\n\n".join([
      "Table 1: zero-shot top-k accuracy (%)\n\n" + zero_shot_table(runs, TABLE1),
      "Table 2: zero-shot top-k accuracy (%) under natural distribution shift\n\n" + zero_shot_table(runs, TABLE2),
      "Table 3: linear probe top-1 accuracy (%)\n\n" + linear_probe_table(runs),
  ]) + "\n"


def suite_evaluators() -> list[str]:
  """Names of every evaluator the tables read."""
  return [zeroshot_name(key) for key in (*TABLE1, *TABLE2)] + [linear_probe_name(key) for key in TABLE3]


def run_results(workdir: str | pathlib.Path, step: int | None = None) -> dict[str, dict[str, float]]:
  """{evaluator: metrics} of a run's suite records: at ``step``, or each evaluator's newest step."""
  results = {}
  for name in suite_evaluators():
    folder = io.eval_dir(workdir, name)
    steps = sorted(int(m.group(1)) for p in folder.glob("step_*.json") if (m := _STEP_FILE.match(p.name)))
    chosen = step if step is not None else (steps[-1] if steps else None)
    if chosen is not None and chosen in steps:
      results[name] = io.read_metrics(io.metrics_path(workdir, name, chosen))["metrics"]
  return results


def write_run_tables(workdir: str | pathlib.Path, results: Results, label: str | None = None) -> pathlib.Path | None:
  """Writes ``<workdir>/paper_tables.md`` (this run's row) and ``paper_tables.json`` when ``results`` hold any
  suite evaluator; returns the markdown path, or None."""
  suite = {name: {key: io.finite_or_none(value) for key, value in metrics.items()}
           for name, metrics in results.items() if name in set(suite_evaluators())}
  if not suite:
    return None
  workdir = pathlib.Path(workdir)
  label = label or workdir.resolve().name
  (workdir / "paper_tables.json").write_text(json.dumps({"label": label, "results": suite}, indent=2,
                                                        sort_keys=True, allow_nan=False))
  path = workdir / "paper_tables.md"
  path.write_text(paper_tables({label: suite}))
  return path


def _labelled(argument: str) -> tuple[str, pathlib.Path]:
  """``LABEL=WORKDIR`` or ``WORKDIR`` (labelled by its folder name)."""
  label, sep, path = argument.partition("=")
  workdir = pathlib.Path(path if sep else argument)
  return (label if sep else workdir.resolve().name), workdir


def main(argv: Sequence[str] | None = None) -> int:
  """Merges the rows of several runs into one set of tables (module docstring)."""
  parser = argparse.ArgumentParser(prog="python -m lmstruct.eval.tables", description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+", help="run workdirs, each optionally as LABEL=WORKDIR")
  parser.add_argument("--step", type=int, default=None, help="read this step (default: each evaluator's newest)")
  parser.add_argument("--out", default=None, help="write the tables here (default: stdout)")
  args = parser.parse_args(argv)
  runs = {}
  for argument in args.runs:
    label, workdir = _labelled(argument)
    if not workdir.is_dir():
      parser.error(f"run folder not found: {workdir}")
    if label in runs:
      parser.error(f"two runs share the label {label!r}; name them with LABEL=WORKDIR")
    runs[label] = run_results(workdir, args.step)
  text = paper_tables(runs)
  if args.out:
    pathlib.Path(args.out).write_text(text)
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
