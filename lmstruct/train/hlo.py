"""What a compiled XLA program does per run, read from its optimised HLO text (`compiled.as_text()`).

XLA's own cost analysis counts the body of a while loop once, whatever its trip count, so it undercounts a program
with scanned layers, accumulated micro-batches or the ring objective's hops. Here every instruction is counted as
many times as it runs: the entry computation runs once; a computation called from an instruction runs as often as
its caller, times the loop's `known_trip_count` when it is a while loop's body (XLA records the trip count of every
loop it can analyse; one it cannot is counted once). Per device (an SPMD program is the program of one device):

* `collectives`: every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute (and their async
  `-start` forms, under the same name), with its result's bytes;
* `matmul_flops`: 2·M·N·K for every dot and 2·(output elements)·(kernel window)·(kernel input features) for every
  convolution; the element-wise work (a few per cent of a transformer's FLOPs) is not counted.
"""

import collections
import dataclasses
import math
import re
from collections.abc import Iterator

COLLECTIVE_OPS = (
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
  "collective-broadcast",
  "ragged-all-to-all",
)
DTYPE_BYTES = {
  "pred": 1,
  "s4": 0.5,
  "u4": 0.5,
  "s8": 1,
  "u8": 1,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
  "token": 0,
}

_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>\S+) .*\{$")
_INSTRUCTION = re.compile(
  r"^\s*(?:ROOT )?%(?P<name>\S+) = (?P<type>.+?) (?P<op>[a-z][a-z0-9\-]*)\("
  r"(?P<operands>[^)]*)\)(?P<attrs>.*)$"
)
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*[a-z0-9]*)\[(?P<dims>[0-9,]*)\]")
_CALLEES = re.compile(r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)=%(?P<name>[^\s,)}]+)")
_BRANCHES = re.compile(r"branch_computations=\{(?P<names>[^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(?P<n>\d+)"\}')
_PAIRS = re.compile(r"source_target_pairs=\{(?P<pairs>(?:\{\d+,\d+\},?)*)\}")


@dataclasses.dataclass(frozen=True)
class Array:
  """One array type of an HLO instruction: element type and dimensions."""

  dtype: str
  dims: tuple[int, ...]

  @property
  def bytes(self) -> int:
    return math.ceil(DTYPE_BYTES.get(self.dtype, 4) * math.prod(self.dims))


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction: its name, result arrays (several for a tuple), opcode, operand names, attribute text,
  its computation and how many times that computation runs per execution of the program."""

  name: str
  result: tuple[Array, ...]
  op: str
  operands: tuple[str, ...]
  attrs: str
  computation: str
  executions: int


@dataclasses.dataclass(frozen=True)
class Collective:
  """A collective instruction: `kind` (the HLO op name, without `-start`), its result arrays and bytes, how many
  times it runs, and for a collective-permute its (source, target) device pairs."""

  kind: str
  result: tuple[Array, ...]
  bytes: int
  executions: int
  source_target_pairs: tuple[tuple[int, int], ...] = ()


def _arrays(type_text: str) -> tuple[Array, ...]:
  return tuple(
    Array(m.group("dtype"), tuple(int(d) for d in m.group("dims").split(",") if d)) for m in _ARRAY.finditer(type_text)
  )


def _computations(hlo_text: str) -> tuple[dict[str, list[re.Match]], str]:
  """{computation name: its instruction matches} and the entry computation's name."""
  computations: dict[str, list[re.Match]] = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group("name")
      computations[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    if current is not None:
      match = _INSTRUCTION.match(line)
      if match:
        computations[current].append(match)
  if not entry:
    raise ValueError("not an HLO module: it has no ENTRY computation")
  return computations, entry


def _call_sites(match: re.Match) -> Iterator[tuple[str, int]]:
  """(callee, times it runs per run of the calling instruction) for every computation `match` calls."""
  attrs = match.group("attrs")
  trips = _TRIP_COUNT.search(attrs)
  for callee in _CALLEES.finditer(attrs):
    name = callee.group("name")
    is_body = match.group("op") == "while" and f"body=%{name}" in attrs
    yield name, int(trips.group("n")) if (is_body and trips) else 1
  for branches in _BRANCHES.finditer(attrs):
    for name in branches.group("names").split(","):
      yield name.strip().lstrip("%"), 1


def instructions(hlo_text: str) -> list[Instruction]:
  """Every instruction of the module, with the number of times it runs per execution of the entry computation."""
  computations, entry = _computations(hlo_text)
  callers: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  for name, matches in computations.items():
    for match in matches:
      for callee, factor in _call_sites(match):
        callers[callee].append((name, factor))
  executions: dict[str, int] = {}

  def count(name: str) -> int:
    if name not in executions:
      executions[name] = 0  # a guard against cycles, which HLO does not have
      executions[name] = 1 if name == entry else sum(count(caller) * factor for caller, factor in callers[name])
    return executions[name]

  return [
    Instruction(
      m.group("name"),
      _arrays(m.group("type")),
      m.group("op"),
      tuple(o.strip().lstrip("%") for o in m.group("operands").split(",") if o.strip()),
      m.group("attrs"),
      name,
      count(name),
    )
    for name, matches in computations.items()
    for m in matches
  ]


def _pairs(attrs: str) -> tuple[tuple[int, int], ...]:
  match = _PAIRS.search(attrs)
  if not match:
    return ()
  return tuple((int(a), int(b)) for a, b in re.findall(r"\{(\d+),(\d+)\}", match.group("pairs")))


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective instruction that runs (executions > 0). The bytes of an async `-start` are its largest
  result array (its tuple also holds the operand and scheduling context)."""
  found = []
  for instruction in instructions(hlo_text):
    kind = instruction.op.removesuffix("-start")
    if kind not in COLLECTIVE_OPS or instruction.executions == 0:
      continue
    sizes = [array.bytes for array in instruction.result]
    size = max(sizes, default=0) if instruction.op.endswith("-start") else sum(sizes)
    found.append(Collective(kind, instruction.result, size, instruction.executions, _pairs(instruction.attrs)))
  return found


def collective_summary(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {'count': executions per run, 'bytes': result bytes moved per run, 'instructions': in the HLO}}."""
  summary: dict[str, dict[str, int]] = {}
  for collective in collectives(hlo_text):
    entry = summary.setdefault(collective.kind, {"count": 0, "bytes": 0, "instructions": 0})
    entry["count"] += collective.executions
    entry["bytes"] += collective.executions * collective.bytes
    entry["instructions"] += 1
  return dict(sorted(summary.items()))


def _dims(attrs: str, key: str) -> tuple[int, ...]:
  match = re.search(rf"{key}=\{{([0-9,]*)\}}", attrs)
  return tuple(int(d) for d in match.group(1).split(",") if d) if match else ()


def _product_flops(instruction: Instruction, shapes: dict[tuple[str, str], tuple[Array, ...]]) -> int:
  """FLOPs of one run of a dot or convolution (0 for any other instruction)."""
  if instruction.op not in ("dot", "convolution") or len(instruction.operands) < 2:
    return 0
  output = math.prod(instruction.result[0].dims)
  if instruction.op == "dot":
    lhs = shapes[instruction.computation, instruction.operands[0]][0].dims
    return 2 * output * math.prod(lhs[d] for d in _dims(instruction.attrs, "lhs_contracting_dims"))
  rhs = shapes[instruction.computation, instruction.operands[1]][0].dims
  labels = re.search(r"dim_labels=[^_]+_(?P<rhs>[^-]+)->", instruction.attrs).group("rhs")
  return 2 * output * math.prod(size for label, size in zip(labels, rhs) if label != "o")


def matmul_flops(hlo_text: str) -> int:
  """Σ FLOPs of every dot and convolution × the number of times it runs."""
  every = instructions(hlo_text)
  shapes = {(i.computation, i.name): i.result for i in every}
  return sum(i.executions * _product_flops(i, shapes) for i in every)
