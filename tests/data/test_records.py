"""Record files: msgpack examples in sharded array_record files, random access, image decoding."""

import io
import pickle

import grain
import msgpack
import numpy as np
import pytest
from PIL import Image

from lmstruct.data import records


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _examples(n: int) -> list[dict]:
  rng = np.random.default_rng(0)
  return [
    {
      "image_bytes": _png(rng.integers(0, 256, (4 + i % 3, 5, 3), dtype=np.uint8)),
      "captions": [f"caption {i}", f"zweite Beschriftung {i} ü"],
      "image_id": f"img-{i}",
      "label": i % 4,
      "labels": {"shape": i % 3, "colour": i % 5},
    }
    for i in range(n)
  ]


def test_encode_decode_roundtrip_is_plain_msgpack():
  example = _examples(1)[0] | {"score": np.float32(0.5), "count": np.int64(7)}
  data = records.encode_example(example)
  # Independent reference: a plain msgpack decoder reads the same dict (no pickle, no custom types).
  plain = msgpack.unpackb(data, raw=False)
  assert plain["count"] == 7 and plain["score"] == 0.5 and plain["image_bytes"] == example["image_bytes"]
  assert records.decode_example(data) == {**example, "score": 0.5, "count": 7}


def test_encode_rejects_arrays_and_non_string_keys():
  with pytest.raises(TypeError, match="image_bytes"):
    records.encode_example({"image": np.zeros((2, 2, 3), np.uint8)})
  with pytest.raises(TypeError, match="keys must be strings"):
    records.encode_example({1: "x"})
  with pytest.raises(ValueError, match="msgpack map"):
    records.decode_example(msgpack.packb([1, 2]))


def test_shard_names():
  assert records.shard_name("train", 3, 4) == "train-00003-of-00004.array_record"
  with pytest.raises(ValueError, match="outside"):
    records.shard_name("train", 4, 4)


def test_write_and_read_sharded(tmp_path):
  examples = _examples(10)
  paths = records.write_records(tmp_path, "train", examples, num_shards=4)
  assert [p.name for p in paths] == [f"train-0000{i}-of-00004.array_record" for i in range(4)]
  source = records.RecordDataSource(tmp_path, "train")
  assert len(source) == 10
  assert [source[i] for i in range(10)] == examples
  assert source[-1] == examples[-1]
  with pytest.raises(IndexError, match="out of range"):
    source[10]


def test_reader_decodes_images(tmp_path):
  examples = _examples(3)
  records.write_records(tmp_path, "val", examples)
  source = records.RecordDataSource(tmp_path, "val", decode_images=True)
  for example, got in zip(examples, source):
    assert "image_bytes" not in got
    np.testing.assert_array_equal(got["image"], np.asarray(Image.open(io.BytesIO(example["image_bytes"]))))
    assert got["captions"] == example["captions"]


def test_reader_is_a_grain_data_source(tmp_path):
  examples = _examples(6)
  records.write_records(tmp_path, "train", examples, num_shards=2)
  source = records.RecordDataSource(tmp_path, "train")
  dataset = grain.MapDataset.source(source).map(lambda ex: ex["image_id"])
  assert list(dataset) == [ex["image_id"] for ex in examples]
  loader = grain.DataLoader(
    data_source=source,
    operations=[],
    sampler=grain.samplers.IndexSampler(6, num_epochs=1, shuffle=False, seed=0),
    worker_count=0,
  )
  assert [ex["label"] for ex in loader] == [ex["label"] for ex in examples]
  assert pickle.loads(pickle.dumps(source))[5] == examples[5]


def test_find_shards_reports_missing_and_unknown(tmp_path):
  paths = records.write_records(tmp_path, "train", _examples(4), num_shards=3)
  paths[1].unlink()
  with pytest.raises(FileNotFoundError, match="train-00001-of-00003"):
    records.RecordDataSource(tmp_path, "train")
  with pytest.raises(FileNotFoundError, match=r"datasets found there: \['train'\]"):
    records.RecordDataSource(tmp_path, "valid")


def test_write_shard_is_atomic(tmp_path):
  def failing():
    yield _examples(1)[0]
    raise RuntimeError("interrupted")

  target = tmp_path / "x-00000-of-00001.array_record"
  with pytest.raises(RuntimeError, match="interrupted"):
    records.write_shard(target, failing())
  assert list(tmp_path.iterdir()) == []


def test_decode_image_modes():
  rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  np.testing.assert_array_equal(records.decode_image(_png(rgb)), rgb)
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  np.testing.assert_array_equal(records.decode_image(_png(grey)), np.repeat(grey[..., None], 3, axis=-1))
  rgba = np.dstack([rgb, np.full((4, 6), 9, np.uint8)])
  decoded = records.decode_image(_png(rgba))
  assert decoded.dtype == np.uint8 and decoded.shape == (4, 6, 3)
  np.testing.assert_array_equal(decoded, rgb)


def test_decode_real_jpeg_matches_annotated_size(shared_data):
  import json

  ann = json.loads((shared_data / "coco-mini/annotations/captions_val2017.json").read_text())
  info = ann["images"][0]
  image = records.decode_image((shared_data / "coco-mini/val2017" / info["file_name"]).read_bytes())
  assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8


def test_decode_errors_are_typed(shared_data):
  jpeg = (shared_data / "coco-mini/val2017/000000000139.jpg").read_bytes()
  for bad in (jpeg[: len(jpeg) // 2], b"not an image at all", b""):
    with pytest.raises(records.ImageDecodeError, match="cannot decode image"):
      records.decode_image(bad)
  with pytest.raises(records.ImageDecodeError, match="'broken'.*image_bytes"):
    records.decode_example_images({"image_id": "broken", "image_bytes": b"\x89PNG\r\n"})
