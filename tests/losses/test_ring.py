"""The ring-sharded objective against the global objective (values and gradients) and the float64 references.

Runs on the 8 fake CPU devices of conftest: the full 8-device ring, a 4-device sub-mesh, a 1-device mesh, 2-D meshes
and a mesh with Explicit axes. The ring objective always runs inside `jax.jit` on global arrays sharded over the
data axis; the global objective it is compared with runs on the same values on one device.

Gradients are taken, as in a train step, with respect to the raw head outputs that `l2_normalize` turns into the
features. Taken directly at unit features, the gradient of the uniformity term's diagonal (G(z_j, z_j) with
‖z_j − z_j‖² = max(2 − 2⟨z_j, z_j⟩, 0)) is at the kink of max(·, 0): whether it is 0 or 8·z_j depends on whether
rounding puts ⟨z_j, z_j⟩ above or below 1, which differs between any two ways of computing the product. That
gradient is radial, so the normalisation removes it. The remaining terms are also compared at unit features.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import reference as ref
from lmstruct.losses.common import l2_normalize
from lmstruct.losses.objective import compute_objective
from lmstruct.losses.registry import TERMS
from lmstruct.losses.ring import compute_objective_ring, ring_block_sums
from lmstruct.losses.term import Features

D = 8
ALL_REGULARIZERS = {"separation": 1.0, "bridge": 0.5, "geometric": 2.0, "cyclip": 1.5, "alignment": 0.1}
# (logit scale, logit bias): CLIP's clamp s = 100 overflows exp() in float32 without the running max; SigLIP's init.
SCALES = {"clip": (100.0, 0.0), "inmodal": (20.0, 0.0), "sigmoid": (10.0, -10.0)}


def mesh_of(shape, names, devices, axis_type=jax.sharding.AxisType.Auto):
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), names, axis_types=(axis_type,) * len(names))


def make_features(batch, seed):
  """Raw head outputs with realistic structure: captions, augmentations and independent views near their partners,
  at norms other than 1."""
  rng = np.random.default_rng(seed)
  noisy = lambda x, sigma: x + sigma * rng.normal(size=x.shape)
  zv = rng.normal(size=(batch, D))
  zt = noisy(zv, 0.7)
  zv_ind, zt_ind = rng.normal(size=(batch, D)), rng.normal(size=(batch, D))
  return {"zv": zv, "zt": zt, "zv_aug": noisy(zv, 0.4), "zt_aug": noisy(zt, 0.4), "zv_ind": zv_ind,
          "zt_ind": zt_ind, "zv_ind_aug": noisy(zv_ind, 0.4), "zt_ind_aug": noisy(zt_ind, 0.4)}


def objective_and_gradient(objective, config, normalize):
  """jit of (arrays, s, b) ↦ ((L, metrics), ∂L/∂(arrays, s, b)); the features are l2_normalize(arrays) if
  `normalize`, else the arrays themselves."""
  def loss(arrays, logit_scale, logit_bias):
    if normalize:
      arrays = {k: l2_normalize(v) for k, v in arrays.items()}
    return objective(Features(logit_scale=logit_scale, logit_bias=logit_bias, **arrays), config,
                     jax.random.key(7))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


_GLOBAL_OBJECTIVES = {}


def run_both(config, arrays, scale, bias, mesh, data_axis="data", normalize=True):
  """(ring result, global result), each ((L, metrics), grads): the ring on inputs sharded over `data_axis` of
  `mesh`, the global objective on the same inputs on one device."""
  sharded = {k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, P(data_axis)))
             for k, v in arrays.items()}
  scalars = (jnp.float32(scale), jnp.float32(bias))
  ring = objective_and_gradient(lambda f, c, r: compute_objective_ring(f, c, r, mesh, data_axis), config, normalize)
  key = (repr(config), normalize)
  if key not in _GLOBAL_OBJECTIVES:  # one compile per config, shared by the mesh layouts
    _GLOBAL_OBJECTIVES[key] = objective_and_gradient(compute_objective, config, normalize)
  global_ = _GLOBAL_OBJECTIVES[key]({k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}, *scalars)
  return ring(sharded, *scalars), global_


def assert_same_objective(ring, global_, logit_scale):
  """Same metric keys; values and gradients equal to 1e-5 relative, with absolute floors where float32 has none.

  Values: a cross-entropy is a difference of logits as large as s, defined in float32 only to about an ulp of s
  (the global lse_j − x_jj is exactly 0 for a saturated row); values get an absolute floor of 4 ulps of s.
  Feature gradients are compared to 1e-5 of the largest feature-gradient entry (an input whose every pair is
  saturated, e.g. at s = 100, has a gradient of float32 noise, ~1e-12, in both). The logit scale's gradient is a sum
  over all B² pairs that cancels to ≈ 0 near the batch's best temperature, where summation order alone moves it by
  ~1e-8; it gets an absolute floor of 1e-7.
  """
  (ring_total, ring_metrics), (ring_features, *ring_scalars) = ring
  (total, metrics), (features, *scalars) = global_
  value_floor = 4 * logit_scale * 2.0 ** -23
  assert list(ring_metrics) == list(metrics)
  for key in metrics:
    np.testing.assert_allclose(ring_metrics[key], metrics[key], rtol=1e-5, atol=value_floor, err_msg=key)
  np.testing.assert_allclose(ring_total, total, rtol=1e-5, atol=value_floor)
  assert list(ring_features) == list(features)
  largest = max(float(jnp.abs(g).max()) for g in features.values())
  for key in features:
    np.testing.assert_allclose(ring_features[key], features[key], rtol=1e-5, atol=1e-5 * largest, err_msg=key)
  for name, got, want in zip(("logit_scale", "logit_bias"), ring_scalars, scalars):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("base,batch", [("clip", 8), ("inmodal", 16), ("sigmoid", 40), ("inmodal", 40)])
def test_ring_equals_global_objective_on_8_devices(base, batch):
  config = {"base": base, "weights": ALL_REGULARIZERS, "bridge_t": "uniform",
            "cyclip": {"inmodal_weight": 0.3, "crossmodal_weight": 0.6}}
  mesh = mesh_of((8,), ("data",), jax.devices())
  ring, global_ = run_both(config, make_features(batch, seed=batch), *SCALES[base], mesh)
  assert_same_objective(ring, global_, SCALES[base][0])


def test_ring_equals_global_gradient_at_unit_features():
  """Gradients taken directly at unit features, radial components included: every term but the uniformity."""
  config = {"base": "inmodal", "weights": {k: w for k, w in ALL_REGULARIZERS.items() if k != "separation"},
            "bridge_t": 0.25}
  arrays = {k: ref.normalize(v) for k, v in make_features(16, seed=3).items() if "ind" not in k}
  mesh = mesh_of((8,), ("data",), jax.devices())
  assert_same_objective(*run_both(config, arrays, *SCALES["inmodal"], mesh, normalize=False), SCALES["inmodal"][0])


@pytest.mark.parametrize("name", sorted(TERMS))
def test_every_registered_term_ring_form_equals_its_global_form(name):
  """Each term of the registry alone (a regulariser next to the CLIP base), on 8 devices: its value and the
  gradient of its value with respect to the features, s and b, ring form against global formula. A term added to
  the registry is covered here without any change."""
  term = TERMS[name]
  config = {"base": name, "weights": {}} if term.role == "base" else {"base": "clip", "weights": {name: 1.0}}
  config.update(bridge_t="uniform", cyclip={"inmodal_weight": 0.3, "crossmodal_weight": 0.6})
  scale, bias = SCALES.get(name, (20.0, -4.0))
  mesh = mesh_of((8,), ("data",), jax.devices())
  arrays = make_features(16, seed=len(name))

  def of_term(objective):
    def value(arrays, logit_scale, logit_bias):
      features = Features(logit_scale=logit_scale, logit_bias=logit_bias,
                          **{k: l2_normalize(v) for k, v in arrays.items()})
      _, metrics = objective(features, config, jax.random.key(3))
      return metrics[f"loss/{name}"], metrics
    return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2), has_aux=True))

  scalars = (jnp.float32(scale), jnp.float32(bias))
  sharded = {k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, P("data"))) for k, v in arrays.items()}
  ring = of_term(lambda f, c, r: compute_objective_ring(f, c, r, mesh))(sharded, *scalars)
  global_ = of_term(compute_objective)({k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}, *scalars)
  assert_same_objective(ring, global_, scale)
  assert float(jnp.abs(ring[1][0]["zv"]).max()) > 0  # a gradient that is there to compare


@pytest.mark.parametrize("layout", ["4-device sub-mesh", "1-device mesh", "2-D mesh, batch over both axes",
                                    "2-D mesh, batch over one axis", "mesh with Explicit axes"])
def test_ring_equals_global_objective_on_other_meshes(layout):
  devices = jax.devices()
  mesh, data_axis = {
      "4-device sub-mesh": (mesh_of((4,), ("data",), devices[4:]), "data"),
      "1-device mesh": (mesh_of((1,), ("data",), devices[3:4]), "data"),
      "2-D mesh, batch over both axes": (mesh_of((4, 2), ("data", "fsdp"), devices), ("data", "fsdp")),
      "2-D mesh, batch over one axis": (mesh_of((2, 4), ("data", "model"), devices), "data"),
      "mesh with Explicit axes": (mesh_of((8,), ("data",), devices, jax.sharding.AxisType.Explicit), "data"),
  }[layout]
  config = {"base": "inmodal", "weights": ALL_REGULARIZERS, "bridge_t": "uniform"}
  ring, global_ = run_both(config, make_features(24, seed=5), *SCALES["inmodal"], mesh, data_axis)
  assert_same_objective(ring, global_, SCALES["inmodal"][0])


@pytest.mark.parametrize("base", ["clip", "inmodal", "sigmoid"])
def test_global_objective_on_explicitly_sharded_features_equals_unsharded(base):
  """Features sharded over an Explicit mesh axis (sharding in types, jax.make_mesh's default) are gathered before
  the B×B products, which explicit sharding would otherwise reject: same value and gradients as on one device."""
  config = {"base": base, "weights": ALL_REGULARIZERS, "bridge_t": "uniform",
            "cyclip": {"inmodal_weight": 0.3, "crossmodal_weight": 0.6}}
  mesh = mesh_of((8,), ("data",), jax.devices(), jax.sharding.AxisType.Explicit)
  arrays = make_features(16, seed=11)
  scalars = (jnp.float32(SCALES[base][0]), jnp.float32(SCALES[base][1]))
  sharded = {k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, P("data"))) for k, v in arrays.items()}
  explicit = objective_and_gradient(compute_objective, config, normalize=True)(sharded, *scalars)
  one_device = objective_and_gradient(compute_objective, config, normalize=True)(
      {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}, *scalars)
  assert_same_objective(explicit, one_device, SCALES[base][0])
  # Gradients come back sharded like their features.
  assert explicit[1][0]["zv"].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2)


def test_ring_values_match_float64_references():
  """Each term against the explicit-loop references of tests/losses/reference.py, on 8 devices."""
  batch, scale, bias = 16, 20.0, -4.0
  a = {k: ref.normalize(v) for k, v in make_features(batch, seed=11).items()}
  mesh = mesh_of((8,), ("data",), jax.devices())
  sharded = {k: jax.device_put(jnp.asarray(v, jnp.float32), NamedSharding(mesh, P("data"))) for k, v in a.items()}
  want = {
      "clip": ref.clip(a["zv"], a["zt"], scale),
      "inmodal": ref.inmodal(a["zv"], a["zt"], a["zv_aug"], a["zt_aug"], scale),
      "sigmoid": ref.sigmoid(a["zv"], a["zt"], scale, bias),
      "separation": ref.separation(a["zv"], a["zt"], a["zv_ind"], a["zt_ind"], a["zv_ind_aug"], a["zt_ind_aug"],
                                   scale),
      "bridge": ref.bridge(a["zv"], a["zt"], a["zv_aug"], 0.4),
      "geometric": ref.geometric(a["zv"], a["zt"], a["zv_aug"], a["zt_aug"]),
      "cyclip": ref.cyclip(a["zv"], a["zt"], 0.7, 0.1),
      "alignment": ref.alignment(a["zv"], a["zt"]),
  }
  configs = {base: {"base": base, "weights": ALL_REGULARIZERS if base == "clip" else {}, "bridge_t": 0.4,
                    "cyclip": {"inmodal_weight": 0.7, "crossmodal_weight": 0.1}}
             for base in ("clip", "inmodal", "sigmoid")}

  @jax.jit
  def ring_metrics(arrays):
    features = Features(logit_scale=jnp.float32(scale), logit_bias=jnp.float32(bias), **arrays)
    return {base: compute_objective_ring(features, config, jax.random.key(0), mesh)[1]
            for base, config in configs.items()}

  got = ring_metrics(sharded)
  for name, value in want.items():
    metrics = got[name] if name in configs else got["clip"]
    np.testing.assert_allclose(float(metrics[f"loss/{name}"]), value, rtol=2e-5, err_msg=name)
  total = want["clip"] + sum(w * want[name] for name, w in ALL_REGULARIZERS.items())
  np.testing.assert_allclose(float(got["clip"]["loss/total"]), total, rtol=2e-5)
  assert float(got["sigmoid"]["loss/total"]) == float(got["sigmoid"]["loss/sigmoid"])


def test_ring_block_sums_send_every_column_gradient_home():
  """S = Σ_jk ⟨x_j, y_k⟩² + Σ_j ⟨x_j, y_j⟩ over a batch on 8 devices, against NumPy's closed forms
  ∂S/∂x = 2(XYᵀ)Y + Y and ∂S/∂y = 2(XYᵀ)ᵀX + X: each column block's cotangent, gathered on the devices it visited,
  must arrive back on the device (and row) it came from."""
  def block(rows, cols, params, own):
    products = rows @ cols.T
    total = jnp.sum(products ** 2)
    return total + jnp.sum(jnp.diagonal(products)) if own else total

  mesh = mesh_of((8,), ("data",), jax.devices())
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 3))

  def total(x, y):
    body = lambda x, y: jax.lax.psum(ring_block_sums(block, x, y, {}, "data", 8), "data")
    return jax.shard_map(body, mesh=mesh, in_specs=P("data"), out_specs=P())(x, y)

  value, (dx, dy) = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(*(jnp.asarray(a, jnp.float32) for a in (x, y)))
  products = x @ y.T
  np.testing.assert_allclose(float(value), np.sum(products ** 2) + np.trace(products), rtol=1e-5)
  np.testing.assert_allclose(dx, 2 * products @ y + y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dy, 2 * products.T @ x + x, rtol=1e-5, atol=1e-5)


def test_compiled_ring_gradient_passes_blocks_and_never_gathers_the_batch():
  """The compiled objective + gradient moves features only by collective-permute: no all-gather, no all-to-all."""
  mesh = mesh_of((8,), ("data",), jax.devices())
  config = {"base": "sigmoid", "weights": ALL_REGULARIZERS, "bridge_t": "uniform"}
  sharding = NamedSharding(mesh, P("data"))
  arrays = {k: jax.ShapeDtypeStruct((64, D), jnp.float32, sharding=sharding) for k in make_features(1, seed=0)}
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  fn = objective_and_gradient(lambda f, c, r: compute_objective_ring(f, c, r, mesh), config, normalize=True)
  hlo = fn.lower(arrays, scalar, scalar).compile().as_text()
  assert "collective-permute" in hlo
  assert "all-gather" not in hlo and "all-to-all" not in hlo


def test_batch_not_divisible_by_the_data_axis_is_rejected():
  mesh = mesh_of((8,), ("data",), jax.devices())
  arrays = {k: jnp.asarray(v, jnp.float32) for k, v in make_features(12, seed=1).items()}
  with pytest.raises(ValueError, match="not divisible"):
    compute_objective_ring(Features(logit_scale=jnp.float32(10.0), **arrays), {"base": "clip"}, jax.random.key(0),
                           mesh)
