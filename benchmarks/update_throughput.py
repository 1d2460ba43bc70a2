"""Update throughput of lmstruct against open_clip 3.3.0 on the two reference configurations, float32 and bfloat16.

    .venv/bin/python benchmarks/update_throughput.py            # tiny and B/32, float32 and bfloat16 (~10 min)
    .venv/bin/python benchmarks/update_throughput.py --configs tiny --dtypes float32 --steps 5
    git worktree add /tmp/lmstruct-old <commit> && \
      .venv/bin/python benchmarks/update_throughput.py --baseline /tmp/lmstruct-old --no-peer   # before vs after

Each (configuration, dtype) pair gets two fresh worker processes: lmstruct (this file with ``--worker``, in this
interpreter) and the open_clip peer (benchmarks/peer_openclip.py in ``--peer-python``, its own virtual
environment). The update is the plain CLIP objective (lmstruct objective ``{'base': 'clip', 'weights': {}}``:
one view through each tower, no regulariser; model without the independent heads so both sides hold the same
parameters), AdamW with global-norm clipping, the same synthetic batch. bfloat16 is lmstruct's
``model.dtype='bfloat16'`` (float32 parameters and optimizer, bf16 compute) against open_clip under
``torch.autocast('cpu', dtype=torch.bfloat16)``.

Protocol per pair: build both (lmstruct's ahead-of-time compile is timed), ``--warmup`` untimed updates each, then
``--steps`` timed updates each, alternating single updates between the two processes (A B B A …) so both see the
same machine load; medians are reported. Matmul rate: an n×n matmul in jnp and in torch, in the pair's dtype,
alternated the same way; the higher median is the "measured peak" against which both sides' model FLOP/s are
set. Memory: each process's peak resident set over its life (build + compile + steps) and over the warm, timed
steps alone (VmHWM, reset after warm-up), plus XLA's compiled memory analysis.

``--baseline PATH`` adds a third worker: the same lmstruct update, importing lmstruct from another checkout (a git
worktree of an older commit), interleaved with the other two, so a change is measured before/after in one run.

Output: one JSON line per measurement (``kind``: machine, matmul, pair), then a table. Exit status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------------------------
# lmstruct worker (runs in its own process)


class LmstructWorker:
  def __init__(self, spec: dict[str, Any]):
    self.spec = spec
    self.update: dict[str, Any] | None = None

  def handle(self, command: dict[str, Any]) -> dict[str, Any]:
    cmd = command.pop("cmd")
    if cmd == "build":
      import jax

      ref = common.REFERENCE[self.spec["config"]]
      self.update = common.build_lmstruct_update(
        ref,
        dtype=self.spec.get("dtype", "float32"),
        batch=self.spec.get("batch"),
        objective=self.spec.get("objective") or {"base": "clip", "weights": {}},
        independent_heads=bool(self.spec.get("independent_heads", False)),
        seed=self.spec.get("seed", 0),
      )
      return {
        "compile_s": self.update["compile_s"],
        "lower_s": self.update["lower_s"],
        "init_s": self.update["init_s"],
        "compiled_memory": self.update["memory"],
        "xla_flops": self.update["xla_flops"],
        "params": int(self.update["params"]),
        "jax": jax.__version__,
        "lmstruct_from": lmstruct_checkout(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **common.memory_mib(),
      }
    if cmd == "step":
      assert self.update is not None, "build first"
      return {"times_s": common.run_lmstruct_steps(self.update, int(command.get("n", 1)))}
    if cmd == "matmul":
      return common.jax_matmul_rate(**command)
    if cmd == "profile":
      assert self.update is not None, "build first"
      return common.profile_steps(self.update, int(command.get("steps", 2)), command["directory"])
    if cmd == "memory":
      return common.memory_reply(command)
    raise ValueError(f"unknown command {cmd!r}")


# ----------------------------------------------------------------------------------------------------------------
# Driver


def lmstruct_checkout() -> str:
  """The checkout the imported lmstruct comes from, with its commit (the baseline worker imports another one)."""
  import lmstruct

  root = pathlib.Path(lmstruct.__file__).resolve().parent.parent
  return f"{root} @ {common.provenance.git_commit(root)}"


def lmstruct_env(xla_flags: str, checkout: str | None = None) -> dict[str, str]:
  """The lmstruct worker's environment: CPU platform, `xla_flags`, and `checkout` first on PYTHONPATH if given."""
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  if checkout:
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pathlib.Path(checkout).resolve()), env.get("PYTHONPATH")) if p)
  return env


def run_pair(config: str, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
  """Builds both sides for (config, dtype), alternates warm-up and timed updates, returns the pair record."""
  ref = common.REFERENCE[config]
  batch = ref["batch"]
  spec = {"config": config, "dtype": dtype, "batch": batch, "seed": 0}
  workers = [
    common.Worker("lmstruct", common.worker_argv(__file__, sys.executable, **spec), env=lmstruct_env(args.xla_flags))
  ]
  if args.baseline:
    workers.append(
      common.Worker(
        "baseline",
        common.worker_argv(__file__, sys.executable, **spec),
        env=lmstruct_env(args.xla_flags, args.baseline),
      )
    )
  if not args.no_peer:
    workers.append(common.Worker("open_clip", common.worker_argv(HERE / "peer_openclip.py", args.peer_python, **spec)))
  load_before = common.provenance.host()["loadavg"]
  try:
    builds = {w.name: w.call("build") for w in workers}
    common.interleave(workers, args.warmup)
    life = {w.name: w.call("memory", reset=True) for w in workers}
    timed = common.interleave(workers, args.steps)
    steady = {w.name: w.call("memory") for w in workers}
    for name, before in life.items():  # peak over the whole life: before the reset, or during the timed steps
      before["peak_rss_mib"] = max(before.get("peak_rss_mib", 0.0), steady[name].get("peak_rss_mib", 0.0))
    matmul = common.interleave(workers, args.matmul_rounds, "matmul", dtype=dtype, n=args.matmul_n, repeats=3)
    profiles = {}
    if args.profile:
      for w in workers:
        profiles[w.name] = w.call(
          "profile", steps=2, directory=str(pathlib.Path(args.profile) / f"{config}_{dtype}_{w.name}")
        )
  finally:
    for w in workers:
      w.close()

  flops = common.update_model_flops(ref, batch)
  peaks = {name: statistics.median(r["flops"] for r in replies) for name, replies in matmul.items()}
  peak = max(peaks.values())
  record: dict[str, Any] = {
    "kind": "pair",
    "config": config,
    "dtype": dtype,
    "batch": batch,
    "model_flops_per_update": flops,
    "matmul_peak_flops": peaks,
    "peak_used": peak,
    "loadavg_before": load_before,
    "loadavg_after": common.provenance.host()["loadavg"],
    "sides": {},
  }
  for name, replies in timed.items():
    times = [t for r in replies for t in r["times_s"]]
    s = common.summary(times)
    record["sides"][name] = {
      **s,
      "times_s": times,
      "images_per_s": batch / s["median_s"],
      "flops_per_s": flops / s["median_s"],
      "utilisation": flops / s["median_s"] / peak,
      "peak_rss_life_mib": life[name].get("peak_rss_mib"),
      "peak_rss_steps_mib": steady[name].get("peak_rss_mib"),
      "peak_reset": life[name].get("reset"),
      "build": builds[name],
      "profile": profiles.get(name),
    }
  if "open_clip" in record["sides"]:
    lm, oc = record["sides"]["lmstruct"], record["sides"]["open_clip"]
    record["speed_ratio"] = oc["median_s"] / lm["median_s"]
    pairs = list(zip(timed["lmstruct"], timed["open_clip"]))
    record["paired_ratio_median"] = statistics.median(o["times_s"][0] / l["times_s"][0] for l, o in pairs)
    record["rss_ratio_life"] = lm["peak_rss_life_mib"] / oc["peak_rss_life_mib"]
    record["rss_ratio_steps"] = lm["peak_rss_steps_mib"] / oc["peak_rss_steps_mib"]
  if "baseline" in record["sides"]:
    lm, base = record["sides"]["lmstruct"], record["sides"]["baseline"]
    record["speedup_over_baseline"] = base["median_s"] / lm["median_s"]
    record["rss_ratio_to_baseline"] = lm["peak_rss_life_mib"] / base["peak_rss_life_mib"]
  return record


def compile_only(config: str, dtype: str, xla_flags: str) -> dict[str, Any]:
  """A fresh lmstruct worker with `xla_flags` that only initialises and compiles the update (no steps)."""
  ref = common.REFERENCE[config]
  spec = {"config": config, "dtype": dtype, "batch": ref["batch"], "seed": 0}
  with common.Worker(
    "lmstruct", common.worker_argv(__file__, sys.executable, **spec), env=lmstruct_env(xla_flags)
  ) as worker:
    build = worker.call("build")
  return {
    "kind": "compile",
    "config": config,
    "dtype": dtype,
    "xla_flags": xla_flags,
    "compile_s": build["compile_s"],
    "lower_s": build["lower_s"],
    "init_s": build["init_s"],
    "compiled_memory": build["compiled_memory"],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--configs", default="tiny,B32", help="comma-separated: tiny, B32")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
  parser.add_argument("--steps", type=int, default=5, help="timed updates per side (median reported; ≥ 5)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed updates per side after compilation")
  parser.add_argument("--matmul-n", type=int, default=3072, help="side of the square matmul for the peak rate")
  parser.add_argument("--matmul-rounds", type=int, default=4, help="alternated matmul measurements per side")
  parser.add_argument(
    "--peer-python",
    default=common.DEFAULT_PEER_PYTHON,
    help="python of the open_clip virtual environment (default $LMSTRUCT_PEER_PYTHON or ../peer-venv/bin/python)",
  )
  parser.add_argument("--no-peer", action="store_true", help="lmstruct alone (no ratio)")
  parser.add_argument(
    "--baseline",
    metavar="CHECKOUT",
    help="also run the update from the lmstruct in this checkout (e.g. a git worktree of an older "
    "commit), interleaved, and report the speed-up over it",
  )
  parser.add_argument(
    "--xla-flags",
    default=os.environ.get("XLA_FLAGS", ""),
    help="XLA_FLAGS for the lmstruct worker (default: the environment's)",
  )
  parser.add_argument(
    "--compare-flags",
    default="--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE",
    help="after the pairs, compile each configuration again in a fresh process with these XLA_FLAGS "
    "(compile time only; '' to skip)",
  )
  parser.add_argument(
    "--profile",
    metavar="DIR",
    help="after the timed steps, profile 2 more updates of each side into DIR (jax.profiler trace "
    "and torch.profiler) and add the time per operation class to the JSON",
  )
  parser.add_argument("--json-out", help="also write the JSON lines to this file")
  args = parser.parse_args()
  if args.worker:
    common.serve(LmstructWorker(json.loads(args.worker)).handle)
    return
  if not args.no_peer and not pathlib.Path(args.peer_python).exists():
    parser.error(
      f"peer python {args.peer_python} not found: install the peer (see benchmarks/README.md) or pass "
      "--peer-python / --no-peer"
    )

  records = [{"kind": "machine", **common.machine(), "xla_flags": args.xla_flags}]
  common.emit(records[0])
  for config in args.configs.split(","):
    for dtype in args.dtypes.split(","):
      record = run_pair(config, dtype, args)
      common.emit(record)
      records.append(record)
  if args.compare_flags:
    for config in args.configs.split(","):
      for dtype in args.dtypes.split(","):
        record = compile_only(config, dtype, " ".join(f for f in (args.xla_flags, args.compare_flags) if f))
        common.emit(record)
        records.append(record)
  common.write_json_lines(args.json_out, records)

  rows = []
  for r in common.iter_rows(records, "pair"):
    for name, side in r["sides"].items():
      build = side["build"]
      rows.append(
        {
          "config": r["config"],
          "dtype": r["dtype"],
          "side": name,
          "step_s": side["median_s"],
          "img_s": side["images_per_s"],
          "gflops": side["flops_per_s"] / 1e9,
          "util": side["utilisation"],
          "peak": r["peak_used"] / 1e9,
          "ratio": r.get("speed_ratio") if name == "lmstruct" else None,
          "compile": build.get("compile_s"),
          "rss_life": round(side["peak_rss_life_mib"]),
          "rss_steps": round(side["peak_rss_steps_mib"]),
          "rss_ratio": r.get("rss_ratio_life") if name == "lmstruct" else None,
          "vs_base": r.get("speedup_over_baseline") if name == "lmstruct" else None,
        }
      )
  print()
  print(
    common.table(
      rows,
      [
        ("config", "config"),
        ("dtype", "dtype"),
        ("side", "side"),
        ("step_s", "step s (med)"),
        ("img_s", "img/s"),
        ("gflops", "GFLOP/s"),
        ("peak", "peak GFLOP/s"),
        ("util", "of peak"),
        ("ratio", "lm/oc speed"),
        ("compile", "compile s"),
        ("rss_life", "max RSS MiB"),
        ("rss_steps", "RSS steps MiB"),
        ("rss_ratio", "lm/oc RSS"),
      ]
      + ([("vs_base", "speed-up vs baseline")] if args.baseline else []),
      title=f"update throughput, {records[0]['cpu']} ({records[0]['cores']} cores), "
      f"commit {records[0]['commit']}, {records[0]['date']}",
    )
  )
  compiles = common.iter_rows(records, "compile")
  if compiles:
    default = {(r["config"], r["dtype"]): r["sides"]["lmstruct"]["build"] for r in common.iter_rows(records, "pair")}
    print()
    print(
      common.table(
        [
          {
            "config": c["config"],
            "dtype": c["dtype"],
            "default": default.get((c["config"], c["dtype"]), {}).get("compile_s"),
            "flags": c["compile_s"],
            "lower": c["lower_s"],
            "init": c["init_s"],
          }
          for c in compiles
        ],
        [
          ("config", "config"),
          ("dtype", "dtype"),
          ("default", "XLA compile s (default flags)"),
          ("flags", "XLA compile s (--compare-flags)"),
          ("lower", "trace+lower s"),
          ("init", "init s"),
        ],
        title=f"compile time; --compare-flags = {args.compare_flags}",
      )
    )
  for r in common.iter_rows(records, "pair"):
    lm, oc = r["sides"]["lmstruct"].get("profile"), r["sides"].get("open_clip", {}).get("profile")
    if lm:
      print(
        f"\nprofile {r['config']} {r['dtype']}: lmstruct XLA thunk time by class (ms per update, summed over threads)"
      )
      for name, c in list(lm["classes"].items())[:10]:
        print(f"  {c['ms']:9.0f}  {100 * c['share']:5.1f}%  {name}")
    if oc:
      print(
        f"profile {r['config']} {r['dtype']}: open_clip self CPU time, matmuls {oc['matmul_ms_per_step']:.0f} of "
        f"{oc['self_cpu_ms_per_step']:.0f} ms per update; top operations:"
      )
      for op in oc["top_ops"][:8]:
        print(f"  {op['ms']:9.0f}  {op['name']}")


if __name__ == "__main__":
  main()
