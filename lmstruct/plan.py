"""`lmstruct plan`: will a config's update fit on N accelerators, and what will it cost, before anyone rents them.

    lmstruct plan --config configs/paper_cc3m.py:devices=64 --devices 64 [--json] [--config.KEY=VALUE ...]

The training update of CONFIG (the one `lmstruct train` runs: same model, objective, optimizer, accumulation, mesh
and sharding rules) is compiled for N fake CPU devices, from abstract shapes only (`jax.eval_shape` of the
initialisation and `jit(...).lower(...).compile()`): no parameter or batch is ever allocated. From the compiled
SPMD program it reports, per device:

* memory (XLA's buffer assignment): argument, output, aliased (the donated state), temporary and peak bytes;
* FLOPs per step: every matrix product and convolution, loops counted as often as they run (`train/hlo.py`);
* collectives by HLO op name, with how often they run per step and the bytes they produce;
* the compile time (XLA's compilation of the lowered program; `lower_s` is the tracing and lowering before it);
* whether the peak fits the HBM of common accelerators, with the sharding rule that makes it fit: the config's own
  rules and the named rules 'replicate' and 'fsdp' are each compiled.

The figures are those of XLA:CPU's compilation of the partitioned program. A GPU or TPU compiler fuses and
schedules differently, so its temporary memory differs (typically by tens of per cent); argument and output bytes,
FLOPs and collectives are properties of the partitioned program and carry over.

The fake devices must be configured before JAX starts (`--xla_force_host_platform_device_count=N`); when JAX is
already running here with another device count or platform, the plan is computed in a fresh subprocess.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

GIB = 2 ** 30
#: HBM per device of common accelerators (the A100 and H100 of the 80 GB kind).
ACCELERATORS: dict[str, int] = {"TPU v5e": 16 * GIB, "TPU v4": 32 * GIB, "A100 80GB": 80 * GIB,
                                "H100 80GB": 80 * GIB, "TPU v5p": 95 * GIB}
NAMED_RULES = ("replicate", "fsdp")
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


class PlanError(ValueError):
  """A user error of `lmstruct plan` (bad flag, config or device count): one line, exit status 2."""


def load_config(spec: str, overrides: Sequence[str] = ()) -> Any:
  """The ConfigDict of `path.py[:arg]` (its `get_config(arg)`), with `KEY=VALUE` overrides (Python literals or
  bare strings) applied to existing keys, validated."""
  from lmstruct.config import validate_config
  path, _, arg = spec.partition(":")
  if not pathlib.Path(path).is_file():
    raise PlanError(f"--config {spec}: no such file {path!r}")
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for override in overrides:
    key, sep, text = override.partition("=")
    if not sep:
      raise PlanError(f"--config.{override}: expected --config.KEY=VALUE")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    parent = config
    *sections, leaf = key.split(".")
    for depth, section in enumerate(sections):
      if section not in parent:
        where = ".".join(sections[:depth]) or "the config"
        close = difflib.get_close_matches(section, list(parent), n=1)
        raise PlanError(f"--config.{key}: unknown section {section!r} in {where}"
                        f"{f' (did you mean {close[0]!r}?)' if close else ''}; valid: {sorted(parent)}")
      parent = parent[section]
    parent[leaf] = value
  validate_config(config)
  return config


def _abstract_batch(config: Any, image_shape: tuple[int, int, int], context_length: int, sharding: Any) -> dict:
  """ShapeDtypeStructs of one global training batch (both views), sharded like the pipeline's."""
  import jax
  import jax.numpy as jnp
  batch = config.data.global_batch_size
  images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32, sharding=sharding)
  texts = jax.ShapeDtypeStruct((batch, context_length), jnp.int32, sharding=sharding)
  return {"image": images, "image_aug": images, "text": texts, "text_aug": texts}


def compile_update(config: Any, rules: Any) -> dict[str, Any]:
  """Compiles the update of `config` with sharding `rules` on the current devices; returns its per-device figures."""
  import jax
  from lmstruct.models import build_model, input_shapes
  from lmstruct.train import hlo
  from lmstruct.train.loop import _resolved_optimizer, sharding_rules, training_update
  from lmstruct.train.optimizer import make_optimizer
  from lmstruct.train.sharding import batch_sharding, make_mesh, tree_shardings
  from lmstruct.train.step import train_state_initializer

  mesh = make_mesh(config.mesh.shape.to_dict())
  data_axes = (mesh.axis_names[0],)
  model_config = config.model.to_dict()
  model = build_model(model_config)
  tx = make_optimizer(_resolved_optimizer(config))
  image_shape, context_length = input_shapes(model_config)
  abstract = jax.eval_shape(train_state_initializer(model, tx, image_shape, context_length), jax.random.key(0))
  shardings = tree_shardings(abstract, mesh, sharding_rules(rules), data_axes)
  state = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                       abstract, shardings)
  batch = _abstract_batch(config, image_shape, context_length, batch_sharding(mesh, data_axes))
  update = training_update(config, model, tx, mesh, shardings, data_axes)
  start = time.perf_counter()
  lowered = update.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compile_s, lower_s = time.perf_counter() - lowered_at, lowered_at - start
  memory = compiled.memory_analysis()
  text = compiled.as_text()
  summary = hlo.collective_summary(text)
  cost = compiled.cost_analysis()
  return {
      "memory": {"argument_bytes": int(memory.argument_size_in_bytes),
                 "output_bytes": int(memory.output_size_in_bytes),
                 "alias_bytes": int(memory.alias_size_in_bytes),
                 "temp_bytes": int(memory.temp_size_in_bytes),
                 "peak_bytes": int(memory.peak_memory_in_bytes)},
      "flops_per_step": hlo.matmul_flops(text),
      "xla_cost_analysis_flops": float((cost or {}).get("flops", 0.0)),
      "collectives": {kind: entry["count"] for kind, entry in summary.items()},
      "collective_bytes": {kind: entry["bytes"] for kind, entry in summary.items()},
      "compile_s": round(compile_s, 2),
      "lower_s": round(lower_s, 2),
      "parameters": sum(leaf.size for leaf in jax.tree.leaves(abstract.params)),
  }


def _rules_name(rules: Any) -> str:
  return rules if isinstance(rules, str) else "custom"


def fits(peak_by_rules: Mapping[str, int]) -> dict[str, str | None]:
  """{accelerator: the first rules (in the given order) whose peak per device fits its HBM, or None}."""
  return {name: next((rules for rules, peak in peak_by_rules.items() if peak <= capacity), None)
          for name, capacity in ACCELERATORS.items()}


def plan(config: Any, config_spec: str) -> dict[str, Any]:
  """The plan of `config` on the current devices: the figures of its own sharding rules at the top level,
  `by_rules` with the peak and compile time of each rule tried, and `fits` (see module docstring)."""
  import jax
  own = config.sharding.rules
  tried = [own] + [name for name in NAMED_RULES if name != own]
  results = {_rules_name(rules): compile_update(config, rules) for rules in tried}
  main = results[_rules_name(own)]
  devices = jax.device_count()
  return {
      "config": config_spec, "devices": devices, "platform": "cpu (fake devices)",
      "mesh": config.mesh.shape.to_dict(), "rules": _rules_name(own),
      "global_batch": config.data.global_batch_size,
      "per_device_batch": config.data.global_batch_size / devices,
      "accumulation_steps": config.train.accumulation_steps,
      "model": config.model.to_dict(), "parameters": main["parameters"],
      **{key: value for key, value in main.items() if key != "parameters"},
      "by_rules": {name: {"peak_bytes": r["memory"]["peak_bytes"], "argument_bytes": r["memory"]["argument_bytes"],
                          "temp_bytes": r["memory"]["temp_bytes"], "collectives": r["collectives"],
                          "compile_s": r["compile_s"]} for name, r in results.items()},
      "fits": fits({name: r["memory"]["peak_bytes"] for name, r in results.items()}),
  }


def _gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB"


def format_plan(result: Mapping[str, Any]) -> str:
  """The plan as a short human-readable report."""
  memory = result["memory"]
  lines = [f"plan of {result['config']} on {result['devices']} devices (mesh {result['mesh']}, rules "
           f"{result['rules']!r}): global batch {result['global_batch']}, {result['per_device_batch']:g} per device, "
           f"accumulation {result['accumulation_steps']}, {result['parameters'] / 1e6:.1f}M parameters",
           "per device:",
           f"  memory     arguments {_gib(memory['argument_bytes'])}, outputs {_gib(memory['output_bytes'])} "
           f"({_gib(memory['alias_bytes'])} aliased to donated arguments), temporaries {_gib(memory['temp_bytes'])},"
           f" peak {_gib(memory['peak_bytes'])}",
           f"  compute    {result['flops_per_step'] / 1e12:.2f} TFLOP per step (matrix products and convolutions)",
           f"  compile    {result['compile_s']:.1f} s (XLA:CPU)",
           "  collectives per step:"]
  for kind, count in result["collectives"].items():
    lines.append(f"    {kind:<20} {count:>7} × → {result['collective_bytes'][kind] / 2 ** 20:10.1f} MiB")
  lines.append("  peak per device by sharding rules: " + ", ".join(
      f"{name} {_gib(r['peak_bytes'])}" for name, r in result["by_rules"].items()))
  lines.append("fits:")
  for name, rules in result["fits"].items():
    lines.append(f"  {name:<10} {_gib(ACCELERATORS[name]):>10}  {('yes, with ' + rules) if rules else 'no'}")
  return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """(flags, `--config.KEY=VALUE` overrides) of `lmstruct plan`."""
  parser = argparse.ArgumentParser(prog="lmstruct plan", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="a configs/*.py file, optionally with ':arg'")
  parser.add_argument("--devices", type=int, required=True, help="number of devices to plan for")
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
  args, rest = parser.parse_known_args(list(argv))
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r} (overrides are --config.KEY=VALUE)")
    overrides.append(item.removeprefix("--config."))
  if args.devices < 1:
    parser.error(f"--devices must be at least 1, got {args.devices}")
  return args, overrides


def _runs_here(devices: int) -> bool:
  """Whether this process can compile for `devices` fake CPU devices: JAX has not started yet (the flag is then
  set here), or it runs on the CPU with exactly that many devices."""
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = _with_device_count(os.environ.get("XLA_FLAGS", ""), devices)
    os.environ["JAX_PLATFORMS"] = "cpu"
    return True
  import jax
  return jax.default_backend() == "cpu" and jax.device_count() == devices


def _with_device_count(flags: str, devices: int) -> str:
  """XLA_FLAGS `flags` with the fake CPU device count set to `devices` (replacing any count already there)."""
  others = re.sub(_DEVICE_COUNT_FLAG + r"=\S+", "", flags).strip()
  return f"{others} {_DEVICE_COUNT_FLAG}={devices}".strip()


def main(argv: Sequence[str] | None = None) -> int:
  """Prints the plan (or its JSON with --json); returns the exit status: 0, or 2 for a user error."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args, overrides = parse_args(argv)
  if not _runs_here(args.devices):
    env = {**os.environ, "XLA_FLAGS": _with_device_count(os.environ.get("XLA_FLAGS", ""), args.devices),
           "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "lmstruct.plan", *argv], env=env).returncode
  try:
    config = load_config(args.config, overrides)
    result = plan(config, args.config)
  except (ValueError, TypeError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(result) if args.json else format_plan(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
