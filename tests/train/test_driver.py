"""The training driver in-process: every preset, config errors, checkpoint resharding and compatibility, the
non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from driver_utils import load_config, write_webdataset
from lmstruct.config import base_config, parse_arg, validate_config
from lmstruct.models import build_model, input_shapes
from lmstruct.train import checkpoint
from lmstruct.train.loop import NonFiniteError, train_and_evaluate
from lmstruct.train.optimizer import make_optimizer
from lmstruct.train.sharding import DEFAULT_RULES, FSDP_RULES, make_mesh
from lmstruct.train.step import init_train_state


def quick(config, data_dir, steps=2):
  """A few steps on one device with no evaluation (multi-device runs have tests of their own)."""
  config.mesh.shape = {"data": 1}
  config.data.data_dir = str(data_dir)
  config.train.steps = steps
  config.train.progress_bar = "off"
  config.evals = {}
  return config


@pytest.mark.parametrize("objective", ["full", "clip", "inmodal", "cyclip", "sep", "br", "gc"])
def test_every_scenes_preset_trains(objective, tmp_path):
  config = quick(load_config("clip_scenes", f"variant=test,objective={objective},train_size=32,eval_size=16,"
                                            "batch=16"), tmp_path / "data")
  train_and_evaluate(config, tmp_path / "run")
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  assert '"loss/total"' in lines[-1]


def test_paper_preset_trains_on_webdataset_shards(shared_data, tmp_path):
  (tmp_path / "shards").mkdir()
  write_webdataset(shared_data, tmp_path / "shards" / "00000.tar")
  config = quick(load_config("paper_cc3m", f"variant=test,shards={tmp_path / 'shards'},devices=1,reg=all"),
                 tmp_path / "data")
  config.data.global_batch_size = 8
  config.data.worker_count = 0
  train_and_evaluate(config, tmp_path / "run")
  assert checkpoint.make_manager(tmp_path / "run" / "checkpoints").latest_step() == 2


def test_unknown_keys_and_wrong_types_are_named():
  config = base_config()
  config.train.unlock()
  config.train.stpes = 3
  with pytest.raises(ValueError, match=r"unknown config key 'train.stpes' \(did you mean 'steps'\?\)"):
    validate_config(config)
  config = base_config()
  config.unlock()
  config.trian = {}
  with pytest.raises(ValueError, match=r"unknown config key 'trian'.*valid keys: \["):
    validate_config(config)
  config = base_config()
  config.train.unlock()
  del config.train["steps"]
  config.train.steps = "many"
  with pytest.raises(TypeError, match=r"config key 'train.steps' expects int, got 'many'"):
    validate_config(config)
  with pytest.raises(ValueError, match=r"unknown config argument 'varaint' \(did you mean 'variant'\?\); "
                                       r"valid choices: \['steps', 'variant'\]"):
    parse_arg("varaint=small", variant="tiny", steps=3)
  config = base_config()
  config.train.nonfinite = "ignore"
  with pytest.raises(ValueError, match=r"train.nonfinite' must be one of \['stop', 'skip'\]"):
    validate_config(config)


def test_config_arguments_are_parsed_strictly_to_their_defaults_type():
  parsed = parse_arg("flag=false,on=1,off=False,steps=300,lr=1,name=123,path=/a/b.tar,quoted='x'",
                     flag=True, on=False, off=True, steps=1, lr=0.5, name="x", path="", quoted="")
  assert parsed.flag is False and parsed.on is True and parsed.off is False
  assert parsed.steps == 300 and parsed.lr == 1.0 and isinstance(parsed.lr, float)
  assert parsed.name == "123" and parsed.path == "/a/b.tar" and parsed.quoted == "x"
  with pytest.raises(ValueError, match=r"^config argument 'flag' is a bool: use one of \['true', 'True', '1', "
                                       r"'false', 'False', '0'\], got 'yes'$"):
    parse_arg("flag=yes", flag=True)
  with pytest.raises(ValueError, match=r"^config argument 'steps' must be of type int like its default 1, got '1.5'$"):
    parse_arg("steps=1.5", steps=1)
  with pytest.raises(ValueError, match=r"^config argument 'steps' must be of type int like its default 1, got 'true'$"):
    parse_arg("steps=true", steps=1)


def test_an_objective_reading_independent_features_needs_the_independent_heads():
  config = base_config()
  config.model = {"preset": "test", "independent_heads": False}
  with pytest.raises(ValueError, match=r"^objective.weights.separation = 1.0 needs model.independent_heads = True "
                                       r"\(it is False\): 'separation' reads the features of the independent heads$"):
    validate_config(config)
  config.objective.weights.separation = 0.0
  validate_config(config)
  config.objective.base = "inmodl"
  with pytest.raises(ValueError, match=r"^unknown objective.base 'inmodl' \(did you mean 'inmodal'\?\)"):
    validate_config(config)


def test_nonfinite_loss_stops_with_the_step_or_is_skipped_and_counted(tmp_path):
  config = quick(load_config("clip_scenes", "variant=test,objective=clip,train_size=32,eval_size=16,batch=16"),
                 tmp_path / "data", steps=3)
  config.optimizer.learning_rate = 1e30
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  with pytest.raises(NonFiniteError, match=r"non-finite loss or gradient at step 2: \['loss/clip', 'loss/total'\]"):
    train_and_evaluate(config, tmp_path / "stop")
  config.train.nonfinite = "skip"
  config.train.log_every = 3
  train_and_evaluate(config, tmp_path / "skip")
  import json
  last = json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["step"] == 3 and last["train/skipped_nonfinite"] == 2


def _state(mesh, rules, model_config=None):
  model_config = model_config or {"preset": "test"}
  model, tx = build_model(model_config), make_optimizer({"learning_rate": 1e-3, "total_steps": 10})
  shape, length = input_shapes(model_config)
  return init_train_state(model, tx, image_shape=shape, context_length=length, mesh=mesh, rules=rules, seed=0)


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
  state, _ = _state(make_mesh(), FSDP_RULES)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save(manager, state, {"examples": "x", "num_corrupt": 0}, {"note": "test"})
  manager.wait_until_finished()
  small_mesh = make_mesh(devices=jax.devices()[:2])
  fresh, shardings = _state(small_mesh, DEFAULT_RULES)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
  restored, data_state = checkpoint.restore(manager, 7, abstract, shardings)
  assert data_state == {"examples": "x", "num_corrupt": 0} and int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    assert a.sharding.mesh.devices.size == 2
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_architecture_names_the_parameter(tmp_path):
  state, _ = _state(make_mesh(), DEFAULT_RULES)
  manager = checkpoint.make_manager(tmp_path)
  checkpoint.save(manager, state, {}, {})
  manager.wait_until_finished()
  other, shardings = _state(make_mesh(), DEFAULT_RULES, {"preset": "test", "embed_dim": 24})
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), other)
  with pytest.raises(ValueError, match=r"parameter 'image_projection/kernel' has shape \(32, 16\) in the checkpoint "
                                       r"but \(32, 24\) in the model"):
    checkpoint.restore(manager, 0, abstract, shardings)


def test_training_consumes_a_coco_folder_through_the_same_pipeline(shared_data, tmp_path):
  config = quick(load_config("clip_scenes", "variant=test,objective=full,batch=16"), tmp_path / "data")
  coco = shared_data / "coco-mini"
  config.data.train = {"kind": "coco", "annotations": str(coco / "annotations" / "captions_train2017.json"),
                       "images": str(coco / "train2017")}
  train_and_evaluate(config, tmp_path / "run")
  import json
  last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["step"] == 2 and np.isfinite(last["loss/total"])
