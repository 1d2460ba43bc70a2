"""The `lmstruct` command line.

    lmstruct train   --config configs/clip_scenes.py:variant=small --workdir runs/default [--config.train.steps=300]
    lmstruct eval    --workdir runs/default [--config FILE[:ARGS]] [--step 300]
    lmstruct convert data FORMAT --src ... --out ...          (see `lmstruct convert data --help`)
    lmstruct convert openclip --checkpoint FILE --model ViT-B-32 --out DIR

A user error (a config typo, an unknown choice, a missing file or checkpoint, an empty dataset) is one line,
`error: …`, and exit status 2; `--debug` also prints its traceback and every library's log lines.

Multi-host: on TPU pods and SLURM/Kubernetes clusters JAX finds its peers itself (`--distributed`); elsewhere pass
`--coordinator_address host:port --num_processes N --process_id i` to every process.
"""
import argparse
import logging
import os
import pathlib
import sys
import traceback
from collections.abc import Sequence

from lmstruct.choices import unknown_choice
from lmstruct.config import load_config

CONVERTERS = {"data": "a dataset in a supported format → array_record shards (`lmstruct convert data --help`)",
              "openclip": "an OpenAI / open_clip checkpoint → lmstruct weights (`lmstruct convert openclip --help`)"}
# Exceptions whose message is the whole story for a user: bad config values, missing files, unknown keys.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError)
# Library log records that say nothing a user can act on, hidden unless --debug.
LIBRARY_CHATTER = (
    "Using custom data configuration",  # tfds, for every opening of a scenes dataset built from knobs
    "OpenCV is not installed",          # tfds decodes the scenes' PNGs with PIL instead, to the same pixels
)
_PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent) + os.sep


class UsageError(Exception):
  """A malformed command line: unknown flag, missing required flag, unknown command."""


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are raised as UsageError (and printed as one line by `main`)."""

  def error(self, message: str):
    raise UsageError(f"{self.prog}: {message}")


class _QuietLibraries(logging.Filter):
  """Default verbosity: lmstruct's own INFO lines, warnings and errors from everywhere, less `LIBRARY_CHATTER`."""

  def filter(self, record: logging.LogRecord) -> bool:
    if any(str(record.msg).startswith(chatter) for chatter in LIBRARY_CHATTER):
      return False
    return record.levelno > logging.INFO or record.pathname.startswith(_PACKAGE_DIR)


def configure_logging(debug: bool) -> None:
  """INFO and above to stderr as `I1130 04:45:28 file.py:110] message`; without `debug`, through `_QuietLibraries`."""
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("%(levelname).1s%(asctime)s %(filename)s:%(lineno)d] %(message)s",
                                         datefmt="%m%d %H:%M:%S"))
  if not debug:
    handler.addFilter(_QuietLibraries())
  root = logging.getLogger()
  root.handlers[:] = [handler]
  root.setLevel(logging.INFO)


def _run_flags(parser: argparse.ArgumentParser, *, eval_command: bool) -> None:
  """The flags of `train` and `eval`."""
  parser.add_argument("--config", metavar="FILE[:ARGS]",
                      help="a configs/*.py file, optionally with ':key=value,…' arguments for its get_config, or a "
                           "run's config.json" + (" (default: WORKDIR/config.json, the run's own)" if eval_command
                                                  else " (default: WORKDIR/config.json when resuming)"))
  parser.add_argument("--workdir", metavar="DIR",
                      help="(required) checkpoints, metrics, evaluation results" + (
                          " of the run to evaluate" if eval_command else "; rerunning resumes"))
  if eval_command:
    parser.add_argument("--step", type=int, metavar="N", help="the checkpoint step to evaluate (default: the latest)")
  cluster = parser.add_argument_group("multi-process")
  cluster.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with auto-detected cluster settings")
  cluster.add_argument("--coordinator_address", metavar="HOST:PORT", help="address:port of process 0")
  cluster.add_argument("--num_processes", type=int, metavar="N", help="number of processes")
  cluster.add_argument("--process_id", type=int, metavar="I", help="index of this process")
  parser.set_defaults(flags=[flag for action in parser._actions for flag in action.option_strings])


OVERRIDES_HELP = ("Any config key can be overridden with --config.KEY=VALUE (repeatable), e.g. "
                  "--config.train.steps=600 --config.optimizer.learning_rate=5e-4 --config.evals={}.")


def _converter(name: str) -> str:
  """argparse type of the converter argument: a key of CONVERTERS, else an error naming the closest one."""
  if name not in CONVERTERS:
    raise argparse.ArgumentTypeError(str(unknown_choice("converter", name, CONVERTERS)))
  return name


def build_parser() -> argparse.ArgumentParser:
  """`lmstruct` and its subcommands, each with its own `--help`."""
  debug = _Parser(add_help=False)
  debug.add_argument("--debug", action="store_true", help="on an error, print its traceback; show every library's log")
  parser = _Parser(prog="lmstruct", description="Train, evaluate and convert data or weights for lmstruct.",
                   parents=[debug], allow_abbrev=False,
                   epilog="`lmstruct COMMAND --help` lists the flags of a command.")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  commands.required = True
  train = commands.add_parser("train", parents=[debug], allow_abbrev=False, help="train (or resume) a run",
                              description="Train `train.steps` updates of the configured model, evaluating as "
                                          "configured; a run already finished is left as it is.",
                              epilog=OVERRIDES_HELP)
  _run_flags(train, eval_command=False)
  evaluate = commands.add_parser("eval", parents=[debug], allow_abbrev=False,
                                 help="run every evaluator on a saved checkpoint",
                                 description="Run every evaluator of the config on one checkpoint of a run.",
                                 epilog=OVERRIDES_HELP)
  _run_flags(evaluate, eval_command=True)
  convert = commands.add_parser("convert", parents=[debug], allow_abbrev=False, help="convert a dataset or weights",
                                description="Convert a dataset or pretrained weights:\n" + "\n".join(
                                    f"  {name:9s} {text}" for name, text in CONVERTERS.items()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
  convert.add_argument("converter", type=_converter, metavar="CONVERTER", help=" or ".join(CONVERTERS))
  convert.add_argument("arguments", nargs=argparse.REMAINDER, metavar="...", help="the converter's flags")
  return parser


def split_overrides(extra: Sequence[str], flags: Sequence[str]) -> dict[str, str]:
  """`--config.KEY=VALUE` (or `--config.KEY VALUE`) arguments as {KEY: VALUE}; anything else is a UsageError
  naming the closest of the command's `flags`."""
  overrides: dict[str, str] = {}
  tokens = list(extra)
  while tokens:
    token = tokens.pop(0)
    if not token.startswith("--config."):
      raise UsageError(unknown_choice("argument", token.partition("=")[0], flags, "or --config.KEY=VALUE"))
    key, equals, value = token[len("--config."):].partition("=")
    if not equals:
      if not tokens:
        raise UsageError(f"--config.{key} needs a value")
      value = tokens.pop(0)
    overrides[key] = value
  return overrides


def _config(args: argparse.Namespace, overrides: dict[str, str]):
  """The run's config: `--config`, or the workdir's `config.json`, with the overrides applied and validated."""
  spec = args.config
  if spec is None:
    saved = pathlib.Path(args.workdir) / "config.json"
    if not saved.is_file():
      raise UsageError(f"--config is required: {saved} does not exist")
    spec = str(saved)
  return load_config(spec, overrides)


def _initialize_distributed(args: argparse.Namespace) -> None:
  import jax
  if args.coordinator_address or args.distributed:
    jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                               process_id=args.process_id)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def _train(args: argparse.Namespace, overrides: dict[str, str]) -> int:
  config = _config(args, overrides)
  _initialize_distributed(args)
  from lmstruct.train.loop import finished_step, results_table, train_and_evaluate
  done = finished_step(args.workdir, config.train.steps)
  if done is not None:
    print(f"{args.workdir} has finished: step {done} of {config.train.steps} and its final evaluation "
          f"({pathlib.Path(args.workdir) / 'results.md'}); nothing to do")
    return 0
  results = train_and_evaluate(config, args.workdir)
  if results:
    print(results_table(results))
  return 0


def _eval(args: argparse.Namespace, overrides: dict[str, str]) -> int:
  config = _config(args, overrides)
  _initialize_distributed(args)
  from lmstruct.train.loop import evaluate_checkpoint, results_table
  print(results_table(evaluate_checkpoint(config, args.workdir, args.step)))
  return 0


def _convert(args: argparse.Namespace) -> int:
  if args.converter == "data":
    from lmstruct.data import convert
    return convert.main(args.arguments)
  from lmstruct.pretrained import openclip
  return openclip.main(args.arguments)


def one_line(error: BaseException) -> str:
  """The message of `error` on one line (a KeyError's key without its quotes)."""
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(str(message).split()) or type(error).__name__


def _dispatch(argv: list[str]) -> int:
  parser = build_parser()
  if argv and not argv[0].startswith("-") and argv[0] not in ("train", "eval", "convert"):
    raise unknown_choice("command", argv[0], ("train", "eval", "convert"))
  args, extra = parser.parse_known_args(argv)
  if args.command == "convert":
    return _convert(args)
  overrides = split_overrides(extra, args.flags)
  if args.workdir is None:
    raise UsageError(f"lmstruct {args.command}: --workdir is required")
  return _train(args, overrides) if args.command == "train" else _eval(args, overrides)


def _report(error: BaseException, debug: bool, status: int) -> int:
  """Prints `error: <one line>` (after the traceback with `debug`) to stderr and returns `status`."""
  if debug:
    traceback.print_exc()
  print(f"error: {one_line(error)}", file=sys.stderr)
  return status


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the `lmstruct` script; `argv` without the program name. Returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  argv = [a for a in argv if a != "--debug"]
  configure_logging(debug)
  try:
    return _dispatch(argv)
  except SystemExit as exit_:  # --help
    return int(exit_.code or 0)
  except (UsageError, *USER_ERRORS) as error:
    return _report(error, debug, status=2)
  except RuntimeError as error:
    from lmstruct.train.loop import NonFiniteError  # a run that diverged: its outcome, not a usage error
    if not isinstance(error, NonFiniteError):
      raise
    return _report(error, debug, status=1)


if __name__ == "__main__":
  sys.exit(main())
