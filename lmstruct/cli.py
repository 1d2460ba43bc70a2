"""The `lmstruct` command line.

    lmstruct train   --config configs/clip_scenes.py:variant=small --workdir runs/default [--config.train.steps=300]
    lmstruct eval    --config configs/clip_scenes.py:variant=small --workdir runs/default [--step 300]
    lmstruct convert data FORMAT --src ... --out ...          (see `lmstruct convert data --help`)
    lmstruct convert openclip --checkpoint FILE --model ViT-B-32 --out DIR
    lmstruct plan    --config configs/paper_cc3m.py:devices=64 --devices 64 [--json]   (see `lmstruct plan --help`)

Multi-host: on TPU pods and SLURM/Kubernetes clusters JAX finds its peers itself (`--distributed`); elsewhere pass
`--coordinator_address host:port --num_processes N --process_id i` to every process.
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally with ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, evaluation results.")
flags.DEFINE_integer("step", None, "eval: the checkpoint step to evaluate (default: the latest).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detected cluster settings.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: address:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")

COMMANDS = ("train", "eval", "convert", "plan")
CONVERTERS = ("data", "openclip")


def _initialize_distributed() -> None:
  import jax
  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


class _LmstructInfoOnly(logging.Filter):
  """Keeps warnings from everywhere but INFO lines only from lmstruct (orbax and JAX are chatty at INFO)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or "/lmstruct/" in record.pathname


def _quiet_other_libraries() -> None:
  """Called inside app.run, after absl has installed its log handler."""
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_LmstructInfoOnly())


def _require_flags() -> None:
  for name in ("config", "workdir"):
    if getattr(FLAGS, name) is None:
      raise app.UsageError(f"--{name} is required")


def _train(argv: list[str]) -> None:
  del argv
  _quiet_other_libraries()
  _require_flags()
  _initialize_distributed()
  from lmstruct.train.loop import results_table, train_and_evaluate
  results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if results:
    print(results_table(results))


def _eval(argv: list[str]) -> None:
  del argv
  _quiet_other_libraries()
  _require_flags()
  _initialize_distributed()
  from lmstruct.train.loop import evaluate_checkpoint, results_table
  print(results_table(evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.step)))


def _convert(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] not in CONVERTERS:
    print(f"usage: lmstruct convert {{{','.join(CONVERTERS)}}} ...", file=sys.stderr)
    return 2
  if argv[1] == "data":
    from lmstruct.data import convert
    return convert.main(argv[2:])
  from lmstruct.pretrained import openclip
  return openclip.main(argv[2:])


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `lmstruct` script."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(__doc__, file=sys.stderr)
    print(f"unknown command {argv[1]!r}; valid commands: {list(COMMANDS)}" if len(argv) > 1 else
          f"a command is required: {list(COMMANDS)}", file=sys.stderr)
    return 2
  command, rest = argv[1], [argv[0]] + argv[2:]
  if command == "convert":
    return _convert(argv[1:])
  if command == "plan":
    from lmstruct import plan
    return plan.main(argv[2:])
  app.run(_train if command == "train" else _eval, argv=rest)
  return 0


if __name__ == "__main__":
  sys.exit(main())
