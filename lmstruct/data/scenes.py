"""Rendered scenes with captions and a controllable image/text information gap (pure numpy + PIL).

Every scene holds 1–3 objects on a textured background. An object has a shape, a colour, a size (small/large), a
material and a position, plus nuisances (rotation, outline jitter, colour tint; pixel noise over the whole image).
Captions come from a small grammar with synonyms and varied word order. Knobs in :class:`SceneConfig` decide which
attributes the captions state and which the image hides, so the information each modality carries about every label
is known by construction:

* ``caption_attributes``: the attributes captions state (a subset of :data:`CAPTION_ATTRIBUTES`). Leaving out
  ``"size"`` makes size image-only; adding ``"material"`` adds a text-only attribute, since no image ever shows
  material (the renderer never reads it).
* ``grey_fraction``: each object's colour is washed out to a grey that is independent of its colour with this
  probability (colour hidden from the image).
* ``occlusion_fraction``: each object is covered by an opaque patch of fixed size with this probability (shape,
  colour and size hidden from the image; the patch still shows that an object is there, so count stays visible).

Definitions used by every label and task:

* objects are ordered left to right by centre x (centres are at least ``MIN_DX`` × image size apart);
* the *main object* is the leftmost one; the ``shape``/``colour``/``size``/``material`` labels are its attributes and
  ``count`` is the number of objects (class index = count − 1);
* captions that state ``count`` describe every object, listed left to right (or joined by "to the left of" / "to the
  right of"); captions that do not state ``count`` describe the main object only.

All randomness of an example comes from ``(config.seed, split, index)`` through independent streams for the scene, the
captions and the task, so caption knobs never change pixels and hiding knobs never change layouts.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "semicircle")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES: tuple[str, ...] = ("small", "large")
MATERIALS: tuple[str, ...] = ("wooden", "metal", "glass", "plastic", "rubber", "stone")
COUNTS: tuple[str, ...] = ("one", "two", "three")

#: Class names of every scene label (index = stored label value), for zero-shot prompts and linear probes.
SCENE_LABELS: dict[str, list[str]] = {
  "shape": list(SHAPES),
  "colour": list(COLOURS),
  "size": list(SIZES),
  "material": list(MATERIALS),
  "count": list(COUNTS),
}
OBJECT_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "material")
CAPTION_ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "material", "count")

#: Closed answer vocabulary of the VQA split (``answer`` is an index into it).
VQA_ANSWERS: tuple[str, ...] = ("no", "yes") + SHAPES + COLOURS + SIZES + MATERIALS + ("zero",) + COUNTS
VQA_QUESTION_TYPES: tuple[str, ...] = ("count", "count_shape", "shape", "colour", "size", "material", "exists")
#: Targets of the NLVR split (``target`` 0 = false, 1 = true).
NLVR_LABELS: tuple[str, ...] = ("false", "true")
#: Targets of the visual-entailment split.
VE_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")

#: Split name -> kind of example it holds.
SPLIT_KINDS: dict[str, str] = {
  "train": "captions",
  "validation": "captions",
  "test": "captions",
  "vqa_train": "vqa",
  "vqa_test": "vqa",
  "nlvr_train": "nlvr",
  "nlvr_test": "nlvr",
  "ve_train": "ve",
  "ve_test": "ve",
}
#: Keys each split kind adds to the common scene keys.
TASK_KEYS: dict[str, tuple[str, ...]] = {
  "captions": (),
  "vqa": ("question", "answer", "question_type", "answerable"),
  "nlvr": ("image2", "objects2", "statement", "target", "answerable"),
  "ve": ("hypothesis", "target", "hypothesis_true"),
}

# --- caption lexicon -------------------------------------------------------------------------------------------
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
  "circle": ("circle", "disc", "disk"),
  "square": ("square", "block"),
  "triangle": ("triangle",),
  "star": ("star",),
  "hexagon": ("hexagon",),
  "cross": ("cross",),
  "semicircle": ("semicircle", "half-disc"),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
  "red": ("red", "crimson", "scarlet"),
  "orange": ("orange", "tangerine"),
  "yellow": ("yellow", "lemon"),
  "green": ("green",),
  "cyan": ("cyan", "turquoise", "aqua"),
  "blue": ("blue", "azure"),
  "purple": ("purple", "violet"),
  "pink": ("pink", "rosy"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
MATERIAL_WORDS: dict[str, tuple[str, ...]] = {
  "wooden": ("wooden",),
  "metal": ("metal", "metallic"),
  "glass": ("glass",),
  "plastic": ("plastic",),
  "rubber": ("rubber",),
  "stone": ("stone",),
}
MATERIAL_NOUNS: dict[str, str] = {
  "wooden": "wood",
  "metal": "metal",
  "glass": "glass",
  "plastic": "plastic",
  "rubber": "rubber",
  "stone": "stone",
}
THING_WORDS: tuple[str, ...] = ("shape", "object", "thing", "item")
NUMBER_PHRASES: dict[int, tuple[str, ...]] = {1: ("one", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
LEFT_OF: tuple[str, ...] = ("to the left of", "left of", "on the left of")
RIGHT_OF: tuple[str, ...] = ("to the right of", "right of", "on the right of")
_ATTRIBUTE_WORDS = {"colour": COLOUR_WORDS, "size": SIZE_WORDS, "material": MATERIAL_WORDS}

# --- geometry and appearance -----------------------------------------------------------------------------------
#: Radius range of each size class, as a fraction of the image size (disjoint, so size is visible).
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (0.085, 0.105), "large": (0.15, 0.18)}
#: Minimum horizontal distance between object centres, as a fraction of the image size.
MIN_DX = 0.07
#: Minimum empty gap between the bounding circles of two objects, as a fraction of the image size.
MIN_GAP = 0.04
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
  "red": (220, 40, 40),
  "orange": (240, 140, 20),
  "yellow": (235, 220, 40),
  "green": (50, 180, 60),
  "cyan": (40, 200, 210),
  "blue": (40, 70, 220),
  "purple": (140, 50, 200),
  "pink": (240, 110, 180),
}
GREY_LEVELS = (170, 235)
OCCLUDER_FILL = (55, 55, 60)
OCCLUDER_OUTLINE = (115, 115, 120)
BACKGROUND_KINDS: tuple[str, ...] = ("stripes", "checker", "blobs", "gradient")
_LAYOUT_ATTEMPTS = 200
_POSITION_ATTEMPTS = 60
_TASK_ATTEMPTS = 60


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """Knobs of the scenes dataset: image appearance, caption content and the image/text information gap."""

  image_size: int = 64
  caption_attributes: tuple[str, ...] = ("shape", "colour", "size", "count")
  captions_per_image: int = 5
  grey_fraction: float = 0.0
  occlusion_fraction: float = 0.0
  noise_std: float = 6.0
  colour_jitter: int = 20
  max_rotation: float = 45.0
  shape_jitter: float = 0.06
  object_scale: float = 1.0
  seed: int = 0

  def __post_init__(self) -> None:
    attributes = tuple(self.caption_attributes)
    unknown = [a for a in attributes if a not in CAPTION_ATTRIBUTES]
    if unknown:
      raise ValueError(f"unknown caption attribute(s) {unknown}; valid choices: {list(CAPTION_ATTRIBUTES)}")
    object.__setattr__(self, "caption_attributes", tuple(a for a in CAPTION_ATTRIBUTES if a in attributes))
    for name in ("grey_fraction", "occlusion_fraction"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
    if self.image_size < 24:
      raise ValueError(f"image_size must be at least 24 pixels, got {self.image_size}")
    if self.captions_per_image < 1:
      raise ValueError(f"captions_per_image must be at least 1, got {self.captions_per_image}")
    if not 0.0 <= self.shape_jitter <= 0.2:
      raise ValueError(f"shape_jitter must lie in [0, 0.2], got {self.shape_jitter}")
    if not 0.5 <= self.object_scale <= 1.3:
      raise ValueError(f"object_scale must lie in [0.5, 1.3], got {self.object_scale}")
    if self.noise_std < 0 or self.colour_jitter < 0 or self.max_rotation < 0:
      raise ValueError("noise_std, colour_jitter and max_rotation must be non-negative")

  @classmethod
  def from_dict(cls, knobs: Mapping[str, Any]) -> SceneConfig:
    """Builds a config from a mapping of knob names to values, rejecting unknown knob names."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
      raise ValueError(f"unknown scene knob(s) {unknown}; valid knobs: {valid}")
    return cls(**dict(knobs))


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object: class indices of its attributes, its geometry, nuisances and whether the image hides it."""

  shape: int
  colour: int
  size: int
  material: int
  x: float
  y: float
  radius: float
  angle: float
  tint: tuple[int, int, int]
  outline: tuple[float, ...]
  greyed: bool
  grey_level: int
  occluded: bool


@dataclasses.dataclass(frozen=True)
class Background:
  """Parameters of the procedural background texture."""

  kind: str
  base: tuple[int, int, int]
  accent: tuple[int, int, int]
  period: float
  angle: float
  phase: float
  blob_seed: int


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything the renderer needs: objects ordered left to right, background and pixel-noise parameters."""

  image_size: int
  objects: tuple[SceneObject, ...]
  background: Background
  noise_std: float
  noise_seed: int


# --- randomness -------------------------------------------------------------------------------------------------
def split_code(split: str) -> int:
  """A stable integer code of a split name (CRC-32), used to seed its examples."""
  return zlib.crc32(split.encode("utf-8"))


def example_rngs(seed: int, split: str, index: int, streams: int) -> list[np.random.Generator]:
  """Independent generators for one example, determined only by ``(seed, split, index)``."""
  sequence = np.random.SeedSequence([seed, split_code(split), index])
  return [np.random.default_rng(child) for child in sequence.spawn(streams)]


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
  """One element of ``options`` chosen uniformly."""
  return options[int(rng.integers(len(options)))]


# --- scene sampling ---------------------------------------------------------------------------------------------
def _unit_polygon(shape: str) -> np.ndarray:
  """Vertices ``[n, 2]`` of a shape centred on its bounding box and scaled so the farthest vertex is at 1."""
  if shape == "circle":
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    pts = np.stack([np.cos(t), np.sin(t)], 1)
  elif shape == "square":
    t = np.pi / 4 + np.arange(4) * np.pi / 2
    pts = np.stack([np.cos(t), np.sin(t)], 1)
  elif shape == "triangle":
    t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    pts = np.stack([np.cos(t), np.sin(t)], 1)
  elif shape == "star":
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
  elif shape == "hexagon":
    t = np.arange(6) * np.pi / 3
    pts = np.stack([np.cos(t), np.sin(t)], 1)
  elif shape == "cross":
    w = 0.34
    pts = np.array(
      [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)],
      float,
    )
  elif shape == "semicircle":
    t = np.linspace(0, np.pi, 17)
    pts = np.stack([np.cos(t), np.sin(t)], 1)
  else:
    raise ValueError(f"unknown shape {shape!r}; valid choices: {list(SHAPES)}")
  pts = pts - (pts.min(0) + pts.max(0)) / 2
  return pts / np.linalg.norm(pts, axis=1).max()


UNIT_POLYGONS: dict[str, np.ndarray] = {s: _unit_polygon(s) for s in SHAPES}


def max_object_extent(config: SceneConfig) -> float:
  """Largest distance (pixels) any object pixel can lie from its centre under ``config``."""
  return SIZE_RADIUS["large"][1] * config.image_size * config.object_scale * (1 + config.shape_jitter)


def occluder_half_side(config: SceneConfig) -> float:
  """Half side (pixels) of the occluding patch: covers the largest possible object with a margin."""
  return max_object_extent(config) + 2.0


def _place(radii: Sequence[float], size: int, rng: np.random.Generator) -> list[tuple[float, float]] | None:
  """Non-overlapping centres for objects of the given extents, horizontally separated; None when it fails."""
  placed: list[tuple[float, float]] = []
  for r in radii:
    for _ in range(_POSITION_ATTEMPTS):
      x, y = rng.uniform(r + 1, size - r - 1, 2)
      ok = all(
        math.hypot(x - px, y - py) >= r + pr + MIN_GAP * size and abs(x - px) >= MIN_DX * size
        for (px, py), pr in zip(placed, radii)
      )
      if ok:
        placed.append((float(x), float(y)))
        break
    else:
      return None
  return placed


def sample_background(size: int, rng: np.random.Generator) -> Background:
  """A low-saturation procedural texture, so saturated object colours stand out from it."""
  grey = rng.integers(60, 131)
  base = np.clip(grey + rng.integers(-10, 11, 3), 0, 255)
  accent = np.clip(base + rng.choice([-1, 1]) * rng.integers(15, 41) + rng.integers(-6, 7, 3), 0, 255)
  return Background(
    kind=str(_pick(rng, BACKGROUND_KINDS)),
    base=tuple(int(v) for v in base),
    accent=tuple(int(v) for v in accent),
    period=float(rng.uniform(0.12, 0.35) * size),
    angle=float(rng.uniform(0, np.pi)),
    phase=float(rng.uniform(0, 2 * np.pi)),
    blob_seed=int(rng.integers(2**31)),
  )


def sample_scene(config: SceneConfig, rng: np.random.Generator) -> Scene:
  """Samples a scene of 1–3 objects; the sequence of random draws does not depend on the hiding knobs."""
  size = config.image_size
  count = int(rng.integers(1, 4))
  for _ in range(_LAYOUT_ATTEMPTS):
    sizes = rng.integers(0, len(SIZES), count)
    radii = [float(rng.uniform(*SIZE_RADIUS[SIZES[s]]) * size * config.object_scale) for s in sizes]
    extents = [r * (1 + config.shape_jitter) for r in radii]
    centres = _place(extents, size, rng)
    if centres is not None:
      break
  else:
    raise RuntimeError(f"could not place {count} objects in a {size}px image")
  objects = []
  for s, r, (x, y) in zip(sizes, radii, centres):
    shape, colour, material = (int(rng.integers(n)) for n in (len(SHAPES), len(COLOURS), len(MATERIALS)))
    angle = float(rng.uniform(-config.max_rotation, config.max_rotation))
    tint = tuple(int(v) for v in rng.integers(-config.colour_jitter, config.colour_jitter + 1, 3))
    outline = tuple(float(v) for v in 1 + rng.uniform(-config.shape_jitter, config.shape_jitter, 32))
    grey_u, occlusion_u = rng.random(2)
    grey_level = int(rng.integers(GREY_LEVELS[0], GREY_LEVELS[1] + 1))
    objects.append(
      SceneObject(
        shape=shape,
        colour=colour,
        size=int(s),
        material=material,
        x=x,
        y=y,
        radius=r,
        angle=angle,
        tint=tint,
        outline=outline,
        greyed=bool(grey_u < config.grey_fraction),
        grey_level=grey_level,
        occluded=bool(occlusion_u < config.occlusion_fraction),
      )
    )
  objects.sort(key=lambda o: o.x)
  return Scene(
    image_size=size,
    objects=tuple(objects),
    background=sample_background(size, rng),
    noise_std=config.noise_std,
    noise_seed=int(rng.integers(2**31)),
  )


# --- rendering --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> np.ndarray:
  """Row and column coordinates ``float32 [2, size, size]`` of every pixel (read-only, cached per size)."""
  grid = np.mgrid[0:size, 0:size].astype(np.float32)
  grid.flags.writeable = False
  return grid


def background_pixels(background: Background, size: int) -> np.ndarray:
  """The background texture as ``float32 [size, size, 3]``: a per-pixel blend of its base and accent colours."""
  yy, xx = _pixel_grid(size)
  u = xx * math.cos(background.angle) + yy * math.sin(background.angle)
  if background.kind == "stripes":
    w = 0.5 + 0.5 * np.sin(2 * np.pi * u / background.period + background.phase)
  elif background.kind == "checker":
    v = -xx * math.sin(background.angle) + yy * math.cos(background.angle)
    w = ((np.floor(u / background.period) + np.floor(v / background.period)) % 2).astype(np.float32)
  elif background.kind == "blobs":
    coarse = np.random.default_rng(background.blob_seed).random((5, 5)).astype(np.float32)
    w = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
  elif background.kind == "gradient":
    w = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
  else:
    raise ValueError(f"unknown background kind {background.kind!r}; valid choices: {list(BACKGROUND_KINDS)}")
  base = np.asarray(background.base, np.float32)
  accent = np.asarray(background.accent, np.float32)
  return base * (1 - w[..., None]) + accent * w[..., None]


def object_polygon(obj: SceneObject) -> list[tuple[float, float]]:
  """Pixel coordinates of an object's outline: unit polygon × outline jitter × radius, rotated, translated."""
  unit = UNIT_POLYGONS[SHAPES[obj.shape]]
  pts = unit * np.asarray(obj.outline[: len(unit)])[:, None] * obj.radius
  a = math.radians(obj.angle)
  rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  pts = pts @ rot.T + np.array([obj.x, obj.y])
  return [(float(px), float(py)) for px, py in pts]


def object_fill(obj: SceneObject) -> tuple[int, int, int]:
  """The RGB an object is painted with: its tinted colour, or its colour-independent grey when washed out."""
  if obj.greyed:
    return (obj.grey_level,) * 3
  rgb = np.clip(np.asarray(COLOUR_RGB[COLOURS[obj.colour]]) + np.asarray(obj.tint), 0, 255)
  return tuple(int(v) for v in rgb)


def occluder_box(obj: SceneObject, half_side: float) -> tuple[float, float, float, float]:
  """Pixel box ``(x0, y0, x1, y1)`` of the patch that hides an occluded object."""
  return obj.x - half_side, obj.y - half_side, obj.x + half_side, obj.y + half_side


def render_scene(scene: Scene, config: SceneConfig) -> np.ndarray:
  """Renders a scene to ``uint8 [H, W, 3]``: background, occluding patches in place of occluded objects, the other
  objects on top (so a patch never covers a neighbour), then grey pixel noise.

  The result is a function of the scene's geometry, fills and noise seed only; materials are never read, and an
  object's colour is not read when it is washed out, nor any of its attributes when it is occluded.
  """
  size = scene.image_size
  canvas = Image.fromarray(np.clip(background_pixels(scene.background, size), 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  half = occluder_half_side(config)
  for obj in scene.objects:
    if obj.occluded:
      draw.rectangle(occluder_box(obj, half), fill=OCCLUDER_FILL, outline=OCCLUDER_OUTLINE, width=1)
  for obj in scene.objects:
    if not obj.occluded:
      draw.polygon(object_polygon(obj), fill=object_fill(obj))
  pixels = np.asarray(canvas, np.float32)
  noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise_std, (size, size, 1))
  return np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a ``uint8 [H, W, 3]`` image."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="png", compress_level=1)
  return buffer.getvalue()


# --- labels and information sources ---------------------------------------------------------------------------
def scene_labels(scene: Scene) -> dict[str, int]:
  """Class index of every label: attributes of the main (leftmost) object and count − 1."""
  main = scene.objects[0]
  return {
    "shape": main.shape,
    "colour": main.colour,
    "size": main.size,
    "material": main.material,
    "count": len(scene.objects) - 1,
  }


def attribute_visible(obj: SceneObject, attribute: str) -> bool:
  """Whether the image shows ``attribute`` of ``obj`` (material never; colour not when washed out or occluded)."""
  if attribute not in OBJECT_ATTRIBUTES:
    raise ValueError(f"unknown attribute {attribute!r}; valid choices: {list(OBJECT_ATTRIBUTES)}")
  if attribute == "material" or obj.occluded:
    return False
  return not (attribute == "colour" and obj.greyed)


def image_visibility(scene: Scene) -> dict[str, bool]:
  """Per label, whether this example's image shows it (count is always visible: occluders mark objects)."""
  main = scene.objects[0]
  flags = {a: attribute_visible(main, a) for a in OBJECT_ATTRIBUTES}
  flags["count"] = True
  return flags


def label_sources(config: SceneConfig) -> dict[str, str]:
  """Per label, which modality can state it under ``config``: ``image``, ``text``, ``both`` or ``none``.

  A label counts as shown by the image when at least some images show it (hiding fraction below 1); the
  per-example ``visible_in_image`` flags say which ones do.
  """
  in_image = {
    "shape": config.occlusion_fraction < 1,
    "colour": config.occlusion_fraction < 1 and config.grey_fraction < 1,
    "size": config.occlusion_fraction < 1,
    "material": False,
    "count": True,
  }
  sources = {}
  for label in SCENE_LABELS:
    in_text = label in config.caption_attributes
    sources[label] = {(True, True): "both", (True, False): "image", (False, True): "text", (False, False): "none"}[
      (in_image[label], in_text)
    ]
  return sources


def image_hidden_fractions(config: SceneConfig) -> dict[str, float]:
  """Per label, the expected fraction of examples whose image hides it."""
  visible_colour = (1 - config.occlusion_fraction) * (1 - config.grey_fraction)
  return {
    "shape": config.occlusion_fraction,
    "colour": 1 - visible_colour,
    "size": config.occlusion_fraction,
    "material": 1.0,
    "count": 0.0,
  }


# --- caption grammar --------------------------------------------------------------------------------------------
def article(phrase: str) -> str:
  """``"a"`` or ``"an"`` for a phrase, by whether its first letter is a vowel."""
  return "an" if phrase[:1] in "aeiou" else "a"


def join_and(items: Sequence[str]) -> str:
  """English list: ``x``, ``x and y``, ``x, y and z``."""
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def plural(noun: str) -> str:
  """Plural of a lexicon noun (``cross`` → ``crosses``)."""
  return noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"


def shape_word(shape: int, rng: np.random.Generator) -> str:
  """A synonym of the shape class."""
  return _pick(rng, SHAPE_WORDS[SHAPES[shape]])


def attribute_word(attribute: str, value: int, rng: np.random.Generator) -> str:
  """A synonym adjective of a colour, size or material class."""
  names = SCENE_LABELS[attribute]
  return _pick(rng, _ATTRIBUTE_WORDS[attribute][names[value]])


def noun_phrase(values: Mapping[str, int], rng: np.random.Generator, plural_noun: bool = False) -> tuple[str, str]:
  """``(article, body)`` describing attribute values, e.g. ``("a", "small red wooden circle")``.

  Only the attributes present in ``values`` are stated. Adjectives come before the noun in canonical or shuffled
  order, or after it ("circle that is small and red"); material may appear as "made of wood".
  """
  noun = shape_word(values["shape"], rng) if "shape" in values else _pick(rng, THING_WORDS)
  if plural_noun:
    noun = plural(noun)
  adjectives = [(a, attribute_word(a, values[a], rng)) for a in ("size", "colour", "material") if a in values]
  made_of = ""
  if "material" in values and rng.random() < 0.3:
    made_of = " made of " + MATERIAL_NOUNS[MATERIALS[values["material"]]]
    adjectives = [(a, w) for a, w in adjectives if a != "material"]
  words = [w for _, w in adjectives]
  if words and not plural_noun and rng.random() < 0.25:
    body = f"{noun} {_pick(rng, ('that is', 'which is'))} {join_and(words)}{made_of}"
  else:
    if len(words) > 1 and rng.random() < 0.4:
      words = [words[i] for i in rng.permutation(len(words))]
    body = " ".join(words + [noun]) + made_of
  return article(body), body


def object_values(obj: SceneObject, attributes: Sequence[str]) -> dict[str, int]:
  """The object's class indices of the given attributes."""
  return {a: getattr(obj, a) for a in OBJECT_ATTRIBUTES if a in attributes}


def caption_scene(scene: Scene, attributes: Sequence[str], rng: np.random.Generator) -> str:
  """One caption stating exactly ``attributes`` (see the module docstring for which objects it describes)."""
  phrases = [" ".join(noun_phrase(object_values(o, attributes), rng)) for o in scene.objects]
  if "count" not in attributes:
    template = _pick(
      rng, ("{}", "a picture of {}", "an image showing {}", "there is {}", "{} on a textured background")
    )
    return template.format(phrases[0])
  count = len(phrases)
  things = _pick(rng, THING_WORDS)
  things = things if count == 1 else plural(things)
  form = _pick(rng, ("number", "single") if count == 1 else ("number", "total", "left_to_right", "relation"))
  if form == "number":
    intro = _pick(rng, ("", "a picture of ", "an image with "))
    return f"{intro}{_pick(rng, NUMBER_PHRASES[count])} {things}: {join_and(phrases)}"
  if form == "single":
    return "a single " + noun_phrase(object_values(scene.objects[0], attributes), rng)[1]
  if form == "total":
    return f"{join_and(phrases)}, {COUNTS[count - 1]} {things} in total"
  if form == "left_to_right":
    return f"{_pick(rng, ('from left to right', 'left to right'))}: {join_and(phrases)}"
  if count == 2 and rng.random() < 0.5:
    return f"{phrases[1]} {_pick(rng, RIGHT_OF)} {phrases[0]}"
  return f"{phrases[0]} {_pick(rng, LEFT_OF)} {join_and(phrases[1:])}"


def make_captions(scene: Scene, config: SceneConfig, rng: np.random.Generator) -> list[str]:
  """``config.captions_per_image`` independently sampled captions of the scene."""
  return [caption_scene(scene, config.caption_attributes, rng) for _ in range(config.captions_per_image)]


def class_prompts(label: str) -> list[list[str]]:
  """Zero-shot prompts in the caption grammar: for each class of ``label`` (in class order), a few captions."""
  if label not in SCENE_LABELS:
    raise ValueError(f"unknown label {label!r}; valid choices: {list(SCENE_LABELS)}")
  prompts = []
  for index, name in enumerate(SCENE_LABELS[label]):
    if label == "shape":
      bodies = list(SHAPE_WORDS[name])
    elif label == "count":
      number = index + 1
      things = "shape" if number == 1 else "shapes"
      prompts.append([f"{name} {things}", f"a picture of {name} {things}"])
      continue
    else:
      adjective = _ATTRIBUTE_WORDS[label][name][0]
      bodies = [f"{adjective} {thing}" for thing in ("shape", "object")]
    phrases = [f"{article(b)} {b}" for b in bodies]
    prompts.append(phrases + [f"a picture of {p}" for p in phrases])
  return prompts


# --- task semantics (three-valued: True, False, None = the image cannot tell) -----------------------------------
def _and3(a: bool | None, b: bool | None) -> bool | None:
  """Kleene conjunction."""
  if a is False or b is False:
    return False
  return None if a is None or b is None else True


def _or3(a: bool | None, b: bool | None) -> bool | None:
  """Kleene disjunction."""
  if a is True or b is True:
    return True
  return None if a is None or b is None else False


def _not3(a: bool | None) -> bool | None:
  """Kleene negation."""
  return None if a is None else not a


def object_matches(obj: SceneObject, description: Mapping[str, int], image_only: bool) -> bool | None:
  """Whether ``obj`` has every attribute value in ``description``; None when ``image_only`` and the image hides
  a needed attribute without another one already ruling the object out."""
  result: bool | None = True
  for attribute, value in description.items():
    known = not image_only or attribute_visible(obj, attribute)
    result = _and3(result, (getattr(obj, attribute) == value) if known else None)
  return result


def scene_contains(scene: Scene, description: Mapping[str, int], image_only: bool) -> bool | None:
  """Whether some object matches ``description`` (three-valued when ``image_only``)."""
  result: bool | None = False
  for obj in scene.objects:
    result = _or3(result, object_matches(obj, description, image_only))
  return result


def count_range(scene: Scene, description: Mapping[str, int], image_only: bool) -> tuple[int, int]:
  """Least and greatest number of objects that may match ``description``."""
  matches = [object_matches(o, description, image_only) for o in scene.objects]
  return sum(m is True for m in matches), sum(m is not False for m in matches)


def _compare_counts(a: tuple[int, int], b: tuple[int, int], relation: str) -> bool | None:
  """Three-valued ``count_a <relation> count_b`` for counts known to lie in the closed ranges ``a`` and ``b``."""
  if relation == "more":
    return True if a[0] > b[1] else False if a[1] <= b[0] else None
  if relation == "fewer":
    return True if a[1] < b[0] else False if a[0] >= b[1] else None
  if a[0] == a[1] == b[0] == b[1]:
    return True
  return False if a[1] < b[0] or b[1] < a[0] else None


def sample_description(
  scene: Scene, rng: np.random.Generator, attributes: Sequence[str], present: bool
) -> dict[str, int]:
  """A description with 1–3 of ``attributes``: taken from a random object of the scene when ``present``, else
  drawn uniformly (which may still match by chance)."""
  k = int(rng.integers(1, min(3, len(attributes)) + 1))
  chosen = [attributes[i] for i in sorted(rng.choice(len(attributes), k, replace=False))]
  if present:
    obj = _pick(rng, scene.objects)
    return {a: getattr(obj, a) for a in chosen}
  return {a: int(rng.integers(len(SCENE_LABELS[a]))) for a in chosen}


def _reference(index: int, count: int) -> str:
  """Positional name of object ``index`` among ``count`` objects ordered left to right."""
  if count == 1:
    return "only"
  if index == 0:
    return "leftmost"
  return "rightmost" if index == count - 1 else "middle"


@dataclasses.dataclass(frozen=True)
class VqaItem:
  """A VQA question about one scene, its answer index in :data:`VQA_ANSWERS`, and whether the image shows it."""

  question: str
  answer: int
  question_type: str
  answerable: bool


_VQA_WEIGHTS = {
  "count": 0.2,
  "count_shape": 0.15,
  "shape": 0.15,
  "colour": 0.2,
  "size": 0.1,
  "material": 0.05,
  "exists": 0.15,
}


def make_vqa(scene: Scene, rng: np.random.Generator) -> VqaItem:
  """Samples a question about the scene with its true answer (from the full scene, hidden attributes included)."""
  kind = str(rng.choice(VQA_QUESTION_TYPES, p=[_VQA_WEIGHTS[t] for t in VQA_QUESTION_TYPES]))
  objects = scene.objects
  if kind == "count":
    question = f"how many {plural(_pick(rng, THING_WORDS))} {_pick(rng, ('are there', 'are in the image'))}?"
    return VqaItem(question, VQA_ANSWERS.index(COUNTS[len(objects) - 1]), kind, True)
  if kind == "count_shape":
    shape = _pick(rng, objects).shape if rng.random() < 0.5 else int(rng.integers(len(SHAPES)))
    lo, hi = count_range(scene, {"shape": shape}, image_only=True)
    n = sum(o.shape == shape for o in objects)
    question = f"how many {plural(shape_word(shape, rng))} are there?"
    return VqaItem(question, VQA_ANSWERS.index((("zero",) + COUNTS)[n]), kind, lo == hi)
  if kind == "exists":
    description = sample_description(scene, rng, ("shape", "colour", "size"), present=rng.random() < 0.5)
    det, body = noun_phrase(description, rng)
    truth = scene_contains(scene, description, image_only=False)
    answerable = scene_contains(scene, description, image_only=True) is not None
    return VqaItem(f"is there {det} {body}?", VQA_ANSWERS.index("yes" if truth else "no"), kind, answerable)
  index = int(rng.integers(len(objects)))
  obj = objects[index]
  ref = f"the {_reference(index, len(objects))} {_pick(rng, THING_WORDS[1:])}"
  templates = {
    "shape": (f"what shape is {ref}?", f"which shape is {ref}?"),
    "colour": (f"what colour is {ref}?", f"which colour does {ref} have?"),
    "size": (f"what size is {ref}?", f"is {ref} small or large?"),
    "material": (f"what is {ref} made of?", f"what material is {ref}?"),
  }
  answer = SCENE_LABELS[kind][getattr(obj, kind)]
  return VqaItem(_pick(rng, templates[kind]), VQA_ANSWERS.index(answer), kind, attribute_visible(obj, kind))


@dataclasses.dataclass(frozen=True)
class NlvrItem:
  """A statement about a pair of scenes (left = ``image``, right = ``image2``), its truth and whether the images
  show enough to decide it."""

  statement: str
  target: int
  answerable: bool


def _nlvr_candidate(left: Scene, right: Scene, rng: np.random.Generator) -> tuple[str, Callable[[bool], bool | None]]:
  """A random statement about two scenes and its three-valued evaluator ``image_only -> truth``."""
  kind = _pick(rng, ("compare", "both", "side", "exactly_one", "neither"))
  attributes = ("shape", "colour", "size")
  if kind == "compare":
    description = (
      {} if rng.random() < 0.5 else sample_description(_pick(rng, (left, right)), rng, attributes, present=True)
    )
    things = plural(_pick(rng, THING_WORDS)) if not description else noun_phrase(description, rng, True)[1]
    relation = _pick(rng, ("more", "fewer", "same"))
    first, second = _pick(rng, (("left", "right"), ("right", "left")))
    scenes = {"left": left, "right": right}
    if relation == "same":
      statement = f"the two images contain the same number of {things}"
    else:
      statement = f"the {first} image contains {relation} {things} than the {second} image"
    return statement, lambda image_only: _compare_counts(
      count_range(scenes[first], description, image_only),
      count_range(scenes[second], description, image_only),
      relation,
    )
  description = sample_description(_pick(rng, (left, right)), rng, attributes, present=rng.random() < 0.6)
  phrase = " ".join(noun_phrase(description, rng))
  if kind == "both":
    return f"both images contain {phrase}", lambda image_only: _and3(
      scene_contains(left, description, image_only), scene_contains(right, description, image_only)
    )
  if kind == "side":
    side = _pick(rng, ("left", "right"))
    scene = left if side == "left" else right
    statement = _pick(rng, (f"the {side} image contains {phrase}", f"there is {phrase} in the {side} image"))
    return statement, lambda image_only: scene_contains(scene, description, image_only)
  if kind == "exactly_one":

    def exactly_one(image_only: bool) -> bool | None:
      a, b = scene_contains(left, description, image_only), scene_contains(right, description, image_only)
      return None if a is None or b is None else a != b

    return f"exactly one image contains {phrase}", exactly_one
  return f"neither image contains {phrase}", lambda image_only: _not3(
    _or3(scene_contains(left, description, image_only), scene_contains(right, description, image_only))
  )


def make_nlvr(left: Scene, right: Scene, rng: np.random.Generator) -> NlvrItem:
  """Samples a statement about two scenes, true or false with equal probability (when a try of that truth is
  found), with its truth from the full scenes."""
  want = bool(rng.random() < 0.5)
  for _ in range(_TASK_ATTEMPTS):
    statement, evaluate = _nlvr_candidate(left, right, rng)
    if evaluate(False) == want:
      break
  truth = bool(evaluate(False))
  return NlvrItem(statement, int(truth), evaluate(True) is not None)


@dataclasses.dataclass(frozen=True)
class VeItem:
  """A hypothesis about one scene, its entailment target (index into :data:`VE_LABELS`) and its truth in the full
  scene (which may differ from what the image shows)."""

  hypothesis: str
  target: int
  hypothesis_true: bool


def _ve_candidate(scene: Scene, rng: np.random.Generator) -> tuple[str, Callable[[bool], bool | None]]:
  """A random hypothesis about a scene and its three-valued evaluator ``image_only -> truth``."""
  kind = _pick(rng, ("exists", "count", "leftmost"))
  description = sample_description(scene, rng, OBJECT_ATTRIBUTES, present=rng.random() < 0.6)
  if kind == "count":
    if rng.random() < 0.5:
      description = {}
    n = int(rng.integers(1, 4))
    if description:
      things = noun_phrase(description, rng, plural_noun=n > 1)[1]
    else:
      thing = _pick(rng, THING_WORDS)
      things = thing if n == 1 else plural(thing)
    hypothesis = f"there is exactly one {things}" if n == 1 else f"there are exactly {COUNTS[n - 1]} {things}"

    def count_equals(image_only: bool) -> bool | None:
      lo, hi = count_range(scene, description, image_only)
      return True if lo == hi == n else False if not lo <= n <= hi else None

    return hypothesis, count_equals
  phrase = " ".join(noun_phrase(description, rng))
  if kind == "exists":
    hypothesis = _pick(rng, (f"there is {phrase}", f"the image contains {phrase}", f"the picture shows {phrase}"))
    return hypothesis, lambda image_only: scene_contains(scene, description, image_only)
  hypothesis = f"the leftmost {_pick(rng, THING_WORDS[1:])} is {phrase}"
  return hypothesis, lambda image_only: object_matches(scene.objects[0], description, image_only)


def make_ve(scene: Scene, rng: np.random.Generator) -> VeItem:
  """Samples a hypothesis with a target chosen uniformly among entailment / neutral / contradiction (when a try
  with it is found). Rule: entailment if the image shows it is true, contradiction if the image shows it is false,
  neutral if it depends on what the image cannot show (material, washed-out colour, occluded objects)."""
  want = int(rng.integers(len(VE_LABELS)))
  for _ in range(_TASK_ATTEMPTS):
    hypothesis, evaluate = _ve_candidate(scene, rng)
    if ve_target(evaluate(True)) == want:
      break
  return VeItem(hypothesis, ve_target(evaluate(True)), bool(evaluate(False)))


def ve_target(image_truth: bool | None) -> int:
  """Entailment target of a hypothesis whose truth as far as the image shows is ``image_truth``."""
  return VE_LABELS.index({True: "entailment", None: "neutral", False: "contradiction"}[image_truth])


# --- stored examples ------------------------------------------------------------------------------------------------
def split_kind(split: str) -> str:
  """Kind of examples a split holds (``captions``, ``vqa``, ``nlvr`` or ``ve``)."""
  if split not in SPLIT_KINDS:
    raise ValueError(f"unknown split {split!r}; valid choices: {list(SPLIT_KINDS)}")
  return SPLIT_KINDS[split]


def objects_record(scene: Scene) -> dict[str, list]:
  """Per-object columns of a scene, left to right: attribute indices, centre, radius and hiding flags."""
  return {
    "shape": [o.shape for o in scene.objects],
    "colour": [o.colour for o in scene.objects],
    "size": [o.size for o in scene.objects],
    "material": [o.material for o in scene.objects],
    "x": [o.x for o in scene.objects],
    "y": [o.y for o in scene.objects],
    "radius": [o.radius for o in scene.objects],
    "greyed": [o.greyed for o in scene.objects],
    "occluded": [o.occluded for o in scene.objects],
  }


def example_scenes(config: SceneConfig, split: str, index: int) -> tuple[Scene, Scene | None]:
  """The scene of example ``index`` of ``split`` and, for NLVR splits, the second scene."""
  rngs = example_rngs(config.seed, split, index, 4)
  return _scenes_from(config, split, rngs)


def _scenes_from(config: SceneConfig, split: str, rngs: Sequence[np.random.Generator]) -> tuple[Scene, Scene | None]:
  """The example's scene from stream 0 and, for NLVR splits, its second scene from stream 3."""
  second = sample_scene(config, rngs[3]) if split_kind(split) == "nlvr" else None
  return sample_scene(config, rngs[0]), second


def example_record(config: SceneConfig, split: str, index: int) -> dict[str, Any]:
  """The stored example ``index`` of ``split``: PNG bytes, captions, labels, visibility flags, per-object columns
  and the task keys of the split's kind (:data:`TASK_KEYS`)."""
  kind = split_kind(split)
  rngs = example_rngs(config.seed, split, index, 4)
  scene, second = _scenes_from(config, split, rngs)
  caption_rng, task_rng = rngs[1], rngs[2]
  record: dict[str, Any] = {
    "image": encode_png(render_scene(scene, config)),
    "image_id": f"{split}-{index:06d}",
    "captions": make_captions(scene, config, caption_rng),
    "labels": scene_labels(scene),
    "visible_in_image": image_visibility(scene),
    "objects": objects_record(scene),
  }
  if kind == "vqa":
    item = make_vqa(scene, task_rng)
    record.update(
      question=item.question, answer=item.answer, question_type=item.question_type, answerable=item.answerable
    )
  elif kind == "nlvr":
    item = make_nlvr(scene, second, task_rng)
    record.update(
      image2=encode_png(render_scene(second, config)),
      objects2=objects_record(second),
      statement=item.statement,
      target=item.target,
      answerable=item.answerable,
    )
  elif kind == "ve":
    item = make_ve(scene, task_rng)
    record.update(hypothesis=item.hypothesis, target=item.target, hypothesis_true=item.hypothesis_true)
  return record
