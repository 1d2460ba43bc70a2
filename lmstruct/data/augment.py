"""Image preprocessing and augmentation in NumPy/PIL, driven by an explicit ``np.random.Generator``.

Every random choice is drawn from the generator passed in, so a view is a pure function of (image, generator
state): the input pipeline seeds one generator per example and gets the same augmentation on every run, in any
worker process.

* :func:`clip_preprocess` is CLIP's evaluation transform: resize the shorter side to ``S`` (bicubic), take the
  central ``S x S`` crop, scale to [0, 1] and normalise with CLIP's channel mean and standard deviation.
* :class:`ImageAugmentation` produces the augmented training view. Its stages run in a fixed order, each one
  optional: random resized crop (else CLIP's resize + centre crop), random zoom-out, horizontal flip, colour jitter
  and a RandAugment-style policy (``num_ops`` operations of magnitude ``magnitude`` on a 0-10 scale, drawn from a
  named op list). :func:`augmentation_from_config` builds one from a dict or ``ml_collections`` config, for
  example::

      {"random_resized_crop": {"scale": (0.5, 1.0), "ratio": (3 / 4, 4 / 3)},
       "horizontal_flip": {"p": 0.5},
       "color_jitter": {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
       "rand_augment": {"num_ops": 2, "magnitude": 9, "ops": ("rotate", "shear_x", "color")}}

Augmentations and captions: a view must not contradict the caption it is trained against. A horizontal flip swaps
"left" and "right"; hue, saturation and the colour-changing RandAugment ops (solarize, color, autocontrast,
equalize) change named colours; crops, translations, rotations and shears can cut a named object out of the
frame. :func:`caption_safe_augment_config` (the default) applies only what keeps every object whole, in place
relative to the others and in its colour: a random zoom-out and brightness/contrast jitter.

The single-image operations take and return RGB ``PIL.Image`` objects (uint8); the final view is a float32
``[S, S, 3]`` array in CLIP-normalised units.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

#: Grey used to fill the area uncovered by geometric RandAugment ops.
FILL = (128, 128, 128)
#: Largest RandAugment magnitude; ``magnitude / MAX_MAGNITUDE`` scales each op's strongest setting.
MAX_MAGNITUDE = 10.0


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
  """Returns ``image`` as an RGB PIL image; arrays must be uint8 ``[H, W, 3]`` (or ``[H, W]`` grey)."""
  if isinstance(image, Image.Image):
    return image if image.mode == "RGB" else image.convert("RGB")
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {array.dtype} {array.shape}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  image = Image.fromarray(array)
  return image if image.mode == "RGB" else image.convert("RGB")


_NORMALIZE_SCALE = (1.0 / (255.0 * CLIP_STD)).astype(np.float32)
_NORMALIZE_OFFSET = (CLIP_MEAN / CLIP_STD).astype(np.float32)


def normalize(image: np.ndarray | Image.Image) -> np.ndarray:
  """Maps uint8 RGB pixels to float32 ``(pixel / 255 - CLIP_MEAN) / CLIP_STD``, channel-last (computed in place as
  ``pixel * (1 / (255 CLIP_STD)) - CLIP_MEAN / CLIP_STD``)."""
  pixels = np.asarray(to_pil(image), dtype=np.float32)
  pixels *= _NORMALIZE_SCALE
  pixels -= _NORMALIZE_OFFSET
  return pixels


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Resizes (bicubic) so the shorter side is ``size``; the longer side is ``int(size * long / short)``."""
  width, height = image.size
  if width <= height:
    new_size = (size, int(size * height / width))
  else:
    new_size = (int(size * width / height), size)
  return image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """Returns the central ``size x size`` window (offsets ``round((extent - size) / 2)``)."""
  width, height = image.size
  if width < size or height < size:
    raise ValueError(f"cannot centre-crop {size}x{size} from a {width}x{height} image")
  left = int(round((width - size) / 2.0))
  top = int(round((height - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def clip_preprocess(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
  """CLIP evaluation transform: shorter side to ``size`` (bicubic), centre crop, normalise; float32 [S, S, 3]."""
  return normalize(center_crop(resize_shorter_side(to_pil(image), size), size))


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
  """Crops a random window and resizes it (bicubic) to ``size x size``.

  The window covers a fraction of the image area drawn uniformly from ``scale`` and has an aspect ratio
  (width / height) drawn log-uniformly from ``ratio``; its position is uniform. Up to ten draws are tried;
  if none fits inside the image the largest central window with an aspect ratio clipped to ``ratio`` is used.
  """
  width, height = image.size
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      break
  else:
    image_ratio = width / height
    if image_ratio < ratio[0]:
      crop_w, crop_h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
      crop_w, crop_h = int(round(height * ratio[1])), height
    else:
      crop_w, crop_h = width, height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
  return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))


def random_zoom_out(image: Image.Image, rng: np.random.Generator, scale: tuple[float, float]) -> Image.Image:
  """Shrinks the image by a factor s ~ U(scale) (bicubic) and pastes it at a uniformly drawn position on a canvas of
  the original size, filled with the image's mean colour.

  Every object stays whole and keeps its left-to-right and top-to-bottom order and its size relative to the others;
  absolute sizes scale by s.
  """
  width, height = image.size
  factor = rng.uniform(scale[0], scale[1])
  new_w, new_h = max(1, int(round(width * factor))), max(1, int(round(height * factor)))
  left = int(rng.integers(0, width - new_w + 1))
  top = int(rng.integers(0, height - new_h + 1))
  fill = tuple(int(round(c)) for c in np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0))
  canvas = Image.new("RGB", (width, height), fill)
  canvas.paste(image.resize((new_w, new_h), Image.Resampling.BICUBIC), (left, top))
  return canvas


def horizontal_flip(image: Image.Image) -> Image.Image:
  """Mirrors the image left to right."""
  return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
  """Rotates every pixel's hue by ``shift`` turns (``shift`` in [-0.5, 0.5]) in PIL's 8-bit HSV space."""
  hue, saturation, value = image.convert("HSV").split()
  rotated = (np.asarray(hue, dtype=np.int16) + int(round(shift * 255))) % 256
  hue = Image.fromarray(rotated.astype(np.uint8), mode="L")
  return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def color_jitter(image: Image.Image, rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0) -> Image.Image:
  """Applies brightness, contrast, saturation and hue changes in a random order.

  Brightness, contrast and saturation factors are uniform in ``[max(0, 1 - x), 1 + x]``; the hue shift is
  uniform in ``[-hue, hue]`` turns. A zero strength leaves that property untouched.
  """
  def enhancer(kind: type, strength: float) -> Callable[[Image.Image], Image.Image]:
    factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
    return lambda img: kind(img).enhance(factor)

  steps = []
  if brightness > 0:
    steps.append(enhancer(ImageEnhance.Brightness, brightness))
  if contrast > 0:
    steps.append(enhancer(ImageEnhance.Contrast, contrast))
  if saturation > 0:
    steps.append(enhancer(ImageEnhance.Color, saturation))
  if hue > 0:
    shift = rng.uniform(-hue, hue)
    steps.append(lambda img: adjust_hue(img, shift))
  for position in rng.permutation(len(steps)):
    image = steps[position](image)
  return image


def _signed(rng: np.random.Generator, value: float) -> float:
  """Returns ``value`` with a random sign."""
  return value if rng.random() < 0.5 else -value


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
  """Applies a PIL affine map (output pixel -> input pixel) with bilinear sampling and grey fill."""
  return image.transform(image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR,
                         fillcolor=FILL)


def _enhance(kind: type) -> Callable[[Image.Image, float, np.random.Generator], Image.Image]:
  """Builds an op that scales a PIL enhancement factor to ``1 +/- 0.9 * level``."""
  return lambda image, level, rng: kind(image).enhance(1.0 + _signed(rng, 0.9 * level))


def _shear_x(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Shears horizontally about the centre by up to 0.3 (slope) at full level."""
  shear = _signed(rng, 0.3 * level)
  return _affine(image, (1.0, shear, -shear * image.size[1] / 2.0, 0.0, 1.0, 0.0))


def _shear_y(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Shears vertically about the centre by up to 0.3 (slope) at full level."""
  shear = _signed(rng, 0.3 * level)
  return _affine(image, (1.0, 0.0, 0.0, shear, 1.0, -shear * image.size[0] / 2.0))


def _translate_x(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Shifts horizontally by up to 45% of the width at full level."""
  return _affine(image, (1.0, 0.0, _signed(rng, 0.45 * level * image.size[0]), 0.0, 1.0, 0.0))


def _translate_y(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Shifts vertically by up to 45% of the height at full level."""
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, _signed(rng, 0.45 * level * image.size[1])))


def _rotate(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Rotates about the centre by up to 30 degrees at full level."""
  return image.rotate(_signed(rng, 30.0 * level), resample=Image.Resampling.BILINEAR, fillcolor=FILL)


def _solarize(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Inverts pixels at or above a threshold falling from 256 (no change) to 0 (full inversion)."""
  return ImageOps.solarize(image, threshold=int(round(256 * (1.0 - level))))


def _posterize(image: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
  """Keeps ``8 - round(4 * level)`` bits per channel."""
  return ImageOps.posterize(image, 8 - int(round(4 * level)))


#: RandAugment operations: name -> op(image, level in [0, 1], rng).
RANDAUGMENT_OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "identity": lambda image, level, rng: image,
    "autocontrast": lambda image, level, rng: ImageOps.autocontrast(image),
    "equalize": lambda image, level, rng: ImageOps.equalize(image),
    "rotate": _rotate,
    "solarize": _solarize,
    "color": _enhance(ImageEnhance.Color),
    "posterize": _posterize,
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


#: RandAugment ops that keep every object whole, in place and in its colour (see the module docstring).
CAPTION_SAFE_OPS: tuple[str, ...] = ("identity", "brightness", "contrast", "sharpness")


def _check_ops(ops: Sequence[str]) -> tuple[str, ...]:
  """Returns ``ops`` as a tuple after checking every name is a RandAugment op."""
  for name in ops:
    if name not in RANDAUGMENT_OPS:
      raise ValueError(f"unknown RandAugment op {name!r}; valid ops: {', '.join(RANDAUGMENT_OPS)}")
  if not ops:
    raise ValueError("RandAugment needs at least one op")
  return tuple(ops)


def _check_magnitude(magnitude: float) -> float:
  """Returns ``magnitude`` after checking it lies in [0, MAX_MAGNITUDE]."""
  if not 0.0 <= magnitude <= MAX_MAGNITUDE:
    raise ValueError(f"RandAugment magnitude must be in [0, {MAX_MAGNITUDE:g}], got {magnitude}")
  return float(magnitude)


def apply_op(image: Image.Image, name: str, magnitude: float, rng: np.random.Generator) -> Image.Image:
  """Applies the RandAugment op ``name`` at ``magnitude`` (0-10 scale); signed ops draw their sign from ``rng``."""
  _check_ops([name])
  return RANDAUGMENT_OPS[name](image, _check_magnitude(magnitude) / MAX_MAGNITUDE, rng)


def rand_augment(image: Image.Image, rng: np.random.Generator, num_ops: int, magnitude: float,
                 ops: Sequence[str] = tuple(RANDAUGMENT_OPS)) -> Image.Image:
  """Applies ``num_ops`` ops drawn uniformly (with replacement) from ``ops``, each at ``magnitude``."""
  ops = _check_ops(ops)
  for index in rng.integers(0, len(ops), size=num_ops):
    image = apply_op(image, ops[index], magnitude, rng)
  return image


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
  """Random resized crop settings: area fraction range ``scale`` and aspect-ratio range ``ratio``."""
  scale: tuple[float, float] = (0.08, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)

  def __post_init__(self):
    """Validates the ranges."""
    low, high = self.scale
    if not 0.0 < low <= high <= 1.0:
      raise ValueError(f"random_resized_crop.scale must satisfy 0 < low <= high <= 1, got {self.scale}")
    if not 0.0 < self.ratio[0] <= self.ratio[1]:
      raise ValueError(f"random_resized_crop.ratio must satisfy 0 < low <= high, got {self.ratio}")


@dataclasses.dataclass(frozen=True)
class RandomZoomOut:
  """With probability ``p``, shrink by a factor drawn from ``scale`` and paste at a random position."""
  scale: tuple[float, float] = (0.8, 1.0)
  p: float = 1.0

  def __post_init__(self):
    """Validates the range and the probability."""
    low, high = self.scale
    if not 0.0 < low <= high <= 1.0:
      raise ValueError(f"random_zoom_out.scale must satisfy 0 < low <= high <= 1, got {self.scale}")
    _check_probability("random_zoom_out.p", self.p)


@dataclasses.dataclass(frozen=True)
class HorizontalFlip:
  """Mirror the image with probability ``p``."""
  p: float = 0.5

  def __post_init__(self):
    """Validates the probability."""
    _check_probability("horizontal_flip.p", self.p)


@dataclasses.dataclass(frozen=True)
class ColorJitter:
  """With probability ``p``, jitter brightness/contrast/saturation (factor spread) and hue (turns, <= 0.5)."""
  p: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1

  def __post_init__(self):
    """Validates the strengths."""
    _check_probability("color_jitter.p", self.p)
    for name in ("brightness", "contrast", "saturation"):
      if getattr(self, name) < 0:
        raise ValueError(f"color_jitter.{name} must be >= 0, got {getattr(self, name)}")
    if not 0.0 <= self.hue <= 0.5:
      raise ValueError(f"color_jitter.hue must be in [0, 0.5], got {self.hue}")


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """``num_ops`` ops of magnitude ``magnitude`` (0-10) drawn from the named ``ops``."""
  num_ops: int = 2
  magnitude: float = 9.0
  ops: tuple[str, ...] = tuple(RANDAUGMENT_OPS)

  def __post_init__(self):
    """Validates the op names, count and magnitude."""
    object.__setattr__(self, "ops", _check_ops(tuple(self.ops)))
    _check_magnitude(self.magnitude)
    if self.num_ops < 0:
      raise ValueError(f"rand_augment.num_ops must be >= 0, got {self.num_ops}")


def _check_probability(name: str, p: float) -> None:
  """Raises if ``p`` is not a probability."""
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {p}")


@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
  """The augmented training view: each stage that is not ``None`` runs, in field order.

  Without ``random_resized_crop`` the geometry is CLIP's evaluation resize + centre crop.
  """
  random_resized_crop: RandomResizedCrop | None = None
  random_zoom_out: RandomZoomOut | None = None
  horizontal_flip: HorizontalFlip | None = None
  color_jitter: ColorJitter | None = None
  rand_augment: RandAugment | None = None

  def view(self, image: np.ndarray | Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Returns the augmented ``size x size`` uint8 RGB view of ``image``."""
    image = to_pil(image)
    if self.random_resized_crop is not None:
      crop = self.random_resized_crop
      image = random_resized_crop(image, rng, size, crop.scale, crop.ratio)
    else:
      image = center_crop(resize_shorter_side(image, size), size)
    if self.random_zoom_out is not None and rng.random() < self.random_zoom_out.p:
      image = random_zoom_out(image, rng, self.random_zoom_out.scale)
    if self.horizontal_flip is not None and rng.random() < self.horizontal_flip.p:
      image = horizontal_flip(image)
    if self.color_jitter is not None and rng.random() < self.color_jitter.p:
      jitter = self.color_jitter
      image = color_jitter(image, rng, jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    if self.rand_augment is not None:
      policy = self.rand_augment
      image = rand_augment(image, rng, policy.num_ops, policy.magnitude, policy.ops)
    return image

  def __call__(self, image: np.ndarray | Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Returns the augmented view as a CLIP-normalised float32 ``[size, size, 3]`` array."""
    return normalize(self.view(image, rng, size))


def caption_contradictions(augmentation: ImageAugmentation) -> list[str]:
  """The stages of `augmentation` that can make a view contradict its caption (module docstring), each with the
  reason; empty when every stage is caption-safe. A random resized crop counts when its area range goes below 1."""
  reasons = []
  if augmentation.random_resized_crop is not None and augmentation.random_resized_crop.scale[0] < 1.0:
    reasons.append("random_resized_crop can cut a named object out of the frame")
  if augmentation.horizontal_flip is not None and augmentation.horizontal_flip.p > 0:
    reasons.append("horizontal_flip swaps 'left' and 'right'")
  jitter = augmentation.color_jitter
  if jitter is not None and jitter.p > 0 and (jitter.hue > 0 or jitter.saturation > 0):
    reasons.append("color_jitter with hue or saturation changes named colours")
  policy = augmentation.rand_augment
  if policy is not None and policy.num_ops > 0:
    unsafe = sorted(set(policy.ops) - set(CAPTION_SAFE_OPS))
    if unsafe:
      reasons.append(f"rand_augment ops {unsafe} move, cut or recolour objects (caption-safe ops: "
                     f"{list(CAPTION_SAFE_OPS)})")
  return reasons


_STAGES: dict[str, type] = {
    "random_resized_crop": RandomResizedCrop,
    "random_zoom_out": RandomZoomOut,
    "horizontal_flip": HorizontalFlip,
    "color_jitter": ColorJitter,
    "rand_augment": RandAugment,
}


def _plain(config: Any) -> Any:
  """Turns an ``ml_collections`` (Frozen)ConfigDict into nested plain dicts; other values pass through."""
  return config.to_dict() if hasattr(config, "to_dict") else config


def _build_stage(name: str, settings: Any) -> Any:
  """Builds stage ``name`` from its settings mapping, rejecting unknown fields."""
  settings = _plain(settings)
  if settings is None or settings is False:
    return None
  if settings is True:
    settings = {}
  if not isinstance(settings, Mapping):
    raise ValueError(f"augmentation stage {name!r} needs a mapping of settings, got {settings!r}")
  stage = _STAGES[name]
  valid = [field.name for field in dataclasses.fields(stage)]
  for key in settings:
    if key not in valid:
      raise ValueError(f"unknown setting {key!r} for augmentation stage {name!r}; valid settings: "
                       f"{', '.join(valid)}")
  values = {key: tuple(value) if isinstance(value, (list, tuple)) else value for key, value in settings.items()}
  return stage(**values)


def augmentation_from_config(config: Mapping[str, Any] | Any | None) -> ImageAugmentation:
  """Builds an :class:`ImageAugmentation` from ``{stage name: settings}`` (dict or ml_collections config).

  Valid stage names are ``random_resized_crop``, ``random_zoom_out``, ``horizontal_flip``, ``color_jitter`` and
  ``rand_augment``;
  a stage set to ``None``/``False`` (or absent) is off, ``True`` uses its defaults. ``None`` gives no
  augmentation at all (the view equals :func:`clip_preprocess`).
  """
  config = _plain(config) or {}
  if not isinstance(config, Mapping):
    raise ValueError(f"augmentation config must be a mapping of stage settings, got {config!r}")
  for name in config:
    if name not in _STAGES:
      raise ValueError(f"unknown augmentation stage {name!r}; valid stages: {', '.join(_STAGES)}")
  return ImageAugmentation(**{name: _build_stage(name, settings) for name, settings in config.items()})


def training_augmentation(section: Mapping[str, Any] | Any | None) -> ImageAugmentation:
  """The augmentation a run's ``data.augment`` section gives its training views: the configured stages, or
  :func:`caption_safe_augment_config` when the section is empty or ``None`` (as the training driver reads it)."""
  return augmentation_from_config(_plain(section) or caption_safe_augment_config())


def caption_safe_augment_config(zoom_out: tuple[float, float] = (0.8, 1.0), brightness: float = 0.3,
                                contrast: float = 0.3) -> dict[str, Any]:
  """The default training view, which cannot contradict a caption (module docstring): a random zoom-out by a factor
  in ``zoom_out`` and, with probability 0.8, brightness and contrast factors in [1 − x, 1 + x] (no hue or
  saturation change, no flip, no crop)."""
  return {
      "random_zoom_out": {"scale": tuple(zoom_out)},
      "color_jitter": {"p": 0.8, "brightness": brightness, "contrast": contrast, "saturation": 0.0, "hue": 0.0},
  }
