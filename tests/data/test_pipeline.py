"""Training and evaluation input pipelines (lmstruct.data.pipeline) on small in-memory sources."""
import io
import json
import zlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from lmstruct.data import augment, pipeline

SIZE = 16
CONTEXT = 8
SYNONYMS = {"cat": ("kitty",), "photo": ("picture",), "dog": ("hound",)}


def tokenize(texts):
  """Start token 1, one id per word (digits map to their value, other words to 1000 + crc32 % 10000), end 2."""
  out = np.zeros((len(texts), CONTEXT), np.int32)
  for row, text in enumerate(texts):
    words = text.lower().split()[:CONTEXT - 2]
    ids = [1] + [int(w) if w.isdigit() else 1000 + zlib.crc32(w.encode()) % 10000 for w in words] + [2]
    out[row, :len(ids)] = ids
  return out


def table_synonyms(word):
  return SYNONYMS.get(word, ())


def png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def make_source(n, corrupt=()):
  """n examples; even ones store a uint8 array, odd ones PNG bytes; ``corrupt`` indices get broken bytes."""
  rng = np.random.default_rng(1234)
  source = []
  for i in range(n):
    image = rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)
    example = {"captions": [f"photo {i} of a cat", f"picture {i} of a dog"], "image_id": str(i), "label": i % 3}
    if i in corrupt:
      example["image_bytes"] = png_bytes(image)[:40] if i % 2 else b"not an image"
    elif i % 2:
      example["image_bytes"] = png_bytes(image)
    else:
      example["image"] = image
    source.append(example)
  return source


def ids_of(batch):
  """Source index of each row, read back from the tokenized original caption."""
  return [int(i) for i in np.asarray(batch["text"])[:, 2]]


def train(source, **kwargs):
  settings = dict(tokenize=tokenize, global_batch_size=8, seed=0, image_size=SIZE, synonyms=table_synonyms)
  settings.update(kwargs)
  return pipeline.train_pipeline(source, **settings)


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def test_train_batches_are_global_arrays_sharded_over_data_axis(mesh):
  source = make_source(24)
  batch = next(train(source, mesh=mesh))
  assert set(batch) == {"image", "image_aug", "text", "text_aug"}
  expected = NamedSharding(mesh, PartitionSpec("data"))
  for key, dtype, shape in [("image", np.float32, (8, SIZE, SIZE, 3)), ("image_aug", np.float32, (8, SIZE, SIZE, 3)),
                            ("text", np.int32, (8, CONTEXT)), ("text_aug", np.int32, (8, CONTEXT))]:
    array = batch[key]
    assert isinstance(array, jax.Array) and array.dtype == dtype and array.shape == shape
    assert array.sharding.is_equivalent_to(expected, array.ndim)
    assert {shard.data.shape[0] for shard in array.addressable_shards} == {1}
  host = next(train(source))
  assert_batches_equal([batch], [host])


def test_two_axis_mesh_shards_batch_over_data_and_replicates_over_model():
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  batch = next(train(make_source(16), mesh=mesh))
  image = batch["image"]
  assert image.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), image.ndim)
  assert {shard.data.shape[0] for shard in image.addressable_shards} == {2}
  mesh_2d = jax.make_mesh((4, 2), ("replica", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  batch = next(train(make_source(16), mesh=mesh_2d, data_axes=("replica", "data")))
  assert {shard.data.shape[0] for shard in batch["text"].addressable_shards} == {1}


def test_views_are_clip_preprocessed_original_and_augmented_copy():
  source = make_source(16)
  batch = next(train(source))
  for row, index in enumerate(ids_of(batch)):
    example = source[index]
    image = example["image"] if "image" in example else np.asarray(Image.open(io.BytesIO(example["image_bytes"])))
    np.testing.assert_array_equal(batch["image"][row], augment.clip_preprocess(image, SIZE))
    assert not np.array_equal(batch["image_aug"][row], batch["image"][row])
  assert batch["image_aug"].dtype == np.float32
  assert np.any(batch["text"] != batch["text_aug"])
  starts = set(batch["text"][:, 1].tolist())
  assert starts <= set(tokenize(["photo", "picture"])[:, 1].tolist()) and len(starts) == 2  # random caption


def test_training_is_deterministic_by_seed():
  source = make_source(24)
  assert_batches_equal(take(train(source, seed=7), 4), take(train(source, seed=7), 4))
  assert ids_of(next(train(source, seed=7))) != ids_of(next(train(source, seed=8)))


def test_each_epoch_visits_every_example_once_in_a_new_order():
  source = make_source(24)
  batches = list(train(source, num_epochs=2))
  assert len(batches) == 6
  first = [i for b in batches[:3] for i in ids_of(b)]
  second = [i for b in batches[3:] for i in ids_of(b)]
  assert sorted(first) == sorted(second) == list(range(24))
  assert first != second and first != list(range(24))


@pytest.mark.parametrize("n", [24, 25])
def test_process_shards_are_disjoint_and_complete(n):
  source = make_source(n)
  shards = [[i for b in train(source, global_batch_size=8, num_epochs=1, shard_index=k, shard_count=2)
             for i in ids_of(b)] for k in range(2)]
  assert len(shards[0]) == len(shards[1]) == 12  # 4 examples per process batch, 3 batches each
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(set(shards[0] + shards[1]))
  assert len(set(shards[0]) | set(shards[1])) == n - n % 2


def test_state_round_trip_resumes_at_the_next_example():
  source = make_source(24, corrupt=(5,))
  iterator = train(source)
  take(iterator, 5)  # crosses the epoch boundary and the corrupt example
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 3)
  resumed = train(source)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected)
  assert resumed.num_corrupt == iterator.num_corrupt


def test_corrupt_images_are_skipped_and_counted():
  bad = (3, 10, 17)
  source = make_source(24, corrupt=bad)
  iterator = train(source, num_epochs=1)
  seen = [i for b in iterator for i in ids_of(b)]
  assert iterator.num_corrupt == 3
  assert len(seen) == len(set(seen)) == 16  # 21 decodable examples fill two batches of 8
  assert not set(seen) & set(bad)


def test_eval_covers_every_example_once_in_order_with_mask(mesh):
  source = make_source(21)
  iterator = pipeline.eval_pipeline(source, global_batch_size=8, image_size=SIZE, tokenize=tokenize, mesh=mesh)
  batches = list(iterator)
  assert len(batches) == 3
  index = np.concatenate([np.asarray(b["index"]) for b in batches])
  mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
  np.testing.assert_array_equal(index[mask], np.arange(21))
  np.testing.assert_array_equal(index[~mask], [-1, -1, -1])
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  np.testing.assert_array_equal(labels[mask], [i % 3 for i in range(21)])
  text = np.concatenate([np.asarray(b["text"]) for b in batches])
  np.testing.assert_array_equal(text[mask], tokenize([e["captions"][0] for e in source]))
  first = batches[0]
  assert first["image"].sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), 4)
  np.testing.assert_array_equal(np.asarray(first["image"])[0], augment.clip_preprocess(source[0]["image"], SIZE))
  assert not np.any(np.asarray(batches[-1]["image"])[~np.asarray(batches[-1]["mask"])])


def test_eval_shards_pad_to_equal_batches_and_cover_everything_once():
  source = make_source(13, corrupt=(4,))
  shards = [list(pipeline.eval_pipeline(source, global_batch_size=6, image_size=SIZE, shard_index=k,
                                        shard_count=2)) for k in range(2)]
  assert [len(s) for s in shards] == [3, 3]
  index = np.concatenate([b["index"] for s in shards for b in s])
  mask = np.concatenate([b["mask"] for s in shards for b in s])
  assert sorted(index[index >= 0].tolist()) == list(range(13))
  assert sorted(index[mask].tolist()) == [i for i in range(13) if i != 4]
  assert "text" not in shards[0][0]


def test_eval_reads_caption_less_examples_and_adds_a_seeded_augmented_view():
  source = [{k: v for k, v in example.items() if k != "captions"} for example in make_source(6)]
  augmentation = augment.augmentation_from_config({"random_resized_crop": {"scale": (0.3, 0.6)},
                                                   "horizontal_flip": {"p": 0.5}})
  batches = list(pipeline.eval_pipeline(source, global_batch_size=4, image_size=SIZE, augmentation=augmentation,
                                        augment_seed=9, shard_index=1, shard_count=2))
  assert "text" not in batches[0]
  for row, index in enumerate(batches[0]["index"][:3]):
    image = pipeline.decode_image(source[index])
    expected = augmentation(image, np.random.default_rng((9, int(index))), SIZE)
    np.testing.assert_array_equal(batches[0]["image_aug"][row], expected)
  again = list(pipeline.eval_pipeline(source, global_batch_size=4, image_size=SIZE, augmentation=augmentation,
                                      augment_seed=9, shard_index=1, shard_count=2))
  np.testing.assert_array_equal(again[0]["image_aug"], batches[0]["image_aug"])
  assert not np.any(batches[0]["image_aug"][~batches[0]["mask"]])


def test_eval_counts_corrupt_images_and_masks_them():
  source = make_source(10, corrupt=(2, 7))
  iterator = pipeline.eval_pipeline(source, global_batch_size=5, image_size=SIZE)
  batches = list(iterator)
  mask = np.concatenate([b["mask"] for b in batches])
  assert iterator.num_corrupt == 2
  np.testing.assert_array_equal(np.flatnonzero(~mask), [2, 7])


def test_eval_state_round_trip():
  source = make_source(20)
  iterator = pipeline.eval_pipeline(source, global_batch_size=4, image_size=SIZE)
  next(iterator)
  state = iterator.get_state()
  expected = list(iterator)
  resumed = pipeline.eval_pipeline(source, global_batch_size=4, image_size=SIZE)
  resumed.set_state(state)
  assert_batches_equal(list(resumed), expected)


def test_bad_arguments_raise_clear_errors(mesh):
  source = make_source(8)
  with pytest.raises(ValueError, match="'longest'.*random, first"):
    train(source, caption_choice="longest")
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    train(source, global_batch_size=12, mesh=mesh)
  with pytest.raises(ValueError, match="'batch' is not a mesh axis; mesh axes: data"):
    train(source, mesh=mesh, data_axes=("batch",))
  with pytest.raises(ValueError, match="'blur'"):
    train(source, augment_config={"rand_augment": {"ops": ["blur"]}})
  with pytest.raises(ValueError, match="shard_index"):
    train(source, shard_index=2, shard_count=2)


def test_worker_processes_give_the_same_batches():
  source = make_source(16, corrupt=(6,))
  local = train(source, num_epochs=1)
  workers = train(source, num_epochs=1, worker_count=2)
  try:
    assert_batches_equal(list(workers), list(local))
    assert workers.num_corrupt == local.num_corrupt == 1
  finally:
    workers.close()
