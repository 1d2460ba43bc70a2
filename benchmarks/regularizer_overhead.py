"""Cost of the paper's structure regularisers: the full objective over its in-modal base alone, same model and batch.

    .venv/bin/python benchmarks/regularizer_overhead.py                  # tiny and B/32, float32 (~8 min)
    .venv/bin/python benchmarks/regularizer_overhead.py --configs tiny --steps 5 --dtype bfloat16

One process per configuration compiles three lmstruct updates of the same model (independent heads on, so all
three hold the same parameters) on the same synthetic batch (original and augmented views):

* ``full``    — in-modal base + separation + bridge + geometric consistency (weights 1, bridge t = 0.25);
* ``inmodal`` — the in-modal base alone (both views through both towers);
* ``clip``    — plain CLIP (one view; the augmented rows of the batch are not read).

The three share one training state, threaded through whichever runs, and run in rotation (full, inmodal, clip,
then clip, inmodal, full, …) so each sees the same machine load; ``--steps`` timed updates each after
``--warmup``. Reported: median seconds per update, full / inmodal (goal ≤ 1.05) and clip / inmodal.

Output: JSON lines (``kind``: machine, overhead), then a table.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

OBJECTIVES: dict[str, dict[str, Any]] = {
    "full": {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}, "bridge_t": 0.25},
    "inmodal": {"base": "inmodal", "weights": {}},
    "clip": {"base": "clip", "weights": {}},
}


def measure(config: str, args: argparse.Namespace) -> dict[str, Any]:
  ref = common.REFERENCE[config]
  built = common.build_lmstruct_updates(ref, OBJECTIVES, dtype=args.dtype, independent_heads=True)
  names = list(OBJECTIVES)
  for name in names:
    common.run_lmstruct_steps(built, args.warmup, name)
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(args.steps):
    for name in (names if r % 2 == 0 else names[::-1]):
      times[name] += common.run_lmstruct_steps(built, 1, name)
  record: dict[str, Any] = {"kind": "overhead", "config": config, "dtype": args.dtype, "batch": ref["batch"],
                            "objectives": OBJECTIVES, "compile_s": built["compile_s"],
                            "xla_flops": built["xla_flops"], "memory": built["memory"], "sides": {}}
  for name in names:
    record["sides"][name] = {**common.summary(times[name]), "times_s": times[name],
                             "examples_per_s": ref["batch"] / statistics.median(times[name])}
  med = {name: record["sides"][name]["median_s"] for name in names}
  record["full_over_inmodal"] = med["full"] / med["inmodal"]
  record["clip_over_inmodal"] = med["clip"] / med["inmodal"]
  # Per-round ratios (full and inmodal ran back to back in every round).
  record["full_over_inmodal_paired_median"] = statistics.median(f / i for f, i in zip(times["full"], times["inmodal"]))
  record["xla_flops_full_over_inmodal"] = built["xla_flops"]["full"] / built["xla_flops"]["inmodal"]
  return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default="tiny,B32", help="comma-separated: tiny, B32")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=5, help="timed updates per objective (median reported; ≥ 5)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed updates per objective after compilation")
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:  # one configuration, in its own process
    common.emit(measure(args.configs, args))
    return

  records = [{"kind": "machine", **common.machine()}]
  common.emit(records[0])
  for config in args.configs.split(","):
    # A fresh process per configuration keeps one configuration's programs and buffers out of the other's timings.
    argv = [sys.executable, __file__, "--configs", config, "--dtype", args.dtype, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--child"]
    lines = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
    record = json.loads(next(line for line in lines if line.startswith('{"kind": "overhead"')))
    common.emit(record)
    records.append(record)
  common.write_json_lines(args.json_out, records)

  rows = []
  for r in common.iter_rows(records, "overhead"):
    for name, side in r["sides"].items():
      rows.append({"config": r["config"], "dtype": r["dtype"], "objective": name, "step_s": side["median_s"],
                   "ex_s": side["examples_per_s"], "vs_inmodal": side["median_s"] / r["sides"]["inmodal"]["median_s"],
                   "compile": r["compile_s"][name], "gflop": (r["xla_flops"][name] or 0) / 1e9})
  print()
  print(common.table(rows, [("config", "config"), ("dtype", "dtype"), ("objective", "objective"),
                            ("step_s", "step s (med)"), ("ex_s", "examples/s"), ("vs_inmodal", "× in-modal"),
                            ("gflop", "XLA GFLOP"), ("compile", "compile s")],
                     title=f"regularizer overhead, {records[0]['cpu']} ({records[0]['cores']} cores), "
                           f"commit {records[0]['commit']}, {records[0]['date']}  (goal: full ≤ 1.05 × in-modal)"))


if __name__ == "__main__":
  main()
