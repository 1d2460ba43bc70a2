"""Random stand-ins for the suite's tfds datasets, to run the whole evaluation suite offline (CI, config checks).

    python -m lmstruct.eval.mock_tfds [--examples N] eval --config configs/paper_eval.py:variant=test --workdir DIR

runs ``lmstruct eval ...`` (or ``train``) with every tfds dataset served by ``tfds.testing.mock_data``. The suite's
ImageFolder datasets are not mocked: when absent they are reported and skipped as usual.

How it works without TensorFlow (``mock_tfds``):

* ``lmstruct`` opens a prepared tfds dataset from its files (``builder_from_files``), so mock_data runs with
  ``MockPolicy.USE_FILES`` on a temporary folder holding, per dataset, the ``dataset_info.json`` and
  ``features.json`` of its registered builder class, written with ``file_format='array_record'`` and the splits the
  suite reads;
* mock_data's own data source encodes images through TensorFlow, so ``as_data_source_fn`` is given instead: it draws
  examples with tfds's ``RandomFakeGenerator`` (seeded by example index, so every split serves the same examples)
  and encodes each image as PNG with PIL.

Label names are those the builder class declares; datasets whose names tfds reads only while preparing them (e.g.
CIFAR-10) show digits.
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from lmstruct.eval import suite


def suite_tfds_splits() -> dict[str, tuple[str, ...]]:
  """{tfds name: splits} that the evaluation suite reads."""
  return {d.tfds: tuple(sorted(set(d.tfds_splits.values()))) for d in suite.DATASETS if d.tfds}


def _png(image: np.ndarray) -> bytes:
  """``uint8 [H, W, C]`` (C = 1 or 3) as PNG bytes."""
  image = np.asarray(image, np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def write_metadata(root: pathlib.Path, datasets: Mapping[str, Sequence[str]], num_examples: int) -> None:
  """Writes each dataset's builder-class metadata under ``root`` (array_record, the given splits)."""
  import tensorflow_datasets as tfds

  for name, splits in datasets.items():
    builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0, filename_template=None)
        for split in splits]))
    pathlib.Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


def random_examples(features: Any, num_examples: int) -> list[dict[str, Any]]:
  """``num_examples`` random examples of ``features`` (tfds's RandomFakeGenerator), images as PNG bytes."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking

  generator = mocking.RandomFakeGenerator(features, num_examples)
  images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
  examples = []
  for index in range(num_examples):
    example = dict(generator[index])
    example.update({key: _png(example[key]) for key in images})
    examples.append(example)
  return examples


@contextlib.contextmanager
def mock_tfds(datasets: Mapping[str, Sequence[str]] | None = None, num_examples: int = 16) -> Iterator[pathlib.Path]:
  """Serves ``datasets`` ({tfds name: splits}; default: the suite's) from random examples (module docstring);
  yields the metadata folder."""
  import tensorflow_datasets as tfds

  datasets = suite_tfds_splits() if datasets is None else datasets

  def as_data_source(builder: Any, split: Any = None, decoders: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    del split, decoders, kwargs
    return random_examples(builder.info.features, num_examples)

  with tempfile.TemporaryDirectory(prefix="lmstruct-mock-tfds-") as folder:
    root = pathlib.Path(folder)
    write_metadata(root, datasets, num_examples)
    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(root), as_data_source_fn=as_data_source):
      yield root


def main(argv: Sequence[str] | None = None) -> int:
  """``[--examples N] <lmstruct command and flags>``: the lmstruct CLI with mocked tfds datasets."""
  args = list(sys.argv[1:] if argv is None else argv)
  num_examples = 16
  if args[:1] == ["--examples"]:
    num_examples, args = int(args[1]), args[2:]
  from lmstruct import cli
  with mock_tfds(num_examples=num_examples):
    return cli.main(args)


if __name__ == "__main__":
  sys.exit(main())
