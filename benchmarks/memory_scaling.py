"""Per-device temporary memory of the compiled objective + gradient, global vs ring, at a fixed per-device batch.

    .venv/bin/python benchmarks/memory_scaling.py [--per-device-batch 256] [--dim 512] [--devices 1,2,4,8]
                                                 [--base inmodal] [--regularizers separation,bridge,...]

For each device count P the global batch is P × per-device batch, sharded on a 1-D 'data' mesh of the first P
(fake CPU) devices. Nothing is run: each objective is lowered and compiled, and XLA's memory analysis of the
partitioned program gives the per-device temp buffer size. Prints one JSON line per (impl, P), then a table.
"""
import argparse
import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from lmstruct.losses.objective import compute_objective  # noqa: E402
from lmstruct.losses.ring import compute_objective_ring  # noqa: E402
from lmstruct.losses.term import Features  # noqa: E402

FEATURES = ("zv", "zt", "zv_aug", "zt_aug", "zv_ind", "zt_ind", "zv_ind_aug", "zt_ind_aug")


def objective_and_gradient(impl: str, config: dict, mesh: jax.sharding.Mesh):
  """A jitted (features, logit_scale, logit_bias) ↦ ((L, metrics), ∂L/∂(features, scale, bias)) for `impl`."""
  def loss(arrays, logit_scale, logit_bias):
    features = Features(logit_scale=logit_scale, logit_bias=logit_bias, **arrays)
    if impl == "ring":
      return compute_objective_ring(features, config, jax.random.key(0), mesh)
    return compute_objective(features, config, jax.random.key(0))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def measure(impl: str, config: dict, devices: int, per_device_batch: int, dim: int) -> dict:
  """Compiles the objective + gradient on `devices` devices and returns XLA's per-device memory analysis."""
  mesh = jax.sharding.Mesh(jax.devices()[:devices], ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = devices * per_device_batch
  sharded = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  arrays = {name: jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=sharded) for name in FEATURES}
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  compiled = objective_and_gradient(impl, config, mesh).lower(arrays, scalar, scalar).compile()
  analysis = compiled.memory_analysis()
  hlo = compiled.as_text()
  return {
      "impl": impl, "devices": devices, "global_batch": batch, "per_device_batch": per_device_batch, "dim": dim,
      "temp_bytes": int(analysis.temp_size_in_bytes), "argument_bytes": int(analysis.argument_size_in_bytes),
      "output_bytes": int(analysis.output_size_in_bytes),
      "all_gathers": hlo.count(" all-gather("), "collective_permutes": hlo.count(" collective-permute("),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--per-device-batch", type=int, default=256)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--base", default="inmodal", choices=("clip", "inmodal", "sigmoid"))
  parser.add_argument("--regularizers", default="separation,bridge,geometric,cyclip,alignment",
                      help="comma-separated regularisers, each with weight 1 ('' for none)")
  args = parser.parse_args()
  config = {"base": args.base, "weights": {name: 1.0 for name in args.regularizers.split(",") if name},
            "bridge_t": "uniform"}

  rows = []
  for impl in ("global", "ring"):
    for devices in (int(d) for d in args.devices.split(",")):
      row = measure(impl, config, devices, args.per_device_batch, args.dim)
      print(json.dumps(row), flush=True)
      rows.append(row)

  print(f"\nper-device temp memory (MiB), objective + gradient, base={args.base}, "
        f"regularizers={args.regularizers or 'none'}, {args.per_device_batch} examples per device, D={args.dim}")
  print(f"{'impl':<8}{'devices':>8}{'batch':>8}{'temp MiB':>11}{'vs 2 dev':>10}{'all-gathers':>13}")
  for row in rows:
    two = next((r["temp_bytes"] for r in rows if r["impl"] == row["impl"] and r["devices"] == 2), None)
    ratio = f"{row['temp_bytes'] / two:.3f}" if two else "-"
    print(f"{row['impl']:<8}{row['devices']:>8}{row['global_batch']:>8}{row['temp_bytes'] / 2 ** 20:>11.2f}"
          f"{ratio:>10}{row['all_gathers']:>13}")


if __name__ == "__main__":
  main()
