"""Per-device memory of the update with gradient accumulation (feature caching) against the batch and the number of
micro-batches, from XLA's memory analysis of the compiled update on fake CPU devices (nothing runs).

    .venv/bin/python benchmarks/accumulation_memory.py [--preset ViT-B-32] [--devices 8] [--micro 64]
                                                       [--batches 64,128,256,512] [--json-out FILE]

For each global batch B of `--batches` it compiles the update of the full objective (in-modal + separation + bridge
+ geometric, ring-sharded over the devices) once without accumulation (k = 1) and once with micro-batches of
`--micro` examples (k = B / micro), and, at the largest batch, with every k in between. Temporary bytes are the
activations, gradients and workspace of one step on one device; argument bytes (the state and the batch) are the
same with and without accumulation.
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--preset", default="ViT-B-32")
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--micro", type=int, default=64, help="global examples per micro-batch")
parser.add_argument("--batches", default="64,128,256,512")
parser.add_argument("--json-out", default=None)
ARGS = parser.parse_args()
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import emit, machine, table, write_json_lines  # noqa: E402

FULL = {
  "base": "inmodal",
  "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0},
  "bridge_t": 0.25,
  "impl": "auto",
}


def update_config(preset: str, batch: int, accumulation_steps: int):
  from lmstruct.config import base_config

  config = base_config()
  config.model = {"preset": preset}
  config.objective = FULL
  config.data.global_batch_size = batch
  config.train.accumulation_steps = accumulation_steps
  return config


def main() -> None:
  from lmstruct.plan import compile_update

  records = [
    {
      "kind": "machine",
      **machine(),
      "benchmark": "accumulation_memory",
      "preset": ARGS.preset,
      "devices": ARGS.devices,
      "micro": ARGS.micro,
    }
  ]
  emit(records[0])
  batches = [int(b) for b in ARGS.batches.split(",")]
  largest = batches[-1]
  runs = sorted(
    {(b, 1) for b in batches}
    | {(b, b // ARGS.micro) for b in batches}
    | {(largest, largest // m) for m in batches if largest % m == 0}
  )
  rows = []
  for batch, steps in runs:
    result = compile_update(update_config(ARGS.preset, batch, steps), "replicate")
    memory = result["memory"]
    row = {
      "kind": "memory",
      "global_batch": batch,
      "accumulation_steps": steps,
      "micro_batch_per_device": batch // steps // ARGS.devices,
      "temp_mib": memory["temp_bytes"] / 2**20,
      "argument_mib": memory["argument_bytes"] / 2**20,
      "peak_mib": memory["peak_bytes"] / 2**20,
      "tflop_per_device": result["flops_per_step"] / 1e12,
      "compile_s": result["compile_s"],
    }
    emit(row)
    records.append(row)
    rows.append(row)
  write_json_lines(ARGS.json_out, records)
  print()
  print(
    table(
      rows,
      [
        ("global_batch", "batch"),
        ("accumulation_steps", "k"),
        ("micro_batch_per_device", "micro-batch/device"),
        ("temp_mib", "temp MiB"),
        ("argument_mib", "argument MiB"),
        ("peak_mib", "peak MiB"),
        ("tflop_per_device", "TFLOP/device"),
        ("compile_s", "compile s"),
      ],
      title=f"per-device memory of the {ARGS.preset} update on {ARGS.devices} devices, full objective",
    )
  )


if __name__ == "__main__":
  main()
