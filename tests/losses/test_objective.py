"""The objective's config schema and its term registry: defaults, one-line errors, what the update must compute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from lmstruct.config import base_config
from lmstruct.losses import TERMS, ObjectiveConfig, compute_objective
from lmstruct.losses.registry import _registry
from lmstruct.losses.term import Features, PairSum, RingForm, Term

PAPER = {
  "base": "inmodal",
  "weights": {"separation": 1.0, "bridge": 1.0, "geometric": 1.0},
  "impl": "auto",
  "bridge_t": 0.25,
  "cyclip": {"inmodal_weight": 0.25, "crossmodal_weight": 0.25},
}


def test_defaults_are_the_papers_objective_and_base_config_takes_them():
  assert ObjectiveConfig().to_dict() == PAPER
  assert ObjectiveConfig.from_dict({}).to_dict() == PAPER
  assert base_config().objective.to_dict() == PAPER


def test_a_key_left_out_takes_its_default_and_weights_replace_the_default_weights():
  config = ObjectiveConfig.from_dict({"base": "clip", "weights": {"cyclip": 1.0}, "cyclip": {"inmodal_weight": 0.5}})
  assert config.to_dict() == {
    **PAPER,
    "base": "clip",
    "weights": {"cyclip": 1.0},
    "cyclip": {"inmodal_weight": 0.5, "crossmodal_weight": 0.25},
  }
  assert ObjectiveConfig.from_dict(config.to_dict()) == config
  assert ObjectiveConfig.from_dict(config) is config


@pytest.mark.parametrize(
  "config,message",
  [
    (
      {"bse": "clip"},
      "unknown objective key 'bse' (did you mean 'base'?); valid keys: "
      "['base', 'bridge_t', 'cyclip', 'impl', 'weights']",
    ),
    (
      {"base": "inmodl"},
      "unknown objective.base 'inmodl' (did you mean 'inmodal'?); valid choices: "
      "['clip', 'inmodal', 'none', 'sigmoid']",
    ),
    ({"base": "bridge"}, "unknown objective.base 'bridge'; valid choices: ['clip', 'inmodal', 'none', 'sigmoid']"),
    (
      {"weights": {"seperation": 1.0}},
      "unknown objective.weights key 'seperation' (did you mean 'separation'?); "
      "valid choices: ['alignment', 'bridge', 'cyclip', 'gap_alignment', "
      "'geometric', 'separation']",
    ),
    ({"weights": {"bridge": -1.0}}, "objective.weights.bridge must be a finite number ≥ 0, got -1.0"),
    ({"weights": {"bridge": "1"}}, "objective.weights.bridge must be a finite number ≥ 0, got '1'"),
    ({"bridge_t": 1.5}, "objective.bridge_t must be a number in [0, 1] or 'uniform', got 1.5"),
    ({"bridge_t": "unifrom"}, "objective.bridge_t must be a number in [0, 1] or 'uniform', got 'unifrom'"),
    ({"bridge_t": True}, "objective.bridge_t must be a number in [0, 1] or 'uniform', got True"),
    (
      {"cyclip": {"inmodal": 0.5}},
      "unknown objective.cyclip key 'inmodal' (did you mean 'inmodal_weight'?); "
      "valid keys: ['crossmodal_weight', 'inmodal_weight']",
    ),
    ({"cyclip": {"inmodal_weight": "x"}}, "objective.cyclip.inmodal_weight must be a number, got 'x'"),
    ({"impl": "rign"}, "objective.impl must be one of ['auto', 'global', 'ring'], got 'rign' (did you mean 'ring'?)"),
  ],
)
def test_every_bad_value_is_a_one_line_error_naming_the_key_the_choices_and_the_closest(config, message):
  with pytest.raises(ValueError) as error:
    ObjectiveConfig.from_dict(config)
  assert str(error.value) == message


def test_what_the_update_must_compute_is_derived_from_the_terms_reads():
  needs = lambda config: (
    ObjectiveConfig.from_dict(config).needs_augmented_view,
    ObjectiveConfig.from_dict(config).needs_independent_features,
  )
  assert needs({"base": "clip", "weights": {}}) == (False, False)
  assert needs({"base": "inmodal", "weights": {}}) == (True, False)
  assert needs({"base": "clip", "weights": {"cyclip": 1.0, "alignment": 1.0, "gap_alignment": 1.0}}) == (False, False)
  assert needs({"base": "clip", "weights": {"bridge": 1.0}}) == (True, False)
  assert needs({"base": "clip", "weights": {"separation": 1.0}}) == (True, True)
  assert needs({"base": "clip", "weights": {"separation": 0.0, "geometric": 0.0}}) == (False, False)
  assert [
    t.name
    for t in ObjectiveConfig.from_dict(
      {"base": "sigmoid", "weights": {"geometric": 2.0, "bridge": 0.0, "alignment": 1.0}}
    ).terms
  ] == ["sigmoid", "alignment", "geometric"]


def test_objective_is_the_weighted_sum_of_the_float64_references():
  """L = L_base + Σ_r λ_r·L_r with each term under loss/<name>, against the references (independent code)."""
  rng = np.random.default_rng(0)
  zv, zt, zva, zta = (ref.normalize(rng.normal(size=(6, 5))) for _ in range(4))
  zt = ref.normalize(zv + 0.5 * zt)
  config = {"base": "clip", "weights": {"geometric": 0.5, "gap_alignment": 2.0, "bridge": 0.0}, "bridge_t": 0.3}
  features = Features(
    **{k: jnp.asarray(v, jnp.float32) for k, v in dict(zv=zv, zt=zt, zv_aug=zva, zt_aug=zta).items()},
    logit_scale=jnp.float32(8.0),
  )
  total, metrics = compute_objective(features, config, jax.random.key(0))
  want = {
    "loss/clip": ref.clip(zv, zt, 8.0),
    "loss/gap_alignment": ref.gap_alignment(zv, zt),
    "loss/geometric": ref.geometric(zv, zt, zva, zta),
  }
  want["loss/total"] = want["loss/clip"] + 0.5 * want["loss/geometric"] + 2.0 * want["loss/gap_alignment"]
  assert list(metrics) == ["loss/clip", "loss/gap_alignment", "loss/geometric", "loss/total"]
  for key, value in want.items():
    assert float(metrics[key]) == pytest.approx(value, rel=2e-5), key
  assert float(total) == float(metrics["loss/total"])


def test_base_none_is_the_weighted_regularisers_alone():
  rng = np.random.default_rng(7)
  unit = lambda: ref.normalize(rng.normal(size=(6, 4)))
  zv, zt, zv_aug = unit(), unit(), unit()
  config = ObjectiveConfig.from_dict({"base": "none", "weights": {"bridge": 2.0}})
  features = Features(
    zv=jnp.asarray(zv, jnp.float32),
    zt=jnp.asarray(zt, jnp.float32),
    logit_scale=jnp.float32(10.0),
    zv_aug=jnp.asarray(zv_aug, jnp.float32),
  )
  total, metrics = compute_objective(features, config, jax.random.key(0))
  assert sorted(metrics) == ["loss/bridge", "loss/total"]
  np.testing.assert_allclose(float(total), 2.0 * ref.bridge(zv, zt, zv_aug, 0.25), rtol=1e-5)
  assert [term.name for term in config.terms] == ["bridge"] and not config.has_base


def test_a_term_whose_features_are_missing_is_named():
  z = jnp.eye(4, dtype=jnp.float32)
  with pytest.raises(
    ValueError,
    match=r"objective term 'separation' reads \['zv_ind', 'zt_ind', 'zv_ind_aug', "
    r"'zt_ind_aug'\], which the model did not produce \(its independent heads are "
    r"off\)",
  ):
    compute_objective(
      Features(zv=z, zt=z, zv_aug=z, zt_aug=z, logit_scale=jnp.float32(1.0)),
      {"base": "clip", "weights": {"separation": 1.0}},
      jax.random.key(0),
    )


def test_registry_rejects_conflicting_definitions():
  clip = TERMS["clip"]
  with pytest.raises(ValueError, match="objective term 'clip' is defined twice"):
    _registry((clip, clip))
  shared = lambda rows, cols, params, own: jnp.sum(rows["zv"] @ cols["zt"].T)
  other = lambda rows, cols, params, own: jnp.sum(rows["zv"] @ cols["zv"].T)
  first = dataclasses.replace(clip, name="a", ring=RingForm(combine=None, pair_sums=(PairSum("s", ("zt",), shared),)))
  second = dataclasses.replace(clip, name="b", ring=RingForm(combine=None, pair_sums=(PairSum("s", ("zv",), other),)))
  with pytest.raises(ValueError, match="pair sum 's' of term 'b' differs from another of that name"):
    _registry((first, second))
  assert set(_registry((first, dataclasses.replace(first, name="c")))) == {"a", "c"}
  with pytest.raises(ValueError, match=r"term 'x' reads \['zv_extra'\], which are not Features fields"):
    Term(name="x", role="regularizer", reads=("zv", "zv_extra"), formula=None, ring=None)
