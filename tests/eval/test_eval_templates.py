"""Template sets and prompt normalisation."""
import pytest

from lmstruct.eval import suite
from lmstruct.eval.templates import (CLIP_DATASET_TEMPLATES, CLIP_IMAGENET_TEMPLATES, SCENES_TEMPLATES, TEMPLATE_SETS,
                                     build_prompts, get_templates, normalize_text)


def test_clip_imagenet_set_has_80_distinct_single_placeholder_templates():
  assert len(CLIP_IMAGENET_TEMPLATES) == 80
  assert len(set(CLIP_IMAGENET_TEMPLATES)) == 80
  assert all(t.count("{}") == 1 for t in CLIP_IMAGENET_TEMPLATES)
  assert "a photo of a {}." in CLIP_IMAGENET_TEMPLATES and "itap of my {}." in CLIP_IMAGENET_TEMPLATES


def test_named_sets():
  assert get_templates("paper") == ("a photo of the {}.",)
  assert set(SCENES_TEMPLATES) == {"shape", "colour", "count", "size", "material"}
  assert "a photo of a {} shape." in get_templates("scenes_shape")
  for name, templates in TEMPLATE_SETS.items():
    assert templates and all(t.count("{}") == 1 for t in templates), name


def test_unknown_set_and_bad_templates_are_rejected():
  with pytest.raises(ValueError, match=r"unknown template set 'imagenet' \(did you mean 'clip_imagenet'\?\)"):
    get_templates("imagenet")
  with pytest.raises(ValueError):
    get_templates(["no placeholder"])
  with pytest.raises(ValueError):
    get_templates(["{} and {}"])
  with pytest.raises(ValueError):
    get_templates([])


def test_normalize_text_flags():
  raw = "  Golden_Retriever \t Dog "
  assert normalize_text(raw) == "golden retriever dog"
  assert normalize_text(raw, lowercase=False) == "Golden Retriever Dog"
  assert normalize_text(raw, strip=False) == "  golden retriever \t dog "
  assert normalize_text(raw, underscores_to_spaces=False) == "golden_retriever dog"
  assert normalize_text(raw, lowercase=False, strip=False, underscores_to_spaces=False) == raw


def test_build_prompts_grid():
  prompts = build_prompts(["Red_Cube", "sphere"], ["a photo of the {}.", "A {} object."])
  assert prompts == [["a photo of the red cube.", "a red cube object."],
                     ["a photo of the sphere.", "a sphere object."]]
  assert build_prompts(["Cat"], "paper", lowercase=False) == [["a photo of the Cat."]]


def test_clip_per_dataset_sets_match_clip_prompt_counts():
  # Number of prompts per dataset in CLIP's data/prompts.md (SST2 for Rendered SST2).
  expected = {"cifar10": 18, "cifar100": 18, "caltech101": 34, "dtd": 8, "fgvc_aircraft": 2, "flowers102": 1,
              "food101": 1, "gtsrb": 3, "oxford_pets": 1, "rendered_sst2": 1, "stl10": 2, "stanford_cars": 8}
  assert {name: len(CLIP_DATASET_TEMPLATES[name]) for name in expected} == expected
  assert get_templates("clip_gtsrb")[0] == 'a zoomed in photo of a "{}" traffic sign.'
  assert build_prompts(["apple_pie"], "clip_food101") == [["a photo of apple pie, a type of food."]]


def test_every_suite_dataset_names_an_existing_template_set():
  for dataset in suite.DATASETS:
    if dataset.templates:
      assert dataset.templates in TEMPLATE_SETS, dataset.key
    assert not dataset.zero_shot or dataset.templates
