"""Text tokenizers: CLIP's byte-level BPE and BERT-style WordPiece, behind one small interface.

Every tokenizer is called on a list of strings and returns ``np.int32 [N, context_length]``: a start token, the
text's tokens, an end-of-text token, then zero padding; text that does not fit is truncated so that the
end-of-text token is always the last one. ``get_tokenizer(name, **kwargs)`` builds one by registry name.

The CLIP tokenizer follows the algorithm of Radford et al. (2021) as released with CLIP: the text is repaired with
ftfy, HTML-unescaped twice, whitespace-collapsed and lower-cased; split by CLIP's regular expression into words,
each word's UTF-8 bytes are mapped to printable characters and merged pair by pair in the order of the 48,894
learned merges (a word's last symbol carries the ``</w>`` end-of-word marker).
"""

from __future__ import annotations

import gzip
import html
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import ftfy
import numpy as np
import regex

from lmstruct.choices import unknown_choice
from lmstruct.data import assets

START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
END_OF_WORD = "</w>"
NUM_MERGES = 49152 - 256 - 2
CLIP_PATTERN = regex.compile(
  START_OF_TEXT + "|" + END_OF_TEXT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
  regex.IGNORECASE,
)


class Tokenizer(Protocol):
  """What every tokenizer offers: ``tok(texts) -> np.int32 [N, context_length]`` and its special ids."""

  vocab_size: int
  context_length: int
  eot_token_id: int
  pad_id: int

  def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


def byte_to_unicode() -> dict[int, str]:
  """Reversible map from each byte value to a printable unicode character, in CLIP's vocabulary order.

  Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) come first and map to
  themselves; the remaining 68 bytes follow, in increasing order, mapped to the code points 256, 257, ...
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def clean_text(text: str) -> str:
  """CLIP's text normalisation: ftfy repair, double HTML unescape, whitespace collapse, lower case."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


def load_merges(path: pathlib.Path) -> list[tuple[str, str]]:
  """The first 48,894 merge rules of a gzipped CLIP BPE file (its first line is a version header)."""
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")[1 : NUM_MERGES + 1]
  merges = [tuple(line.split()) for line in lines]
  bad = [line for line, pair in zip(lines, merges) if len(pair) != 2]
  if len(merges) != NUM_MERGES or bad:
    raise ValueError(
      f"{path} is not a CLIP BPE merges file: found {len(merges)} merge lines "
      f"(expected {NUM_MERGES}), malformed: {bad[:3]}"
    )
  return merges


def build_vocab(merges: Sequence[tuple[str, str]]) -> list[str]:
  """CLIP's token list: 256 byte symbols, the same with ``</w>``, one token per merge, then the two specials."""
  symbols = list(byte_to_unicode().values())
  return [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(m) for m in merges), START_OF_TEXT, END_OF_TEXT]


def merge_pair(word: Sequence[str], pair: tuple[str, str]) -> list[str]:
  """Replace every non-overlapping occurrence of ``pair`` in ``word``, left to right, by its concatenation."""
  merged: list[str] = []
  i = 0
  while i < len(word):
    if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
      merged.append(word[i] + word[i + 1])
      i += 2
    else:
      merged.append(word[i])
      i += 1
  return merged


def bpe(symbols: str, ranks: dict[tuple[str, str], int]) -> list[str]:
  """Apply BPE to one byte-mapped word: merge the lowest-ranked adjacent pair until no known pair is left."""
  word = [*symbols[:-1], symbols[-1] + END_OF_WORD]
  while len(word) > 1:
    pairs = {(a, b) for a, b in zip(word[:-1], word[1:]) if (a, b) in ranks}
    if not pairs:
      break
    word = merge_pair(word, min(pairs, key=ranks.__getitem__))
  return word


def pack_tokens(sequences: Iterable[Sequence[int]], context_length: int, eot_token_id: int) -> np.ndarray:
  """Stack id sequences into ``int32 [N, context_length]`` with zero padding.

  A sequence longer than ``context_length`` is cut to its first ``context_length`` ids and its last id replaced
  by ``eot_token_id``.
  """
  sequences = list(sequences)
  out = np.zeros((len(sequences), context_length), np.int32)
  for row, ids in zip(out, sequences):
    if len(ids) > context_length:
      ids = [*ids[: context_length - 1], eot_token_id]
    row[: len(ids)] = ids
  return out


class ClipTokenizer:
  """CLIP's BPE tokenizer with the 49,408-token vocabulary from the asset cache.

  Args:
    context_length: number of ids per text (77 for CLIP).
    vocab_path: a ``bpe_simple_vocab_16e6.txt.gz`` file; default: the asset cache (see ``lmstruct.data.assets``).
  """

  def __init__(self, context_length: int = 77, vocab_path: str | pathlib.Path | None = None):
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
    path = pathlib.Path(vocab_path) if vocab_path is not None else assets.require_clip_vocab()
    merges = load_merges(path)
    vocab = build_vocab(merges)
    self.encoder = {token: i for i, token in enumerate(vocab)}
    self.ranks = {pair: i for i, pair in enumerate(merges)}
    self.byte_encoder = byte_to_unicode()
    self.cache: dict[str, list[int]] = {
      START_OF_TEXT: [self.encoder[START_OF_TEXT]],
      END_OF_TEXT: [self.encoder[END_OF_TEXT]],
    }
    self.context_length = context_length
    self.vocab_size = len(vocab)
    self.sot_token_id = self.encoder[START_OF_TEXT]
    self.eot_token_id = self.encoder[END_OF_TEXT]
    self.pad_id = 0

  def encode_word(self, word: str) -> list[int]:
    """Ids of one pre-tokenised word (cached)."""
    ids = self.cache.get(word)
    if ids is None:
      symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
      ids = [self.encoder[piece] for piece in bpe(symbols, self.ranks)]
      self.cache[word] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """Ids of ``text`` without start/end tokens or padding."""
    return [i for word in CLIP_PATTERN.findall(clean_text(text)) for i in self.encode_word(word)]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Tokenise ``texts`` into ``int32 [len(texts), context_length]``."""
    texts = _as_text_list(texts)
    return pack_tokens(
      ([self.sot_token_id, *self.encode(t), self.eot_token_id] for t in texts), self.context_length, self.eot_token_id
    )


class WordPieceTokenizer:
  """A BERT-style tokenizer read from a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library.

  The file's own normaliser, pre-tokeniser and post-processor (e.g. ``[CLS] $A [SEP]``) are used; the output
  is truncated so that the end token stays last and zero-padded to ``context_length``.

  Args:
    path: the ``tokenizer.json`` file.
    context_length: number of ids per text.
    eot_token: the token that ends a sequence (``[SEP]`` for BERT).
    pad_token: the padding token; its id must be 0 (batches are zero-padded).
  """

  def __init__(
    self, path: str | pathlib.Path, context_length: int = 77, eot_token: str = "[SEP]", pad_token: str = "[PAD]"
  ):
    import tokenizers

    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer file not found: {path}")
    self.tokenizer = tokenizers.Tokenizer.from_file(str(path))
    self.tokenizer.no_truncation()
    self.tokenizer.no_padding()
    self.eot_token_id = self._token_id(path, eot_token, "eot_token")
    self.pad_id = self._token_id(path, pad_token, "pad_token")
    if self.pad_id != 0:
      raise ValueError(
        f"{path}: pad token {pad_token!r} has id {self.pad_id}; batches are zero-padded, "
        "so the padding token must have id 0"
      )
    self.context_length = context_length
    self.vocab_size = self.tokenizer.get_vocab_size()

  def _token_id(self, path: pathlib.Path, token: str, arg: str) -> int:
    """Id of ``token``; a clear error naming the file and argument when the vocabulary lacks it."""
    token_id = self.tokenizer.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{path}: {arg}={token!r} is not in the vocabulary")
    return token_id

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Tokenise ``texts`` into ``int32 [len(texts), context_length]``."""
    encodings = self.tokenizer.encode_batch(_as_text_list(texts))
    return pack_tokens((e.ids for e in encodings), self.context_length, self.eot_token_id)


def _as_text_list(texts: Sequence[str]) -> list[str]:
  """Validate that ``texts`` is a sequence of strings (a bare string is a common mistake)."""
  if isinstance(texts, str):
    raise TypeError("tokenizers take a list of strings; wrap a single text as [text]")
  texts = list(texts)
  bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
  if bad:
    raise TypeError(f"tokenizers take a list of strings; got elements of type {sorted(set(bad))}")
  return texts


TOKENIZERS: dict[str, Callable[..., Tokenizer]] = {"clip": ClipTokenizer, "wordpiece": WordPieceTokenizer}


def get_tokenizer(name: str, **kwargs) -> Tokenizer:
  """Build the tokenizer registered as ``name`` (``"clip"`` or ``"wordpiece"``) with ``kwargs``."""
  if name not in TOKENIZERS:
    raise unknown_choice("tokenizer", name, TOKENIZERS)
  return TOKENIZERS[name](**kwargs)
