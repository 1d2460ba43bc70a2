"""The class-name registry: ImageNet-1K by WordNet id and by index, the ImageNet-A/-R subsets, loading user names."""
import json
import pathlib

import pytest
import tensorflow_datasets as tfds

from lmstruct.data import classnames, formats, sources

# (class index, WordNet id, CLIP's name), written down by hand from the ILSVRC2012 synset list and CLIP's notebook;
# 744 and 836 are the two names CLIP duplicates, here their WordNet lemmas.
HAND_PICKED = [(0, "n01440764", "tench"), (1, "n01443537", "goldfish"), (6, "n01498041", "stingray"),
               (21, "n01608432", "kite (bird of prey)"), (207, "n02099601", "Golden Retriever"),
               (281, "n02123045", "tabby cat"), (657, "n03773504", "missile"), (744, "n04008634", "projectile"),
               (836, "n04355933", "sunglass"), (837, "n04356056", "sunglasses"), (954, "n07753592", "banana"),
               (999, "n15075141", "toilet paper")]


def test_imagenet_wnids_are_the_standard_sorted_list():
  # tensorflow-datasets ships ILSVRC2012's label list; class index = position in it.
  reference = (pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt").read_text().split()
  assert classnames.imagenet_wnids() == tuple(reference)
  assert len(set(reference)) == 1000 and list(reference) == sorted(reference)


def test_all_1000_classes_have_distinct_names_and_both_addressings_agree():
  wnids, names = classnames.imagenet_wnids(), classnames.imagenet_names()
  assert len(names) == 1000 and len(set(names)) == 1000 and all(names)
  for index, wnid in enumerate(wnids):
    assert classnames.imagenet_class_name(wnid) == classnames.imagenet_class_name(index) == names[index]
    assert classnames.imagenet_class_name(str(index)) == names[index]
  for index, wnid, name in HAND_PICKED:
    assert wnids[index] == wnid and classnames.imagenet_class_name(wnid) == name
  for bad in ("n00000000", 1000, "1000", "tench"):
    with pytest.raises(KeyError):
      classnames.imagenet_class_name(bad)


def test_imagenet_a_and_r_subsets_select_their_200_classes():
  for subset in classnames.SUBSETS:
    wnids = classnames.subset_wnids(subset)
    assert len(set(wnids)) == 200 and list(wnids) == sorted(wnids)
    assert set(wnids) <= set(classnames.imagenet_wnids())
    assert "n01440764" not in wnids  # tench is in neither
  # Their first classes (ImageNet-A / ImageNet-R class lists, in WordNet-id order) and ImageNet indices.
  assert classnames.named_lists()["imagenet_a"][:4] == ("stingray", "goldfinch", "junco", "American robin")
  assert classnames.subset_indices("imagenet_a")[:3] == (6, 11, 13)
  assert classnames.named_lists()["imagenet_r"][:4] == ("goldfish", "great white shark", "hammerhead shark",
                                                        "stingray")
  assert classnames.subset_indices("imagenet_r")[:4] == (1, 2, 4, 6)
  assert classnames.subset_indices("imagenet_a")[-1] == 988 and classnames.imagenet_names()[988] == "acorn"
  with pytest.raises(ValueError, match="imagenet_a"):
    classnames.subset_wnids("imagenet_c")


def test_human_class_names_maps_wnids_and_imagenet_v2_indices_only():
  assert classnames.human_class_names(["n01443537", "n01440764"]) == ["goldfish", "tench"]
  v2_folders = sorted(str(i) for i in range(1000))  # ImageFolder order: '0', '1', '10', '100', ...
  mapped = classnames.human_class_names(v2_folders)
  assert mapped[:4] == ["tench", "goldfish", "brambling", "black swan"]  # classes 0, 1, 10, 100
  assert classnames.human_class_names(["0", "1", "2"]) == ["0", "1", "2"]  # not ImageNet: unchanged
  assert classnames.human_class_names(["n01440764", "dog"]) == ["n01440764", "dog"]
  assert classnames.looks_like_identifier("n01440764") and classnames.looks_like_identifier("17")
  assert not classnames.looks_like_identifier("golden retriever")


def test_load_class_names_from_list_registry_and_files(tmp_path):
  assert classnames.load_class_names(["a", "b"]) == ["a", "b"]
  assert classnames.load_class_names("cifar10")[:3] == ["airplane", "automobile", "bird"]
  assert len(classnames.load_class_names("cifar100")) == 100
  (tmp_path / "names.txt").write_text("red cube\n\nblue sphere\n")
  assert classnames.load_class_names(str(tmp_path / "names.txt")) == ["red cube", "blue sphere"]
  (tmp_path / "names.json").write_text(json.dumps(["x", "y"]))
  assert classnames.load_class_names(str(tmp_path / "names.json")) == ["x", "y"]
  with pytest.raises(FileNotFoundError, match="registered list"):
    classnames.load_class_names(str(tmp_path / "missing.txt"))
  with pytest.raises(ValueError, match="non-empty"):
    classnames.load_class_names([])


def test_imagefolder_of_wordnet_ids_gets_human_names(shared_data, tmp_path):
  image = next((shared_data / "coco-mini" / "val2017").glob("*.jpg"))
  for wnid in ("n01484850", "n01440764", "n01443537"):
    (tmp_path / wnid).mkdir()
    (tmp_path / wnid / image.name).write_bytes(image.read_bytes())
  source = formats.image_folder(tmp_path)
  assert sources.class_names(source) == ["tench", "goldfish", "great white shark"]
