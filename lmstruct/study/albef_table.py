"""ALBEF on the scenes tasks: ALBEF alone against ALBEF + each of the paper's regularisers.

For every pre-training regulariser r ∈ `--regs` (configs/albef_scenes.py's `reg`: none, sep, br, gc, all) and seed
s: pre-train (`task=pretrain,reg=r,seed=s`), then fine-tune each downstream task (vqa, nlvr, ve) from that
pre-training workdir with the same seed. Reported, per regulariser and metric (`METRICS`):

    mean ± std over seeds, with the Student-t 95 % interval            (lmstruct.study.stats.summarize)
    d_s = metric(r, s) − metric(none, s), its mean and 95 % interval   (lmstruct.study.stats.paired_difference)

and the verdict of each paired difference ('better', 'worse', 'no difference': the interval excludes 0 or not).

    python -m lmstruct.study.albef_table --variant small --seeds 3 --jobs 4 --out runs/albef_table

Each run is `lmstruct train` in a process of its own (its log beside its workdir), so `--jobs` chains (one
regulariser and seed: pre-training, then its tasks) run side by side on the cores or on one accelerator. A rerun
reads every finished run (`results.json`) and trains only the rest; a failed run is reported with its log, and its
chain's tasks are not started. The scenes dataset of the variant is rendered once, before any run starts.

Output: one JSON line per run and one per summary on stdout; OUT/albef_table.json ({'setup', 'runs', 'summary',
'baselines': each metric's constant-guess score on its test split}) and OUT/albef_table.md (the tables,
`render_markdown`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

from lmstruct import provenance
from lmstruct.config import config_module
from lmstruct.study import stats

ALBEF_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "albef_scenes.py"
_ALBEF_SCENES = config_module(ALBEF_CONFIG)
REGULARIZERS: tuple[str, ...] = tuple(_ALBEF_SCENES.REGULARIZERS)
TASKS: tuple[str, ...] = tuple(task for task in _ALBEF_SCENES.TASKS if task != "pretrain")
BASE = "none"
#: Column name → (run task, evaluator, metric key) of results.json.
METRICS: dict[str, tuple[str, str, str]] = {
  "VQA accuracy": ("vqa", "vqa", "accuracy"),
  "NLVR accuracy": ("nlvr", "nlvr", "accuracy"),
  "VE accuracy": ("ve", "ve", "accuracy"),
  "retrieval R@1": ("pretrain", "retrieval", "mean_recall@1"),
}
#: The field of a raw test example that each downstream task predicts.
TARGET_KEYS = {"vqa": "answer", "nlvr": "target", "ve": "target"}


@dataclasses.dataclass(frozen=True)
class Run:
  """One `lmstruct train` run of the table: `task` of regulariser `reg` and `seed` (a task's `init` is the
  pre-training run of the same regulariser and seed)."""

  reg: str
  seed: int
  task: str

  @property
  def name(self) -> str:
    return f"{self.reg}_seed{self.seed}/{self.task}"

  def workdir(self, out: pathlib.Path) -> pathlib.Path:
    return out / "runs" / self.reg / f"seed{self.seed}" / self.task

  def config_arg(self, out: pathlib.Path, variant: str, steps: int) -> str:
    """configs/albef_scenes.py's argument string of this run."""
    parts = [f"variant={variant}", f"task={self.task}", f"seed={self.seed}", f"steps={steps}"]
    if self.task == "pretrain":
      parts.append(f"reg={self.reg}")
    else:
      parts.append(f"init={Run(self.reg, self.seed, 'pretrain').workdir(out)}")
    return ",".join(parts)


def read_results(workdir: pathlib.Path) -> dict[str, dict[str, float]] | None:
  """The evaluator results of a finished run (`<workdir>/results.json`), or None when it has not finished."""
  path = workdir / "results.json"
  return json.loads(path.read_text())["results"] if path.is_file() else None


def train_command(run: Run, out: pathlib.Path, variant: str, steps: int, data_dir: str) -> list[str]:
  """The `lmstruct train` command line of `run`."""
  return [
    sys.executable,
    "-m",
    "lmstruct.cli",
    "train",
    "--config",
    f"{ALBEF_CONFIG}:{run.config_arg(out, variant, steps)}",
    "--workdir",
    str(run.workdir(out)),
    f"--config.data.data_dir={data_dir}",
  ]


def execute(run: Run, out: pathlib.Path, variant: str, steps: int, data_dir: str, train: bool = True) -> dict:
  """Trains `run` unless it has finished (or `train` is False); {'run', 'reg', 'seed', 'task', 'status' ('read' |
  'trained' | 'failed' | 'missing': not finished and not trained), 'seconds', 'results', 'log'}."""
  workdir = run.workdir(out)
  record = {"run": run.name, "reg": run.reg, "seed": run.seed, "task": run.task}
  results = read_results(workdir)
  if results is not None or not train:
    return {**record, "status": "read" if results else "missing", "seconds": 0.0, "results": results, "log": None}
  workdir.mkdir(parents=True, exist_ok=True)
  log = workdir.parent / f"{run.task}.log"
  start = time.perf_counter()
  with log.open("w") as stream:
    finished = subprocess.run(
      train_command(run, out, variant, steps, data_dir), stdout=stream, stderr=subprocess.STDOUT, check=False
    )
  seconds = time.perf_counter() - start
  results = read_results(workdir) if finished.returncode == 0 else None
  status = "trained" if results is not None else "failed"
  return {**record, "status": status, "seconds": seconds, "results": results, "log": str(log)}


def run_chain(
  reg: str,
  seed: int,
  tasks: Sequence[str],
  out: pathlib.Path,
  variant: str,
  steps: int,
  data_dir: str,
  train: bool = True,
) -> list[dict]:
  """Pre-training of (reg, seed), then each of `tasks` from it (not started when pre-training has no results)."""
  records = [execute(Run(reg, seed, "pretrain"), out, variant, steps, data_dir, train)]
  if records[0]["results"] is not None:
    records += [execute(Run(reg, seed, task), out, variant, steps, data_dir, train) for task in tasks]
  for record in records:
    print(json.dumps({"kind": "run", **{k: v for k, v in record.items() if k != "results"}}), flush=True)
  return records


def metric_values(records: Sequence[Mapping], reg: str, column: str) -> dict[int, float]:
  """{seed: value} of METRICS[column] over the finished runs of `reg`."""
  task, evaluator, key = METRICS[column]
  return {
    r["seed"]: float(r["results"][evaluator][key])
    for r in records
    if r["reg"] == reg and r["task"] == task and r["results"] is not None
  }


def summarize_table(records: Sequence[Mapping], regs: Sequence[str]) -> dict:
  """{column: {reg: {'summary', and for a regulariser other than BASE 'paired' + 'verdict'}}} over the seeds
  each has (paired: the seeds both it and BASE have; none with fewer than two)."""
  table: dict[str, dict[str, dict]] = {}
  for column in METRICS:
    base = metric_values(records, BASE, column)
    entries: dict[str, dict] = {}
    for reg in regs:
      values = metric_values(records, reg, column)
      if not values:
        continue
      entry: dict = {"summary": stats.summarize([values[s] for s in sorted(values)])}
      seeds = sorted(set(values) & set(base))
      if reg != BASE and len(seeds) >= 2:
        paired = stats.paired_difference([values[s] for s in seeds], [base[s] for s in seeds])
        entry.update(paired=paired, verdict=stats.verdict(paired))
      entries[reg] = entry
    if entries:
      table[column] = entries
  return table


def _percent_interval(paired: Mapping) -> str:
  low, high = paired["ci95"]
  return f"{100 * paired['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def render_markdown(
  summary: Mapping, regs: Sequence[str], seeds: int, baselines: Mapping[str, float] | None = None
) -> str:
  """Two Markdown tables: mean ± std (percent) per regulariser and metric over `seeds` seeds (and a last row of
  `baselines`, `constant_guess_baselines`, when given), then each regulariser's paired difference against ALBEF alone
  (points, 95 % interval) with its verdict."""
  columns = [c for c in METRICS if c in summary]
  lines = [
    f"| pre-training ({seeds} seed{'' if seeds == 1 else 's'}) | " + " | ".join(columns) + " |",
    "| --- |" + " --- |" * len(columns),
  ]
  for reg in regs:
    cells = [
      stats.format_summary(summary[c][reg]["summary"], scale=100) if reg in summary[c] else "not run" for c in columns
    ]
    lines.append(f"| {'ALBEF' if reg == BASE else f'ALBEF + {reg}'} | " + " | ".join(cells) + " |")
  if baselines:
    cells = [f"{100 * baselines[c]:.1f}" if c in baselines else "—" for c in columns]
    lines.append("| constant guess (majority class; retrieval: chance) | " + " | ".join(cells) + " |")
  compared = [r for r in regs if r != BASE and any("paired" in summary[c].get(r, {}) for c in columns)]
  if compared:
    lines += ["", "| against ALBEF alone (points, 95 % interval) | " + " | ".join(columns) + " |"]
    lines.append("| --- |" + " --- |" * len(columns))
    for reg in compared:
      cells = []
      for column in columns:
        entry = summary[column].get(reg, {})
        cells.append(f"{_percent_interval(entry['paired'])} {entry['verdict']}" if "paired" in entry else "—")
      lines.append(f"| + {reg} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def constant_guess_accuracy(targets: Sequence[Hashable]) -> float:
  """The accuracy of always guessing the most common target: max_c #{i : targets_i = c} / len(targets)."""
  if not targets:
    raise ValueError("no targets: a test split of a task has no examples")
  return Counter(targets).most_common(1)[0][1] / len(targets)


def constant_guess_baselines(variant: str, data_dir: str, tasks: Sequence[str]) -> dict[str, float]:
  """{METRICS column: what a model that ignores its input scores on the variant's test split}: each task's
  `constant_guess_accuracy` (scenes questions have one answer, so VQA accuracy is the fraction answered right) and
  retrieval R@1's chance 1/N over the N test images (a caption's one image among N; an image's 5 captions among
  5N)."""
  from lmstruct.config import load_config
  from lmstruct.data import sources

  baselines = {}
  for column, (task, evaluator, _) in METRICS.items():
    if task != "pretrain" and task not in tasks:
      continue
    config = load_config(f"{ALBEF_CONFIG}:variant={variant},task={task}")
    split = sources.build_source(config.evals[evaluator].data.to_dict(), data_dir)
    if task == "pretrain":
      baselines[column] = 1.0 / len(split)
    else:
      baselines[column] = constant_guess_accuracy([split[i][TARGET_KEYS[task]] for i in range(len(split))])
  return baselines


def render_datasets(variant: str, data_dir: str) -> None:
  """Renders the variant's scenes dataset (every split of every task) once, before runs start side by side."""
  from lmstruct.config import load_config
  from lmstruct.data import sources

  for task in ("pretrain", *TASKS):
    config = load_config(f"{ALBEF_CONFIG}:variant={variant},task={task}")
    for data in (config.data.train, *(e.data for e in config.evals.values())):
      sources.build_source(data.to_dict(), data_dir)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="output folder: runs/, albef_table.json, albef_table.md")
  parser.add_argument("--variant", default="small", choices=("test", "small"), help="configs/albef_scenes.py variant")
  parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1 of every regulariser")
  parser.add_argument("--regs", default=",".join(REGULARIZERS), help=f"comma-separated, of {', '.join(REGULARIZERS)}")
  parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
  parser.add_argument("--steps", type=int, default=0, help="steps of every run (0: the variant's per task)")
  parser.add_argument("--jobs", type=int, default=1, help="chains (regulariser, seed) trained side by side")
  parser.add_argument("--data-dir", default="data", help="where the scenes dataset is rendered")
  parser.add_argument(
    "--no-train", dest="train", action="store_false", help="only read finished runs and write the tables"
  )
  args = parser.parse_args(argv)
  args.regs = _subset(parser, "--regs", args.regs, REGULARIZERS)
  args.tasks = _subset(parser, "--tasks", args.tasks, TASKS)
  if BASE not in args.regs:
    parser.error(f"--regs must include {BASE!r}: every regulariser is compared with ALBEF alone")
  return args


def _subset(parser: argparse.ArgumentParser, flag: str, value: str, valid: Sequence[str]) -> list[str]:
  from lmstruct.choices import unknown_choice

  chosen = [v for v in value.split(",") if v]
  for item in chosen:
    if item not in valid:
      parser.error(str(unknown_choice(flag, item, valid)))
  return chosen


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  if args.train:
    render_datasets(args.variant, args.data_dir)
  chains = [(reg, seed) for seed in range(args.seeds) for reg in args.regs]
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
    futures = [
      pool.submit(run_chain, reg, seed, args.tasks, out, args.variant, args.steps, args.data_dir, args.train)
      for reg, seed in chains
    ]
    records = [record for future in futures for record in future.result()]
  summary = summarize_table(records, args.regs)
  baselines = constant_guess_baselines(args.variant, args.data_dir, args.tasks)
  setup = {
    "command": " ".join(["python -m lmstruct.study.albef_table", *(argv if argv is not None else sys.argv[1:])]),
    "variant": args.variant,
    "seeds": args.seeds,
    "regs": args.regs,
    "tasks": args.tasks,
    "steps": args.steps or "variant default",
    "jobs": args.jobs,
    "wall_seconds": time.perf_counter() - start,
    "date": provenance.utc_date(),
    "commit": provenance.git_commit(),
    "machine": {**provenance.host(), **provenance.accelerator()},
  }
  for column, entries in summary.items():
    for reg, entry in entries.items():
      print(json.dumps({"kind": "summary", "metric": column, "reg": reg, **entry}), flush=True)
  document = {"setup": setup, "runs": records, "summary": summary, "baselines": baselines}
  (out / "albef_table.json").write_text(json.dumps(document, indent=2))
  (out / "albef_table.md").write_text(render_markdown(summary, args.regs, args.seeds, baselines))
  failed = [r["run"] for r in records if r["status"] == "failed"]
  if failed:
    print(f"failed runs (see their logs): {', '.join(failed)}", file=sys.stderr)
  return document


if __name__ == "__main__":
  sys.exit(1 if any(r["status"] == "failed" for r in main()["runs"]) else 0)
