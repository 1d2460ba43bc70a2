"""`lmstruct plan`: will a config's update fit on N accelerators, and what will it cost, before anyone rents them.

    lmstruct plan --config configs/paper_cc3m.py:devices=64 --devices 64 [--json] [--config.KEY=VALUE ...]

The training update of CONFIG (the one `lmstruct train` runs: same model, objective, optimizer, accumulation, mesh
and sharding rules) is compiled for N fake CPU devices, from abstract shapes only (`jax.eval_shape` of the
initialisation and `jit(...).lower(...).compile()`): no parameter or batch is ever allocated. From the compiled
SPMD program it reports, per device:

* memory (XLA's buffer assignment): argument, output, aliased (the donated state) and temporary bytes, and the
  peak = argument + output − aliased + temporary, every buffer the step holds at once at most (XLA:CPU's own
  `peak_memory_in_bytes` leaves the temporaries out);
* FLOPs per step: every matrix product and convolution, loops counted as often as they run (`train/hlo.py`);
* collectives by HLO op name, with how often they run per step and the bytes they produce;
* the compile time (XLA's compilation of the lowered program; `lower_s` is the tracing and lowering before it);
* whether the peak fits the HBM of common accelerators, with the sharding rule that makes it fit: the config's own
  rules and the named rules 'replicate' and 'fsdp' are each compiled.

The figures are those of XLA:CPU's compilation of the partitioned program. A GPU or TPU compiler fuses and
schedules differently, so its temporary memory differs (typically by tens of per cent); argument and output bytes,
FLOPs and collectives are properties of the partitioned program and carry over.

The fake devices must be configured before JAX's backends start (`jax_num_cpu_devices`); when they are already
running here with another device count or platform, the plan is computed by `lmstruct plan` in a fresh process.
"""

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lmstruct.models import build_model, input_shapes
from lmstruct.train import hlo
from lmstruct.train.loop import resolved_optimizer, training_update
from lmstruct.train.optimizer import make_optimizer
from lmstruct.train.sharding import NAMED_RULES, batch_sharding, make_mesh, sharding_rules, tree_shardings
from lmstruct.train.step import train_state_initializer

GIB = 2**30
#: HBM per device of common accelerators (the A100 and H100 of the 80 GB kind).
ACCELERATORS: dict[str, int] = {
  "TPU v5e": 16 * GIB,
  "TPU v4": 32 * GIB,
  "A100 80GB": 80 * GIB,
  "H100 80GB": 80 * GIB,
  "TPU v5p": 95 * GIB,
}


def can_plan_here(devices: int) -> bool:
  """Whether this process can compile for `devices` fake CPU devices: JAX's backends have not started (they are
  then configured here: the CPU platform with that many devices), or they run on the CPU with that many."""
  try:
    jax.config.update("jax_num_cpu_devices", devices)
  except RuntimeError:  # the backends are running
    return jax.default_backend() == "cpu" and jax.device_count() == devices
  jax.config.update("jax_platforms", "cpu")
  return True


def plan_in_subprocess(argv: Sequence[str], devices: int) -> int:
  """Runs `lmstruct <argv>` (a plan command) in a fresh process on `devices` fake CPU devices; its exit status."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
  return subprocess.run([sys.executable, "-m", "lmstruct.cli", *argv], env=env).returncode


def _abstract_batch(config: Any, image_shape: tuple[int, int, int], context_length: int, sharding: Any) -> dict:
  """ShapeDtypeStructs of one global training batch (both views), sharded like the pipeline's."""
  batch = config.data.global_batch_size
  images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32, sharding=sharding)
  texts = jax.ShapeDtypeStruct((batch, context_length), jnp.int32, sharding=sharding)
  return {"image": images, "image_aug": images, "text": texts, "text_aug": texts}


def compile_update(config: Any, rules: Any) -> dict[str, Any]:
  """Compiles the update of `config` with sharding `rules` on the current devices; returns its per-device figures."""
  mesh = make_mesh(config.mesh.shape.to_dict())
  data_axes = (mesh.axis_names[0],)
  model_config = config.model.to_dict()
  model = build_model(model_config)
  tx = make_optimizer(resolved_optimizer(config))
  image_shape, context_length = input_shapes(model_config)
  initialize = train_state_initializer(model, tx, image_shape=image_shape, context_length=context_length)
  abstract = jax.eval_shape(initialize, jax.random.key(0))
  shardings = tree_shardings(abstract, mesh, sharding_rules(rules), data_axes)
  state = jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract, shardings
  )
  batch = _abstract_batch(config, image_shape, context_length, batch_sharding(mesh, data_axes))
  update = training_update(config, model=model, tx=tx, mesh=mesh, shardings=shardings, data_axes=data_axes)
  start = time.perf_counter()
  lowered = update.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compile_s, lower_s = time.perf_counter() - lowered_at, lowered_at - start
  memory = compiled.memory_analysis()
  sizes = {
    "argument_bytes": int(memory.argument_size_in_bytes),
    "output_bytes": int(memory.output_size_in_bytes),
    "alias_bytes": int(memory.alias_size_in_bytes),
    "temp_bytes": int(memory.temp_size_in_bytes),
  }
  text = compiled.as_text()
  summary = hlo.collective_summary(text)
  cost = compiled.cost_analysis()
  return {
    "memory": {**sizes, "peak_bytes": peak_bytes(**sizes)},
    "flops_per_step": hlo.matmul_flops(text),
    "xla_cost_analysis_flops": float((cost or {}).get("flops", 0.0)),
    "collectives": {kind: entry["count"] for kind, entry in summary.items()},
    "collective_bytes": {kind: entry["bytes"] for kind, entry in summary.items()},
    "compile_s": round(compile_s, 2),
    "lower_s": round(lower_s, 2),
    "parameters": sum(leaf.size for leaf in jax.tree.leaves(abstract.params)),
  }


def peak_bytes(argument_bytes: int, output_bytes: int, alias_bytes: int, temp_bytes: int) -> int:
  """argument + output − aliased + temporary bytes: the most one device holds during the step (outputs aliased to
  donated arguments reuse their buffers)."""
  return argument_bytes + output_bytes - alias_bytes + temp_bytes


def _rules_name(rules: Any) -> str:
  return rules if isinstance(rules, str) else "custom"


def fits(peak_by_rules: Mapping[str, int]) -> dict[str, str | None]:
  """{accelerator: the first rules (in the given order) whose peak per device fits its HBM, or None}."""
  return {
    name: next((rules for rules, peak in peak_by_rules.items() if peak <= capacity), None)
    for name, capacity in ACCELERATORS.items()
  }


def plan(config: Any, config_spec: str) -> dict[str, Any]:
  """The plan of `config` on the current devices: the figures of its own sharding rules at the top level,
  `by_rules` with the peak and compile time of each rule tried, and `fits` (see module docstring). Only the
  two-tower family's update (task 'clip') is planned; another task is a ValueError naming it."""
  if config.task != "clip":
    raise ValueError(
      f"lmstruct plan compiles the two-tower update (task = 'clip'); config task = {config.task!r} trains its "
      "own update, which plan does not compile"
    )
  own = config.sharding.rules
  tried = [own] + [name for name in NAMED_RULES if name != own]
  results = {_rules_name(rules): compile_update(config, rules) for rules in tried}
  main = results[_rules_name(own)]
  devices = jax.device_count()
  return {
    "config": config_spec,
    "devices": devices,
    "platform": "cpu (fake devices)",
    "mesh": config.mesh.shape.to_dict(),
    "rules": _rules_name(own),
    "global_batch": config.data.global_batch_size,
    "per_device_batch": config.data.global_batch_size / devices,
    "accumulation_steps": config.train.accumulation_steps,
    "model": config.model.to_dict(),
    "parameters": main["parameters"],
    **{key: value for key, value in main.items() if key != "parameters"},
    "by_rules": {
      name: {
        "peak_bytes": r["memory"]["peak_bytes"],
        "argument_bytes": r["memory"]["argument_bytes"],
        "temp_bytes": r["memory"]["temp_bytes"],
        "collectives": r["collectives"],
        "compile_s": r["compile_s"],
      }
      for name, r in results.items()
    },
    "fits": fits({name: r["memory"]["peak_bytes"] for name, r in results.items()}),
  }


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB"


def format_plan(result: Mapping[str, Any]) -> str:
  """The plan as a short human-readable report."""
  memory = result["memory"]
  lines = [
    f"plan of {result['config']} on {result['devices']} devices (mesh {result['mesh']}, rules "
    f"{result['rules']!r}): global batch {result['global_batch']}, {result['per_device_batch']:g} per device, "
    f"accumulation {result['accumulation_steps']}, {result['parameters'] / 1e6:.1f}M parameters",
    "per device:",
    f"  memory     arguments {_gib(memory['argument_bytes'])}, outputs {_gib(memory['output_bytes'])} "
    f"({_gib(memory['alias_bytes'])} aliased to donated arguments), temporaries {_gib(memory['temp_bytes'])},"
    f" peak {_gib(memory['peak_bytes'])}",
    f"  compute    {result['flops_per_step'] / 1e12:.2f} TFLOP per step (matrix products and convolutions)",
    f"  compile    {result['compile_s']:.1f} s (XLA:CPU)",
    "  collectives per step:",
  ]
  for kind, count in result["collectives"].items():
    lines.append(f"    {kind:<20} {count:>7} × → {result['collective_bytes'][kind] / 2**20:10.1f} MiB")
  lines.append(
    "  peak per device by sharding rules: "
    + ", ".join(f"{name} {_gib(r['peak_bytes'])}" for name, r in result["by_rules"].items())
  )
  lines.append("fits:")
  for name, rules in result["fits"].items():
    lines.append(f"  {name:<10} {_gib(ACCELERATORS[name]):>10}  {('yes, with ' + rules) if rules else 'no'}")
  return "\n".join(lines)
