"""Prompt templates for zero-shot classification and the text normalisation applied to prompts.

A template is a string with exactly one ``{}`` placeholder, replaced by the class name. Named template sets:

* ``paper`` -- the single prompt of Jiang et al. (CVPR 2023): ``"a photo of the {}."``.
* ``clip_imagenet`` -- the 80 ImageNet prompts of CLIP (Radford et al. 2021, prompt-engineering notebook); CLIP uses
  them for ImageNet-V2, -Sketch, -A and -R too.
* ``clip_<dataset>`` -- CLIP's published prompts (``data/prompts.md`` of the CLIP repository) for the other datasets
  of the evaluation suite: ``cifar10``, ``cifar100``, ``caltech101``, ``dtd``, ``fgvc_aircraft``, ``flowers102``,
  ``food101``, ``gtsrb``, ``oxford_pets``, ``rendered_sst2`` (CLIP's SST2 prompt), ``stl10``, ``stanford_cars``.
* ``scenes_<label>`` for ``<label>`` in shape, colour, count, size, material -- prompts for the labels of the
  embedded scenes dataset, whose class names are nouns (shape: ``circle``) or adjectives (colour: ``red``, size:
  ``small``, material: ``wooden``, count: ``one``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from lmstruct.choices import unknown_choice

PAPER_TEMPLATES: tuple[str, ...] = ("a photo of the {}.",)

CLIP_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_CLIP_CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

CLIP_DATASET_TEMPLATES: dict[str, tuple[str, ...]] = {
    "cifar10": _CLIP_CIFAR_TEMPLATES,
    "cifar100": _CLIP_CIFAR_TEMPLATES,
    "caltech101": (
        "a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.", "a sketch of a {}.",
        "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.", "a embroidered {}.", "a cartoon {}.",
        "a {} in a video game.", "a plushie {}.", "a origami {}.", "art of a {}.", "graffiti of a {}.",
        "a drawing of a {}.", "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}.",
        "a sculpture of the {}.", "a sketch of the {}.", "a tattoo of the {}.", "the toy {}.",
        "a rendition of the {}.", "the embroidered {}.", "the cartoon {}.", "the {} in a video game.",
        "the plushie {}.", "the origami {}.", "art of the {}.", "graffiti of the {}.", "a drawing of the {}.",
        "a doodle of the {}.",
    ),
    "dtd": (
        "a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.", "a photo of a {} object.",
        "a photo of the {} texture.", "a photo of the {} pattern.", "a photo of the {} thing.",
        "a photo of the {} object.",
    ),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
    "flowers102": ("a photo of a {}, a type of flower.",),
    "food101": ("a photo of {}, a type of food.",),
    "gtsrb": (
        'a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
    ),
    "oxford_pets": ("a photo of a {}, a type of pet.",),
    "rendered_sst2": ("a {} review of a movie.",),
    "stl10": ("a photo of a {}.", "a photo of the {}."),
    "stanford_cars": (
        "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
        "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}.",
    ),
}

SCENES_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a photo of a {} shape.", "a {} object.", "a photo of a {}.", "a scene with a {}."),
    "colour": ("a photo of a {} object.", "a {} object.", "a scene with a {} object.", "something {}."),
    "count": ("a photo of {} object(s).", "{} object(s).", "a scene with {} object(s).",
              "the number of objects is {}."),
    "size": ("a photo of a {} object.", "a {} object.", "a scene with a {} object.", "a {} thing."),
    "material": ("a photo of a {} object.", "a {} object.", "a scene with a {} object.", "a {} thing."),
}

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_TEMPLATES,
    "clip_imagenet": CLIP_IMAGENET_TEMPLATES,
    **{f"clip_{dataset}": templates for dataset, templates in CLIP_DATASET_TEMPLATES.items()},
    **{f"scenes_{label}": templates for label, templates in SCENES_TEMPLATES.items()},
}

_WHITESPACE = re.compile(r"\s+")


def get_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
  """Returns a named template set (a key of ``TEMPLATE_SETS``) or validates an explicit list of templates.

  Every template must contain ``{}`` exactly once; unknown set names raise ``ValueError`` naming the valid ones and
  the closest.
  """
  if isinstance(templates, str):
    if templates not in TEMPLATE_SETS:
      raise unknown_choice("template set", templates, TEMPLATE_SETS)
    return TEMPLATE_SETS[templates]
  result = tuple(templates)
  if not result:
    raise ValueError("at least one template is required")
  for template in result:
    if template.count("{}") != 1:
      raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
  return result


def normalize_text(text: str, *, lowercase: bool = True, strip: bool = True,
                   underscores_to_spaces: bool = True) -> str:
  """Normalises one prompt or class name.

  Applied in this order, each step only when its flag is set:
  ``underscores_to_spaces``: every ``_`` becomes a space (tfds/ImageFolder names such as ``golden_retriever``);
  ``strip``: leading/trailing whitespace removed and every inner whitespace run collapsed to one space;
  ``lowercase``: ``str.lower()``.
  """
  if underscores_to_spaces:
    text = text.replace("_", " ")
  if strip:
    text = _WHITESPACE.sub(" ", text).strip()
  if lowercase:
    text = text.lower()
  return text


def build_prompts(class_names: Sequence[str], templates: str | Sequence[str], *, lowercase: bool = True,
                  strip: bool = True, underscores_to_spaces: bool = True) -> list[list[str]]:
  """Prompt grid ``prompts[c][t] = normalize_text(templates[t] with {} replaced by class_names[c])``."""
  resolved = get_templates(templates)
  return [[normalize_text(t.replace("{}", name), lowercase=lowercase, strip=strip,
                          underscores_to_spaces=underscores_to_spaces) for t in resolved]
          for name in class_names]
