"""Cost of the paper's regularisers on the ALBEF pre-training update: ALBEF + separation + bridge + geometric over
ALBEF alone (ITC-MD + ITM + MLM-MD, EMA, queues), same model, state and batch; and the ALBEF update against the
CLIP update on the same towers.

    .venv/bin/python benchmarks/albef_update.py                          # albef-test model, batch 32, float32
    .venv/bin/python benchmarks/albef_update.py --preset albef-MiniLM --batch 16 --steps 5

Both updates are compiled ahead of time on one device (the model has its independent heads, so both hold the same
parameters); they share one training state, threaded through whichever runs. The third side, `clip`, is the
two-tower CLIP update (`make_train_step`, plain CLIP objective) on the same towers: the same ViT and, as its text
tower, a BERT of ALBEF's text-only depth (text.layers − fusion_layers) and width, [CLS]-pooled, with the same
projection width, batch and context. The three run in rotation (forward, then reversed order) so each sees the same
machine load. Reported: median seconds per update, examples/s, XLA's temporary memory of each program, the ratio
all / none (goal ≤ 1.05) and ALBEF alone / CLIP.

Output: JSON lines (``kind``: machine, albef_overhead), then a table.
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

OBJECTIVES: dict[str, dict[str, Any]] = {
  "none": {"base": "none", "weights": {}},
  "all": {"base": "none", "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0}, "bridge_t": 0.25},
}
SPECIAL_IDS = {"pad": 0, "cls": 101, "sep": 102, "mask": 103}


def build(args: argparse.Namespace) -> dict[str, Any]:
  """The compiled ALBEF updates of OBJECTIVES, their shared state and a synthetic batch."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lmstruct.losses.objective import ObjectiveConfig, named_objective
  from lmstruct.models.albef import albef_input_shapes, build_albef, resolve_albef_config
  from lmstruct.models.factory import build_model
  from lmstruct.train import albef
  from lmstruct.train.optimizer import make_optimizer
  from lmstruct.train.sharding import DEFAULT_RULES, batch_sharding, make_mesh
  from lmstruct.train.step import (
    init_sharded_state,
    init_train_state,
    loss_gradients,
    make_train_step,
    make_update,
    objective_function,
    state_initializer,
  )

  model_config = {"preset": args.preset, "independent_heads": True}
  resolved = resolve_albef_config(model_config)
  model = build_albef(model_config)
  (size, _, _), length = albef_input_shapes(model_config)
  tx = make_optimizer({"learning_rate": 1e-5, "warmup_steps": 0, "total_steps": 10_000, "weight_decay": 0.02})
  mesh = make_mesh(devices=jax.devices()[:1])
  queue = args.batch * 4

  inputs = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
  state, shardings = init_sharded_state(
    state_initializer(lambda rng: albef.init_pretrain_variables(model, rng, inputs, queue), tx),
    mesh=mesh,
    rules=(*albef.QUEUE_RULES, *DEFAULT_RULES),
    seed=0,
  )
  rng = np.random.default_rng(0)
  tokens = rng.integers(1000, resolved["text"]["vocab_size"], (args.batch, length)).astype(np.int32)
  tokens[:, 0], tokens[:, -1] = SPECIAL_IDS["cls"], SPECIAL_IDS["sep"]
  batch = jax.device_put(
    {
      "image": rng.normal(size=(args.batch, size, size, 3)).astype(np.float32),
      "text": tokens,
      "image_key": np.arange(args.batch, dtype=np.int32),
    },
    batch_sharding(mesh),
  )
  special = albef.SpecialTokens(vocab_size=resolved["text"]["vocab_size"], **SPECIAL_IDS)
  options = albef.albef_options({"queue_size": queue})
  out: dict[str, Any] = {"states": {}, "batches": {}, "steps": {}, "compile_s": {}, "memory": {}}
  for name, objective in OBJECTIVES.items():
    objective = ObjectiveConfig.from_dict(objective)
    loss_fn = albef.make_pretrain_loss(
      model,
      options,
      special,
      ramp_examples=0,
      objective=objective,
      objective_fn=objective_function(objective, mesh, ("data",)),
    )
    jitted = make_update(
      loss_gradients(loss_fn), tx, mesh=mesh, state_shardings=shardings, project_params=albef.project_temperature
    )
    _compile(out, name, jitted, state, batch)
  clip_model_config = same_towers_clip_config(resolved)
  clip_model = build_model(clip_model_config)
  clip_state, clip_shardings = init_train_state(
    clip_model, tx, image_shape=(size, size, 3), context_length=length, mesh=mesh, rules=DEFAULT_RULES, seed=0
  )
  clip_update = make_train_step(
    clip_model, tx, objective=named_objective("clip"), mesh=mesh, state_shardings=clip_shardings
  )
  clip_batch = jax.device_put({"image": batch["image"], "text": batch["text"]}, batch_sharding(mesh))
  _compile(out, "clip", clip_update, clip_state, clip_batch)
  out["states"] = {"albef": state, "clip": clip_state}
  out["batches"] = {"albef": batch, "clip": clip_batch}
  return out


def same_towers_clip_config(albef: dict[str, Any]) -> dict[str, Any]:
  """The two-tower model config on the towers of a resolved ALBEF config: its ViT, and a [CLS]-pooled BERT of its
  text-only layers (text.layers − fusion_layers) as the text tower, at its projection width."""
  text, image = albef["text"], albef["image"]
  return {
    "preset": "test",
    "image": {
      "kind": "vit",
      "size": "test",
      **{k: image[k] for k in ("width", "layers", "heads", "patch", "image_size")},
    },
    "text": {
      "kind": "bert",
      "size": "MiniLM-L6",
      **{k: text[k] for k in ("width", "heads", "mlp_dim", "vocab_size", "max_positions", "context_length")},
      "layers": text["layers"] - albef["fusion_layers"],
      "pooling": "cls",
    },
    "embed_dim": albef["embed_dim"],
    "independent_heads": False,
  }


def _compile(out: dict[str, Any], name: str, jitted: Any, state: Any, batch: Any) -> None:
  """Compiles `jitted` for (state, batch) into out['steps'][name], with its compile seconds and XLA temp MiB."""
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  out["compile_s"][name] = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  out["memory"][name] = None if analysis is None else analysis.temp_size_in_bytes / 2**20
  out["steps"][name] = compiled


def measure(args: argparse.Namespace) -> dict[str, Any]:
  import jax

  built = build(args)

  def run(name: str) -> float:
    family = "clip" if name == "clip" else "albef"
    start = time.perf_counter()
    built["states"][family], metrics = built["steps"][name](built["states"][family], built["batches"][family])
    jax.block_until_ready((built["states"][family], metrics))
    if int(metrics["nonfinite"]):
      raise FloatingPointError("the benchmarked update produced a non-finite loss or gradient")
    return time.perf_counter() - start

  names = [*OBJECTIVES, "clip"]
  for name in names:
    run(name)
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(args.steps):
    for name in names if r % 2 == 0 else names[::-1]:
      times[name].append(run(name))
  record: dict[str, Any] = {
    "kind": "albef_overhead",
    "preset": args.preset,
    "batch": args.batch,
    "objectives": OBJECTIVES,
    "compile_s": built["compile_s"],
    "temp_mib": built["memory"],
    "sides": {},
  }
  for name in names:
    record["sides"][name] = {
      **common.summary(times[name]),
      "times_s": times[name],
      "examples_per_s": args.batch / statistics.median(times[name]),
    }
  record["all_over_none"] = record["sides"]["all"]["median_s"] / record["sides"]["none"]["median_s"]
  record["all_over_none_paired_median"] = statistics.median(a / n for a, n in zip(times["all"], times["none"]))
  record["albef_over_clip"] = record["sides"]["none"]["median_s"] / record["sides"]["clip"]["median_s"]
  record["albef_over_clip_paired_median"] = statistics.median(a / c for a, c in zip(times["none"], times["clip"]))
  return record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="albef-test", help="an ALBEF model preset (lmstruct.models.albef)")
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  parser.add_argument("--steps", type=int, default=7, help="timed updates per side (median reported)")
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  args = parser.parse_args()
  records = [{"kind": "machine", **common.machine()}, measure(args)]
  for record in records:
    common.emit(record)
  common.write_json_lines(args.json_out, records)
  r = records[1]
  rows = [
    {
      "objective": name,
      "step_s": side["median_s"],
      "ex_s": side["examples_per_s"],
      "ratio": side["median_s"] / r["sides"]["none"]["median_s"],
      "temp": r["temp_mib"][name] or 0.0,
      "compile": r["compile_s"][name],
    }
    for name, side in r["sides"].items()
  ]
  print()
  print(
    common.table(
      rows,
      [
        ("objective", "update"),
        ("step_s", "step s (med)"),
        ("ex_s", "examples/s"),
        ("ratio", "× none"),
        ("temp", "XLA temp MiB"),
        ("compile", "compile s"),
      ],
      title=f"ALBEF update (regularisers none, all) and CLIP on the same towers, {args.preset}, "
      f"batch {args.batch}, {records[0]['cpu']} "
      f"({records[0]['cores']} cores), commit {records[0]['commit']}, {records[0]['date']}",
    )
  )


if __name__ == "__main__":
  main()
