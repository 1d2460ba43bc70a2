"""`lmstruct plan`: the compiled update's per-device figures from abstract shapes, in this process when JAX already
has the requested devices and in a fresh one otherwise; one-line errors."""

import json

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO_ROOT

from lmstruct import cli, plan
from lmstruct.config import base_config
from lmstruct.models import build_model, input_shapes

CONFIG = str(REPO_ROOT / "configs" / "clip_scenes.py") + ":variant=test,batch=16"


def parameter_bytes(model_config):
  model = build_model(model_config)
  (h, w, c), length = input_shapes(model_config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, h, w, c)), jnp.zeros((1, length), jnp.int32))
  return sum(4 * leaf.size for leaf in jax.tree.leaves(shapes["params"]))


def test_plan_on_the_eight_devices_of_this_process(capsys):
  assert cli.main(["plan", "--config", CONFIG, "--devices", "8", "--json"]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["devices"] == 8 and result["rules"] == "replicate" and result["global_batch"] == 16
  # Arguments: the replicated state (parameters and AdamW's two moments, a few scalars) and 2 of the 16 examples.
  params = parameter_bytes({"preset": "test", "image": {"image_size": 32}})
  batch = 2 * (2 * 32 * 32 * 3 * 4 + 2 * 16 * 4)
  assert 3 * params + batch <= result["memory"]["argument_bytes"] <= 3 * params + batch + 64
  assert result["memory"]["alias_bytes"] >= 3 * params  # the donated state is updated in place
  memory = result["memory"]
  assert memory["temp_bytes"] > 0
  assert memory["peak_bytes"] == (
    memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"] + memory["temp_bytes"]
  )
  # The ring objective passes feature blocks; data parallelism reduces gradients; nothing is gathered.
  assert set(result["collectives"]) == {"all-reduce", "collective-permute"}
  assert result["collective_bytes"]["all-reduce"] >= params
  assert result["flops_per_step"] > result["xla_cost_analysis_flops"] / 10 > 0
  assert result["compile_s"] > 0
  # FSDP shards the state: fewer argument bytes; a state this small fits every accelerator with the config's rules.
  assert result["by_rules"]["fsdp"]["argument_bytes"] < result["memory"]["argument_bytes"]
  assert "all-gather" in result["by_rules"]["fsdp"]["collectives"]
  assert set(result["fits"].values()) == {"replicate"} and set(result["fits"]) == set(plan.ACCELERATORS)


def test_plan_for_another_device_count_runs_in_a_fresh_process(capfd):
  assert cli.main(["plan", "--config", CONFIG, "--devices", "2", "--config.train.accumulation_steps=2"]) == 0
  report = capfd.readouterr().out
  assert "on 2 devices" in report and "8 per device, accumulation 2" in report
  assert "collective-permute" in report and "fits:" in report


def test_fits_picks_the_first_rules_that_fit():
  gib = plan.GIB
  assert plan.fits({"replicate": 40 * gib, "fsdp": 20 * gib}) == {
    "TPU v5e": None,
    "TPU v4": "fsdp",
    "A100 80GB": "replicate",
    "H100 80GB": "replicate",
    "TPU v5p": "replicate",
  }


def test_plan_names_a_task_whose_update_it_does_not_compile():
  config = base_config()
  config.task = "albef"
  with pytest.raises(ValueError, match=r"compiles the two-tower update \(task = 'clip'\); config task = 'albef'"):
    plan.plan(config, "configs/albef_scenes.py")


def test_errors_are_one_line_with_exit_status_2(capsys):
  assert cli.main(["plan", "--config", CONFIG, "--devices", "8", "--config.trian.steps=3"]) == 2
  assert (
    capsys.readouterr()
    .err.strip()
    .startswith("error: unknown config key 'trian' (did you mean 'train'?); valid keys: ['albef', 'data', 'evals', ")
  )
  assert cli.main(["plan", "--config", "configs/none.py", "--devices", "8"]) == 2
  assert "config file configs/none.py not found" in capsys.readouterr().err
  assert cli.main(["plan", "--config", CONFIG, "--devices", "8", "--verbose"]) == 2
  assert capsys.readouterr().err.strip().startswith("error: unknown argument '--verbose'")
