"""Tests for kernels/clipping.py.

1. float64 NumPy reference of each formula (float32 tolerance);
2. bit for bit against a built Keras optimizer's `_clip_gradients`
   (`clipnorm`, `global_clipnorm`, `clipvalue`);
3. `tf.function(jit_compile=True)` against eager;
plus optax-style invariants and the NaN/Inf policy stated in the module
docstring, each claim checked against the kernel *and* against Keras.

The conftest's autouse `clear_session()` costs ~0.08 s per test, so seeds and
shapes are looped inside tests; `err_msg` names the failing case.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from kernels import clipping as K  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
SEEDS = (0, 1, 2, 3)
SHAPE_SETS = {
    "vec": [(7,)],
    "mixed": [(3,), (4, 5), (2, 3, 2)],
    "with_none": [(6,), None, (3, 4)],
    "scalar_and_matrix": [(), (5, 2)],
}
NAN, INF = np.nan, np.inf


def xla(fn):
  return tf.function(fn, jit_compile=True, autograph=False)


def make_grads(seed, shapes, scale=1.0):
  rng = np.random.default_rng(seed)
  return [None if s is None else
          (scale * rng.standard_normal(s)).astype(np.float32) for s in shapes]


def to_tf(grads):
  return [None if g is None else tf.constant(g) for g in grads]


def to_np(grads):
  return [None if g is None else g.numpy() for g in grads]


def cases():
  for name, shapes in SHAPE_SETS.items():
    for seed in SEEDS:
      yield f"{name} seed={seed}", make_grads(seed, shapes)


def np_norm(g):
  return float(np.sqrt(np.sum(np.square(g.astype(np.float64)))))


def np_global_norm(grads):
  return float(np.sqrt(sum(np.sum(np.square(g.astype(np.float64)))
                           for g in grads if g is not None)))


def norm_rtol(n):
  # sum of n squares: <= (n-1) eps relative (non-negative terms), the sqrt
  # halves it; then one multiply and one divide: a few roundings more.
  return (n + 6) * EPS32


def keras_optimizer(grads, **clip):
  """A built SGD with the given clipping, over variables shaped like grads."""
  opt = keras.optimizers.SGD(learning_rate=0.1, **clip)
  opt.build([keras.Variable(np.zeros(np.shape(g) if g is not None else (1,),
                                     np.float32)) for g in grads])
  return opt


def assert_grads_equal(got, want, msg=""):
  assert len(got) == len(want), msg
  for i, (a, b) in enumerate(zip(got, want)):
    if a is None or b is None:
      assert a is None and b is None, f"{msg} [{i}]"
      continue
    a = a.numpy() if hasattr(a, "numpy") else a
    b = b.numpy() if hasattr(b, "numpy") else b
    assert a.dtype == b.dtype and a.shape == b.shape, f"{msg} [{i}]"
    np.testing.assert_array_equal(a, b, err_msg=f"{msg} [{i}]")


# ----------------------------------------------------------------------------
# float64 NumPy references
# ----------------------------------------------------------------------------


def test_clip_each_by_norm_vs_numpy():
  """out_v = g_v * c / max(||g_v||, c), c chosen relative to the norms."""
  for (name, grads), c_factor in [(case, f) for case in cases()
                                  for f in (0.25, 0.9, 1.5, 4.0)]:
    name = f"{name} c_factor={c_factor}"
    norms = [np_norm(g) for g in grads if g is not None]
    c = float(np.float32(c_factor * np.mean(norms)))
    got = to_np(K.clip_each_by_norm(to_tf(grads), c))
    for g, out in zip(grads, got):
      if g is None:
        assert out is None, name
        continue
      want = g.astype(np.float64) * c / max(np_norm(g), c)
      np.testing.assert_allclose(out, want, rtol=norm_rtol(g.size), atol=0,
                                 err_msg=name)


def test_clip_by_norm_single_vs_numpy():
  rng = np.random.default_rng(9)
  for shape in [(1,), (10,), (3, 3, 3)]:
    g = rng.standard_normal(shape).astype(np.float32)
    for c in (0.5, 1.0, 3.0, 100.0):
      out = K.clip_by_norm(tf.constant(g), c).numpy()
      want = g.astype(np.float64) * c / max(np_norm(g), c)
      np.testing.assert_allclose(out, want, rtol=norm_rtol(g.size), atol=0,
                                 err_msg=f"{shape} c={c}")
  assert K.clip_by_norm(None, 1.0) is None


def test_clip_by_value_vs_numpy():
  """out = min(max(g, -v), v): a selection, so exact (no rounding)."""
  for (name, grads), clip_value in [(case, v) for case in cases()
                                    for v in (0.1, 0.5, 1.7)]:
    name = f"{name} clip_value={clip_value}"
    got = to_np(K.clip_by_value(to_tf(grads), clip_value))
    for g, out in zip(grads, got):
      if g is None:
        assert out is None, name
        continue
      v = np.float32(clip_value)
      np.testing.assert_array_equal(out, np.clip(g, -v, v), err_msg=name)


def test_global_norm_vs_numpy():
  """sqrt(sum_v sum_i g_vi^2), None entries skipped."""
  for name, grads in cases():
    n = sum(g.size for g in grads if g is not None)
    got = K.global_norm(to_tf(grads)).numpy()
    np.testing.assert_allclose(got, np_global_norm(grads), rtol=norm_rtol(n),
                               atol=0, err_msg=name)


def test_clip_by_global_norm_vs_numpy():
  """out_v = g_v * c / max(N, c), N the global norm of all gradients."""
  for (name, grads), c_factor in [(case, f) for case in cases()
                                  for f in (0.1, 0.8, 1.25, 10.0)]:
    name = f"{name} c_factor={c_factor}"
    norm = np_global_norm(grads)
    c = float(np.float32(c_factor * norm))
    n = sum(g.size for g in grads if g is not None)
    got = to_np(K.clip_by_global_norm(to_tf(grads), c))
    for g, out in zip(grads, got):
      if g is None:
        assert out is None, name
        continue
      want = g.astype(np.float64) * c / max(norm, c)
      # + 2 eps: 1/c and 1/N are rounded to float32 before c * min(.,.).
      np.testing.assert_allclose(out, want, rtol=norm_rtol(n) + 2 * EPS32,
                                 atol=0, err_msg=name)


# ----------------------------------------------------------------------------
# Bit-identical against Keras's optimizer clipping
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind,values", [
    ("clipnorm", [0.05, 0.7, 2.0, 3.3, 50.0]),
    ("global_clipnorm", [0.05, 0.7, 2.0, 3.3, 41.0, 50.0]),
    ("clipvalue", [0.01, 0.3, 1.0, 2.5]),
])
def test_clip_gradients_bitwise_vs_keras(kind, values):
  kernel_fn = {"clipnorm": K.clip_each_by_norm,
               "global_clipnorm": K.clip_by_global_norm,
               "clipvalue": K.clip_by_value}[kind]
  for name, grads in cases():
    for c in values:
      opt = keras_optimizer(grads, **{kind: c})
      want = opt._clip_gradients(to_tf(grads))
      msg = f"{name} {kind}={c}"
      assert_grads_equal(kernel_fn(to_tf(grads), c), want, msg)
      assert_grads_equal(K.clip_gradients(to_tf(grads), **{kind: c}), want, msg)


def test_clip_gradients_precedence_and_disabled_like_keras():
  grads = make_grads(5, [(4,), (2, 3)], scale=3.0)
  settings = [
      dict(clipnorm=0.5, global_clipnorm=0.7, clipvalue=0.2),
      dict(global_clipnorm=0.7, clipvalue=0.2),
      dict(clipnorm=0.0, clipvalue=0.2),        # 0 disables clipnorm
      dict(clipnorm=-1.0, global_clipnorm=0.9),  # negative disables too
      dict(),
  ]
  for setting in settings:
    opt = keras_optimizer(grads)
    # Keras's constructor accepts one kind only; its `_clip_gradients` still
    # has a precedence order, which the kernel follows.
    for key, value in setting.items():
      setattr(opt, key, value)
    want = opt._clip_gradients(to_tf(grads))
    got = K.clip_gradients(to_tf(grads), **setting)
    assert_grads_equal(got, want, str(setting))
  # Nothing set: the very same tensors come back, in a new list.
  tf_grads = to_tf(grads)
  out = K.clip_gradients(tf_grads)
  assert out is not tf_grads and all(a is b for a, b in zip(out, tf_grads))


# ----------------------------------------------------------------------------
# XLA
# ----------------------------------------------------------------------------


def test_clipping_xla_vs_eager():
  fns = {
      "clip_each_by_norm": lambda *g: K.clip_each_by_norm(list(g), 0.8),
      "clip_by_global_norm": lambda *g: K.clip_by_global_norm(list(g), 1.3),
      "clip_gradients_norm": lambda *g: K.clip_gradients(list(g), clipnorm=2.0),
      "global_norm": lambda *g: [K.global_norm(list(g))],
  }
  for seed in (0, 1):
    grads = to_tf(make_grads(seed, [(3,), (4, 5), (2, 3, 2)]))
    for name, fn in fns.items():
      compiled = to_np(xla(fn)(*grads))
      eager = to_np(fn(*grads))
      for a, b in zip(compiled, eager):
        # The norms are reductions that XLA may re-associate (vectorised sum)
        # and the g*c/max(.) chain may be fused; a re-associated sum of 20
        # squares moves by a few ulps, so allow 1e-6 relative.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0,
                                   err_msg=f"{name} seed={seed}")


def test_clip_by_value_xla_is_exact():
  grads = to_tf(make_grads(3, [(5,), (2, 4)], scale=2.0))
  fn = lambda *g: K.clip_by_value(list(g), 0.75)
  # min/max only select values: no rounding, so XLA must agree bitwise.
  assert_grads_equal(xla(fn)(*grads), fn(*grads))


def test_nan_inf_policy_holds_under_xla():
  g_nan = tf.constant([NAN, 1.0, -2.0])
  g_inf = tf.constant([INF, 1.0, -2.0])
  ok = tf.constant([3.0, 4.0])
  for bad in (g_nan, g_inf):
    for fn in (lambda a, b: K.clip_each_by_norm([a, b], 1.0),
               lambda a, b: K.clip_by_global_norm([a, b], 1.0),
               lambda a, b: K.clip_by_value([a, b], 1.0)):
      compiled = to_np(xla(fn)(bad, ok))
      eager = to_np(fn(bad, ok))
      for a, b in zip(compiled, eager):
        # Same NaN positions and signs; finite values equal to 1e-6.
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------
# Invariants (optax-style)
# ----------------------------------------------------------------------------


def test_clip_by_norm_twice_changes_nothing():
  for name, grads in cases():
    for c in (0.3, 1.0, 2.7):
      once = K.clip_each_by_norm(to_tf(grads), c)
      twice = K.clip_each_by_norm(once, c)
      for a, b in zip(to_np(twice), to_np(once)):
        if a is None:
          continue
        # Not bitwise: the clipped norm can land 1 ulp above c, and g*c/c is
        # not exact in float32 for every c (Keras does the same). 4 eps.
        np.testing.assert_allclose(a, b, rtol=4 * EPS32, atol=0,
                                   err_msg=f"{name} c={c}")


def test_clip_by_global_norm_twice_changes_nothing():
  for name, grads in cases():
    for c in (0.3, 1.0, 2.7):
      once = K.clip_by_global_norm(to_tf(grads), c)
      twice = K.clip_by_global_norm(once, c)
      for a, b in zip(to_np(twice), to_np(once)):
        if a is not None:
          np.testing.assert_allclose(a, b, rtol=4 * EPS32, atol=0,
                                     err_msg=f"{name} c={c}")


def test_clip_by_value_twice_is_bitwise_identity():
  for name, grads in cases():
    once = K.clip_by_value(to_tf(grads), 0.4)
    assert_grads_equal(K.clip_by_value(once, 0.4), once, name)


def test_clipped_norm_equals_threshold():
  for name, grads in cases():
    for c in (0.05, 0.5, 1.0):
      for g, out in zip(grads, to_np(K.clip_each_by_norm(to_tf(grads), c))):
        if g is None or np_norm(g) <= c:  # only the above-threshold case
          continue
        np.testing.assert_allclose(np_norm(out), c, rtol=norm_rtol(g.size),
                                   err_msg=f"{name} c={c}")
      assert np_global_norm(grads) > c, name
      out = to_np(K.clip_by_global_norm(to_tf(grads), c))
      n = sum(g.size for g in grads if g is not None)
      np.testing.assert_allclose(np_global_norm(out), c,
                                 rtol=norm_rtol(n) + 2 * EPS32,
                                 err_msg=f"{name} global c={c}")


def test_below_threshold_unchanged():
  """Below the threshold the gradient is g*c/c (per variable) or g*(c*1/c)."""
  for name, grads in cases():
    big = 4.0 * np_global_norm(grads)
    for c in (float(2.0**np.ceil(np.log2(big))), big):
      msg = f"{name} c={c}"
      per_var = to_np(K.clip_each_by_norm(to_tf(grads), c))
      glob = to_np(K.clip_by_global_norm(to_tf(grads), c))
      for g, a, b in zip(grads, per_var, glob):
        if g is None:
          continue
        if float(c).is_integer() and np.log2(c).is_integer():
          # c a power of two: g*c/c and c*fl(1/c) are exact -> bitwise.
          np.testing.assert_array_equal(a, g, err_msg=msg)
          np.testing.assert_array_equal(b, g, err_msg=msg)
        else:
          # General c: (g*c)/c may be 1 ulp off g, and fl32(c)*fl32(1/c) may
          # be 1 - 2^-24 (e.g. c = 41); Keras does exactly the same (see
          # test_below_threshold_bitwise_like_keras). 1 ulp <= eps * |g|.
          np.testing.assert_allclose(a, g, rtol=EPS32, atol=0, err_msg=msg)
          np.testing.assert_allclose(b, g, rtol=EPS32, atol=0, err_msg=msg)


def test_below_threshold_bitwise_like_keras():
  # Documents that "below the threshold the gradient is unchanged" is only a
  # 1-ulp statement, in Keras too: with c = 41, fl32(41) * fl32(1/41) is
  # 0.99999994, and (g * 46.3874) / 46.3874 moves some elements by 1 ulp.
  g = make_grads(0, [(1000,)])[0]
  for kind, c in (("global_clipnorm", 41.0), ("clipnorm", 46.38743796823123)):
    assert np_norm(g) < c
    want = keras_optimizer([g], **{kind: c})._clip_gradients([tf.constant(g)])
    got = K.clip_gradients([tf.constant(g)], **{kind: c})
    assert_grads_equal(got, want, kind)
    assert np.any(got[0].numpy() != g), kind  # not bitwise unchanged...
    np.testing.assert_allclose(got[0].numpy(), g, rtol=EPS32, atol=0)  # 1 ulp


def test_global_clipping_preserves_direction():
  for name, grads in cases():
    for c in (0.1, 1.0, 1e3):
      out = to_np(K.clip_by_global_norm(to_tf(grads), c))
      flat_g = np.concatenate([g.ravel() for g in grads if g is not None])
      flat_o = np.concatenate([o.ravel() for o in out if o is not None])
      flat_g = flat_g.astype(np.float64)
      flat_o = flat_o.astype(np.float64)
      cos = flat_g @ flat_o / (np.linalg.norm(flat_g) * np.linalg.norm(flat_o))
      np.testing.assert_allclose(cos, 1.0, rtol=0, atol=4 * EPS32,
                                 err_msg=name)
      # One common scale s <= 1 for every element of every variable:
      # out = fl(g * s), so out/g == s to half an ulp.
      nz = flat_g != 0
      ratios = flat_o[nz] / flat_g[nz]
      np.testing.assert_allclose(ratios, ratios[0], rtol=EPS32, atol=0,
                                 err_msg=name)
      assert ratios[0] <= 1.0 + EPS32


def test_clip_by_norm_preserves_direction_per_variable():
  for name, grads in cases():
    out = to_np(K.clip_each_by_norm(to_tf(grads), 0.2))
    for g, o in zip(grads, out):
      if g is None or g.size < 2:
        continue
      ratios = o.astype(np.float64).ravel() / g.astype(np.float64).ravel()
      np.testing.assert_allclose(ratios, ratios[0], rtol=2 * EPS32, atol=0,
                                 err_msg=name)


# ----------------------------------------------------------------------------
# NaN / Inf policy (module docstring), kernel and Keras
# ----------------------------------------------------------------------------


def _both(kind, c, grads):
  """(kernel result, Keras result) as numpy lists."""
  got = to_np(K.clip_gradients(to_tf(grads), **{kind: c}))
  want = to_np(keras_optimizer(grads, **{kind: c})._clip_gradients(to_tf(grads)))
  return got, want


def _assert_same_incl_nan(got, want, msg=""):
  for a, b in zip(got, want):
    if a is None:
      assert b is None
      continue
    # assert_array_equal treats NaN == NaN; also require identical signs of 0.
    np.testing.assert_array_equal(a, b, err_msg=msg)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b), err_msg=msg)


def test_clipnorm_nan_in_one_variable():
  """Claim: NaN gradient -> NaN norm -> every element NaN; others unaffected."""
  ok = np.array([3.0, 4.0], np.float32)
  bad = np.array([NAN, 1.0, -2.0], np.float32)
  got, want = _both("clipnorm", 1.0, [bad, ok])
  assert np.all(np.isnan(got[0]))
  np.testing.assert_array_equal(got[1], K.clip_by_norm(tf.constant(ok),
                                                       1.0).numpy())
  _assert_same_incl_nan(got, want)


def test_clipnorm_inf_in_one_variable():
  """TRUE behaviour (same in Keras): an Inf gives an *infinite* norm, not NaN.

  g * c / max(inf, c) = g * c / inf: the +-Inf entries become NaN (inf/inf),
  the finite entries become +-0. The module docstring claims "gets a NaN norm;
  every element of that gradient becomes NaN", which is false for Inf (it is
  true for NaN).
  """
  ok = np.array([3.0, 4.0], np.float32)
  bad = np.array([INF, 1.0, -2.0, 0.0, -INF], np.float32)
  got, want = _both("clipnorm", 1.0, [bad, ok])
  norm = K.global_norm([tf.constant(bad)]).numpy()
  assert norm == INF
  np.testing.assert_array_equal(np.isnan(got[0]),
                                [True, False, False, False, True])
  np.testing.assert_array_equal(got[0][1:4], [0.0, -0.0, 0.0])
  np.testing.assert_array_equal(np.signbit(got[0][1:4]), [False, True, False])
  np.testing.assert_array_equal(got[1], K.clip_by_norm(tf.constant(ok),
                                                       1.0).numpy())
  _assert_same_incl_nan(got, want)


def test_clipnorm_zero_gradient_stays_zero_and_differentiable():
  for shape in [(3,), (2, 2)]:
    zero = np.zeros(shape, np.float32)
    got, want = _both("clipnorm", 0.5, [zero])
    np.testing.assert_array_equal(got[0], zero)
    _assert_same_incl_nan(got, want)
  # The two-`where` trick: the derivative at g = 0 is finite (no 0 * inf).
  x = tf.zeros((3,))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = tf.reduce_sum(K.clip_by_norm(x, 1.0))
  d = tape.gradient(y, x).numpy()
  assert np.all(np.isfinite(d))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y_tf = tf.reduce_sum(tf.clip_by_norm(x, 1.0))  # Keras's _clip_by_norm
  np.testing.assert_array_equal(d, tape.gradient(y_tf, x).numpy())


def test_clipvalue_inf_clipped_nan_kept():
  """Claim: Inf is clipped to the bound; NaN stays NaN."""
  g = np.array([INF, -INF, NAN, 0.5, -3.0], np.float32)
  got, want = _both("clipvalue", 1.5, [g])
  np.testing.assert_array_equal(got[0], [1.5, -1.5, NAN, 0.5, -1.5])
  assert np.isnan(got[0][2])
  _assert_same_incl_nan(got, want)


@pytest.mark.parametrize("bad_value", [INF, -INF, NAN])
def test_global_clipnorm_nonfinite_makes_everything_nan(bad_value):
  """Claim: any NaN/Inf -> non-finite global norm -> *every* gradient NaN."""
  ok = np.array([3.0, 4.0], np.float32)
  bad = np.array([bad_value, 1.0, 0.0], np.float32)
  zero = np.zeros((2,), np.float32)
  for c in (1.0, 1e6):
    got, want = _both("global_clipnorm", c, [ok, bad, None, zero])
    assert got[2] is None
    for out in (got[0], got[1], got[3]):
      assert np.all(np.isnan(out)), (bad_value, c)
    _assert_same_incl_nan(got, want)


def test_global_clipnorm_all_zero_stays_zero():
  zeros = [np.zeros((3,), np.float32), np.zeros((2, 2), np.float32)]
  for c in (0.5, 41.0):
    got, want = _both("global_clipnorm", c, zeros)
    for out, z in zip(got, zeros):
      np.testing.assert_array_equal(out, z)
      assert not np.any(np.signbit(out))
    _assert_same_incl_nan(got, want)
