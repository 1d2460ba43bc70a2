"""Named sharding rules from config and the one batch sharding shared by the pipeline, the update and evaluation."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmstruct.train.sharding import DEFAULT_RULES, FSDP_RULES, batch_sharding, make_mesh, sharding_rules


def test_sharding_rules_by_name_or_spelled_out():
  assert sharding_rules("replicate") == DEFAULT_RULES and sharding_rules("fsdp") == FSDP_RULES
  assert sharding_rules([["kernel", ["data", None]], [".*", "replicate"]]) == (("kernel", ("data", None)),
                                                                               (".*", "replicate"))
  with pytest.raises(ValueError, match=r"unknown sharding.rules 'fdsp' \(did you mean 'fsdp'\?\); valid choices: "
                                       r"\['fsdp', 'replicate'\] or a list of \(regex, spec\) pairs"):
    sharding_rules("fdsp")


def test_batch_sharding_splits_the_leading_axis_over_the_data_axes():
  mesh = make_mesh({"data": 4, "model": 2})
  sharding = batch_sharding(mesh, ("data",))
  assert sharding.spec == P(("data",))
  batch = jax.device_put(np.arange(8 * 3, dtype=np.float32).reshape(8, 3), sharding)
  assert [shard.data.shape for shard in batch.addressable_shards] == [(2, 3)] * 8
  assert batch_sharding(mesh, ("data", "model")).spec == P(("data", "model"))
  with pytest.raises(ValueError, match=r"data axis 'batch' is not a mesh axis; mesh axes: data, model"):
    batch_sharding(mesh, ("batch",))
