"""Compile time of the training update against depth (ViT-B/32, B/16, L/14), with unrolled and with scanned blocks.

    .venv/bin/python benchmarks/compile_depth.py [--presets ViT-B-32,ViT-B-16,ViT-L-14] [--repeats 3]
                                                [--objective clip] [--batch 8] [--json-out FILE]

Each configuration is the update `lmstruct train` runs (`lmstruct.plan.compile_update`: model, AdamW, the
objective, one device, batch `--batch`), lowered and compiled from abstract shapes (nothing is allocated). The
configurations are compiled in turn, the order reversed every round (A B C … C B A …), after one warm-up compile,
and the medians over `--repeats` rounds are reported: `lower_s` (tracing + lowering to StableHLO), `compile_s`
(XLA), and the ratio of each preset's total to ViT-B/32's in the same layout.
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, machine, table, write_json_lines  # noqa: E402

OBJECTIVES = {
  "clip": {"base": "clip", "weights": {}},
  "full": {"base": "inmodal", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}},
}


def update_config(preset: str, scan_layers: bool, objective: str, batch: int):
  """The base config with `preset` (blocks scanned or not), one device, `batch` examples."""
  from lmstruct.config import base_config

  config = base_config()
  config.model = {"preset": preset, "scan_layers": scan_layers}
  config.objective = {**OBJECTIVES[objective], "impl": "global"}
  config.mesh.shape = {"data": 1}
  config.data.global_batch_size = batch
  return config


def layers(preset: str) -> str:
  from lmstruct.models.factory import resolve_model_config
  from lmstruct.models.text import TEXT_SIZES
  from lmstruct.models.vit import VIT_SIZES

  resolved = resolve_model_config({"preset": preset})
  return f"{VIT_SIZES[resolved['image']['size']]['layers']}+{TEXT_SIZES[resolved['text']['size']]['layers']}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", default="ViT-B-32,ViT-B-16,ViT-L-14")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--objective", default="clip", choices=sorted(OBJECTIVES))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--json-out", default=None)
  args = parser.parse_args()
  from lmstruct.plan import compile_update

  records = [
    {"kind": "machine", **machine(), "benchmark": "compile_depth", "objective": args.objective, "batch": args.batch}
  ]
  emit(records[0])
  compile_update(update_config("test", False, args.objective, args.batch), "replicate")  # warm-up
  # Scanned first: on a busy machine the figures that decide the depth question come before the slow unrolled ones.
  configurations = [(preset, scan) for scan in (True, False) for preset in args.presets.split(",")]
  runs: dict[tuple[str, bool], list[dict]] = {c: [] for c in configurations}
  for round_ in range(args.repeats):
    for preset, scan in configurations if round_ % 2 == 0 else configurations[::-1]:
      result = compile_update(update_config(preset, scan, args.objective, args.batch), "replicate")
      record = {
        "kind": "compile",
        "round": round_,
        "preset": preset,
        "scan_layers": scan,
        "lower_s": result["lower_s"],
        "compile_s": result["compile_s"],
        "temp_mib": result["memory"]["temp_bytes"] / 2**20,
      }
      emit(record)
      records.append(record)
      runs[preset, scan].append(record)

  rows = []
  for preset, scan in configurations:
    lower = statistics.median(r["lower_s"] for r in runs[preset, scan])
    compile_ = statistics.median(r["compile_s"] for r in runs[preset, scan])
    rows.append(
      {
        "preset": preset,
        "layers": layers(preset),
        "blocks": "scanned" if scan else "unrolled",
        "lower_s": lower,
        "compile_s": compile_,
        "total_s": lower + compile_,
      }
    )
  first = args.presets.split(",")[0]
  for row in rows:
    base = next(r for r in rows if r["preset"] == first and r["blocks"] == row["blocks"])
    row["compile_vs_first"] = row["compile_s"] / base["compile_s"]
    row["total_vs_first"] = row["total_s"] / base["total_s"]
    emit({"kind": "median", **row})
    records.append({"kind": "median", **row})
  write_json_lines(args.json_out, records)
  print()
  print(
    table(
      rows,
      [
        ("preset", "preset"),
        ("layers", "image+text layers"),
        ("blocks", "blocks"),
        ("lower_s", "lower s"),
        ("compile_s", "compile s"),
        ("total_s", "total s"),
        ("compile_vs_first", f"compile ÷ {first}"),
        ("total_vs_first", f"total ÷ {first}"),
      ],
      title=f"update compile time, median of {args.repeats} ({args.objective} objective, batch {args.batch})",
    )
  )


if __name__ == "__main__":
  main()
