"""Reading a compiled program's HLO: instructions counted as often as they run, collectives and their bytes,
matrix-product FLOPs; against a hand-written module and against analytic counts of compiled loops."""

import jax
import jax.numpy as jnp
import pytest

from lmstruct.train import hlo

# A while loop of known trip count 5 whose body runs a dot [4,8]×[8,3] inside a fusion and a ring permute; the entry
# all-reduces a tuple of a [3] and a [2,2] bf16 array once.
MODULE = """HloModule hand_written

%fused_dot (p0: f32[4,8], p1: f32[8,3]) -> f32[4,3] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,3]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,3]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (state: (s32[], f32[4,8], f32[8,3])) -> (s32[], f32[4,8], f32[8,3]) {
  %state = (s32[], f32[4,8]{1,0}, f32[8,3]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%state), index=1
  %w = f32[8,3]{1,0} get-tuple-element(%state), index=2
  %product = f32[4,3]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_dot
  %moved = f32[4,8]{1,0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1},{1,2},{2,0}}
  %i = s32[] get-tuple-element(%state), index=0
  ROOT %next = (s32[], f32[4,8]{1,0}, f32[8,3]{1,0}) tuple(%i, %moved, %w)
}

%cond (state.1: (s32[], f32[4,8], f32[8,3])) -> pred[] {
  %state.1 = (s32[], f32[4,8]{1,0}, f32[8,3]{1,0}) parameter(0)
  ROOT %less = pred[] constant(true)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

ENTRY %main (x.1: f32[4,8], w.1: f32[8,3], v: f32[3], m: bf16[2,2]) -> (f32[3], bf16[2,2]) {
  %x.1 = f32[4,8]{1,0} parameter(0)
  %w.1 = f32[8,3]{1,0} parameter(1)
  %v = f32[3]{0} parameter(2)
  %m = bf16[2,2]{1,0} parameter(3)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4,8]{1,0}, f32[8,3]{1,0}) tuple(%zero, %x.1, %w.1)
  %loop = (s32[], f32[4,8]{1,0}, f32[8,3]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %all-reduce.1 = (f32[3]{0}, bf16[2,2]{1,0}) all-reduce(%v, %m), channel_id=2, replica_groups={{0,1,2}}, to_apply=%add
}
"""


def test_hand_written_module():
  found = hlo.collectives(MODULE)
  assert [(c.kind, c.executions, c.bytes) for c in found] == [
    ("collective-permute", 5, 4 * 8 * 4),
    ("all-reduce", 1, 3 * 4 + 4 * 2),
  ]
  assert found[0].source_target_pairs == ((0, 1), (1, 2), (2, 0))
  assert hlo.collective_summary(MODULE) == {
    "all-reduce": {"count": 1, "bytes": 20, "instructions": 1},
    "collective-permute": {"count": 5, "bytes": 5 * 128, "instructions": 1},
  }
  assert hlo.matmul_flops(MODULE) == 5 * 2 * 4 * 3 * 8


def test_module_without_entry_is_refused():
  with pytest.raises(ValueError, match="no ENTRY computation"):
    hlo.instructions("HloModule empty\n")


@pytest.mark.parametrize("trips,inner", [(1, 1), (7, 1), (5, 3)])
def test_compiled_loop_flops_count_every_trip(trips, inner):
  """XLA's cost analysis counts a loop body once; here a scan of `trips` steps, each a loop of `inner` products
  [64,32]×[32,48], and a convolution 3×3 over [2,10,10,4] → 6 features, have 2·M·N·K per product, 2·out·9·4 per
  convolution."""

  def f(x, w, image, kernel):
    def step(carry, _):
      return jax.lax.fori_loop(0, inner, lambda i, c: jnp.tanh(c @ w) @ w.T, carry), None

    out = jax.lax.scan(step, x, None, length=trips)[0]
    conv = jax.lax.conv_general_dilated(image, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out, conv

  args = (
    jax.ShapeDtypeStruct((64, 32), jnp.float32),
    jax.ShapeDtypeStruct((32, 48), jnp.float32),
    jax.ShapeDtypeStruct((2, 10, 10, 4), jnp.float32),
    jax.ShapeDtypeStruct((3, 3, 4, 6), jnp.float32),
  )
  text = jax.jit(f).lower(*args).compile().as_text()
  products = trips * inner * 2 * (2 * 64 * 48 * 32)
  convolution = 2 * (2 * 8 * 8 * 6) * (3 * 3 * 4)
  assert hlo.matmul_flops(text) == products + convolution
