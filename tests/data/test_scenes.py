"""Tests of the embedded scenes dataset: determinism, caption content, information-gap knobs, task labels, TFDS build.

Captions, questions, statements and hypotheses are parsed back with a small parser written here from the documented
grammar (its own lexicon, not the generator's), and task answers are recomputed by enumerating every value the image
hides (possible worlds), independently of the generator's three-valued logic.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lmstruct.data import scenes, scenes_builder

# --- independent lexicon and parser --------------------------------------------------------------------------------
SHAPE_LEX = {
  "circle": "circle",
  "disc": "circle",
  "disk": "circle",
  "square": "square",
  "block": "square",
  "triangle": "triangle",
  "star": "star",
  "hexagon": "hexagon",
  "cross": "cross",
  "semicircle": "semicircle",
  "half-disc": "semicircle",
}
COLOUR_LEX = {
  "red": "red",
  "crimson": "red",
  "scarlet": "red",
  "orange": "orange",
  "tangerine": "orange",
  "yellow": "yellow",
  "lemon": "yellow",
  "green": "green",
  "cyan": "cyan",
  "turquoise": "cyan",
  "aqua": "cyan",
  "blue": "blue",
  "azure": "blue",
  "purple": "purple",
  "violet": "purple",
  "pink": "pink",
  "rosy": "pink",
}
SIZE_LEX = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large"}
MATERIAL_LEX = {
  "wooden": "wooden",
  "wood": "wooden",
  "metal": "metal",
  "metallic": "metal",
  "glass": "glass",
  "plastic": "plastic",
  "rubber": "rubber",
  "stone": "stone",
}
LEXICONS = {"shape": SHAPE_LEX, "colour": COLOUR_LEX, "size": SIZE_LEX, "material": MATERIAL_LEX}
GENERIC = {"shape", "object", "thing", "item"}
NUMBERS = {"one": 1, "single": 1, "two": 2, "pair": 2, "three": 3}
ALL_WORDS = {**SHAPE_LEX, **COLOUR_LEX, **SIZE_LEX, **MATERIAL_LEX}
SHAPE_NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross", "semicircle"]
COLOUR_NAMES = ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
SIZE_NAMES = ["small", "large"]
MATERIAL_NAMES = ["wooden", "metal", "glass", "plastic", "rubber", "stone"]
NAMES = {"shape": SHAPE_NAMES, "colour": COLOUR_NAMES, "size": SIZE_NAMES, "material": MATERIAL_NAMES}
COUNT_WORDS = ["zero", "one", "two", "three"]


def singular(word: str) -> str:
  """The lexicon form of a possibly plural word."""
  if word in ALL_WORDS or word in GENERIC:
    return word
  for suffix in ("es", "s"):
    if word.endswith(suffix) and (word[: -len(suffix)] in ALL_WORDS or word[: -len(suffix)] in GENERIC):
      return word[: -len(suffix)]
  return word


def tokens(text: str) -> list[str]:
  """Lower-case words (hyphenated words kept whole)."""
  return re.findall(r"[a-z-]+", text.lower())


def parse_description(words: list[str]) -> dict[str, str]:
  """Attribute names stated by a noun phrase's words."""
  found: dict[str, str] = {}
  for word in map(singular, words):
    for attribute, lexicon in LEXICONS.items():
      if word in lexicon:
        assert attribute not in found, f"{attribute} stated twice in {words}"
        found[attribute] = lexicon[word]
  return found


def is_noun_phrase(words: list[str]) -> bool:
  """A segment describes an object when it holds an attribute word or a singular generic noun."""
  return any(w in ALL_WORDS or w in GENERIC for w in words)


def parse_caption(caption: str) -> tuple[int | None, list[dict[str, str]]]:
  """``(stated count or None, noun phrases in left-to-right order)`` of a caption."""
  head, tail = caption.split(":", 1) if ":" in caption else ("", caption)
  segments, current = [], []
  for word in tokens(tail):
    if word in ("a", "an"):
      segments.append(current)
      current = []
    current.append(word)
  segments.append(current)
  phrases = [s for s in segments if is_noun_phrase(s)]
  relation_right = ":" not in caption and any("right" in s for s in phrases[:-1])
  descriptions = [parse_description(s) for s in phrases]
  if relation_right:
    descriptions.reverse()
  numbers = [NUMBERS[w] for w in tokens(caption) if w in NUMBERS]
  assert len(set(numbers)) <= 1, caption
  count = numbers[0] if numbers else (len(descriptions) if len(descriptions) > 1 else None)
  return count, descriptions


def object_names(objects: dict, i: int) -> dict[str, str]:
  """Attribute names of object ``i`` from stored per-object columns."""
  return {a: NAMES[a][int(objects[a][i])] for a in NAMES}


def hidden_attributes(objects: dict, i: int) -> set[str]:
  """Attributes the image hides for object ``i``: material always, colour when greyed, all when occluded."""
  if objects["occluded"][i]:
    return {"shape", "colour", "size", "material"}
  return {"material", "colour"} if objects["greyed"][i] else {"material"}


def possible_matches(objects: dict, i: int, description: dict[str, str], image_only: bool) -> set[bool]:
  """Every truth value of "object i fits the description" over all values of the attributes the image hides."""
  names = object_names(objects, i)
  hidden = hidden_attributes(objects, i) if image_only else set()
  choices = [NAMES[a] if a in hidden else [names[a]] for a in description]
  return {all(v == description[a] for a, v in zip(description, combo)) for combo in itertools.product(*choices)}


def worlds(object_sets: list[dict], description: dict[str, str], image_only: bool) -> list[list[tuple[bool, ...]]]:
  """All joint match vectors (one tuple per scene) consistent with what is known."""
  per_scene = [
    [possible_matches(objs, i, description, image_only) for i in range(len(objs["shape"]))] for objs in object_sets
  ]
  flat = [s for scene in per_scene for s in scene]
  result = []
  for combo in itertools.product(*flat):
    vectors, start = [], 0
    for scene in per_scene:
      vectors.append(tuple(combo[start : start + len(scene)]))
      start += len(scene)
    result.append(vectors)
  return result


def outcomes(object_sets: list[dict], description: dict[str, str], predicate, image_only: bool) -> set[bool]:
  """Truth values a predicate on match vectors takes over all possible worlds."""
  return {bool(predicate(*w)) for w in worlds(object_sets, description, image_only)}


def records(config: scenes.SceneConfig, split: str, n: int) -> list[dict]:
  """The first ``n`` stored examples of a split under ``config``."""
  return [scenes.example_record(config, split, i) for i in range(n)]


def decode(png: bytes) -> np.ndarray:
  """Pixels of PNG bytes."""
  return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


GAP_CONFIG = scenes.SceneConfig(
  caption_attributes=scenes.CAPTION_ATTRIBUTES, grey_fraction=0.3, occlusion_fraction=0.25
)


# --- determinism ----------------------------------------------------------------------------------------------------
def test_examples_are_determined_by_seed_split_and_index():
  base = records(GAP_CONFIG, "train", 6)
  again = records(GAP_CONFIG, "train", 6)
  other_seed = records(dataclasses.replace(GAP_CONFIG, seed=1), "train", 6)
  other_split = records(GAP_CONFIG, "validation", 6)
  for a, b, c, d in zip(base, again, other_seed, other_split):
    assert a["image"] == b["image"] and a["captions"] == b["captions"] and a["labels"] == b["labels"]
    assert a["image"] != c["image"] and a["captions"] != c["captions"]
    assert a["image"] != d["image"]


# --- captions state exactly the configured attributes ------------------------------------------------------------
@pytest.mark.parametrize(
  "attributes",
  [
    ("shape", "colour", "size", "material", "count"),
    ("shape", "colour", "size", "count"),
    ("colour", "material"),
    ("size", "count"),
    ("shape",),
    (),
    ("count",),
    ("shape", "colour", "material", "count"),
  ],
)
def test_captions_state_exactly_the_configured_attributes(attributes):
  config = scenes.SceneConfig(caption_attributes=attributes, captions_per_image=4)
  stated = {a for a in attributes if a != "count"}
  for record in records(config, "train", 30):
    objects = record["objects"]
    n = len(objects["shape"])
    for caption in record["captions"]:
      count, descriptions = parse_caption(caption)
      if "count" in attributes:
        assert count == n and len(descriptions) == n, caption
      else:
        assert count is None and len(descriptions) == 1, caption
      for i, description in enumerate(descriptions):
        expected = {a: v for a, v in object_names(objects, i).items() if a in stated}
        assert description == expected, caption
      leftover = [
        w for w in tokens(caption) if singular(w) in ALL_WORDS and not any(singular(w) in LEXICONS[a] for a in stated)
      ]
      assert not leftover, caption


def test_labels_describe_the_leftmost_object_and_the_count():
  for record in records(GAP_CONFIG, "train", 20):
    objects, labels = record["objects"], record["labels"]
    assert list(objects["x"]) == sorted(objects["x"])
    assert labels == {**{a: int(objects[a][0]) for a in NAMES}, "count": len(objects["x"]) - 1}
    hidden = hidden_attributes(objects, 0)
    assert record["visible_in_image"] == {**{a: a not in hidden for a in NAMES}, "count": True}


def test_class_prompts_parse_back_to_their_class():
  for label, names in scenes.SCENE_LABELS.items():
    prompts = scenes.class_prompts(label)
    assert len(prompts) == len(names)
    for index, variants in enumerate(prompts):
      for prompt in variants:
        count, descriptions = parse_caption(prompt)
        if label == "count":
          assert count == index + 1 and all(d == {} for d in descriptions), prompt
        else:
          assert count is None and descriptions == [{label: names[index]}], prompt


# --- knobs change what each source can recover --------------------------------------------------------------------
def saturated_area(image: np.ndarray) -> int:
  """Pixels whose channels differ by more than 60 (object colours are saturated, backgrounds are not)."""
  spread = image.max(-1).astype(int) - image.min(-1).astype(int)
  return int((spread > 60).sum())


def test_without_size_in_captions_no_size_word_appears_but_images_show_size():
  config = scenes.SceneConfig(caption_attributes=("shape", "colour", "material", "count"))
  areas: dict[tuple[str, str], list[int]] = {}
  for record in records(config, "train", 240):
    assert not [w for c in record["captions"] for w in tokens(c) if w in SIZE_LEX]
    objects = record["objects"]
    if len(objects["shape"]) == 1:
      names = object_names(objects, 0)
      areas.setdefault((names["shape"], names["size"]), []).append(saturated_area(decode(record["image"])))
  compared = 0
  for shape in SHAPE_NAMES:
    if (shape, "small") in areas and (shape, "large") in areas:
      assert max(areas[shape, "small"]) < min(areas[shape, "large"]), (shape, areas)
      compared += 1
  assert compared >= 5
  assert scenes.label_sources(config)["size"] == "image"


def test_material_is_stated_in_text_and_never_drawn():
  with_material = scenes.SceneConfig(caption_attributes=("shape", "material", "count"))
  without = scenes.SceneConfig(caption_attributes=("shape", "count"))
  assert scenes.label_sources(with_material)["material"] == "text"
  assert scenes.label_sources(without)["material"] == "none"
  for a, b in zip(records(with_material, "train", 10), records(without, "train", 10)):
    assert a["image"] == b["image"]
    assert all(any(w in MATERIAL_LEX for w in tokens(c)) for c in a["captions"])
    assert not any(w in MATERIAL_LEX for c in b["captions"] for w in tokens(c))
  for index in range(10):
    scene, _ = scenes.example_scenes(with_material, "train", index)
    for material in range(len(MATERIAL_NAMES)):
      swapped = dataclasses.replace(
        scene, objects=tuple(dataclasses.replace(o, material=material) for o in scene.objects)
      )
      assert np.array_equal(scenes.render_scene(swapped, with_material), scenes.render_scene(scene, with_material))


def interior(image: np.ndarray, x: float, y: float, radius: float) -> np.ndarray:
  """Pixels ``[n, 3]`` within 0.2 × radius of an object's centre (inside every shape)."""
  yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
  mask = np.hypot(xx - x, yy - y) <= max(0.2 * radius, 1.0)
  return image[mask]


def test_grey_out_hides_colour_of_affected_objects_only():
  config = scenes.SceneConfig(grey_fraction=0.5)
  plain = dataclasses.replace(config, grey_fraction=0.0)
  greyed_seen = visible_seen = 0
  for index in range(40):
    scene, _ = scenes.example_scenes(config, "train", index)
    image = scenes.render_scene(scene, config)
    plain_image = scenes.render_scene(scenes.example_scenes(plain, "train", index)[0], plain)
    changed = np.any(image != plain_image, axis=-1)
    allowed = np.zeros_like(changed)
    yy, xx = np.mgrid[0:64, 0:64]
    for i, obj in enumerate(scene.objects):
      pixels = interior(image, obj.x, obj.y, obj.radius).astype(int)
      if obj.greyed:
        greyed_seen += 1
        allowed |= np.hypot(xx - obj.x, yy - obj.y) <= scenes.max_object_extent(config) + 1
        assert np.all(pixels.max(-1) == pixels.min(-1))
        for colour in range(len(COLOUR_NAMES)):
          recoloured = dataclasses.replace(obj, colour=colour, tint=(colour, -colour, 3))
          objects = scene.objects[:i] + (recoloured,) + scene.objects[i + 1 :]
          other = scenes.render_scene(dataclasses.replace(scene, objects=objects), config)
          assert np.array_equal(other, image)
      else:
        visible_seen += 1
        reference = np.array([scenes.COLOUR_RGB[c] for c in COLOUR_NAMES])
        nearest = np.argmin(np.linalg.norm(reference - pixels.mean(0), axis=1))
        assert COLOUR_NAMES[nearest] == COLOUR_NAMES[obj.colour]
    assert not np.any(changed & ~allowed)
  assert greyed_seen >= 10 and visible_seen >= 10


def test_occlusion_hides_every_attribute_of_affected_objects():
  config = scenes.SceneConfig(occlusion_fraction=0.5)
  occluded_seen = 0
  for index in range(30):
    scene, _ = scenes.example_scenes(config, "train", index)
    image = scenes.render_scene(scene, config)
    for i, obj in enumerate(scene.objects):
      if not obj.occluded:
        continue
      occluded_seen += 1
      centre = interior(image, obj.x, obj.y, obj.radius).astype(int)
      patch_colours = np.array([scenes.OCCLUDER_FILL, scenes.OCCLUDER_OUTLINE])
      distance = np.abs(centre[:, None, :] - patch_colours[None]).max(-1).min(-1)
      assert np.all(distance <= 4 * config.noise_std)
      for shape, colour, size in [(0, 0, 0), (5, 7, 1), (3, 2, 1)]:
        radius = np.mean(scenes.SIZE_RADIUS[SIZE_NAMES[size]]) * config.image_size
        changed = dataclasses.replace(obj, shape=shape, colour=colour, size=size, radius=radius)
        objects = scene.objects[:i] + (changed,) + scene.objects[i + 1 :]
        assert np.array_equal(scenes.render_scene(dataclasses.replace(scene, objects=objects), config), image)
  assert occluded_seen >= 10


@pytest.mark.parametrize(
  "preset, expected",
  [
    ("default", {"shape": "both", "colour": "both", "size": "both", "material": "none", "count": "both"}),
    ("material_text", {"shape": "both", "colour": "both", "size": "both", "material": "text", "count": "both"}),
    ("no_size_text", {"shape": "both", "colour": "both", "size": "image", "material": "none", "count": "both"}),
    ("two_way_gap", {"shape": "both", "colour": "both", "size": "image", "material": "text", "count": "both"}),
    ("grey_out", {"shape": "both", "colour": "both", "size": "both", "material": "none", "count": "both"}),
    ("occlusion", {"shape": "both", "colour": "both", "size": "both", "material": "none", "count": "both"}),
  ],
)
def test_preset_label_sources(preset, expected):
  config = next(c for c in scenes_builder.PRESETS if c.name == preset)
  assert scenes.label_sources(config.scene) == expected
  hidden = scenes.image_hidden_fractions(config.scene)
  occluded = {"occlusion": 0.2}.get(preset, 0.0)
  colour_hidden = {"grey_out": 0.3, "occlusion": 0.2}.get(preset, 0.0)
  assert hidden == pytest.approx(
    {"shape": occluded, "colour": colour_hidden, "size": occluded, "material": 1.0, "count": 0.0}
  )


def test_hidden_fractions_match_sampled_visibility():
  expected = scenes.image_hidden_fractions(GAP_CONFIG)
  assert expected["colour"] == pytest.approx(1 - 0.7 * 0.75)
  flags = [scenes.image_visibility(scenes.example_scenes(GAP_CONFIG, "train", i)[0]) for i in range(600)]
  for label in ("shape", "colour", "size"):
    observed = 1 - np.mean([f[label] for f in flags])
    assert abs(observed - expected[label]) < 0.07, (label, observed)


def test_fully_hidden_colour_makes_colour_text_only():
  config = scenes.SceneConfig(grey_fraction=1.0)
  assert scenes.label_sources(config)["colour"] == "text"
  assert scenes.label_sources(dataclasses.replace(config, caption_attributes=("shape",)))["colour"] == "none"


# --- downstream tasks ------------------------------------------------------------------------------------------------
POSITIONS = {"leftmost": 0, "only": 0, "middle": 1}


def test_vqa_answers_are_in_vocabulary_and_correct():
  kinds = set()
  for record in records(GAP_CONFIG, "vqa_train", 160):
    objects, question = record["objects"], record["question"]
    n = len(objects["shape"])
    words = tokens(question)
    assert 0 <= record["answer"] < len(scenes.VQA_ANSWERS)
    answer = scenes.VQA_ANSWERS[record["answer"]]
    if words[:2] == ["how", "many"] and singular(words[2]) in GENERIC:
      kinds.add("count")
      assert answer == COUNT_WORDS[n] and record["answerable"]
    elif words[:2] == ["how", "many"]:
      kinds.add("count_shape")
      shape = SHAPE_LEX[singular(words[2])]
      assert answer == COUNT_WORDS[sum(object_names(objects, i)["shape"] == shape for i in range(n))]
      counts = {sum(w[0]) for w in worlds([objects], {"shape": shape}, True)}
      assert record["answerable"] == (len(counts) == 1)
    elif words[:2] == ["is", "there"]:
      kinds.add("exists")
      description = parse_description(words[2:])
      truth = outcomes([objects], description, any, False)
      assert truth == {answer == "yes"}
      assert record["answerable"] == (len(outcomes([objects], description, any, True)) == 1)
    else:
      position = next(w for w in words if w in ("leftmost", "rightmost", "middle", "only"))
      index = n - 1 if position == "rightmost" else POSITIONS[position]
      attribute = (
        "material"
        if "made" in words or "material" in words
        else "size"
        if "size" in words or "small" in words
        else "colour"
        if "colour" in words
        else "shape"
      )
      kinds.add(attribute)
      assert answer == object_names(objects, index)[attribute], question
      assert record["answerable"] == (attribute not in hidden_attributes(objects, index))
  assert {"count", "count_shape", "exists", "shape", "colour", "size"} <= kinds


def nlvr_predicate(statement: str):
  """``(description, predicate(left_matches, right_matches))`` of an NLVR statement."""
  words = tokens(statement)
  if words[:4] == ["the", "two", "images", "contain"]:
    description = parse_description(words[words.index("of") + 1 :])
    return description, lambda a, b: sum(a) == sum(b)
  if words[2] == "image" and words[4] in ("more", "fewer"):
    first, relation = words[1], words[4]
    description = parse_description(words[5 : words.index("than")])

    def compare(a, b):
      x, y = (a, b) if first == "left" else (b, a)
      return sum(x) > sum(y) if relation == "more" else sum(x) < sum(y)

    return description, compare
  if words[0] == "both":
    return parse_description(words[3:]), lambda a, b: any(a) and any(b)
  if words[0] == "exactly":
    return parse_description(words[4:]), lambda a, b: any(a) != any(b)
  if words[0] == "neither":
    return parse_description(words[3:]), lambda a, b: not any(a) and not any(b)
  if words[:2] == ["there", "is"]:
    side = words[-2]
    return parse_description(words[2:-4]), (lambda a, b: any(a)) if side == "left" else (lambda a, b: any(b))
  side = words[1]
  return parse_description(words[4:]), (lambda a, b: any(a)) if side == "left" else (lambda a, b: any(b))


def test_nlvr_truth_values_are_correct():
  targets = []
  for record in records(GAP_CONFIG, "nlvr_train", 120):
    description, predicate = nlvr_predicate(record["statement"])
    pair = [record["objects"], record["objects2"]]
    assert outcomes(pair, description, predicate, False) == {bool(record["target"])}, record["statement"]
    assert record["answerable"] == (len(outcomes(pair, description, predicate, True)) == 1), record["statement"]
    targets.append(record["target"])
  assert 0.3 < np.mean(targets) < 0.7


def ve_predicate(hypothesis: str):
  """``(description, predicate(matches))`` of a visual-entailment hypothesis."""
  words = tokens(hypothesis)
  if "exactly" in words:
    number = NUMBERS[words[3]]
    return parse_description(words[4:]), lambda m: sum(m) == number
  if words[:2] == ["the", "leftmost"]:
    return parse_description(words[4:]), lambda m: m[0]
  return parse_description(words[2:]), any


def test_visual_entailment_labels_follow_the_rule():
  seen = set()
  for record in records(GAP_CONFIG, "ve_train", 150):
    objects = record["objects"]
    description, predicate = ve_predicate(record["hypothesis"])
    truth = outcomes([objects], description, predicate, False)
    assert truth == {record["hypothesis_true"]}, record["hypothesis"]
    possible = outcomes([objects], description, predicate, True)
    expected = {frozenset({True}): "entailment", frozenset({False}): "contradiction"}.get(
      frozenset(possible), "neutral"
    )
    assert scenes.VE_LABELS[record["target"]] == expected, record["hypothesis"]
    if "material" in description and expected == "neutral":
      seen.add("material-neutral")
    seen.add(expected)
  assert {"entailment", "neutral", "contradiction", "material-neutral"} <= seen


# --- TFDS build -----------------------------------------------------------------------------------------------------
TINY_SIZES = {
  "train": 64,
  "validation": 16,
  "test": 16,
  "vqa_train": 8,
  "vqa_test": 8,
  "nlvr_train": 8,
  "nlvr_test": 8,
  "ve_train": 8,
  "ve_test": 8,
}


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> tuple[pathlib.Path, scenes_builder.ScenesBuilderConfig]:
  """A tiny build of every split into a temporary data_dir."""
  data_dir = tmp_path_factory.mktemp("scenes")
  config = scenes_builder.scenes_config(
    split_sizes=TINY_SIZES,
    grey_fraction=0.3,
    occlusion_fraction=0.2,
    caption_attributes=("shape", "colour", "material", "count"),
  )
  scenes_builder.scenes_builder(data_dir, config, num_workers=1).download_and_prepare()
  return data_dir, config


def test_build_reads_back_through_tfds_data_source(tiny_build):
  data_dir, config = tiny_build
  sources = tfds.data_source(f"lmstruct_scenes/{config.name}", data_dir=str(data_dir))
  assert {split: len(source) for split, source in sources.items()} == TINY_SIZES
  raw = sources["train"][0]
  assert raw["image"].shape == (64, 64, 3) and raw["image"].dtype == np.uint8
  builder = tfds.builder_from_directory(str(data_dir / "lmstruct_scenes" / config.name / "1.0.0"))
  assert builder.info.metadata["label_sources"] == {
    "shape": "both",
    "colour": "both",
    "size": "image",
    "material": "text",
    "count": "both",
  }
  assert builder.info.file_format.value == "array_record"


def test_load_scenes_gives_contract_dicts(tiny_build):
  data_dir, config = tiny_build
  common = {"image", "image_id", "captions", "labels", "visible_in_image", "objects"}
  expected_keys = {
    "captions": set(),
    "vqa": {"question", "answer", "question_type", "answerable"},
    "nlvr": {"image2", "objects2", "statement", "target", "answerable"},
    "ve": {"hypothesis", "target", "hypothesis_true"},
  }
  for split, size in TINY_SIZES.items():
    source = scenes_builder.load_scenes(split, data_dir, config)
    assert len(source) == size
    examples = source.__getitems__(range(size))
    ids = {e["image_id"] for e in examples}
    assert ids == {f"{split}-{i:06d}" for i in range(size)}
    for example in examples:
      assert set(example) == common | expected_keys[scenes.SPLIT_KINDS[split]]
      assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.uint8
      assert isinstance(example["captions"], list) and len(example["captions"]) == 5
      assert all(isinstance(c, str) for c in example["captions"])
      assert all(0 <= v < len(scenes.SCENE_LABELS[k]) for k, v in example["labels"].items())
      index = int(example["image_id"].rsplit("-", 1)[1])
      fresh = scenes.example_record(config.scene, split, index)
      assert np.array_equal(example["image"], decode(fresh["image"]))
      assert example["captions"] == fresh["captions"] and example["labels"] == fresh["labels"]
      if "image2" in example:
        assert np.array_equal(example["image2"], decode(fresh["image2"]))
        assert example["statement"] == fresh["statement"] and example["target"] == fresh["target"]
      if "question" in example:
        assert example["answer"] == fresh["answer"] and example["question"] == fresh["question"]
      if "hypothesis" in example:
        assert example["target"] == fresh["target"]
  assert source.metadata["label_sources"]["material"] == "text"


def record_files(data_dir: pathlib.Path) -> dict[str, bytes]:
  """Bytes of every array_record file under a data_dir, by file name."""
  return {p.name: p.read_bytes() for p in sorted(data_dir.rglob("*.array_record-*"))}


def test_builds_are_byte_identical_for_a_seed_and_differ_across_seeds(tmp_path):
  sizes = {"train": 24, "vqa_test": 8}
  same = scenes_builder.scenes_config(split_sizes=sizes, name="det")
  other = scenes_builder.scenes_config(split_sizes=sizes, name="det", seed=7)
  for directory, config in [("a", same), ("b", same), ("c", other)]:
    scenes_builder.scenes_builder(tmp_path / directory, config, num_workers=1).download_and_prepare()
  a, b, c = (record_files(tmp_path / d) for d in "abc")
  assert len(a) == 2 and a == b
  assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_worker_processes_do_not_change_records():
  config = scenes.SceneConfig()
  serial = list(scenes_builder.generate_records(config, "train", 130, num_workers=1))
  parallel = list(scenes_builder.generate_records(config, "train", 130, num_workers=2))
  assert [i for i, _ in parallel] == list(range(130))
  assert [(r["image"], r["captions"]) for _, r in serial] == [(r["image"], r["captions"]) for _, r in parallel]


# --- bad input -------------------------------------------------------------------------------------------------------
def test_bad_names_raise_errors_naming_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"unknown scene knob.*'colour_count'.*valid knobs.*grey_fraction"):
    scenes.SceneConfig.from_dict({"colour_count": 3})
  with pytest.raises(ValueError, match=r"unknown caption attribute.*'texture'.*valid choices.*material"):
    scenes.SceneConfig(caption_attributes=("shape", "texture"))
  with pytest.raises(ValueError, match=r"unknown split 'dev'.*valid choices.*validation"):
    scenes_builder.scenes_config(split_sizes={"dev": 3})
  with pytest.raises(ValueError, match=r"unknown scenes config 'fancy'.*presets.*two_way_gap"):
    scenes_builder.load_scenes("train", tmp_path, "fancy")
  with pytest.raises(ValueError, match=r"unknown split 'test'.*valid choices.*\['train'\]"):
    scenes_builder.load_scenes("test", tmp_path, scenes_builder.scenes_config(split_sizes={"train": 2}))
  with pytest.raises(ValueError, match=r"unknown label 'hue'.*valid choices.*colour"):
    scenes.class_prompts("hue")
  with pytest.raises(ValueError, match=r"grey_fraction must lie in \[0, 1\]"):
    scenes.SceneConfig(grey_fraction=1.5)
