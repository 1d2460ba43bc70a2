"""Batches of ALBEF pre-training and of the vision-language tasks, built by the same readers as CLIP training
(`pipeline.transform_pipeline`: reader plans, resumable positions, global sharding) and evaluation
(`pipeline.eval_pipeline`: padding masks), from any source whose stored examples carry the task keys:

* the scenes splits: captions; `question` + `answer` (an index into `scenes.VQA_ANSWERS`); `statement` + `image2`
  + `target`; `hypothesis` + `target`;
* the real formats (`lmstruct.data.formats`): VQA v2 `question` + `answers` (the ten human answers) + `answer`,
  GQA `question` + `answer`, NLVR² `statement` + `image2_bytes` + `label`, SNLI-VE `hypothesis` + `label`,
  COCO / Karpathy / Flickr30k captions.

Rows (one per example; stacked into global batches, keys as in docs/contracts.md):

    pretrain  image (training view), text [L] (a random caption), image_key (int32 hash of image_id)
    vqa       image, text [L] (question), answers [A, La] (answer tokens), answer_weights [A]
    nlvr      image, image2, text [L] (statement), label (0 false, 1 true), assignment = False
    ta        image, image2, text [L] (a caption), label (0 first image, 1 second, 2 neither), assignment = True
    ve        image, text [L] (hypothesis), label (0 entailment, 1 neutral, 2 contradiction)

Evaluation rows carry no augmentation; VQA's carry `answer_scores` [N] — min(#humans who gave the answer / 3, 1) for
every answer of the closed answer list (1 for the one answer of a single-answer dataset) — and `outside`, True
when none of the question's answers is in the list (it is counted, and scores 0).

An example whose image file is missing is skipped and counted like one whose image is corrupt (training:
`num_corrupt` of the batches; evaluation: mask False).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lmstruct import paths
from lmstruct.data import augment, pipeline, scenes

log = logging.getLogger(__name__)

Tokenize = Callable[[Sequence[str]], np.ndarray]
MISSING = "missing_image"
TEXT_KEYS = {"vqa": "question", "nlvr": "statement", "ve": "hypothesis"}
TASKS = ("pretrain", "vqa", "nlvr", "ve", "ta")
#: Labels of the text-assignment pre-step.
ASSIGNMENT_LABELS = ("first image", "second image", "neither")


class MissingImageError(pipeline.CorruptImageError):
  """A stored example whose image file does not exist."""


class MissingImagesCounted:
  """A random-access source whose examples with a missing image file read as ``{MISSING: message}`` instead of
  raising, so that the task transforms skip and count them."""

  def __init__(self, source: pipeline.DataSource):
    self.source = source
    self.metadata = getattr(source, "metadata", {})

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    try:
      return self.source[index]
    except FileNotFoundError as error:
      return {MISSING: f"example {index}: {error}"}


def image_key(image_id: str) -> np.int32:
  """A 31-bit hash (CRC-32) of an image id: rows of the same image share it (ITM never draws them as negatives)."""
  return np.int32(zlib.crc32(str(image_id).encode("utf-8")) & 0x7FFFFFFF)


def normalize_answer(answer: str) -> str:
  """Lower case, surrounding spaces and a final period removed, inner whitespace collapsed."""
  return " ".join(str(answer).lower().strip().rstrip(".").split())


def answer_counts(example: Mapping[str, Any]) -> collections.Counter[str]:
  """{answer: number of humans who gave it}: VQA v2's `answers`, else the one `answer` (a string, or an index into
  scenes.VQA_ANSWERS) counted once. Empty when the example has neither."""
  if "answers" in example:
    return collections.Counter(normalize_answer(a) for a in example["answers"])
  if "answer" not in example:
    return collections.Counter()
  answer = example["answer"]
  if isinstance(answer, (int, np.integer)):
    answer = scenes.VQA_ANSWERS[int(answer)]
  return collections.Counter([normalize_answer(answer)])


def answer_scores(counts: Mapping[str, int], multi_annotator: bool) -> dict[str, float]:
  """VQA accuracy of each answer: min(#humans / 3, 1) when several humans answered (VQA v2); 1 for the one
  answer of a single-answer dataset (scenes, GQA)."""
  if not multi_annotator:
    return {answer: 1.0 for answer in counts}
  return {answer: min(count / 3.0, 1.0) for answer, count in counts.items()}


def answer_weights(counts: Mapping[str, int], slots: int) -> list[tuple[str, float]]:
  """ALBEF's training targets: the `slots` most frequent answers (ties in order of appearance) with weight
  count / #answers (the dropped answers' weights are lost)."""
  total = sum(counts.values())
  return [(answer, count / total) for answer, count in collections.Counter(counts).most_common(slots)]


@dataclasses.dataclass(frozen=True)
class AnswerList:
  """The closed answer list VQA inference ranks (index = answer id)."""

  answers: tuple[str, ...]

  def __post_init__(self):
    if not self.answers:
      raise ValueError("the VQA answer list is empty")
    if len(set(self.answers)) != len(self.answers):
      raise ValueError("the VQA answer list repeats answers")

  def __len__(self) -> int:
    return len(self.answers)

  def score_vector(self, scores: Mapping[str, float]) -> np.ndarray:
    """float32 [N]: the score of each listed answer (0 when nobody gave it)."""
    return np.asarray([scores.get(a, 0.0) for a in self.answers], np.float32)


def load_answer_list(spec: str, train_source: pipeline.DataSource | None = None) -> AnswerList:
  """The answer list named by `spec`: 'scenes' (scenes.VQA_ANSWERS), 'train:N' (the N most frequent answers of the
  training source's annotations, counting every human answer), or the path of a JSON list of answers (ALBEF's
  answer_list.json)."""
  if spec == "scenes":
    return AnswerList(tuple(scenes.VQA_ANSWERS))
  if spec.startswith("train:"):
    if train_source is None:
      raise ValueError("albef.answer_list 'train:N' needs the VQA training source")
    size = int(spec.split(":", 1)[1])
    fields = getattr(train_source, "fields", None)
    examples = fields if fields is not None else (train_source[i] for i in range(len(train_source)))
    total: collections.Counter[str] = collections.Counter()
    for example in examples:
      total.update(answer_counts(example))
    return AnswerList(tuple(a for a, _ in total.most_common(size)))
  path = paths.as_path(spec)
  if not path.is_file():
    raise FileNotFoundError(f"albef.answer_list {spec!r} is neither 'scenes', 'train:N' nor an existing JSON file")
  answers = json.loads(path.read_text())
  if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
    raise ValueError(f"{spec}: an answer list is a JSON list of strings")
  return AnswerList(tuple(dict.fromkeys(normalize_answer(a) for a in answers)))


def task_label(example: Mapping[str, Any]) -> int:
  """The class label: `label` (real formats) or `target` (scenes)."""
  return int(example["label"] if "label" in example else example["target"])


def second_image(example: Mapping[str, Any]) -> Mapping[str, Any]:
  """The example's second image as an example of its own (`image2` array or `image2_bytes`)."""
  if "image2" in example:
    return {"image": example["image2"], "image_id": f"{example.get('image_id', '?')}/2"}
  if "image2_bytes" in example:
    return {"image_bytes": example["image2_bytes"], "image_id": f"{example.get('image_id', '?')}/2"}
  raise KeyError(f"example {example.get('image_id', '?')!r} has no second image (image2 / image2_bytes)")


def _check_present(example: Mapping[str, Any]) -> None:
  if MISSING in example:
    raise MissingImageError(example[MISSING])


@dataclasses.dataclass(frozen=True)
class VLTransform:
  """One stored example → one training row of `task` (module docstring); a missing or corrupt image gives
  ``{CORRUPT: True}`` (skipped and counted by the batch iterator)."""

  task: str
  tokenize: Tokenize
  image_size: int
  augmentation: augment.ImageAugmentation
  answer_tokenize: Tokenize | None = None
  answer_slots: int = 1
  source: pipeline.DataSource | None = None

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"unknown vision-language task {self.task!r}; valid choices: {list(TASKS)}")
    if self.task == "vqa" and self.answer_tokenize is None:
      raise ValueError("the VQA transform needs answer_tokenize")
    if self.task == "ta" and self.source is None:
      raise ValueError("the text-assignment transform draws other images from `source`; give it")

  def view(self, example: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The training view of the example's image."""
    return self.augmentation(pipeline.decode_pil(example), rng, self.image_size)

  def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    try:
      _check_present(example)
      return getattr(self, f"_{self.task}")(example, rng)
    except pipeline.CorruptImageError as error:
      log.warning("skipping example: %s", error)
      return {pipeline.CORRUPT: np.True_}

  def _pretrain(self, example, rng):
    captions = example.get("captions") or []
    if not captions:
      raise ValueError(f"example {example.get('image_id', '?')!r} has no captions; pre-training needs one")
    caption = captions[int(rng.integers(len(captions)))]
    return {
      "image": self.view(example, rng),
      "text": self.tokenize([caption])[0].astype(np.int32),
      "image_key": image_key(example.get("image_id", "")),
    }

  def _vqa(self, example, rng):
    targets = answer_weights(answer_counts(example), self.answer_slots)
    if not targets:
      raise ValueError(f"VQA example {example.get('question_id', example.get('image_id', '?'))!r} has no answer")
    texts = [answer for answer, _ in targets] + [""] * (self.answer_slots - len(targets))
    answers = self.answer_tokenize(texts).astype(np.int32)
    answers[len(targets) :] = 0
    weights = np.zeros(self.answer_slots, np.float32)
    weights[: len(targets)] = [w for _, w in targets]
    return {
      "image": self.view(example, rng),
      "text": self.tokenize([example["question"]])[0].astype(np.int32),
      "answers": answers,
      "answer_weights": weights,
    }

  def _nlvr(self, example, rng):
    return {
      "image": self.view(example, rng),
      "image2": self.view(second_image(example), rng),
      "text": self.tokenize([example["statement"]])[0].astype(np.int32),
      "label": np.int32(task_label(example)),
      "assignment": np.False_,
    }

  def _ve(self, example, rng):
    return {
      "image": self.view(example, rng),
      "text": self.tokenize([example["hypothesis"]])[0].astype(np.int32),
      "label": np.int32(task_label(example)),
    }

  def _other(self, exclude: str, rng: np.random.Generator) -> Mapping[str, Any]:
    """A random example of `source` whose image_id is not `exclude` and whose image is present."""
    for _ in range(16):
      other = self.source[int(rng.integers(len(self.source)))]
      if MISSING not in other and other.get("image_id") != exclude:
        return other
    raise MissingImageError(f"no other usable image found in 16 draws (excluding {exclude!r})")

  def _ta(self, example, rng):
    """ALBEF's text-assignment example: a caption of this example with this image first (label 0), second (1), or
    with two other images (2)."""
    captions = example.get("captions") or []
    if not captions:
      raise ValueError(f"example {example.get('image_id', '?')!r} has no captions; text assignment needs one")
    caption = captions[int(rng.integers(len(captions)))]
    label = int(rng.integers(len(ASSIGNMENT_LABELS)))
    own = example.get("image_id")
    first = self._other(own, rng)
    pair = {0: (example, first), 1: (first, example), 2: (first, self._other(own, rng))}[label]
    return {
      "image": self.view(pair[0], rng),
      "image2": self.view(pair[1], rng),
      "text": self.tokenize([caption])[0].astype(np.int32),
      "label": np.int32(label),
      "assignment": np.True_,
    }


@dataclasses.dataclass(frozen=True)
class VLEvalRow:
  """One stored example → one evaluation row of `task` (module docstring); raises CorruptImageError (the row is
  masked and counted) for a missing or undecodable image."""

  task: str
  tokenize: Tokenize
  image_size: int
  answer_list: AnswerList | None = None

  def image(self, example: Mapping[str, Any]) -> np.ndarray:
    return augment.clip_preprocess(pipeline.decode_image(example), self.image_size)

  def __call__(self, example: Mapping[str, Any]) -> dict[str, Any]:
    _check_present(example)
    row: dict[str, Any] = {
      "image": self.image(example),
      "text": self.tokenize([example[TEXT_KEYS[self.task]]])[0].astype(np.int32),
    }
    if self.task == "vqa":
      counts = answer_counts(example)
      vector = self.answer_list.score_vector(answer_scores(counts, multi_annotator="answers" in example))
      row.update(answer_scores=vector, outside=np.bool_(not vector.any()))
    else:
      row["label"] = np.int32(task_label(example))
    if self.task == "nlvr":
      row["image2"] = self.image(second_image(example))
    return row

  def template(self, context_length: int) -> dict[str, Any]:
    """The zero row (padding) of this task."""
    row: dict[str, Any] = {
      "image": np.zeros((self.image_size, self.image_size, 3), np.float32),
      "text": np.zeros(context_length, np.int32),
    }
    if self.task == "vqa":
      row.update(answer_scores=np.zeros(len(self.answer_list), np.float32), outside=np.False_)
    else:
      row["label"] = np.int32(0)
    if self.task == "nlvr":
      row["image2"] = row["image"]
    return row


class PhasedBatches(Iterator[dict[str, Any]]):
  """Batches of several pipelines one after another: phase i gives `steps_i` batches (the last phase runs on).
  Used for NLVR², whose text-assignment pre-step comes first. The state is (phase, batches taken in it, the phase
  pipeline's state), so a run resumes inside whichever phase it stopped."""

  def __init__(self, phases: Sequence[tuple[int, Callable[[], Any]]]):
    if not phases:
      raise ValueError("PhasedBatches needs at least one phase")
    self._phases = list(phases)
    self._phase, self._taken = 0, 0
    self._current = None
    self._skip_empty()

  def _skip_empty(self) -> None:
    while self._phase < len(self._phases) - 1 and self._phases[self._phase][0] <= self._taken:
      self._phase, self._taken = self._phase + 1, 0

  def _pipeline(self) -> Any:
    if self._current is None:
      self._current = self._phases[self._phase][1]()
    return self._current

  @property
  def phase(self) -> int:
    """Index of the phase the next batch comes from."""
    return self._phase

  @property
  def num_corrupt(self) -> int:
    return self._pipeline().num_corrupt

  def __next__(self) -> dict[str, Any]:
    batch = next(self._pipeline())
    self._taken += 1
    if self._phase < len(self._phases) - 1 and self._taken >= self._phases[self._phase][0]:
      self.close()
      self._phase, self._taken = self._phase + 1, 0
      self._skip_empty()
    return batch

  def _state(self, inner: Callable[[Any], Mapping[str, Any]]) -> dict[str, Any]:
    state = {"phase": self._phase, "taken": self._taken}
    if self._current is not None:
      state["pipeline"] = inner(self._current)
    return state

  def get_state(self) -> dict[str, Any]:
    return self._state(lambda p: p.get_state())

  def global_state(self) -> dict[str, Any]:
    return self._state(lambda p: p.global_state())

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.close()
    self._phase, self._taken = int(state["phase"]), int(state["taken"])
    if "pipeline" in state:
      self._pipeline().set_state(state["pipeline"])

  def close(self) -> None:
    if self._current is not None:
      self._current.close()
      self._current = None
