"""Orbax checkpoints of a training run: state, data-iterator position, and the config that made them.

Each checkpoint holds three items: `state` (the TrainState: step, parameters, batch statistics, optimizer state,
RNG key data; saved asynchronously), `data` (the input pipeline's iterator state, JSON) and `config` (JSON).
The last `keep` checkpoints are kept, plus the best one by `best_metric` when given. Restoring reshards onto
whatever mesh the restoring run uses, and a checkpoint of another architecture is refused with the name of the
first parameter that differs. The directory may be local or a `gs://` URL (orbax writes arrays there through
tensorstore's GCS driver and everything else through etils epath).
"""
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from lmstruct import paths
from lmstruct.train.sharding import path_string
from lmstruct.train.state import TrainState

_preservation = ocp.checkpoint_managers.preservation_policy


def make_manager(directory: str | os.PathLike, keep: int = 2, best_metric: str = "",
                 best_mode: str = "max") -> ocp.CheckpointManager:
  """A CheckpointManager under `directory` keeping the latest `keep` (and the best by `best_metric`)."""
  policies = [_preservation.LatestN(n=keep)]
  if best_metric:
    policies.append(_preservation.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                        reverse=(best_mode == "min"), n=1))
  options = ocp.CheckpointManagerOptions(preservation_policy=_preservation.AnyPreservationPolicy(policies),
                                         enable_async_checkpointing=True, create=True)
  if paths.is_url(directory) and not os.fspath(directory).startswith("gs://"):
    raise ValueError(f"checkpoint directory {os.fspath(directory)}: orbax writes checkpoints to local paths and "
                     "gs:// only (its tensorstore storage has no other object-store route); use a gs:// workdir or "
                     "a mounted bucket")
  return ocp.CheckpointManager(paths.absolute(directory), options=options,
                               item_handlers={"state": ocp.StandardCheckpointHandler(),
                                              "data": ocp.JsonCheckpointHandler(),
                                              "config": ocp.JsonCheckpointHandler()})


def saved_step(directory: str | os.PathLike, step: int | None = None) -> int:
  """`step`, or the latest saved step when None, once `directory` is known to hold a finished checkpoint of it;
  otherwise FileNotFoundError naming the steps that are saved."""
  directory = paths.as_path(directory)
  steps = sorted(ocp.path.step.checkpoint_steps(directory)) if directory.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} under {directory}; saved steps: {steps}")
  return step


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: Mapping[str, Any],
         config: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
  """Starts an asynchronous save of checkpoint `state.step` (finished by `manager.wait_until_finished()`)."""
  manager.save(int(jax.device_get(state.step)),
               args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)),
                                       config=ocp.args.JsonSave(dict(config))),
               metrics=dict(metrics) if metrics else None)


def check_compatible(saved: Any, target: Any) -> None:
  """Raises ValueError naming the first parameter whose path or shape differs between checkpoint and target."""
  saved_leaves = {path_string(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
  target_leaves = {path_string(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
  for path, shape in target_leaves.items():
    if path not in saved_leaves:
      raise ValueError(f"checkpoint does not match the model: parameter {path!r} {shape} is missing from it "
                       "(was it written by another architecture?)")
    if saved_leaves[path] != shape:
      raise ValueError(f"checkpoint does not match the model: parameter {path!r} has shape {saved_leaves[path]} in "
                       f"the checkpoint but {shape} in the model")
  extra = sorted(set(saved_leaves) - set(target_leaves))
  if extra:
    raise ValueError(f"checkpoint does not match the model: it has parameter {extra[0]!r} the model lacks")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: TrainState,
            shardings: TrainState) -> tuple[TrainState, dict[str, Any]]:
  """(state, data-iterator state) of checkpoint `step`, laid out with `shardings` (any mesh)."""
  saved = manager.item_metadata(step)["state"].tree
  check_compatible(saved["params"], abstract_state.params)
  target = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract_state, shardings)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                           data=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["data"])
