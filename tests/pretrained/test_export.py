"""Converted directories on disk and merging pretrained variables into an initialised model."""

import json

import numpy as np
import pytest

from lmstruct.pretrained.export import check_architecture, load_pretrained, merge_pretrained, save_pretrained
from lmstruct.pretrained.torch_reader import CheckpointError

INIT = {
  "params": {
    "tower": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)},
    "head_ind": {"kernel": np.full((3, 4), 7.0, np.float32)},
  },
  "batch_stats": {"tower": {"mean": np.zeros(3, np.float32)}},
}


def test_merge_takes_pretrained_values_and_reports_fresh_paths():
  pretrained = {
    "params": {"tower": {"kernel": np.ones((2, 3), np.float16), "bias": np.full(3, 2.0)}},
    "batch_stats": {"tower": {"mean": np.full(3, 0.5, np.float32)}},
  }
  merged, fresh = merge_pretrained(INIT, pretrained)
  assert fresh == ["params/head_ind/kernel"]
  np.testing.assert_array_equal(merged["params"]["tower"]["kernel"], np.ones((2, 3)))
  assert merged["params"]["tower"]["kernel"].dtype == np.float32 and merged["params"]["tower"]["bias"][0] == 2.0
  np.testing.assert_array_equal(merged["params"]["head_ind"]["kernel"], INIT["params"]["head_ind"]["kernel"])
  assert merged["batch_stats"]["tower"]["mean"][0] == 0.5


def test_merge_errors_name_the_path():
  with pytest.raises(CheckpointError, match=r"'params/tower/kernel' has shape \(3, 2\) but the model's has \(2, 3\)"):
    merge_pretrained(INIT, {"params": {"tower": {"kernel": np.ones((3, 2))}}})
  with pytest.raises(CheckpointError, match=r"the model does not have: \['params/tower/scale'\]"):
    merge_pretrained(INIT, {"params": {"tower": {"scale": np.ones(3)}}})


def test_save_and_load_round_trip(tmp_path):
  config = {"preset": "test", "text": {"activation": "quick_gelu"}}
  variables = {"params": INIT["params"], "batch_stats": INIT["batch_stats"]}
  directory = save_pretrained(tmp_path / "out", config, variables, {"checkpoint": "x.pt"})
  loaded_config, loaded = load_pretrained(directory)
  assert loaded_config == config
  np.testing.assert_array_equal(loaded["params"]["head_ind"]["kernel"], INIT["params"]["head_ind"]["kernel"])
  assert isinstance(loaded["batch_stats"]["tower"]["mean"], np.ndarray)
  assert json.loads((directory / "model.json").read_text())["source"] == {"checkpoint": "x.pt"}
  with pytest.raises(FileExistsError, match="already exists and is not empty"):
    save_pretrained(directory, config, variables, {})


def test_load_rejects_other_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="model.json is missing"):
    load_pretrained(tmp_path)
  (tmp_path / "model.json").write_text(json.dumps({"format": "something-else", "version": 1}))
  with pytest.raises(CheckpointError, match="format 'something-else' version 1"):
    load_pretrained(tmp_path)


def test_check_architecture_compares_built_towers_not_spelling():
  check_architecture(
    {"preset": "ViT-B-32", "image": {"activation": "gelu"}},
    {"preset": "ViT-B-32", "dtype": "bfloat16", "remat_policy": "full", "scan_layers": True},
  )
  with pytest.raises(
    CheckpointError,
    match="model text_tower.activation is 'quick_gelu' in the pretrained model but 'gelu' in the run's config",
  ):
    check_architecture({"preset": "ViT-B-32", "text": {"activation": "quick_gelu"}}, {"preset": "ViT-B-32"})
  with pytest.raises(CheckpointError, match="model image_tower.patch is 32 in the pretrained model but 16"):
    check_architecture({"preset": "ViT-B-32"}, {"preset": "ViT-B-16"})
