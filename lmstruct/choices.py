"""One-line errors for a name that is not among the valid choices, with the closest valid name (difflib)."""
import difflib
from collections.abc import Iterable


def did_you_mean(name: str, valid: Iterable[str]) -> str:
  """' (did you mean 'x'?)' for the closest valid name `x`, or '' when none is close."""
  close = difflib.get_close_matches(str(name), sorted(valid), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(what: str, name: str, valid: Iterable[str], alternatives: str = "") -> ValueError:
  """ValueError("unknown <what> 'name' (did you mean 'x'?); valid choices: [...] <alternatives>")."""
  valid = sorted(valid)
  return ValueError(f"unknown {what} {name!r}{did_you_mean(name, valid)}; valid choices: {valid}"
                    + (f" {alternatives}" if alternatives else ""))
