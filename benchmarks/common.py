"""Shared helpers of the lmstruct benchmarks (stdlib and numpy only at import time, so the open_clip peer, which
runs in its own virtual environment without lmstruct or JAX, can import this file too).

* the two reference configurations (``REFERENCE``) and their analytic model FLOPs;
* machine facts (CPU model, cores, ISA flags, commit, date: `lmstruct/provenance.py`) for every JSON record;
* timing summaries (median, spread) and the short tables every benchmark prints after its JSON lines;
* worker processes driven over JSON lines (:class:`Worker` on the driving side, :func:`serve` inside the worker):
  each side of a comparison lives in its own process, and the driver alternates single steps between them
  (A B B A …) so that both see the same load on a shared, noisy machine;
* process memory (current and peak resident set from ``/proc/self/status``).

The lmstruct side of every update benchmark is built by :func:`build_lmstruct_update` (imports JAX lazily).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = os.environ.get("LMSTRUCT_PEER_PYTHON", str(REPO_ROOT.parent / "peer-venv" / "bin" / "python"))
EOT_TOKEN = 49407

# The two reference configurations of the issue. `preset` is lmstruct's; the peer builds open_clip's model from the
# same numbers (open_clip's own 'ViT-B-32' config for B/32).
REFERENCE: dict[str, dict[str, Any]] = {
  "tiny": dict(
    preset="tiny",
    image_size=64,
    patch=8,
    vision_width=256,
    vision_layers=6,
    vision_heads=4,
    text_width=256,
    text_layers=6,
    text_heads=4,
    context=32,
    vocab=49408,
    embed=256,
    batch=128,
  ),
  "B32": dict(
    preset="ViT-B-32",
    image_size=224,
    patch=32,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
    context=77,
    vocab=49408,
    embed=512,
    batch=32,
  ),
}


# ----------------------------------------------------------------------------------------------------------------
# FLOPs


def _transformer_forward_flops(tokens: int, width: int, layers: int, mlp_ratio: float = 4.0) -> float:
  """Matmul FLOPs of `layers` pre-LN blocks on one sequence: QKV, QKᵀ, AV, output projection, MLP (2 per MAC)."""
  per_layer = 2 * tokens * width * (3 * width + width + 2 * mlp_ratio * width) + 2 * 2 * tokens * tokens * width
  return layers * per_layer


def forward_flops_per_pair(ref: Mapping[str, Any]) -> float:
  """Forward matmul FLOPs of one image and one caption (patch embedding, both transformers, both projections)."""
  patches = (ref["image_size"] // ref["patch"]) ** 2
  vision = (
    2 * patches * 3 * ref["patch"] ** 2 * ref["vision_width"]
    + _transformer_forward_flops(patches + 1, ref["vision_width"], ref["vision_layers"])
    + 2 * ref["vision_width"] * ref["embed"]
  )
  text = (
    _transformer_forward_flops(ref["context"], ref["text_width"], ref["text_layers"])
    + 2 * ref["text_width"] * ref["embed"]
  )
  return vision + text


def update_model_flops(ref: Mapping[str, Any], batch: int, views: int = 1) -> float:
  """Model FLOPs of one update: 3 × forward (forward + backward), `views` image–text pairs per example, plus the
  B×B logits of the CLIP loss (negligible). The usual MFU convention: no rematerialisation, no optimizer."""
  return 3.0 * (views * batch * forward_flops_per_pair(ref) + 2 * batch * batch * ref["embed"])


# ----------------------------------------------------------------------------------------------------------------
# Machine facts


def _load_provenance() -> types.ModuleType:
  """This checkout's `lmstruct/provenance.py` (standard library only), loaded from its file, so that workers
  without lmstruct (the open_clip peer) or with another checkout's (a baseline) describe the same way."""
  spec = importlib.util.spec_from_file_location("lmstruct_provenance", REPO_ROOT / "lmstruct" / "provenance.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


provenance = _load_provenance()


def machine() -> dict[str, Any]:
  """CPU model, core count, the ISA flags that decide matmul speed, Python, load averages, commit and date."""
  return {**provenance.host(), "commit": provenance.git_commit(), "date": provenance.utc_date()}


# ----------------------------------------------------------------------------------------------------------------
# Output


def emit(record: Mapping[str, Any]) -> None:
  """One JSON line on stdout (the machine-readable output; tables are printed after them)."""
  print(json.dumps(record, sort_keys=False, default=float), flush=True)


def write_json_lines(path: str | os.PathLike | None, records: Iterable[Mapping[str, Any]]) -> None:
  """The records as JSON lines in `path` (the `--json-out` file), the same lines `emit` prints; no-op without one."""
  if path:
    pathlib.Path(path).write_text("".join(json.dumps(r, default=float) + "\n" for r in records))


def summary(seconds: Sequence[float]) -> dict[str, float]:
  """median, min, max and count of step times in seconds."""
  values = sorted(float(s) for s in seconds)
  return {"median_s": statistics.median(values), "min_s": values[0], "max_s": values[-1], "n": len(values)}


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], title: str = "") -> str:
  """A fixed-width text table of `rows` with (key, header) `columns`; floats are shown with 3 significant digits."""

  def fmt(value: Any) -> str:
    if isinstance(value, float):
      return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return "-" if value is None else str(value)

  cells = [[fmt(row.get(key)) for key, _ in columns] for row in rows]
  widths = [max([len(header)] + [len(c[i]) for c in cells]) for i, (_, header) in enumerate(columns)]
  lines = ([title] if title else []) + [
    "  ".join(h.rjust(w) for (_, h), w in zip(columns, widths)),
    "  ".join("-" * w for w in widths),
  ]
  lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths)) for cell in cells]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Memory


def memory_mib() -> dict[str, float]:
  """Resident set now (VmRSS) and its peak over the process's life or since the last reset (VmHWM), in MiB."""
  out = {}
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      key, _, value = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        out[{"VmRSS": "rss_mib", "VmHWM": "peak_rss_mib"}[key]] = int(value.split()[0]) / 1024
  except OSError:
    pass
  return out


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux ≥ 4.0: '5' into /proc/self/clear_refs); False where not allowed."""
  try:
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    return True
  except OSError:
    return False


# ----------------------------------------------------------------------------------------------------------------
# Synthetic batches (identical content for lmstruct and the peer)


def synthetic_batch(
  ref: Mapping[str, Any], batch: int, seed: int = 0, augmented: bool = False
) -> dict[str, np.ndarray]:
  """Normal-noise images NHWC float32 and token rows (ids < EOT, one EOT at a random position, zero after it)."""
  rng = np.random.default_rng(seed)
  size, length = ref["image_size"], ref["context"]

  def texts() -> np.ndarray:
    tokens = rng.integers(1, EOT_TOKEN - 1, (batch, length)).astype(np.int32)
    ends = rng.integers(length // 4, length, batch)
    for row, end in enumerate(ends):
      tokens[row, end] = EOT_TOKEN
      tokens[row, end + 1 :] = 0
    return tokens

  out = {"image": rng.standard_normal((batch, size, size, 3), dtype=np.float32), "text": texts()}
  if augmented:
    out["image_aug"] = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    out["text_aug"] = texts()
  return out


# ----------------------------------------------------------------------------------------------------------------
# Worker processes


class WorkerError(RuntimeError):
  pass


class Worker:
  """A process answering one JSON line per JSON-line command (see :func:`serve`). stderr is inherited."""

  def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None):
    self.name = name
    self.process = subprocess.Popen(
      list(argv),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=dict(os.environ if env is None else env),
      cwd=REPO_ROOT,
      bufsize=1,
    )
    self.pid = self.process.pid

  def call(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
    """Sends {cmd, **kwargs} and returns the worker's reply (raises WorkerError when it failed)."""
    assert self.process.stdin is not None and self.process.stdout is not None
    try:
      self.process.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
      self.process.stdin.flush()
    except BrokenPipeError as error:
      raise WorkerError(f"{self.name} worker (pid {self.pid}) has exited (code {self.process.poll()})") from error
    line = self.process.stdout.readline()
    if not line:
      raise WorkerError(f"{self.name} worker (pid {self.pid}) exited (code {self.process.wait()}) during {cmd!r}")
    reply = json.loads(line)
    if not reply.pop("ok", False):
      raise WorkerError(f"{self.name} worker failed on {cmd!r}:\n{reply.get('error')}")
    return reply

  def close(self) -> None:
    if self.process.poll() is None:
      try:
        self.call("exit")
      except (WorkerError, OSError, ValueError):
        pass
      try:
        self.process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()

  def __enter__(self) -> Worker:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def memory_reply(command: Mapping[str, Any]) -> dict[str, Any]:
  """A worker's answer to the 'memory' command: its resident set now and at peak, and the peak reset first when
  the command says `reset` (both workers answer it the same way)."""
  out = memory_mib()
  if command.get("reset"):
    out["reset"] = reset_peak_rss()
  return out


def serve(handler: Callable[[dict[str, Any]], Mapping[str, Any]]) -> None:
  """The worker's loop: one JSON command per stdin line → one JSON reply line; 'exit' ends it.

  Everything else the process (or any library in it) writes to stdout goes to stderr, so replies stay parseable.
  """
  replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
  sys.stdout.flush()
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  for line in sys.stdin:
    if not line.strip():
      continue
    command = json.loads(line)
    if command.get("cmd") == "exit":
      replies.write(json.dumps({"ok": True}) + "\n")
      return
    try:
      reply = {"ok": True, **handler(command)}
    except Exception:  # noqa: BLE001 -- reported to the driver, which raises it
      reply = {"ok": False, "error": traceback.format_exc()}
    replies.write(json.dumps(reply, default=float) + "\n")


def interleave(workers: Sequence[Worker], rounds: int, cmd: str = "step", **kwargs: Any) -> dict[str, list[Any]]:
  """`rounds` rounds of one `cmd` per worker, alternating the order (A B, B A, A B, …); replies per worker."""
  replies: dict[str, list[Any]] = {w.name: [] for w in workers}
  for r in range(rounds):
    for worker in workers if r % 2 == 0 else list(reversed(workers)):
      replies[worker.name].append(worker.call(cmd, **kwargs))
  return replies


def worker_argv(script: str | pathlib.Path, python: str = sys.executable, **options: Any) -> list[str]:
  """Command line that starts `script` as a worker with a JSON spec."""
  return [python, str(script), "--worker", json.dumps(options)]


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall-clock seconds of `repeats` calls of `fn` (which must block until its work is done)."""
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


# ----------------------------------------------------------------------------------------------------------------
# The lmstruct update under test (JAX imported lazily)


def jax_matmul_rate(dtype: str, n: int = 3072, repeats: int = 5) -> dict[str, Any]:
  """FLOP/s of a jitted n×n @ n×n matmul in `dtype` ('float32' | 'bfloat16'), median of `repeats` after one warm-up
  call. bfloat16 inputs accumulate into float32 (`preferred_element_type`), the form lmstruct's bf16 layers emit on
  CPU (a bf16-output dot is run by XLA:CPU as a float32 GEMM between conversions)."""
  import jax
  import jax.numpy as jnp

  dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  a = jax.random.normal(jax.random.key(0), (n, n), dt)
  b = jax.random.normal(jax.random.key(1), (n, n), dt)
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  times = time_calls(lambda: f(a, b).block_until_ready(), repeats)
  return {"framework": "jax", "dtype": dtype, "n": n, "flops": 2.0 * n**3 / statistics.median(times), "times_s": times}


def build_lmstruct_updates(
  ref: Mapping[str, Any],
  objectives: Mapping[str, Mapping[str, Any]],
  *,
  dtype: str = "float32",
  batch: int | None = None,
  independent_heads: bool = True,
  seed: int = 0,
) -> dict[str, Any]:
  """lmstruct's jitted updates for a reference configuration, one per objective, compiled ahead of time.

  All updates share one model, one state (threaded through whichever runs; it is donated) and one synthetic batch
  (with augmented views when any objective reads them). Returns {'steps': {name: compiled}, 'state', 'batch',
  'compile_s': {name: s}, 'lower_s': {name: s}, 'memory': {name: XLA memory analysis in MiB},
  'xla_flops': {name: flops}, 'params'}.
  """
  import jax

  from lmstruct.losses.objective import ObjectiveConfig
  from lmstruct.models import build_model, input_shapes
  from lmstruct.models.factory import resolve_model_config
  from lmstruct.train.optimizer import make_optimizer
  from lmstruct.train.sharding import DEFAULT_RULES, batch_sharding, make_mesh
  from lmstruct.train.step import init_train_state, make_train_step

  batch = int(batch or ref["batch"])
  model_config = {"preset": ref["preset"], "dtype": dtype, "independent_heads": independent_heads}
  check_reference(resolve_model_config(model_config), ref)
  model = build_model(model_config)
  tx = make_optimizer(
    {"learning_rate": 1e-5, "warmup_steps": 0, "total_steps": 10_000, "weight_decay": 0.1, "grad_clip_norm": 1.0}
  )
  mesh = make_mesh(devices=jax.devices()[:1])
  shape, length = input_shapes(model_config)
  start = time.perf_counter()
  state, shardings = init_train_state(
    model, tx, image_shape=shape, context_length=length, mesh=mesh, rules=DEFAULT_RULES, seed=seed
  )
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  augmented = any(ObjectiveConfig.from_dict(o).needs_augmented_view for o in objectives.values())
  device_batch = jax.device_put(synthetic_batch(ref, batch, seed, augmented=augmented), batch_sharding(mesh))
  out: dict[str, Any] = {
    "steps": {},
    "state": state,
    "batch": device_batch,
    "init_s": init_s,
    "compile_s": {},
    "lower_s": {},
    "memory": {},
    "xla_flops": {},
    "params": sum(x.size for x in jax.tree.leaves(state.params)),
  }
  for name, objective in objectives.items():
    jitted = make_train_step(model, tx, objective=objective, mesh=mesh, state_shardings=shardings)
    start = time.perf_counter()
    lowered = jitted.lower(state, device_batch)
    out["lower_s"][name] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    out["compile_s"][name] = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    out["memory"][name] = (
      {}
      if analysis is None
      else {
        "temp_mib": analysis.temp_size_in_bytes / 2**20,
        "argument_mib": analysis.argument_size_in_bytes / 2**20,
        "output_mib": analysis.output_size_in_bytes / 2**20,
        "alias_mib": analysis.alias_size_in_bytes / 2**20,
      }
    )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["xla_flops"][name] = float(cost.get("flops", 0.0)) if cost else None
    out["steps"][name] = compiled
  return out


def build_lmstruct_update(
  ref: Mapping[str, Any], *, objective: Mapping[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
  """One update (default: plain CLIP); as build_lmstruct_updates, with 'step', 'compile_s', 'lower_s', 'memory'
  and 'xla_flops' for that single objective."""
  built = build_lmstruct_updates(ref, {"update": objective or {"base": "clip", "weights": {}}}, **kwargs)
  return {
    **built,
    "step": built["steps"]["update"],
    "compile_s": built["compile_s"]["update"],
    "lower_s": built["lower_s"]["update"],
    "memory": built["memory"]["update"],
    "xla_flops": built["xla_flops"]["update"],
  }


def check_reference(resolved: Mapping[str, Any], ref: Mapping[str, Any]) -> None:
  """Raises if lmstruct's resolved preset differs from the reference numbers (so the comparison stays exact)."""
  from lmstruct.models.text import TEXT_SIZES
  from lmstruct.models.vit import VIT_SIZES

  image = {**VIT_SIZES[resolved["image"]["size"]], **resolved["image"]}
  text = {**TEXT_SIZES[resolved["text"]["size"]], **resolved["text"]}
  got = dict(
    image_size=image["image_size"],
    patch=image["patch"],
    vision_width=image["width"],
    vision_layers=image["layers"],
    vision_heads=image["heads"],
    text_width=text["width"],
    text_layers=text["layers"],
    text_heads=text["heads"],
    context=text.get("context_length", 77),
    vocab=text.get("vocab_size", 49408),
    embed=resolved["embed_dim"],
  )
  wrong = {k: (v, ref[k]) for k, v in got.items() if v != ref[k]}
  if wrong:
    raise ValueError(f"lmstruct preset {ref['preset']!r} differs from the reference configuration: {wrong}")


def run_lmstruct_steps(update: dict[str, Any], steps: int, name: str | None = None, batch: Any = None) -> list[float]:
  """Runs `steps` updates (state threaded through, donated), blocking on each; seconds per step. `name` picks one of
  build_lmstruct_updates' steps (default: the single 'step'); `batch` replaces the built synthetic batch."""
  import jax

  step = update["step"] if name is None else update["steps"][name]
  batch = update["batch"] if batch is None else batch
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    update["state"], metrics = step(update["state"], batch)
    jax.block_until_ready((update["state"], metrics))
    times.append(time.perf_counter() - start)
    if int(metrics["nonfinite"]):
      raise FloatingPointError("the benchmarked update produced a non-finite loss or gradient")
  return times


def iter_rows(records: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
  return [r for r in records if r.get("kind") == kind]


# ----------------------------------------------------------------------------------------------------------------
# Profiles


def _op_category(op_name: str, opcode: str, kind: str) -> str:
  """A coarse class for one XLA:CPU thunk from its HLO metadata: matmul, attention softmax, layer norm, …"""
  last = op_name.rsplit("/", 1)[-1]
  if (
    opcode in ("dot", "convolution")
    or "dot_general" in last
    or "conv_general" in last
    or "ynn" in kind
    and ("dot_general" in op_name)
  ):
    return "matmul / conv"
  if "opt_state" in op_name or "/adam" in op_name or "clip_by_global_norm" in op_name:
    return "optimizer"
  for key, label in (
    ("/ln_", "layer norm"),
    ("ln_final", "layer norm"),
    ("/mlp/", "MLP activation"),
    ("/attn/", "attention (softmax, mask, reshapes)"),
    ("token_embedding", "token embedding"),
    ("positional", "embedding add"),
    ("select_n", "non-finite guard / select"),
    ("loss", "loss"),
  ):
    if key in op_name:
      return label
  return f"other ({last or opcode})"


def profile_steps(
  update: dict[str, Any], steps: int, directory: str | os.PathLike, name: str | None = None, top: int = 12
) -> dict[str, Any]:
  """Traces `steps` updates with jax.profiler and sums XLA:CPU thunk time by class (from the compiled HLO's
  metadata); ms per step, summed over threads. The trace stays in `directory` (TensorBoard / Perfetto)."""
  import collections
  import glob
  import gzip
  import re

  import jax

  compiled = update["step"] if name is None else update["steps"][name]
  meta = {}
  for line in compiled.as_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    if m:
      op_name = re.search(r'op_name="([^"]*)"', line)
      kind = re.search(r'"kind":"([^"]*)"', line)
      meta[m.group(1)] = (m.group(3), op_name.group(1) if op_name else "", kind.group(1) if kind else "")
  with jax.profiler.trace(str(directory)):
    times = run_lmstruct_steps(update, steps, name)
  trace = sorted(glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True), key=os.path.getmtime)[-1]
  events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X" and e.get("name") in meta]
  by_class: dict[str, float] = collections.defaultdict(float)
  by_op: dict[str, float] = collections.defaultdict(float)
  for e in events:
    opcode, op_name, kind = meta[e["name"]]
    by_class[_op_category(op_name, opcode, kind)] += e["dur"] / 1e3 / steps
    by_op[e["name"]] += e["dur"] / 1e3 / steps
  total = sum(by_class.values())
  return {
    "step_s": times,
    "thunk_ms_per_step": total,
    "trace": trace,
    "classes": {k: {"ms": v, "share": v / total} for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
    "top_ops": [
      {"name": k, "ms": v, "op": meta[k][1][-120:]} for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    ],
  }
