"""`lmstruct plan` of one config across device counts: per-device memory, FLOPs, collectives and what it fits.

    .venv/bin/python benchmarks/plan_scaling.py [--config configs/paper_cc3m.py] [--devices 8,16,32,64,128,256]
                                               [--json-out FILE]

For each N it runs `python -m lmstruct.cli plan --config CONFIG:devices=N --devices N --json` in a fresh process (the
paper's config keeps 128 examples per device, so the global batch is 128·N), and prints its JSON object as one line,
then a table of the per-device figures.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import REPO_ROOT, emit, machine, table, write_json_lines  # noqa: E402

GIB = 2**30


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/paper_cc3m.py")
  parser.add_argument("--devices", default="8,16,32,64,128,256")
  parser.add_argument("--json-out", default=None)
  args = parser.parse_args()
  records = [{"kind": "machine", **machine(), "benchmark": "plan_scaling", "config": args.config}]
  emit(records[0])
  rows = []
  for devices in (int(n) for n in args.devices.split(",")):
    command = [
      sys.executable,
      "-m",
      "lmstruct.cli",
      "plan",
      "--config",
      f"{args.config}:devices={devices}",
      "--devices",
      str(devices),
      "--json",
    ]
    out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if out.returncode:
      raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    record = {"kind": "plan", **result}
    emit(record)
    records.append(record)
    memory = result["memory"]
    rows.append(
      {
        "devices": devices,
        "batch": result["global_batch"],
        "argument_gib": memory["argument_bytes"] / GIB,
        "temp_gib": memory["temp_bytes"] / GIB,
        "peak_gib": memory["peak_bytes"] / GIB,
        "fsdp_peak_gib": result["by_rules"].get("fsdp", {}).get("peak_bytes", 0) / GIB,
        "tflop": result["flops_per_step"] / 1e12,
        "permute_mib": result["collective_bytes"].get("collective-permute", 0) / 2**20,
        "all_reduce_mib": result["collective_bytes"].get("all-reduce", 0) / 2**20,
        "compile_s": result["compile_s"],
        "fits": ", ".join(f"{name}" for name, rules in result["fits"].items() if rules) or "none",
      }
    )
  write_json_lines(args.json_out, records)
  print()
  print(
    table(
      rows,
      [
        ("devices", "devices"),
        ("batch", "global batch"),
        ("argument_gib", "args GiB"),
        ("temp_gib", "temp GiB"),
        ("peak_gib", "peak GiB"),
        ("fsdp_peak_gib", "fsdp peak GiB"),
        ("tflop", "TFLOP/step"),
        ("all_reduce_mib", "all-reduce MiB"),
        ("permute_mib", "permute MiB"),
        ("compile_s", "compile s"),
        ("fits", "fits"),
      ],
      title=f"lmstruct plan of {args.config}, per device",
    )
  )


if __name__ == "__main__":
  main()
