"""Real-format readers and conversion to array_record (shared sample data and fixtures built in tmp_path)."""

import collections
import csv
import io
import json
import pathlib
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lmstruct.data import convert, formats, records


def _coco(shared_data, split):
  return (shared_data / f"coco-mini/annotations/captions_{split}2017.json", shared_data / f"coco-mini/{split}2017")


# --- COCO captions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split,images,captions", [("train", 80, 400), ("val", 159, 795)])
def test_coco_captions_counts(shared_data, split, images, captions):
  reader = formats.coco_captions(*_coco(shared_data, split))
  assert len(reader) == images
  assert sum(len(f["captions"]) for f in reader.fields) == captions
  assert len({f["image_id"] for f in reader.fields}) == images


def test_coco_captions_example_contents(shared_data):
  ann_file, image_dir = _coco(shared_data, "val")
  ann = json.loads(ann_file.read_text())
  first = ann["images"][0]
  expected = [a["caption"].strip() for a in ann["annotations"] if a["image_id"] == first["id"]]
  example = formats.coco_captions(ann_file, image_dir)[0]
  assert example["image_id"] == str(first["id"])
  assert example["captions"] == expected
  assert example["image_bytes"] == (image_dir / first["file_name"]).read_bytes()


def test_coco_captions_bad_input(shared_data, tmp_path):
  ann_file, image_dir = _coco(shared_data, "val")
  with pytest.raises(FileNotFoundError, match="COCO image folder"):
    formats.coco_captions(ann_file, tmp_path / "nowhere")
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"images": []}))
  with pytest.raises(KeyError, match="annotations"):
    formats.coco_captions(bad, image_dir)


# --- Karpathy splits and Flickr30k ---------------------------------------------------------------------------------


def _karpathy_coco(shared_data, tmp_path):
  """dataset_coco.json-style file over coco-mini: 3 train, 2 restval, 2 val, 1 test images."""
  images = []
  for split, folder in (("train", "train2017"), ("val", "val2017")):
    ann = json.loads((shared_data / f"coco-mini/annotations/captions_{split}2017.json").read_text())
    for img in ann["images"][:4]:
      sentences = [
        {"raw": a["caption"], "tokens": a["caption"].lower().split()}
        for a in ann["annotations"]
        if a["image_id"] == img["id"]
      ]
      images.append({"filepath": folder, "filename": img["file_name"], "cocoid": img["id"], "sentences": sentences})
  for img, split in zip(images, ["train"] * 3 + ["restval"] * 2 + ["val"] * 2 + ["test"]):
    img["split"] = split
  path = tmp_path / "dataset_coco.json"
  path.write_text(json.dumps({"images": images, "dataset": "coco"}))
  return path, images


def test_karpathy_coco_splits(shared_data, tmp_path):
  path, images = _karpathy_coco(shared_data, tmp_path)
  root = shared_data / "coco-mini"
  assert len(formats.karpathy(path, root, ["train"])) == 3
  assert len(formats.karpathy(path, root, ["train", "restval"])) == 5
  assert len(formats.karpathy(path, root, ["test"])) == 1
  val = formats.karpathy(path, root, ["val"])
  assert [f["image_id"] for f in val.fields] == [str(images[5]["cocoid"]), str(images[6]["cocoid"])]
  assert val[0]["captions"] == [s["raw"].strip() for s in images[5]["sentences"]]
  assert val[0]["image_bytes"] == (root / "val2017" / images[5]["filename"]).read_bytes()
  with pytest.raises(ValueError, match="restval"):
    formats.karpathy(path, root, ["dev"])


def test_karpathy_flickr30k_style(shared_data, tmp_path):
  # dataset_flickr30k.json has neither `filepath` nor `cocoid`; ids come from the file name.
  image_dir = shared_data / "vl-fixtures/images/flickr30k"
  images = [
    {
      "filename": f"{i}.jpg",
      "imgid": n,
      "split": "test",
      "sentences": [{"raw": f"Caption {k} of {i}."} for k in range(5)],
    }
    for n, i in enumerate(["1", "2", "3"])
  ]
  path = tmp_path / "dataset_flickr30k.json"
  path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
  reader = formats.karpathy(path, image_dir, ["test"])
  assert [f["image_id"] for f in reader.fields] == ["1", "2", "3"]
  assert reader[2]["captions"][4] == "Caption 4 of 3."
  assert reader[2]["image_bytes"] == (image_dir / "3.jpg").read_bytes()


def test_flickr30k_entities(shared_data):
  root = shared_data / "vl-fixtures"
  test = formats.flickr30k_entities(
    root / "flickr30k/test.txt", root / "flickr30k/sentences", root / "images/flickr30k"
  )
  assert [f["image_id"] for f in test.fields] == ["6338542128", "4945942737", "1", "2", "3"]
  assert sum(len(f["captions"]) for f in test.fields) == 25
  assert test.fields[2]["captions"][0] == "A girl with brown hair sits on the edge of a cement area overlooking water ."
  assert test.fields[0]["captions"][4] == "# 8 for Iowa State stiff arms a Texas AM player attempting to tackle him ."
  assert test[2]["image_bytes"] == (root / "images/flickr30k/1.jpg").read_bytes()
  dev = formats.flickr30k_entities(
    root / "flickr30k/tiny-dev.txt", root / "flickr30k/sentences", root / "images/flickr30k"
  )
  assert len(dev) == 3


# --- caption tables ------------------------------------------------------------------------------------------------


def _table_rows(shared_data):
  ann = json.loads((shared_data / "coco-mini/annotations/captions_train2017.json").read_text())
  names = {img["id"]: img["file_name"] for img in ann["images"][:3]}
  return [(f"train2017/{names[a['image_id']]}", a["caption"]) for a in ann["annotations"] if a["image_id"] in names]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_caption_table(shared_data, tmp_path, suffix):
  rows = _table_rows(shared_data)
  path = tmp_path / f"pairs{suffix}"
  if suffix == ".jsonl":
    path.write_text("".join(json.dumps({"img": p, "text": c}) + "\n" for p, c in rows))
  else:
    with open(path, "w", newline="") as f:
      writer = csv.writer(f, delimiter="," if suffix == ".csv" else "\t")
      writer.writerow(["img", "text"])
      writer.writerows(rows)
  reader = formats.caption_table(path, shared_data / "coco-mini", image_column="img", caption_column="text")
  expected = collections.defaultdict(list)
  for p, c in rows:
    expected[p].append(c.strip())
  assert len(reader) == 3
  assert {f["image_id"]: f["captions"] for f in reader.fields} == expected
  first = reader[0]
  assert first["image_bytes"] == (shared_data / "coco-mini" / first["image_id"]).read_bytes()
  with pytest.raises(KeyError, match="available"):
    formats.caption_table(path, shared_data / "coco-mini")


# --- webdataset ----------------------------------------------------------------------------------------------------


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_webdataset(shared_data, folder):
  """Two img2dataset-style shards over coco-mini photos: .txt only, .json only, and both."""
  photos = sorted((shared_data / "coco-mini/train2017").glob("*.jpg"))[:5]
  folder.mkdir()
  samples = []
  for shard, keys in enumerate([["000000000", "000000001", "000000002"], ["000010000", "000010001"]]):
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
      for key in keys:
        photo = photos[len(samples)]
        caption = f"photo {photo.stem} number {len(samples)}"
        _add(tar, f"{key}.jpg", photo.read_bytes())
        if len(samples) % 3 != 1:
          _add(tar, f"{key}.txt", caption.encode())
        if len(samples) % 3 != 0:
          meta = {"caption": caption, "url": "http://example.com/x.jpg", "key": key, "status": "success"}
          _add(tar, f"{key}.json", json.dumps(meta).encode())
        samples.append((key, caption, photo))
  return samples


def test_webdataset_shards(shared_data, tmp_path):
  samples = _write_webdataset(shared_data, tmp_path / "shards")
  reader = formats.webdataset(tmp_path / "shards")
  assert len(reader) == 5
  for example, (key, caption, photo) in zip(reader, samples):
    assert example == {"image_id": key, "captions": [caption], "image_bytes": photo.read_bytes()}
  one = formats.webdataset([tmp_path / "shards/00001.tar"])
  assert [f["image_id"] for f in one.fields] == ["000010000", "000010001"]


def _damaged_shards(shared_data, folder):
  """Two shards over coco-mini photos with every kind of damage; returns the keys that must survive.

  00000.tar: 4 good samples, members named ../x.jpg and /abs.jpg, a sample without caption, one without image.
  00001.tar: 4 samples, cut (a partial download) in the middle of the 4th sample's image.
  """
  photos = sorted((shared_data / "coco-mini/train2017").glob("*.jpg"))[:8]
  folder.mkdir()
  with tarfile.open(folder / "00000.tar", "w") as tar:
    for i in range(4):
      _add(tar, f"a{i}.jpg", photos[i].read_bytes())
      _add(tar, f"a{i}.txt", f"caption a{i}".encode())
    _add(tar, "../x.jpg", photos[0].read_bytes())
    _add(tar, "../x.txt", b"escapes the folder")
    _add(tar, "/abs.jpg", photos[1].read_bytes())
    _add(tar, "nocap.jpg", photos[2].read_bytes())
    _add(tar, "noimage.txt", b"a caption without its image")
  with tarfile.open(folder / "00001.tar", "w") as tar:
    for i in range(4):
      _add(tar, f"b{i}.jpg", photos[4 + i].read_bytes())
      _add(tar, f"b{i}.txt", f"caption b{i}".encode())
  data = (folder / "00001.tar").read_bytes()
  with tarfile.open(folder / "00001.tar") as tar:
    cut = tar.getmember("b3.jpg").offset_data + 100
  (folder / "00001.tar").write_bytes(data[:cut])
  return ["a0", "a1", "a2", "a3", "b0", "b1", "b2"]


DAMAGE_COUNTS = {"unsafe member path": 3, "no caption": 1, "no image": 1, "truncated shard": 1}


def test_webdataset_reader_skips_and_counts_damage(shared_data, tmp_path):
  kept = _damaged_shards(shared_data, tmp_path / "shards")
  reader = formats.webdataset(tmp_path / "shards")
  assert [f["image_id"] for f in reader.fields] == kept
  assert reader.skipped.counts == DAMAGE_COUNTS
  assert any("'../x.jpg'" in d for d in reader.skipped.details["unsafe member path"])
  assert reader[6]["captions"] == ["caption b2"]
  (tmp_path / "gzip.tar").write_bytes(b"\x1f\x8b" + b"\0" * 100)
  assert len(formats.webdataset(tmp_path / "gzip.tar").skipped.details["unreadable shard"]) == 1
  with pytest.raises(FileNotFoundError, match="shards not found"):
    formats.webdataset([tmp_path / "absent.tar"])


def test_streaming_reader_applies_the_same_rules(shared_data, tmp_path):
  from lmstruct.data import skips, streaming

  kept = _damaged_shards(shared_data, tmp_path / "shards")
  stream = streaming.WebDatasetStream(tmp_path / "shards")
  tally = skips.Skips()
  samples = [s for shard in range(stream.num_units) for s in stream.samples(shard, tally)]
  assert [s.key for s in samples] == kept and tally.counts == DAMAGE_COUNTS
  photos = sorted((shared_data / "coco-mini/train2017").glob("*.jpg"))
  assert samples[4].image == photos[4].read_bytes() and samples[4].caption == "caption b0"


def test_convert_of_damaged_shards_exits_0_with_a_summary_and_strict_fails(shared_data, tmp_path, capsys):
  kept = _damaged_shards(shared_data, tmp_path / "shards")
  before = set(tmp_path.rglob("*"))
  out = tmp_path / "out" / "train"
  assert convert.main(["webdataset", "--src", str(tmp_path / "shards"), "--out", str(out), "--no-progress"]) == 0
  report = capsys.readouterr().out
  assert "wrote 7 examples" in report
  for reason, count in DAMAGE_COUNTS.items():
    assert f"skipped {count} ({reason})" in report
  assert [ex["image_id"] for ex in _stored(out)] == kept
  created = set(tmp_path.rglob("*")) - before
  assert {p.name for p in created if p.is_file()} == {"train-00000-of-00001.array_record", "train.manifest.json"}
  assert not (tmp_path / "x.jpg").exists() and not pathlib.Path("/abs.jpg").exists()
  assert (
    convert.main(
      [
        "webdataset",
        "--src",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "strict" / "t"),
        "--no-progress",
        "--strict",
      ]
    )
    == 2
  )
  error = capsys.readouterr().err.strip()
  assert error.count("\n") == 0 and error.startswith("error: skipped record under --strict:")


def test_every_reader_skips_and_counts_incomplete_records(shared_data, tmp_path):
  ann_file, image_dir = _coco(shared_data, "val")
  ann = json.loads(ann_file.read_text())
  ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] != ann["images"][0]["id"]]
  ann["annotations"].append({"id": 1, "image_id": -5, "caption": "of an image that is not there"})
  (tmp_path / "coco.json").write_text(json.dumps(ann))
  coco = formats.coco_captions(tmp_path / "coco.json", image_dir)
  assert len(coco) == 158 and coco.skipped.counts == {"no caption": 1, "bad annotation record": 1}
  root = shared_data / "vl-fixtures"
  rows = (root / "nlvr2/tiny-dev.json").read_text().splitlines()
  broken = json.loads(rows[0])
  broken["label"] = "Maybe"
  (tmp_path / "nlvr2.json").write_text("\n".join([json.dumps(broken), '{"sentence": "no identifier"}', *rows[1:]]))
  nlvr = formats.nlvr2(tmp_path / "nlvr2.json", root / "images/nlvr2")
  assert len(nlvr) == 7 and nlvr.skipped.counts == {"bad annotation record": 2}
  table = tmp_path / "pairs.csv"
  table.write_text("filepath,caption\ntrain2017/a.jpg,a cat\n,no image\ntrain2017/b.jpg,\n")
  assert len(formats.caption_table(table)) == 1


# --- ImageFolder ---------------------------------------------------------------------------------------------------


def test_image_folder(shared_data, tmp_path):
  photos = sorted((shared_data / "coco-mini/val2017").glob("*.jpg"))
  layout = {"zebra": 2, "apple": 3, "mango": 1}
  used = iter(photos)
  for name, count in layout.items():
    (tmp_path / name / "sub").mkdir(parents=True)
    for k in range(count):
      shutil.copy(next(used), tmp_path / name / ("sub" if k == 0 else "") / f"{k}.JPG")
  (tmp_path / "apple" / "notes.txt").write_text("not an image")
  reader = formats.image_folder(tmp_path)
  assert reader.metadata == {"classes": ["apple", "mango", "zebra"]}
  assert collections.Counter(f["label"] for f in reader.fields) == {0: 3, 1: 1, 2: 2}
  assert reader.fields[0] == {"image_id": "apple/1.JPG", "label": 0}
  assert reader[0]["image_bytes"] == (tmp_path / "apple/1.JPG").read_bytes()
  with pytest.raises(ValueError, match="no class sub-folders"):
    formats.image_folder(tmp_path / "mango" / "sub")


# --- vision-language tasks -----------------------------------------------------------------------------------------


def test_vqa_v2(shared_data):
  root = shared_data / "vl-fixtures"
  reader = formats.vqa_v2(root / "vqav2/questions.json", root / "images/vqav2", root / "vqav2/annotations.json")
  assert len(reader) == 3
  first = reader[0]
  assert first["question"] == "What is this photo taken looking through?"
  assert first["question_id"] == "458752000" and first["image_id"] == "458752"
  assert len(first["answers"]) == 10 and first["answer"] == "net"
  assert first["image_bytes"] == (root / "images/vqav2/COCO_train2014_000000458752.jpg").read_bytes()
  assert "answer" not in formats.vqa_v2(root / "vqav2/questions.json", root / "images/vqav2")[1]


def test_gqa(shared_data):
  root = shared_data / "vl-fixtures"
  single = formats.gqa(root / "gqa/questions.json", root / "images/gqa")
  assert single.fields == [
    {
      "question_id": "202218649",
      "image_id": "n578564",
      "question": "What is hanging above the chalkboard?",
      "answer": "picture",
    }
  ]
  assert single[0]["image_bytes"] == (root / "images/gqa/n578564.jpg").read_bytes()
  folder = formats.gqa(root / "gqa/question_dir", root / "images/gqa")
  assert [f["image_id"] for f in folder.fields] == ["n578564", "n166008"]


def test_nlvr2(shared_data):
  root = shared_data / "vl-fixtures"
  reader = formats.nlvr2(root / "nlvr2/tiny-dev.json", root / "images/nlvr2")
  assert len(reader) == 8
  assert collections.Counter(f["label"] for f in reader.fields) == {0: 4, 1: 4}
  first = reader[0]
  assert first["identifier"] == "dev-850-0-0" and first["image_id"] == "dev-850-0" and first["label"] == 0
  assert first["statement"].startswith("The right image shows a curving walkway")
  assert first["image_bytes"] == (root / "images/nlvr2/dev-850-0-img0.png").read_bytes()
  assert first["image2_bytes"] == (root / "images/nlvr2/dev-850-0-img1.png").read_bytes()


def test_snli_ve(shared_data):
  root = shared_data / "vl-fixtures"
  reader = formats.snli_ve(root / "visual_entailment/sample_pairs.jsonl", root / "images/visual_entailment")
  assert len(reader) == 16
  assert reader.metadata["classes"] == ["entailment", "neutral", "contradiction"]
  assert collections.Counter(f["label"] for f in reader.fields) == {0: 6, 1: 6, 2: 4}
  assert reader.fields[0] == {
    "image_id": "2248275918",
    "pair_id": "2248275918.jpg#2r1c",
    "hypothesis": "A toddler sleeps outside.",
    "label": 2,
  }
  assert reader[15]["image_bytes"] == (root / "images/visual_entailment/402978771.jpg").read_bytes()


# --- prepared tfds datasets ----------------------------------------------------------------------------------------

with tfds.core.registered.skip_registration():

  class _FakeCocoCaptions(tfds.core.GeneratorBasedBuilder):
    """Same name, config and feature layout as tfds's ``coco_captions`` (whose code needs TensorFlow)."""

    name = "coco_captions"
    VERSION = tfds.core.Version("1.1.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]

    def __init__(self, photos, **kwargs):
      self.photos = photos
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"val": self._generate_examples()}

    def _generate_examples(self):
      for i, photo in enumerate(self.photos):
        yield (
          i,
          {
            "image": io.BytesIO(photo.read_bytes()),
            "image/filename": photo.name,
            "image/id": 500 + i,
            "captions": {"id": [i, 100 + i], "text": [f"first {i}", f"second {i}"]},
          },
        )

  class _FakeCifar10(tfds.core.GeneratorBasedBuilder):
    """Same name and feature layout as tfds's ``cifar10``."""

    name = "cifar10"
    VERSION = tfds.core.Version("3.0.2")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(4, 4, 3)),
            "label": tfds.features.ClassLabel(names=["airplane", "automobile", "bird"]),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        # tfds encodes numpy images with TensorFlow; a PIL image is encoded with PIL.
        image = Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8))
        yield i, {"id": f"test_{i:05d}", "image": image, "label": i % 3}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, shared_data):
  data_dir = tmp_path_factory.mktemp("tfds")
  photos = sorted((shared_data / "coco-mini/val2017").glob("*.jpg"))[:4]
  _FakeCocoCaptions(photos, data_dir=data_dir, config="2014", file_format="array_record").download_and_prepare()
  _FakeCifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir, photos


def test_tfds_coco_captions(tfds_dir):
  data_dir, photos = tfds_dir
  reader = formats.TfdsExamples("coco_captions", "val", data_dir)
  assert len(reader) == 4 and reader.metadata == {}
  by_id = {ex["image_id"]: ex for ex in reader}
  assert sorted(by_id) == ["500", "501", "502", "503"]
  for i, photo in enumerate(photos):
    assert by_id[str(500 + i)] == {
      "image_id": str(500 + i),
      "captions": [f"first {i}", f"second {i}"],
      "image_bytes": photo.read_bytes(),
    }


def test_tfds_classification(tfds_dir):
  data_dir, _ = tfds_dir
  reader = formats.TfdsExamples("cifar10", "test", data_dir)
  assert reader.metadata == {"classes": ["airplane", "automobile", "bird"]}
  examples = {ex["image_id"]: ex for ex in reader}
  assert sorted(examples) == [f"test_{i:05d}" for i in range(6)]
  for i in range(6):
    example = examples[f"test_{i:05d}"]
    assert example["label"] == i % 3 and "captions" not in example
    np.testing.assert_array_equal(records.decode_image(example["image_bytes"]), np.full((4, 4, 3), 40 * i))


def test_tfds_bad_input(tfds_dir):
  data_dir, _ = tfds_dir
  with pytest.raises(ValueError, match=r"valid splits: \['test'\]"):
    formats.TfdsExamples("cifar10", "train", data_dir)
  with pytest.raises(KeyError, match="features:.*'label'"):
    formats.TfdsExamples("cifar10", "test", data_dir, label_key="fine_label")
  with pytest.raises(FileNotFoundError, match="not prepared"):
    formats.TfdsExamples("mnist", "test", data_dir)


# --- conversion ----------------------------------------------------------------------------------------------------


def _stored(out):
  source = records.RecordDataSource(out.parent, out.name)
  return [source[i] for i in range(len(source))]


def test_convert_coco_cli(shared_data, tmp_path, capsys):
  ann_file, image_dir = _coco(shared_data, "val")
  out = tmp_path / "coco" / "val"
  assert (
    convert.main(
      [
        "coco",
        "--src",
        str(ann_file),
        "--images",
        str(image_dir),
        "--out",
        str(out),
        "--shard-size",
        "40",
        "--no-progress",
      ]
    )
    == 0
  )
  assert "wrote 159 examples in 4 shards" in capsys.readouterr().out
  assert sorted(p.name for p in out.parent.glob("*.array_record")) == [
    f"val-0000{i}-of-00004.array_record" for i in range(4)
  ]
  stored = _stored(out)
  assert len(stored) == 159 and sum(len(ex["captions"]) for ex in stored) == 795
  assert stored == list(formats.coco_captions(ann_file, image_dir))


def test_convert_cli_formats(shared_data, tmp_path, tfds_dir):
  root = shared_data / "vl-fixtures"
  _write_webdataset(shared_data, tmp_path / "shards")
  karpathy_file, _ = _karpathy_coco(shared_data, tmp_path)
  runs = {
    "nlvr2": (["--src", str(root / "nlvr2/tiny-dev.json"), "--images", str(root / "images/nlvr2")], 8),
    "snli-ve": (
      ["--src", str(root / "visual_entailment/sample_pairs.jsonl"), "--images", str(root / "images/visual_entailment")],
      16,
    ),
    "vqav2": (
      [
        "--src",
        str(root / "vqav2/questions.json"),
        "--annotations",
        str(root / "vqav2/annotations.json"),
        "--images",
        str(root / "images/vqav2"),
      ],
      3,
    ),
    "gqa": (["--src", str(root / "gqa/question_dir"), "--images", str(root / "images/gqa")], 2),
    "flickr30k-entities": (
      [
        "--src",
        str(root / "flickr30k/test.txt"),
        "--sentences",
        str(root / "flickr30k/sentences"),
        "--images",
        str(root / "images/flickr30k"),
      ],
      5,
    ),
    "tfds": (["--src", "cifar10", "--split", "test", "--data-dir", str(tfds_dir[0])], 6),
    "webdataset": (["--src", str(tmp_path / "shards")], 5),
    "karpathy": (
      ["--src", str(karpathy_file), "--images", str(shared_data / "coco-mini"), "--split", "train,restval"],
      5,
    ),
  }
  for name, (args, count) in runs.items():
    out = tmp_path / name / "data"
    assert convert.main([name, *args, "--out", str(out), "--no-progress"]) == 0
    assert len(records.RecordDataSource(out.parent, "data")) == count, name
  nlvr = records.RecordDataSource(tmp_path / "nlvr2", "data", decode_images=True)[0]
  assert nlvr["image"].shape[-1] == 3 and nlvr["image2"].shape[-1] == 3
  manifest = json.loads((tmp_path / "tfds" / "data.manifest.json").read_text())
  assert manifest["metadata"] == {"classes": ["airplane", "automobile", "bird"]}


def test_convert_cli_errors(shared_data, tmp_path, capsys):
  ann_file, _ = _coco(shared_data, "val")
  with pytest.raises(SystemExit):
    convert.main(["coco", "--src", str(ann_file), "--out", str(tmp_path / "x")])  # needs --images
  with pytest.raises(SystemExit):
    convert.main(["parquet", "--src", str(ann_file), "--out", str(tmp_path / "x")])
  (tmp_path / "empty").mkdir()
  assert (
    convert.main(
      [
        "coco",
        "--src",
        str(ann_file),
        "--images",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "x"),
        "--no-progress",
      ]
    )
    == 1
  )
  assert "none of the 159 examples" in capsys.readouterr().err


def _damaged_table(shared_data, tmp_path):
  """A caption table over 8 copied photos: one truncated, one garbage, one deleted, one a directory."""
  photos = sorted((shared_data / "coco-mini/train2017").glob("*.jpg"))[:8]
  folder = tmp_path / "images"
  folder.mkdir()
  for photo in photos:
    shutil.copy(photo, folder / photo.name)
  truncated = folder / photos[1].name
  truncated.write_bytes(truncated.read_bytes()[:5000])
  (folder / photos[3].name).write_bytes(b"<html>404 not found</html>")
  (folder / photos[5].name).unlink()
  (folder / photos[6].name).unlink()
  (folder / photos[6].name).mkdir()
  table = tmp_path / "pairs.csv"
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["filepath", "caption"])
    writer.writerows([(f"images/{p.name}", f"caption of {p.stem}") for p in photos])
  return table, photos


def test_convert_skips_and_reports_damaged_images(shared_data, tmp_path):
  table, photos = _damaged_table(shared_data, tmp_path)
  summary = convert.convert(formats.caption_table(table), tmp_path / "out" / "train", shard_size=3, progress=False)
  assert summary.written == 4
  assert summary.skipped.counts == {"corrupt image": 2, "missing file": 1, "unreadable file": 1}
  assert summary.skipped.details["missing file"] == [str(tmp_path / "images" / photos[5].name)]
  assert photos[6].name in summary.skipped.details["unreadable file"][0]
  assert [c.split(" ")[0] for c in summary.skipped.details["corrupt image"]] == [
    f"images/{photos[1].name}",
    f"images/{photos[3].name}",
  ]
  report = summary.report()
  assert "skipped 1 (missing file)" in report and photos[5].name in report
  assert "skipped 2 (corrupt image)" in report
  kept = [0, 2, 4, 7]
  assert [ex["image_id"] for ex in _stored(tmp_path / "out" / "train")] == [f"images/{photos[i].name}" for i in kept]


class _Recording:
  """A source wrapper that records which indices were loaded and can fail at one index."""

  def __init__(self, source, fail_at=None):
    self.source, self.fail_at, self.loaded = source, fail_at, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    if index == self.fail_at:
      raise KeyboardInterrupt("simulated interruption")
    self.loaded.append(index)
    return self.source[index]


def test_interrupted_conversion_resumes_without_loss(shared_data, tmp_path):
  table, _ = _damaged_table(shared_data, tmp_path)
  reader = formats.caption_table(table)
  settings = {"format": "table", "src": str(table)}
  reference = convert.convert(reader, tmp_path / "ref" / "train", 3, settings, workers=1, progress=False)

  out = tmp_path / "run" / "train"
  with pytest.raises(KeyboardInterrupt):
    convert.convert(_Recording(reader, fail_at=7), out, 3, settings, workers=1, progress=False)
  manifest = json.loads(convert.manifest_path(out).read_text())
  assert sorted(manifest["shards"]) == ["0", "1"]
  assert sorted(p.name for p in out.parent.iterdir()) == [
    "train-00000-of-00003.array_record",
    "train-00001-of-00003.array_record",
    "train.manifest.json",
  ]

  resumed = _Recording(reader)
  summary = convert.convert(resumed, out, 3, settings, workers=1, progress=False)
  assert sorted(resumed.loaded) == [6, 7]
  assert summary.resumed_shards == 2
  assert (summary.written, summary.skipped) == (reference.written, reference.skipped)
  assert _stored(out) == _stored(tmp_path / "ref" / "train")
  for a, b in zip(summary.shards, reference.shards):
    assert a.read_bytes() == b.read_bytes()

  with pytest.raises(ValueError, match="different settings.*shard_size"):
    convert.convert(reader, out, 4, settings, progress=False)


# --- one format table: source kinds and conversion formats -------------------------------------------------------


def test_every_conversion_format_is_a_source_kind_with_the_same_keys(shared_data):
  from lmstruct.data import sources

  assert set(sources.FORMATS) <= set(sources.KINDS)
  parser = convert.build_parser()
  commands = next(a for a in parser._actions if a.dest == "format").choices
  assert set(commands) == set(sources.FORMATS)
  for name, fmt in sources.FORMATS.items():
    flags = {a.dest: a.option_strings[0] for a in commands[name]._actions if a.option_strings}
    assert {p.key: flags[p.key] for p in fmt.params} == {p.key: p.cli_flag for p in fmt.params}, name
  root = shared_data / "vl-fixtures"
  configs = {
    "vqav2": (
      {
        "questions": root / "vqav2/questions.json",
        "images": root / "images/vqav2",
        "annotations": root / "vqav2/annotations.json",
      },
      3,
    ),
    "gqa": ({"questions": root / "gqa/question_dir", "images": root / "images/gqa"}, 2),
    "nlvr2": ({"path": root / "nlvr2/tiny-dev.json", "images": root / "images/nlvr2"}, 8),
    "snli-ve": (
      {"path": root / "visual_entailment/sample_pairs.jsonl", "images": root / "images/visual_entailment"},
      16,
    ),
    "flickr30k-entities": (
      {
        "split_file": root / "flickr30k/test.txt",
        "sentences": root / "flickr30k/sentences",
        "images": root / "images/flickr30k",
      },
      5,
    ),
  }
  for kind, (keys, count) in configs.items():
    source = sources.build_source({"kind": kind, **{k: str(v) for k, v in keys.items()}})
    assert len(source) == count, kind
    assert source[0] == sources.FORMATS[kind].reader(**keys)[0], kind
  with pytest.raises(ValueError, match=r"unknown data source kind 'vqa2' in data \(did you mean 'vqav2'\?\)"):
    sources.build_source({"kind": "vqa2"})
  with pytest.raises(ValueError, match=r"unknown key data.image for a 'gqa' source \(did you mean 'images'\?\)"):
    sources.build_source({"kind": "gqa", "questions": "q.json", "image": "x"})
  with pytest.raises(ValueError, match="array_record reads local files only"):
    sources.build_source({"kind": "records", "path": "gs://bucket/coco/train"})
