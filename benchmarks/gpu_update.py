"""ViT-B/32 CLIP update in bfloat16 on one GPU: images/s and model-FLOPs utilisation at a batch that fills the device.

    .venv/bin/python benchmarks/gpu_update.py                 # needs a GPU and a CUDA jaxlib (pip install "jax[cuda13]")
    .venv/bin/python benchmarks/gpu_update.py --batch 1024    # skip the batch search
    .venv/bin/python benchmarks/gpu_update.py --dry-run-cpu   # rehearse the whole procedure on CPU (tiny, small batches)

Without a GPU it prints one JSON line ``{"kind": "skipped", ...}`` and a message, and exits with status 0 (it is not
part of CI).

Procedure (the same lmstruct code path as the CPU benchmarks: lmstruct.train.step's jitted update, model dtype
'bfloat16' — float32 parameters and AdamW state, bf16 compute — plain CLIP objective, no independent heads):

1. matmul rate: a jitted n×n @ n×n bf16 matmul (``--matmul-n``, 8192), ``--matmul-repeats`` back-to-back calls per
   timing, median of 5 timings → the card's measured bf16 matmul FLOP/s;
2. batch: unless ``--batch`` is given, batches 256, 512, 1024, … are compiled (not run) and XLA's memory analysis
   (arguments + outputs − donated aliases + temporaries) is compared with the device's ``bytes_limit``; the largest
   batch within ``--fill`` (0.9) of it is taken;
3. ``--warmup`` untimed then ``--steps`` timed updates on a synthetic batch (each blocked on), median reported:
   images/s, model FLOP/s (3 × forward matmul FLOPs, benchmarks/common.py) and their share of the matmul rate.

Output: JSON lines (``kind``: machine, device, matmul, candidate, gpu_update), then a table.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402


def matmul_rate(n: int, repeats: int, timings: int = 5) -> dict[str, Any]:
  """bf16 FLOP/s of `repeats` back-to-back n×n matmuls per timing (median of `timings`)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  seconds = []
  for _ in range(timings):
    start = time.perf_counter()
    outs = [f(a, b) for _ in range(repeats)]
    jax.block_until_ready(outs)
    seconds.append((time.perf_counter() - start) / repeats)
  return {"kind": "matmul", "dtype": "bfloat16", "n": n, "flops": 2.0 * n ** 3 / statistics.median(seconds),
          "seconds_per_matmul": seconds}


class Update:
  """Model, optimizer, state and update function of one reference configuration (bf16 compute, plain CLIP)."""

  def __init__(self, ref: dict[str, Any], dtype: str = "bfloat16"):
    import jax
    from lmstruct.models import build_model, input_shapes
    from lmstruct.train.optimizer import make_optimizer
    from lmstruct.train.sharding import DEFAULT_RULES, make_mesh
    from lmstruct.train.step import init_train_state, make_train_step
    self.ref = ref
    config = {"preset": ref["preset"], "dtype": dtype, "independent_heads": False}
    model = build_model(config)
    tx = make_optimizer({"learning_rate": 1e-5, "warmup_steps": 0, "total_steps": 10_000, "weight_decay": 0.1,
                         "grad_clip_norm": 1.0})
    self.mesh = make_mesh(devices=jax.devices()[:1])
    shape, length = input_shapes(config)
    self.state, shardings = init_train_state(model, tx, image_shape=shape, context_length=length, mesh=self.mesh,
                                             rules=DEFAULT_RULES, seed=0)
    self.jitted = make_train_step(model, tx, objective={"base": "clip", "weights": {}}, mesh=self.mesh,
                                  state_shardings=shardings)
    self.image_shape, self.length = shape, length

  def abstract_batch(self, batch: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    return {"image": jax.ShapeDtypeStruct((batch, *self.image_shape), jnp.float32),
            "text": jax.ShapeDtypeStruct((batch, self.length), jnp.int32)}

  def compile(self, batch: int) -> tuple[Any, dict[str, float], float]:
    """The compiled update at `batch`, its memory analysis (bytes) and compile seconds."""
    start = time.perf_counter()
    compiled = self.jitted.lower(self.state, self.abstract_batch(batch)).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    memory = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
              "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
              "code": getattr(m, "generated_code_size_in_bytes", 0)}
    memory["total"] = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["code"]
    return compiled, memory, seconds


def device_limit_bytes(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, help="fixed batch (default: the largest power-of-two multiple of 256 "
                                                 "that fits, see --fill)")
  parser.add_argument("--fill", type=float, default=0.9, help="largest share of the device memory the update may use")
  parser.add_argument("--max-batch", type=int, default=16384)
  parser.add_argument("--steps", type=int, default=10, help="timed updates (median reported; ≥ 5)")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--matmul-n", type=int, default=8192)
  parser.add_argument("--matmul-repeats", type=int, default=20)
  parser.add_argument("--nominal-tflops", type=float, help="the card's datasheet dense bf16 TFLOP/s, for reference")
  parser.add_argument("--dry-run-cpu", action="store_true",
                      help="rehearse on CPU: tiny configuration, batches from 8, a 2 GiB pretend device limit")
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  args = parser.parse_args()

  import jax
  gpus = [d for d in jax.devices() if d.platform == "gpu"] if not args.dry_run_cpu else []
  if not gpus and not args.dry_run_cpu:
    try:
      gpus = jax.devices("gpu")
    except RuntimeError:
      gpus = []
  if not gpus and not args.dry_run_cpu:
    common.emit({"kind": "skipped", "reason": "no GPU visible to JAX", "backend": jax.default_backend(),
                 "devices": [str(d) for d in jax.devices()]})
    print("gpu_update.py: no GPU visible to JAX (backend "
          f"{jax.default_backend()!r}); nothing to measure. Run it on a GPU machine with a CUDA jaxlib.",
          file=sys.stderr)
    return

  if args.dry_run_cpu:
    ref, first, limit = common.REFERENCE["tiny"], 8, 2 * 2 ** 30
    args.matmul_n, args.matmul_repeats, args.steps, args.warmup = 1024, 2, min(args.steps, 5), 1
    args.max_batch = min(args.max_batch, 64)
    device = jax.devices()[0]
  else:
    ref, first = common.REFERENCE["B32"], 256
    device = gpus[0]
    limit = device_limit_bytes(device)
  records: list[dict[str, Any]] = [{"kind": "machine", **common.machine()},
                                   {"kind": "device", "device": str(device),
                                    "device_kind": getattr(device, "device_kind", "?"), "bytes_limit": limit,
                                    "jax": jax.__version__, "dry_run_cpu": args.dry_run_cpu}]
  for r in records:
    common.emit(r)

  with jax.default_device(device):
    matmul = matmul_rate(args.matmul_n, args.matmul_repeats)
    common.emit(matmul)
    records.append(matmul)
    update = Update(ref)
    if args.batch:
      batch = args.batch
      compiled, memory, compile_s = update.compile(batch)
    else:
      if limit is None:
        raise SystemExit("the device reports no bytes_limit; pass --batch")
      batch, compiled, memory, compile_s = None, None, None, None
      candidate = first
      while candidate <= args.max_batch:
        c, m, s = update.compile(candidate)
        fits = m["total"] <= args.fill * limit
        row = {"kind": "candidate", "batch": candidate, "memory_bytes": m, "fits": fits, "compile_s": s}
        common.emit(row)
        records.append(row)
        if not fits:
          break
        batch, compiled, memory, compile_s = candidate, c, m, s
        candidate *= 2
      if batch is None:
        raise SystemExit(f"even batch {first} needs more than {args.fill:.0%} of the device memory")

    host = common.synthetic_batch(ref, batch, seed=0)
    from lmstruct.train.sharding import batch_sharding
    device_batch = jax.device_put(host, batch_sharding(update.mesh))
    state = update.state
    times = []
    for i in range(args.warmup + args.steps):
      start = time.perf_counter()
      state, metrics = compiled(state, device_batch)
      jax.block_until_ready((state, metrics))
      if i >= args.warmup:
        times.append(time.perf_counter() - start)
    if int(metrics["nonfinite"]):
      raise FloatingPointError("the update produced a non-finite loss or gradient")

  flops = common.update_model_flops(ref, batch)
  s = common.summary(times)
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  record = {"kind": "gpu_update", "config": "B32" if not args.dry_run_cpu else "tiny", "dtype": "bfloat16",
            "batch": batch, **s, "times_s": times, "images_per_s": batch / s["median_s"],
            "model_flops_per_update": flops, "model_flops_per_s": flops / s["median_s"],
            "mfu_vs_measured_matmul": flops / s["median_s"] / matmul["flops"],
            "mfu_vs_nominal": (flops / s["median_s"] / (args.nominal_tflops * 1e12)) if args.nominal_tflops else None,
            "compile_s": compile_s, "compiled_memory_bytes": memory,
            "peak_bytes_in_use": (stats or {}).get("peak_bytes_in_use"), "loss": float(metrics["loss/total"])}
  common.emit(record)
  records.append(record)
  common.write_json_lines(args.json_out, records)
  print()
  print(common.table([{"batch": batch, "step": s["median_s"], "img_s": record["images_per_s"],
                       "tflops": record["model_flops_per_s"] / 1e12, "mm": matmul["flops"] / 1e12,
                       "mfu": record["mfu_vs_measured_matmul"], "compile": compile_s,
                       "mem": memory["total"] / 2 ** 30}],
                     [("batch", "batch"), ("step", "step s (med)"), ("img_s", "images/s"),
                      ("tflops", "model TFLOP/s"), ("mm", "bf16 matmul TFLOP/s"), ("mfu", "MFU (measured)"),
                      ("compile", "compile s"), ("mem", "XLA memory GiB")],
                     title=f"{records[1]['device_kind']} ({'CPU dry run' if args.dry_run_cpu else 'GPU'}), "
                           f"commit {records[0]['commit']}, {records[0]['date']}"))


if __name__ == "__main__":
  main()
