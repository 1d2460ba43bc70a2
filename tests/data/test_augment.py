"""Image augmentation (lmstruct.data.augment) and EDA text augmentation (lmstruct.data.eda)."""

import collections
import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from lmstruct.config import load_config
from lmstruct.data import augment, eda

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def structured_image(height=48, width=64, seed=0):
  """A colourful, low-contrast uint8 image (gradients plus noise in [60, 180])."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([60 + 120 * x / width, 60 + 120 * y / height, 180 - 120 * x / width], axis=-1)
  return np.clip(base + rng.normal(0, 8, base.shape), 60, 180).astype(np.uint8)


def reference_clip_preprocess(path, size):
  """CLIP's eval transform written out directly: torchvision-style resize, centre crop, normalise."""
  image = Image.open(path).convert("RGB")
  width, height = image.size
  scale = size / min(width, height)
  new_w = size if width <= height else int(size * width / height)
  new_h = size if height < width else int(size * height / width)
  assert min(new_w, new_h) == size and abs(max(new_w, new_h) - max(width, height) * scale) < 1
  resized = np.asarray(image.resize((new_w, new_h), Image.BICUBIC), dtype=np.float64)
  top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
  crop = resized[top : top + size, left : left + size]
  return (crop / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def coco_jpegs(shared_data):
  return sorted((shared_data / "coco-mini" / "val2017").glob("*.jpg"))[:3]


@pytest.mark.parametrize("size", [224, 97])
def test_clip_preprocess_matches_reference_on_coco_jpeg(coco_jpegs, size):
  for path in coco_jpegs:
    ours = augment.clip_preprocess(np.asarray(Image.open(path).convert("RGB")), size)
    assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
    np.testing.assert_allclose(ours, reference_clip_preprocess(path, size), atol=1e-5)


def test_normalize_uses_clip_mean_and_std():
  image = np.full((4, 5, 3), 200, np.uint8)
  image[..., 1] = 17
  expected = (np.array([200, 17, 200]) / 255.0 - MEAN) / STD
  np.testing.assert_allclose(augment.normalize(image), np.broadcast_to(expected, (4, 5, 3)), atol=1e-6)


def test_horizontal_flip_is_exact_mirror():
  image = structured_image()
  np.testing.assert_array_equal(np.asarray(augment.horizontal_flip(Image.fromarray(image))), image[:, ::-1])


def two_squares(size=64):
  """A grey image with a red square on the left and a blue square on the right."""
  image = np.full((size, size, 3), 100, np.uint8)
  image[20:30, 8:18] = (220, 30, 30)
  image[34:44, 40:50] = (30, 30, 220)
  return image


def test_random_zoom_out_keeps_every_object_whole_and_in_order():
  image = two_squares()
  for seed in range(20):
    rng = np.random.default_rng(seed)
    view = np.asarray(augment.random_zoom_out(Image.fromarray(image), rng, (0.6, 0.9)), np.int32)
    assert view.shape == image.shape
    red = (view[..., 0] > 160) & (view[..., 2] < 80)
    blue = (view[..., 2] > 160) & (view[..., 0] < 80)
    # Both squares survive whole (area shrinks by s² ≥ 0.36 of 100 pixels, bicubic edges aside) ...
    assert 25 <= red.sum() <= 100 and 25 <= blue.sum() <= 100, seed
    # ... and keep their left-to-right and top-to-bottom order.
    red_y, red_x = np.argwhere(red).mean(axis=0)
    blue_y, blue_x = np.argwhere(blue).mean(axis=0)
    assert red_x < blue_x and red_y < blue_y, seed


def test_random_zoom_out_fills_with_the_mean_colour_and_scales_by_the_drawn_factor():
  image = two_squares()
  view = np.asarray(augment.random_zoom_out(Image.fromarray(image), np.random.default_rng(0), (0.5, 0.5)))
  mean = np.round(image.reshape(-1, 3).astype(np.float64).mean(axis=0))
  # A half-size copy leaves at least a 32-pixel band of fill along one side of each axis.
  fill_rows = np.all(view == mean, axis=(1, 2))
  fill_cols = np.all(view == mean, axis=(0, 2))
  assert fill_rows.sum() == 32 and fill_cols.sum() == 32


def test_caption_safe_default_neither_flips_crops_nor_shifts_hue():
  augmentation = augment.augmentation_from_config(augment.caption_safe_augment_config())
  assert augmentation.horizontal_flip is None and augmentation.random_resized_crop is None
  assert augmentation.color_jitter.hue == 0 and augmentation.color_jitter.saturation == 0
  assert augmentation.random_zoom_out is not None
  image = two_squares()
  for seed in range(10):
    view = np.asarray(augmentation.view(image, np.random.default_rng(seed), 64), np.int32)
    red_x = np.argwhere((view[..., 0] > 1.3 * view[..., 2]) & (view[..., 0] > view[..., 1] + 40))[:, 1].mean()
    blue_x = np.argwhere((view[..., 2] > 1.3 * view[..., 0]) & (view[..., 2] > view[..., 1] + 40))[:, 1].mean()
    assert red_x < blue_x, seed


def test_random_resized_crop_full_area_equals_plain_resize():
  image = Image.fromarray(structured_image(48, 64))
  crop = augment.random_resized_crop(image, np.random.default_rng(3), 32, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
  np.testing.assert_array_equal(np.asarray(crop), np.asarray(image.resize((32, 32), Image.BICUBIC)))


def test_random_resized_crop_takes_a_window_of_the_image():
  image = structured_image(64, 64)
  for seed in range(5):
    crop = np.asarray(
      augment.random_resized_crop(
        Image.fromarray(image), np.random.default_rng(seed), 32, scale=(0.25, 0.25), ratio=(1.0, 1.0)
      )
    )
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    windows = [
      (top, left)
      for top in range(33)
      for left in range(33)
      if np.array_equal(image[top : top + 32, left : left + 32], crop)
    ]
    assert len(windows) == 1


def test_random_resized_crop_is_deterministic_per_generator():
  image = Image.fromarray(structured_image())
  first, again, other = (
    np.asarray(augment.random_resized_crop(image, np.random.default_rng(s), 24)) for s in (1, 1, 2)
  )
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_color_jitter_changes_image_and_zero_strength_is_identity():
  image = Image.fromarray(structured_image())
  jittered = np.asarray(augment.color_jitter(image, np.random.default_rng(0), 0.4, 0.4, 0.4, 0.1))
  assert jittered.shape == (48, 64, 3) and jittered.dtype == np.uint8
  assert not np.array_equal(jittered, np.asarray(image))
  unchanged = augment.color_jitter(image, np.random.default_rng(0), 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(image))


def test_hue_shift_of_half_turn_moves_red_towards_cyan():
  red = Image.fromarray(np.full((2, 2, 3), (200, 0, 0), np.uint8))
  shifted = np.asarray(augment.adjust_hue(red, 0.5))[0, 0].astype(int)
  assert shifted[0] < 10 and shifted[1] > 190 and shifted[2] > 190


@pytest.mark.parametrize("name", sorted(augment.RANDAUGMENT_OPS))
def test_randaugment_op_keeps_shape_and_range_and_changes_image(name):
  image = structured_image()
  out = np.asarray(augment.apply_op(Image.fromarray(image), name, 10, np.random.default_rng(0)))
  assert out.shape == image.shape and out.dtype == np.uint8
  assert np.array_equal(out, image) == (name == "identity")


def test_solarize_and_posterize_at_full_magnitude():
  image = structured_image()
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(np.asarray(augment.apply_op(Image.fromarray(image), "solarize", 10, rng)), 255 - image)
  np.testing.assert_array_equal(
    np.asarray(augment.apply_op(Image.fromarray(image), "posterize", 10, rng)), image & 0xF0
  )


def test_rand_augment_zero_magnitude_of_geometric_ops_is_identity():
  image = structured_image()
  out = augment.rand_augment(
    Image.fromarray(image),
    np.random.default_rng(0),
    num_ops=3,
    magnitude=0,
    ops=("translate_x", "translate_y", "shear_x", "shear_y"),
  )
  np.testing.assert_array_equal(np.asarray(out), image)


FULL_CONFIG = {
  "random_resized_crop": {"scale": [0.3, 1.0], "ratio": [0.75, 1.33]},
  "horizontal_flip": {"p": 0.5},
  "color_jitter": {"p": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
  "rand_augment": {"num_ops": 2, "magnitude": 9, "ops": ["rotate", "equalize", "shear_x", "color"]},
}


def test_augmentation_view_is_normalised_float_and_deterministic():
  image = structured_image()
  augmentation = augment.augmentation_from_config(FULL_CONFIG)
  views = [augmentation(image, np.random.default_rng(seed), 32) for seed in (5, 5, 6)]
  low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
  for view in views:
    assert view.dtype == np.float32 and view.shape == (32, 32, 3)
    assert np.all(view >= low - 1e-5) and np.all(view <= high + 1e-5)
  np.testing.assert_array_equal(views[0], views[1])
  assert not np.array_equal(views[0], views[2])
  assert not np.allclose(views[0], augment.clip_preprocess(image, 32))


def test_empty_config_view_equals_clip_preprocess():
  image = structured_image()
  view = augment.augmentation_from_config(None)(image, np.random.default_rng(0), 40)
  np.testing.assert_array_equal(view, augment.clip_preprocess(image, 40))


def test_augmentation_accepts_ml_collections_config():
  config = ml_collections.ConfigDict(FULL_CONFIG)
  augmentation = augment.augmentation_from_config(config)
  assert augmentation.rand_augment.ops == ("rotate", "equalize", "shear_x", "color")
  assert augmentation.random_resized_crop.scale == (0.3, 1.0)


@pytest.mark.parametrize(
  "config, bad, valid",
  [
    ({"rand_augment": {"ops": ["rotate", "blur"]}}, "'blur'", "translate_y"),
    ({"cutout": {}}, "'cutout'", "rand_augment"),
    ({"color_jitter": {"gamma": 0.1}}, "'gamma'", "saturation"),
  ],
)
def test_bad_config_names_bad_value_and_choices(config, bad, valid):
  with pytest.raises(ValueError) as error:
    augment.augmentation_from_config(config)
  assert bad in str(error.value) and valid in str(error.value)


@pytest.mark.parametrize(
  "config",
  [
    {"rand_augment": {"magnitude": 11}},
    {"horizontal_flip": {"p": 1.5}},
    {"random_resized_crop": {"scale": (0.9, 0.2)}},
    {"color_jitter": {"hue": 0.7}},
  ],
)
def test_out_of_range_settings_raise(config):
  with pytest.raises(ValueError):
    augment.augmentation_from_config(config)


# ---------------------------------------------------------------- EDA

TABLE = {
  "dog": ("hound", "canine"),
  "grass": ("lawn",),
  "running": ("sprinting",),
  "a": ("angstrom",),
  "on": ("along",),
  "the": ("thee",),
  "green": ("verdant",),
}


def table_synonyms(word):
  return TABLE.get(word, ())


CAPTION = "a dog running on the green grass with a ball"


def test_words_of_lowercases_and_splits_punctuation():
  assert eda.words_of("A Dog's ball,  on 2 GREEN-grass!") == ["a", "dog", "s", "ball", "on", "2", "green", "grass"]


def test_synonym_replacement_never_touches_stop_words():
  words = eda.words_of(CAPTION)
  for seed in range(30):
    out = eda.synonym_replacement(words, 10, np.random.default_rng(seed), table_synonyms)
    assert len(out) == len(words)
    for before, after in zip(words, out):
      if before in eda.STOP_WORDS:
        assert after == before
      else:
        assert after == before or after in TABLE[before]
    assert {w for w in out if w not in words} <= {"hound", "canine", "sprinting", "verdant", "lawn"}


def test_synonym_replacement_replaces_n_distinct_words():
  words = ["dog", "grass", "dog", "green"]
  out = eda.synonym_replacement(words, 1, np.random.default_rng(0), table_synonyms)
  changed = {before for before, after in zip(words, out) if before != after}
  assert len(changed) == 1
  if changed == {"dog"}:
    assert out[0] == out[2] and out[0] in TABLE["dog"]


def test_random_insertion_only_adds_synonyms_of_content_words():
  words = eda.words_of(CAPTION)
  for seed in range(20):
    out = eda.random_insertion(words, 2, np.random.default_rng(seed), table_synonyms)
    assert len(out) == len(words) + 2
    remaining = iter(out)
    assert all(word in remaining for word in words)  # the original words are a subsequence
    added = collections.Counter(out) - collections.Counter(words)
    assert set(added) <= {"hound", "canine", "sprinting", "verdant", "lawn"}


def test_random_swap_keeps_the_multiset_of_words():
  words = eda.words_of(CAPTION)
  outputs = [eda.random_swap(words, 2, np.random.default_rng(seed)) for seed in range(10)]
  for out in outputs:
    assert collections.Counter(out) == collections.Counter(words)
  assert any(out != words for out in outputs)
  assert eda.random_swap(["alone"], 3, np.random.default_rng(0)) == ["alone"]


def test_random_deletion_only_removes_words():
  words = eda.words_of(CAPTION)
  for seed in range(20):
    out = eda.random_deletion(words, 0.3, np.random.default_rng(seed))
    remaining = iter(words)
    assert all(word in remaining for word in out) and 1 <= len(out) <= len(words)
  assert eda.random_deletion(words, 0.0, np.random.default_rng(0)) == words
  survivor = eda.random_deletion(words, 1.0, np.random.default_rng(0))
  assert len(survivor) == 1 and survivor[0] in words


def test_eda_is_deterministic_per_seed():
  augmenter = eda.EDA(alpha_sr=0.3, alpha_ri=0.3, alpha_rs=0.3, p_rd=0.3, synonyms=table_synonyms)
  first = [augmenter(CAPTION, np.random.default_rng(seed)) for seed in range(20)]
  again = [augmenter(CAPTION, np.random.default_rng(seed)) for seed in range(20)]
  assert first == again
  assert len(set(first)) > 3


def test_eda_with_no_ops_returns_normalised_caption():
  augmenter = eda.EDA(0.0, 0.0, 0.0, 0.0, synonyms=table_synonyms)
  assert augmenter("A Dog, running!", np.random.default_rng(0)) == "a dog running"


def test_eda_config_rejects_unknown_setting():
  with pytest.raises(ValueError) as error:
    eda.eda_from_config({"alpha_sr": 0.1, "alpha_xx": 0.2})
  assert "'alpha_xx'" in str(error.value) and "p_rd" in str(error.value)
  assert eda.eda_from_config(ml_collections.ConfigDict({"p_rd": 0.2})).p_rd == 0.2


def test_wordnet_synonyms_offline():
  assert "automobile" in eda.wordnet_synonyms("car")
  assert "domestic dog" in eda.wordnet_synonyms("dogs")  # plural reduced to the lemma "dog"
  assert "car" not in eda.wordnet_synonyms("car")
  assert eda.wordnet_synonyms("the") == ()
  assert eda.wordnet_synonyms("qwzxv") == ()


def test_parse_wordnet_reads_data_files(tmp_path):
  header = "  1 This software and database is being provided to you\n"
  files = {
    "data.noun1": header + "00000001 05 n 02 dog 0 domestic_dog 0 000 | a canine\n",
    "data.noun2": "00000002 05 n 02 hound 0 dog 1 000 | a hunting dog\n",
    "data.verb": "00000003 30 v 02 run 0 sprint 0 000 | move fast\n",
    "data.adj": "00000004 00 a 02 green(a) 0 verdant 0 000 | coloured\n",
    "data.adv": "00000005 02 r 01 quickly 0 000 | fast\n",
  }
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  wordnet = eda.parse_wordnet(tmp_path)
  assert len(wordnet.synsets) == 5
  assert eda.synonyms_in(wordnet, "dogs") == ("dog", "domestic dog", "hound")  # lemma "dog" counts too
  assert eda.synonyms_in(wordnet, "runs") == ("run", "sprint")
  assert eda.synonyms_in(wordnet, "green") == ("verdant",)
  assert eda.synonyms_in(wordnet, "quickly") == ()


@pytest.mark.parametrize(
  "stages,expected",
  [
    ({}, []),
    (augment.caption_safe_augment_config(), []),
    ({"random_resized_crop": {"scale": (1.0, 1.0)}}, []),
    ({"random_resized_crop": {"scale": (0.6, 1.0)}}, ["random_resized_crop"]),
    ({"horizontal_flip": {"p": 0.5}}, ["horizontal_flip"]),
    ({"horizontal_flip": {"p": 0.0}}, []),
    ({"color_jitter": {"hue": 0.0, "saturation": 0.2}}, ["color_jitter"]),
    ({"color_jitter": {"hue": 0.0, "saturation": 0.0}}, []),
    ({"rand_augment": {"num_ops": 2, "magnitude": 9, "ops": ("brightness", "rotate")}}, ["rand_augment"]),
    ({"rand_augment": {"num_ops": 2, "magnitude": 9, "ops": augment.CAPTION_SAFE_OPS}}, []),
    (
      {"horizontal_flip": {"p": 1.0}, "rand_augment": {"num_ops": 1, "magnitude": 5}},
      ["horizontal_flip", "rand_augment"],
    ),
  ],
)
def test_caption_contradictions_name_each_unsafe_stage(stages, expected):
  reasons = augment.caption_contradictions(augment.augmentation_from_config(stages))
  assert [reason.split()[0] for reason in reasons] == expected


@pytest.mark.parametrize(
  "config_file", ["clip_scenes.py", "lit_coco.py", "paper_cc3m.py", "albef_scenes.py", "albef_real.py"]
)
def test_every_config_trains_on_views_that_keep_their_captions_true(config_file):
  """§1.2: no flip, crop, hue/saturation or geometric RandAugment op, and no EDA word swap, in any shipped config."""
  config = load_config(str(pathlib.Path(__file__).parents[2] / "configs" / config_file))
  augmentation = augment.augmentation_from_config(config.data.augment.to_dict())
  assert augment.caption_contradictions(augmentation) == []
  if config.task == "clip":  # ALBEF's rows take no text augmentation (data.eda)
    assert eda.eda_from_config(config.data.eda.to_dict()).alpha_rs == 0.0
