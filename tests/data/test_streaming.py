"""Streaming webdataset input and reader positions: exactly once per epoch (damaged shards mixed in, shard counts
that do not divide), exact resume, and resume onto other numbers of processes, readers and devices."""

import collections
import io
import json
import tarfile

import jax
import numpy as np
import pytest
from test_pipeline import assert_batches_equal, ids_of, make_source, png_bytes, take, train

from lmstruct.data import pipeline, plan, streaming

SHARD_SIZES = (5, 3, 6, 4, 2, 5, 4)  # 29 samples in 7 shards


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_shards(folder, sizes=SHARD_SIZES):
  """Shards of PNG samples captioned 'photo <id> of a cat'; shard 1 also holds damaged samples, shard 3 is cut
  inside its last sample. Returns the ids that are usable and the number of damaged samples."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  usable, next_id = [], 0
  for shard, size in enumerate(sizes):
    path = folder / f"{shard:05d}.tar"
    with tarfile.open(path, "w") as tar:
      for _ in range(size):
        image = png_bytes(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
        _add(tar, f"s{next_id:04d}.png", image)
        _add(tar, f"s{next_id:04d}.txt", f"photo {next_id} of a cat".encode())
        usable.append(next_id)
        next_id += 1
      if shard == 1:
        _add(tar, "../escape.png", image)
        _add(tar, "nocaption.png", image)
    if shard == 3:
      data = path.read_bytes()
      with tarfile.open(path) as tar:
        cut = tar.getmember(f"s{next_id - 1:04d}.png").offset_data + 20
      path.write_bytes(data[:cut])
      usable.pop()
  return usable, 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  folder = tmp_path_factory.mktemp("stream") / "shards"
  usable, damaged = write_shards(folder)
  return folder, usable, damaged


def stream_of(folder, buffer=3):
  return streaming.WebDatasetStream(folder, shuffle_buffer=buffer)


def drain(iterator):
  return [i for batch in iterator for i in ids_of(batch)]


@pytest.mark.parametrize("processes,threads", [(1, 1), (2, 2), (3, 1), (2, 3)])
def test_each_epoch_delivers_every_usable_sample_exactly_once(shards, processes, threads):
  folder, usable, damaged = shards
  iterators = [
    train(
      stream_of(folder),
      global_batch_size=processes,
      num_epochs=2,
      shard_index=k,
      shard_count=processes,
      read_threads=threads,
    )
    for k in range(processes)
  ]
  seen = [drain(it) for it in iterators]
  counts = collections.Counter(i for ids in seen for i in ids)
  assert counts == {i: 2 for i in usable}
  # Every shard is read once per epoch, so each process counts the damage of the shards it read.
  assert sum(it.num_skipped for it in iterators) == 2 * damaged
  one = seen[0]
  assert one != sorted(one)


def test_in_shard_order_is_a_seeded_shuffle_independent_of_the_reader(shards):
  folder, usable, _ = shards
  stream = stream_of(folder, buffer=4)
  skipped = streaming.skips_lib.Skips()
  orders = [[s.key for s in stream.unit(0, epoch=e, seed=11, skips=skipped)] for e in (0, 0, 1)]
  assert orders[0] == orders[1] and sorted(orders[0]) == sorted(orders[2]) and orders[0] != orders[2]
  assert sorted(orders[0]) == [f"s{i:04d}" for i in range(5)]
  assert [s.key for s in stream_of(folder, buffer=1).unit(0, 0, 11, skipped)] == [f"s{i:04d}" for i in range(5)]


def test_shuffle_buffer_emits_each_item_once():
  rng = np.random.default_rng(3)
  for size in (0, 1, 4, 50):
    out = list(streaming.shuffled(iter(range(20)), size, rng))
    assert sorted(out) == list(range(20))


def test_resume_continues_exactly_where_it_stopped(shards):
  folder = shards[0]
  straight = train(stream_of(folder), global_batch_size=4, read_threads=2)
  take(straight, 3)
  state = json.loads(json.dumps(straight.global_state()))
  expected = take(straight, 6)  # crosses shard and epoch boundaries
  resumed = train(stream_of(folder), global_batch_size=4, read_threads=2)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 6), expected)
  assert resumed.num_skipped == straight.num_skipped


def _epoch_after_remap(folder_or_source, before, after, batches, **kwargs):
  """Runs `before` processes for `batches` batches each, then resumes on `after` processes to the end of the
  epoch; returns every id delivered."""
  first = [
    train(folder_or_source(), global_batch_size=before, num_epochs=1, shard_index=k, shard_count=before, **kwargs)
    for k in range(before)
  ]
  seen = [i for it in first for i in ids_of_batches(take(it, batches))]
  state = pipeline.combine_states([it.get_state() for it in first])
  for k in range(after):
    resumed = train(
      folder_or_source(), global_batch_size=after, num_epochs=1, shard_index=k, shard_count=after, **kwargs
    )
    resumed.set_state(json.loads(json.dumps(state)))
    seen += drain(resumed)
  return seen


def ids_of_batches(batches):
  return [i for b in batches for i in ids_of(b)]


@pytest.mark.parametrize("before,after,threads", [(2, 1, 1), (1, 3, 2), (3, 2, 2)])
def test_resume_on_another_number_of_processes_repeats_and_skips_nothing(shards, before, after, threads):
  folder, usable, _ = shards
  seen = _epoch_after_remap(lambda: stream_of(folder), before, after, batches=5, read_threads=threads)
  assert sorted(seen) == usable


def test_random_access_resume_on_another_number_of_processes(shards):
  source = make_source(23, corrupt=(4,))
  seen = _epoch_after_remap(lambda: source, 2, 1, batches=4)
  assert sorted(seen) == [i for i in range(23) if i != 4]
  seen = _epoch_after_remap(lambda: source, 1, 3, batches=3)
  assert sorted(seen) == [i for i in range(23) if i != 4]


def test_resume_on_fewer_devices_continues_the_same_global_batches(shards):
  folder = shards[0]
  eight = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  two = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2], axis_types=(jax.sharding.AxisType.Auto,))
  straight = train(stream_of(folder), global_batch_size=8, mesh=eight)
  take(straight, 2)
  state = straight.global_state()
  expected = take(straight, 2)
  resumed = train(stream_of(folder), global_batch_size=8, mesh=two)
  resumed.set_state(state)
  got = take(resumed, 2)
  assert {len(b["image"].sharding.device_set) for b in got} == {2}
  assert_batches_equal(got, expected)


def test_remap_hand_worked_case():
  # Two readers: reader 0 (units 0, 2, 4, ...) finished units 0 and 2 and delivered 3 items of unit 4; reader 1
  # (units 1, 3, 5, ...) delivered 1 item of unit 1. Left: 1 (from item 1), 3, 4 (from item 3), 5, then 6, 7, ...
  fresh = plan.fresh_plans(2)
  positions = [plan.Position(fresh[0], step=2, done=3), plan.Position(fresh[1], step=0, done=1)]
  one = plan.remap(positions, 1)
  assert one[0].plan == plan.ReaderPlan(((1, 1), (3, 0), (4, 3), (5, 0)), first=6, stride=1)
  assert (one[0].step, one[0].done) == (0, 1)
  three = plan.remap(positions, 3)
  assert [p.plan.pending for p in three] == [((1, 1), (5, 0)), ((3, 0),), ((4, 3),)]
  assert [p.plan.first for p in three] == [8, 6, 7]  # the round-robin continues after the pending units
  assert plan.remap(positions, 2) == positions


def test_remap_covers_every_unit_once_for_random_positions():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n, m = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    readers = [plan.Position.start(p) for p in plan.fresh_plans(n)]
    finished = []
    for _round in range(2):  # two successive resumes
      moved = []
      for position in readers:
        for _ in range(int(rng.integers(0, 5))):
          finished.append(position.plan.at(position.step)[0])
          position = position.advanced(0, last=True)
        moved.append(position)
      readers = plan.remap(moved, m)
      n, m = m, int(rng.integers(1, 6))
    upcoming = [p.plan.at(p.step + k)[0] for p in readers for k in range(60)]
    horizon = min(p.plan.at(p.step + 59)[0] for p in readers)
    covered = sorted(finished + [g for g in upcoming if g <= horizon])
    assert covered == list(range(horizon + 1))


def test_worker_processes_read_the_same_stream_as_threads(shards):
  folder = shards[0]
  threads = train(stream_of(folder), global_batch_size=4, read_threads=2, num_epochs=1)
  workers = train(stream_of(folder), global_batch_size=4, worker_count=2, num_epochs=1)
  try:
    assert_batches_equal(list(workers), list(threads))
    assert workers.num_skipped == threads.num_skipped
  finally:
    workers.close()
