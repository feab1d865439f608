"""Tests for kernels/loss_scaling.py.

1. float64 NumPy / pure-Python references (scale, unscale, the finite check,
   and the dynamic-scale state machine);
2. bit for bit against a real `keras.optimizers.LossScaleOptimizer` driven by
   `apply()` on a tiny variable: `dynamic_scale`, `step_counter`, the skipped
   steps, the unscaled update, `check_finite` and `scale_loss`;
3. `tf.function(jit_compile=True)` against eager.

The conftest's autouse `clear_session()` costs ~0.08 s per test, so seeds are
looped inside tests; `err_msg` names the failing case.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from kernels import loss_scaling as K  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
SEEDS = (0, 1, 2)
NAN, INF = np.nan, np.inf


def xla(fn):
  return tf.function(fn, jit_compile=True, autograph=False)


def py_next_loss_scale(scale, good_steps, finite, growth_steps):
  """Reference state machine (LossScaleOptimizer's docstring)."""
  if not finite:
    return scale / 2, 0
  if good_steps == growth_steps - 1:
    return scale * 2, 0
  return scale, good_steps + 1


def finite_pattern(seed, n):
  rng = np.random.default_rng(seed)
  return [bool(f) for f in rng.random(n) < 0.75]


# ----------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------


def test_scale_and_unscale_vs_numpy():
  for seed in SEEDS:
    rng = np.random.default_rng(seed)
    loss = np.float32(rng.uniform(0, 5))
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(3,), (2, 4)]]
    for scale in (np.float32(2.0**15), np.float32(1.0), np.float32(3.7)):
      msg = f"seed={seed} S={scale}"
      got = K.scale_loss(tf.constant(loss), tf.constant(scale)).numpy()
      # one float32 multiply (exact for a power of two)
      np.testing.assert_allclose(got, np.float64(loss) * np.float64(scale),
                                 rtol=EPS32 / 2, atol=0, err_msg=msg)
      out = K.unscale_gradients([tf.constant(g) for g in grads] + [None],
                                tf.constant(scale))
      assert out[-1] is None
      for g, o in zip(grads, out):
        np.testing.assert_allclose(o.numpy(), g.astype(np.float64) / scale,
                                   rtol=EPS32 / 2, atol=0, err_msg=msg)
        if float(np.log2(scale)).is_integer():  # power of two: exact
          np.testing.assert_array_equal(o.numpy(), g / scale, err_msg=msg)


def test_all_finite_vs_numpy():
  rng = np.random.default_rng(0)
  for trial in range(30):
    grads = [rng.standard_normal(s).astype(np.float32)
             for s in [(3,), (2, 2), ()]]
    if trial % 3:
      which = trial % len(grads)
      bad = [NAN, INF, -INF][trial % 3]
      grads[which] = np.array(grads[which])
      grads[which].flat[trial % grads[which].size] = bad
    tf_grads = [tf.constant(g) for g in grads] + [None]
    want = all(np.all(np.isfinite(g)) for g in grads)
    got = K.all_finite(tf_grads)
    assert got.dtype == tf.bool and bool(got.numpy()) == want, trial


def test_next_loss_scale_vs_reference():
  for seed, growth_steps in [(s, g) for s in SEEDS for g in (1, 2, 3, 2000)]:
    scale_t, steps_t = tf.constant(2.0**15), tf.constant(0, tf.int64)
    scale, steps = 2.0**15, 0
    for i, finite in enumerate(finite_pattern(seed, 25)):
      scale_t, steps_t = K.next_loss_scale(scale_t, steps_t, tf.constant(finite),
                                           growth_steps)
      scale, steps = py_next_loss_scale(scale, steps, finite, growth_steps)
      msg = f"seed={seed} step={i} growth={growth_steps}"
      assert scale_t.numpy() == scale and steps_t.numpy() == steps, msg
      assert scale_t.dtype == tf.float32 and steps_t.dtype == tf.int64, msg


def test_next_loss_scale_explicit_transitions():
  S = tf.constant(8.0)
  f = lambda s, ok: [x.numpy() for x in K.next_loss_scale(
      S, tf.constant(s), tf.constant(ok), 3)]
  assert f(0, True) == [8.0, 1]
  assert f(1, True) == [8.0, 2]
  assert f(2, True) == [16.0, 0]   # growth_steps - 1 good steps -> double
  assert f(2, False) == [4.0, 0]
  assert f(0, False) == [4.0, 0]


# ----------------------------------------------------------------------------
# Bit-identical against keras.optimizers.LossScaleOptimizer
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("growth_steps", [1, 2, 3])
def test_drive_real_loss_scale_optimizer(growth_steps):
  """Same gradients into LSO.apply() and into the kernels: same state."""
  for seed in SEEDS:
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(3,), (2, 2)]]
    variables = [keras.Variable(v) for v in init]
    lr = 0.1
    lso = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(learning_rate=lr), initial_scale=2.0**10,
        dynamic_growth_steps=growth_steps)

    # kernel-side state
    scale = tf.constant(2.0**10)
    good = tf.constant(0, tf.int64)
    weights = [tf.constant(v) for v in init]
    applied = 0
    for i, finite in enumerate(finite_pattern(seed + 10, 12)):
      grads = [tf.constant(rng.standard_normal(v.shape).astype(np.float32) *
                           float(scale.numpy())) for v in init]
      if not finite:
        g = grads[i % 2].numpy()
        g.flat[0] = [NAN, INF, -INF][i % 3]
        grads[i % 2] = tf.constant(g)
      msg = f"seed={seed} step={i} finite={finite}"

      # scale_loss and the finite check, before the step
      loss = tf.constant(rng.uniform(0, 3), tf.float32)
      np.testing.assert_array_equal(K.scale_loss(loss, scale).numpy(),
                                    lso.scale_loss(loss).numpy(), err_msg=msg)
      ok = K.all_finite(grads)
      assert bool(ok.numpy()) == bool(lso.check_finite(grads).numpy()) == finite

      lso.apply(grads, variables)

      if finite:  # the update uses the scale *before* this step's change
        unscaled = K.unscale_gradients(grads, scale)
        lr32 = tf.constant(lr, tf.float32)
        weights = [w - g * lr32 for w, g in zip(weights, unscaled)]
        applied += 1
      scale, good = K.next_loss_scale(scale, good, ok, growth_steps)

      np.testing.assert_array_equal(scale.numpy(), lso.dynamic_scale.numpy(),
                                    err_msg=msg)
      assert good.numpy() == lso.step_counter.numpy(), msg
      for w, v in zip(weights, variables):
        np.testing.assert_array_equal(w.numpy(), v.numpy(), err_msg=msg)
      # a skipped step does not advance `iterations`
      assert lso.inner_optimizer.iterations.numpy() == applied, msg


def test_all_finite_bitwise_vs_keras_check_finite():
  lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
  cases = [
      [tf.constant([1.0, 2.0]), None, tf.constant(3.0)],
      [tf.constant([1.0, NAN]), tf.constant(3.0)],
      [tf.constant([[1.0], [-INF]])],
      [tf.constant(np.float32(3.4e38)), tf.constant([np.float32(1e-45)])],
  ]
  for grads in cases:
    assert (K.all_finite(grads).numpy() ==
            lso.check_finite(grads).numpy()), grads


def test_all_finite_without_any_gradient_like_keras():
  lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
  for grads in ([None], [None, None], []):
    assert bool(lso.check_finite(grads).numpy()) is True
    got = K.all_finite(grads)
    assert got.dtype == tf.bool and bool(got.numpy()) is True


def test_unscale_half_precision_gradients_like_keras():
  scale = tf.constant(4.0)
  for dtype in (tf.float16, tf.bfloat16):
    g = tf.constant([1.0, 2.0, 3.0], dtype)
    want = keras.ops.divide(g, scale)  # what LossScaleOptimizer computes
    got = K.unscale_gradients([g], scale)[0]
    assert got.dtype == want.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_scale_half_precision_loss_like_keras():
  scale = tf.constant(4.0)
  for dtype in (tf.float16, tf.bfloat16):
    loss = tf.constant(1.5, dtype)
    want = keras.ops.multiply(loss, scale)  # LossScaleOptimizer.scale_loss
    got = K.scale_loss(loss, scale)
    assert got.dtype == want.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())


# ----------------------------------------------------------------------------
# XLA
# ----------------------------------------------------------------------------


def test_next_loss_scale_and_all_finite_xla_exact():
  step = xla(lambda s, n, f: K.next_loss_scale(s, n, f, 3))
  finite = xla(lambda a, b: K.all_finite([a, b]))
  scale_e = scale_x = tf.constant(2.0**15)
  good_e = good_x = tf.constant(0, tf.int64)
  for i, ok in enumerate(finite_pattern(4, 20)):
    a = tf.constant([1.0, 2.0])
    b = tf.constant([3.0, NAN if not ok else 4.0])
    fe, fx = K.all_finite([a, b]), finite(a, b)
    assert bool(fe.numpy()) == bool(fx.numpy()) == ok, i
    scale_e, good_e = K.next_loss_scale(scale_e, good_e, fe, 3)
    scale_x, good_x = step(scale_x, good_x, fx)
    # selections and exact power-of-two products only: bitwise under XLA.
    assert scale_e.numpy() == scale_x.numpy() and good_e.numpy() == good_x.numpy()


def test_scale_unscale_xla_vs_eager():
  rng = np.random.default_rng(5)
  grads = [tf.constant(rng.standard_normal(s).astype(np.float32))
           for s in [(4,), (3, 2)]]
  loss = tf.constant(1.2345)
  for s in (2.0**12, 3.7):
    scale = tf.constant(s)
    un = xla(lambda a, b, sc: K.unscale_gradients([a, b], sc))(*grads, scale)
    for x, e in zip(un, K.unscale_gradients(grads, scale)):
      # XLA's CPU backend may lower x / s to x * (1/s) for a constant s (1
      # extra rounding); exact for a power of two. Allow 1e-6 relative.
      np.testing.assert_allclose(x.numpy(), e.numpy(), rtol=1e-6, atol=0)
    sl = xla(K.scale_loss)(loss, scale)
    np.testing.assert_array_equal(sl.numpy(), K.scale_loss(loss, scale).numpy())
