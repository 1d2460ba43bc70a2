"""The registry of objective terms: the only list of them, built from the `TERMS` that each loss module defines.

Adding a term means writing its module (its formula, its ring form and its `Term`, see `losses/term.py`) and
naming the module in `_MODULES`; the objective config, both objective implementations, the train step and the
tests that iterate over the registry take it from here.
"""
from lmstruct.losses import alignment, bridge, clip, cyclip, geometric, inmodal, separation, sigmoid
from lmstruct.losses.term import PairSum, Term

_MODULES = (clip, inmodal, sigmoid, separation, bridge, geometric, cyclip, alignment)


def _registry(terms: tuple[Term, ...]) -> dict[str, Term]:
  """{name: term}; rejects two terms of one name, two options of one key and two pair sums of one name that are not
  the same definition (shared pair sums are computed once)."""
  registry: dict[str, Term] = {}
  options: dict[str, str] = {}
  pair_sums: dict[str, PairSum] = {}
  for term in terms:
    if term.name in registry:
      raise ValueError(f"objective term {term.name!r} is defined twice")
    registry[term.name] = term
    if term.option is not None:
      if term.option.key in options:
        raise ValueError(f"objective key {term.option.key!r} is owned by both {options[term.option.key]!r} and "
                         f"{term.name!r}")
      options[term.option.key] = term.name
    for pair_sum in term.ring.pair_sums:
      if pair_sums.setdefault(pair_sum.name, pair_sum) is not pair_sum:
        raise ValueError(f"pair sum {pair_sum.name!r} of term {term.name!r} differs from another of that name")
  return registry


TERMS: dict[str, Term] = _registry(tuple(term for module in _MODULES for term in module.TERMS))


def names(role: str) -> tuple[str, ...]:
  """The names of the registered terms of `role` ('base' or 'regularizer'), sorted."""
  return tuple(sorted(name for name, term in TERMS.items() if term.role == role))

