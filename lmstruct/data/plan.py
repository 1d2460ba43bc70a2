"""Which units each reader of the training input reads, epoch after epoch, and how a saved position is carried
onto another number of readers with nothing repeated and nothing skipped.

A *unit* is what a reader reads as a whole: one example of a random-access source, or one shard of a streaming
source. The units of all epochs form one sequence: global position ``g`` is unit ``order(seed, e)[g % U]`` of epoch
``e = g // U``, where ``order`` is a seeded permutation of the ``U`` units, new every epoch
(:func:`unit_at`, grain's ``index_shuffle``, O(1) memory).

*Readers* split that sequence. A fresh run with ``R`` readers (processes × readers per process) gives reader ``r``
the positions ``r, r + R, r + 2R, …`` (:func:`fresh_plans`), so every unit of every epoch is read by exactly one
reader. The epochs of different readers are not aligned: when ``U`` is not a multiple of ``R`` a reader reads
``⌊U/R⌋`` or ``⌈U/R⌉`` units of an epoch and then moves on to the next epoch by itself; across epochs the
round-robin keeps every reader within one unit of the others.

A reader's :class:`ReaderPlan` is an explicit list of *pending* positions (each with the number of its items
already delivered) followed by an arithmetic *tail* ``first, first + stride, …``; its :class:`Position` is the
step in that sequence it has reached and the items of that unit it has delivered. :func:`remap` turns the
positions of ``N`` readers into plans for ``M`` readers: the partly read units and the units skipped over by
readers that ran ahead become the new pending lists (dealt round-robin), and the tail continues after the
furthest reader. With ``M = N`` every reader keeps its own position, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
  """A 32-bit seed for the permutation of ``epoch``: ``SeedSequence([seed, epoch])``."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def unit_at(position: int, num_units: int, seed: int) -> tuple[int, int]:
  """(epoch, unit) at global ``position``: epoch ``position // U``, unit ``order(seed, epoch)[position % U]``."""
  epoch, offset = divmod(position, num_units)
  if num_units == 1:
    return epoch, 0
  return epoch, int(
    grain.experimental.index_shuffle(offset, max_index=num_units - 1, seed=epoch_seed(seed, epoch), rounds=4)
  )


@dataclasses.dataclass(frozen=True)
class ReaderPlan:
  """A reader's sequence of global positions: ``pending`` (position, items already delivered) in order, then
  ``first, first + stride, …``."""

  pending: tuple[tuple[int, int], ...]
  first: int
  stride: int

  def at(self, step: int) -> tuple[int, int]:
    """(global position, items of it delivered before this plan began) of the plan's ``step``-th unit."""
    if step < len(self.pending):
      return self.pending[step]
    return self.first + (step - len(self.pending)) * self.stride, 0

  def steps_below(self, limit: int) -> int:
    """How many of the plan's units have a global position below ``limit`` (the end of the last epoch)."""
    tail = max(0, -(-(limit - self.first) // self.stride))
    return sum(g < limit for g, _ in self.pending) + tail

  def to_json(self) -> dict[str, Any]:
    return {"pending": [list(p) for p in self.pending], "first": self.first, "stride": self.stride}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> ReaderPlan:
    return cls(tuple((int(g), int(d)) for g, d in data["pending"]), int(data["first"]), int(data["stride"]))


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a reader is: units before ``step`` of ``plan`` are done, and ``done`` items of unit ``step`` are."""

  plan: ReaderPlan
  step: int = 0
  done: int = 0

  @classmethod
  def start(cls, plan: ReaderPlan) -> Position:
    """The beginning of ``plan`` (its first unit may already be partly delivered)."""
    return cls(plan, 0, plan.at(0)[1])

  def advanced(self, delivered: int, last: bool) -> Position:
    """The position after delivering item number ``delivered`` (counted from 1) of unit ``step``; ``last``: it
    was the unit's last item, so the reader moves to the next unit."""
    if last:
      return Position(self.plan, self.step + 1, self.plan.at(self.step + 1)[1])
    return Position(self.plan, self.step, delivered)

  def remaining(self) -> tuple[list[tuple[int, int]], int]:
    """The units not yet finished: explicit (position, delivered) pairs, and the first position of the tail."""
    g, _ = self.plan.at(self.step)
    explicit = [(g, self.done)] + list(self.plan.pending[self.step + 1 :])
    first = g + self.plan.stride if self.step >= len(self.plan.pending) else self.plan.first
    return explicit, first

  def to_json(self) -> dict[str, Any]:
    return {"plan": self.plan.to_json(), "step": self.step, "done": self.done}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> Position:
    return cls(ReaderPlan.from_json(data["plan"]), int(data["step"]), int(data["done"]))


def fresh_plans(num_readers: int) -> list[ReaderPlan]:
  """Round-robin over the global sequence: reader ``r`` reads ``r, r + R, r + 2R, …``."""
  if num_readers < 1:
    raise ValueError(f"need at least one reader, got {num_readers}")
  return [ReaderPlan((), r, num_readers) for r in range(num_readers)]


def remap(positions: Sequence[Position], num_readers: int) -> list[Position]:
  """Positions of ``num_readers`` readers that finish exactly the units ``positions`` had not finished.

  Unchanged when the reader count is the same. Otherwise the unfinished units are: every reader's current unit
  (with its delivered count) and the rest of its pending list, the units of the old tails below the furthest
  tail start ``H`` that their reader had not reached, and every position from ``H`` on. The first two form the new
  pending lists, dealt round-robin in position order; the new tails continue round-robin from ``H``.
  """
  if len(positions) == num_readers:
    return list(positions)
  stride = len(positions)
  explicit: list[tuple[int, int]] = []
  tail_of_class: dict[int, int] = {}
  for position in positions:
    if position.plan.stride != stride:
      raise ValueError(f"inconsistent data state: {stride} readers, but a plan with stride {position.plan.stride}")
    units, first = position.remaining()
    explicit += units
    tail_of_class[first % stride] = first
  if len(tail_of_class) != stride:
    raise ValueError(f"inconsistent data state: the tails of {stride} readers overlap")
  furthest = max(tail_of_class.values())
  unreached = [(g, 0) for g in range(min(tail_of_class.values()), furthest) if g >= tail_of_class[g % stride]]
  pending = sorted(explicit + unreached)
  plans = [
    ReaderPlan(tuple(pending[q::num_readers]), furthest + (q - len(pending)) % num_readers, num_readers)
    for q in range(num_readers)
  ]
  return [Position.start(p) for p in plans]
