"""The paper's evaluation suite (Jiang et al. 2023, Tables 1-3) on the paper's CLIP setup (configs/paper_cc3m.py):
zero-shot top-1/3/5 on CIFAR-10/100, ImageNet-1K, -V2, -Sketch, -A, -R and linear probes on 14 datasets.

    lmstruct eval --config configs/paper_eval.py:tfds_dir=~/tensorflow_datasets,folders=/data/eval --workdir runs/gc
    lmstruct train --config configs/paper_eval.py:shards=/data/cc3m,reg=gc,every=10000,tfds_dir=... --workdir runs/gc
    python -m lmstruct.eval.tables CLIP=runs/clip GC=runs/gc --out tables.md       # several runs, one table

The datasets are read offline, as prepared by docs/evaluation.md; a missing one is reported with the command that
prepares it and skipped. Results go to <workdir>/eval/<evaluator>/step_<k>.json and <workdir>/paper_tables.md.

Arguments (besides those of configs/paper_cc3m.py, which set up training: shards, reg, devices, variant, ...; its
`imagenet` is the suite's ImageNet here, read from tfds_dir or, with use_folders=imagenet, from folders):
  tfds_dir     tfds data directory with the prepared array_record datasets
  folders      root of the ImageFolder datasets (<folders>/<dataset>/<split>/<class>/<image>)
  prompts      'paper' ("a photo of the {}.") or 'clip' (CLIP's prompts for each dataset)
  features     linear-probe features: 'backbone' (the pooled image encoder, the paper's) or 'projected'
  every        with `lmstruct train`, run the suite every this many steps (0: at the end only)
  use_folders  datasets to read as ImageFolders although tfds has them, joined by '+' (e.g. imagenet+imagenet_v2)
  only         run only these datasets, joined by '+' (default: all)
  batch        evaluation batch size (a multiple of the devices)
"""
import importlib.util
import os
import pathlib

from lmstruct.config import parse_arg
from lmstruct.eval.suite import suite_evals

SUITE_ARGS = dict(tfds_dir="~/tensorflow_datasets", folders="~/lmstruct_eval", prompts="paper", features="backbone",
                  every=0, use_folders="", only="", batch=256)


def _paper_cc3m():
  """configs/paper_cc3m.py, loaded from beside this file (config files are not a package)."""
  spec = importlib.util.spec_from_file_location("paper_cc3m", pathlib.Path(__file__).with_name("paper_cc3m.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _datasets(value: str) -> tuple[str, ...]:
  """'a+b' -> ('a', 'b')."""
  return tuple(part for part in value.split("+") if part)


def get_config(arg: str | None = None):
  paper_cc3m = _paper_cc3m()
  # paper_cc3m's `imagenet` (one ImageFolder for zero-shot) is the suite's `imagenet` dataset here.
  training_args = {key: value for key, value in paper_cc3m.ARGS.items() if key != "imagenet"}
  arg = parse_arg(arg, **training_args, **SUITE_ARGS)
  config = paper_cc3m.config_from_args(arg)
  config.data.eval_batch_size = arg.batch
  config.evals = suite_evals(tfds_dir=os.path.expanduser(arg.tfds_dir), folders=os.path.expanduser(arg.folders),
                             prompts=arg.prompts,
                             every_steps=arg.every, features=arg.features, use_folders=_datasets(arg.use_folders),
                             only=_datasets(arg.only))
  return config
