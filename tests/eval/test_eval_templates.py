"""Template sets and prompt normalisation."""
import pytest

from lmstruct.eval.templates import (CLIP_IMAGENET_TEMPLATES, SCENES_TEMPLATES, TEMPLATE_SETS, build_prompts,
                                     get_templates, normalize_text)


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
  with pytest.raises(KeyError, match="clip_imagenet"):
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
