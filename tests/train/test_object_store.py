"""Training from a bucket: shards, workdir and checkpoints at gs:// URLs, through a fake GCS (no network).

The fake is an fsspec file system registered for the ``gs``/``gcs`` protocols that keeps ``gs://bucket/key`` in
``<tmp>/bucket/key``; etils epath (data sources, workdir files, orbax's metadata) and TensorBoard's event writer
reach it through fsspec. The one client that bypasses fsspec, tensorstore's GCS driver (orbax's array writes), is
pointed at the same directory, and orbax's bucket-admin probe for hierarchical namespaces is answered "no".
"""

import importlib
import json

import pytest
from etils import epath
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils
from test_driver import load_config, quick, write_webdataset

from lmstruct import paths
from lmstruct.data import sources, streaming
from lmstruct.train import checkpoint
from lmstruct.train.loop import train_and_evaluate


class FakeGCS(DirFileSystem):
  """gs://bucket/key stored at <root>/bucket/key."""

  protocol = ("gs", "gcs")
  cachable = False
  root = ""

  def __init__(self, *args, **kwargs):
    super().__init__(path=self.root, fs=LocalFileSystem())


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """A fake gs:// store at tmp_path/store; yields the local folder holding its buckets."""
  store = tmp_path / "store"
  store.mkdir()
  monkeypatch.setattr(FakeGCS, "root", str(store))
  for protocol in FakeGCS.protocol:
    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, protocol, FakeGCS)
  epath.backend.fsspec_backend._get_filesystem.cache_clear()

  def file_kvstore(path):
    bucket_name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": f"{store}/{bucket_name}/{key}"}

  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", file_kvstore)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  yield store
  epath.backend.fsspec_backend._get_filesystem.cache_clear()


def test_paths_list_and_read_shards_in_a_bucket(bucket, shared_data):
  (bucket / "data" / "cc3m").mkdir(parents=True)
  for shard in range(3):
    write_webdataset(shared_data, bucket / "data" / "cc3m" / f"{shard:05d}.tar", count=4)
  listed = paths.list_shards("gs://data/cc3m")
  assert [str(p) for p in listed] == [f"gs://data/cc3m/{i:05d}.tar" for i in range(3)]
  assert [str(p) for p in paths.list_shards("gs://data/cc3m/{00001..00002}.tar")] == [
    "gs://data/cc3m/00001.tar",
    "gs://data/cc3m/00002.tar",
  ]
  indexed = sources.build_source({"kind": "webdataset", "shards": "gs://data/cc3m/*.tar"})
  photos = sorted((shared_data / "coco-mini" / "train2017").glob("*.jpg"))
  assert len(indexed) == 4 and indexed.skipped.counts == {"duplicate sample key": 8}  # same keys in every shard
  assert indexed[1]["image_bytes"] == photos[1].read_bytes()
  stream = sources.build_source({"kind": "webdataset", "shards": "gs://data/cc3m", "streaming": True})
  assert isinstance(stream, streaming.WebDatasetStream) and stream.num_units == 3
  skipped = streaming.skips_lib.Skips()
  assert [s.key for s in stream.samples(2, skipped)] == ["0000", "0001", "0002", "0003"] and not skipped.total


def test_training_reads_shards_and_writes_workdir_and_checkpoints_in_a_bucket(bucket, shared_data, tmp_path):
  (bucket / "data" / "cc3m").mkdir(parents=True)
  for shard in range(2):
    write_webdataset(shared_data, bucket / "data" / "cc3m" / f"{shard:05d}.tar", count=8)
  config = quick(load_config("clip_scenes", "variant=test,batch=4"), tmp_path / "data", steps=2)
  config.data.train = load_config("paper_cc3m", "shards=gs://data/cc3m/{00000..00001}.tar,buffer=4").data.train
  config.train.checkpoint_every = 1
  train_and_evaluate(config, "gs://runs/cc3m")
  run = bucket / "runs" / "cc3m"
  assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2]
  assert json.loads((run / "config.json").read_text())["data"]["train"]["streaming"] is True
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert checkpoint.make_manager("gs://runs/cc3m/checkpoints").all_steps() == [1, 2]
  config.train.steps = 3
  train_and_evaluate(config, "gs://runs/cc3m")  # resumes from the bucket's checkpoint 2
  assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 3]
  assert not (tmp_path / "gs:").exists()
