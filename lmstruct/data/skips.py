"""Damaged or incomplete records are counted and skipped, never fatal: the one tally every reader keeps.

A reader that meets a record it cannot use (a sample without an image or caption, a truncated tar, an unsafe
member path, a missing image file, an undecodable image, an annotation row without its keys) calls
``skips.add(reason, detail)`` and goes on. The tally keeps, per reason, the count and the first
:data:`SHOW_FIRST` details, so a summary can say what was lost and show where. ``lmstruct convert data --strict``
turns the first skip into an error instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SHOW_FIRST = 5

# The reasons readers use (a summary lists them in this order).
MISSING_FILE = "missing file"
UNREADABLE_FILE = "unreadable file"
CORRUPT_IMAGE = "corrupt image"
NO_IMAGE = "no image"
NO_CAPTION = "no caption"
BAD_CAPTION = "bad caption"
BAD_RECORD = "bad annotation record"
UNSAFE_PATH = "unsafe member path"
TRUNCATED = "truncated shard"
UNREADABLE_SHARD = "unreadable shard"
DUPLICATE_KEY = "duplicate sample key"


class SkipError(ValueError):
  """A skip under ``strict`` mode: the first damaged record, as an error."""


@dataclasses.dataclass
class Skips:
  """Records left out, by reason: ``counts[reason]`` and the first :data:`SHOW_FIRST` ``details[reason]``.

  With ``strict`` the first :meth:`add` raises :class:`SkipError` instead of counting.
  """

  counts: dict[str, int] = dataclasses.field(default_factory=dict)
  details: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  strict: bool = False

  def add(self, reason: str, detail: str) -> None:
    """Counts one skipped record (or raises :class:`SkipError` when strict)."""
    if self.strict:
      raise SkipError(f"{reason}: {detail}")
    self.counts[reason] = self.counts.get(reason, 0) + 1
    shown = self.details.setdefault(reason, [])
    if len(shown) < SHOW_FIRST:
      shown.append(detail)

  def update(self, other: Skips | Mapping[str, Any]) -> None:
    """Adds the counts and details of ``other`` (a :class:`Skips` or its :meth:`to_json`)."""
    other = other if isinstance(other, Skips) else Skips.from_json(other)
    for reason, count in other.counts.items():
      self.counts[reason] = self.counts.get(reason, 0) + count
      shown = self.details.setdefault(reason, [])
      shown.extend(other.details.get(reason, [])[: SHOW_FIRST - len(shown)])

  @property
  def total(self) -> int:
    """Number of records skipped, all reasons together."""
    return sum(self.counts.values())

  def lines(self) -> list[str]:
    """One summary line per reason: ``skipped N (reason), first: [...]``."""
    return [
      f"skipped {count} ({reason}), first: {self.details.get(reason, [])}"
      for reason, count in sorted(self.counts.items())
    ]

  def to_json(self) -> dict[str, Any]:
    """A JSON-ready dict (for manifests and iterator states)."""
    return {"counts": dict(self.counts), "details": {k: list(v) for k, v in self.details.items()}}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> Skips:
    """Inverse of :meth:`to_json`."""
    return cls(counts=dict(data.get("counts", {})), details={k: list(v) for k, v in data.get("details", {}).items()})
