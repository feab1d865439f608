"""Tests for kernels/metric_updates.py.

1. float64 NumPy reference of the running weighted mean;
2. bit for bit against `keras.metrics.Mean().update_state(value, sample_weight=n)`
   (its `total` and `count` variables, and `result()`), including the two ways
   Keras weights a batch: the `loss` tracker (dynamic `tf.shape(x)[0]`) and an
   `<output>_loss` tracker (static `y_pred.shape[0]`, None -> weight 1);
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

from kernels import metric_updates as K  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
SEEDS = (0, 1, 2, 3, 4)


def xla(fn):
  return tf.function(fn, jit_compile=True, autograph=False)


def batches(seed, n_batches=6, int_weights=True):
  """Per-batch losses L_b >= 0 and weights n_b (batch sizes, or floats)."""
  rng = np.random.default_rng(seed)
  values = rng.uniform(0.0, 3.0, n_batches).astype(np.float32)
  if int_weights:
    weights = rng.integers(1, 65, n_batches)
    weights[-1] = rng.integers(1, 8)  # a partial last batch
  else:
    weights = rng.uniform(0.0, 2.0, n_batches).astype(np.float32)
  return values, weights


def run_kernel(values, weights):
  total = tf.constant(0.0)
  count = tf.constant(0.0)
  history = []
  for v, w in zip(values, weights):
    total, count = K.weighted_mean_update(total, count, tf.constant(v), w)
    history.append((total.numpy(), count.numpy(),
                    K.mean_result(total, count).numpy()))
  return history


# ----------------------------------------------------------------------------
# float64 NumPy reference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("int_weights", [True, False], ids=["sizes", "floats"])
def test_running_weighted_mean_vs_numpy(int_weights):
  """total = sum_b n_b L_b, count = sum_b n_b, result = total / count."""
  for seed in SEEDS:
    values, weights = batches(seed, int_weights=int_weights)
    for b, (total, count, result) in enumerate(run_kernel(values, weights)):
      v = values[:b + 1].astype(np.float64)
      w = np.asarray(weights[:b + 1], np.float64)
      msg = f"seed={seed} batch={b}"
      # b+1 non-negative products and sums: one rounding each, so the
      # accumulated relative error is at most ~2(b+1) eps; the division adds 1.
      np.testing.assert_allclose(total, np.sum(v * w),
                                 rtol=(2 * b + 3) * EPS32, atol=0, err_msg=msg)
      if int_weights:
        assert count == w.sum(), msg  # small integers are exact in float32
      else:
        np.testing.assert_allclose(count, w.sum(), rtol=(b + 2) * EPS32,
                                   atol=0, err_msg=msg)
      np.testing.assert_allclose(result, np.sum(v * w) / w.sum(),
                                 rtol=(3 * b + 6) * EPS32, atol=0, err_msg=msg)


def test_mean_result_empty_is_zero_and_dtype():
  assert K.mean_result(tf.constant(0.0), tf.constant(0.0)).numpy() == 0.0
  # count of another dtype is cast to total's dtype.
  r = K.mean_result(tf.constant(7.5), tf.constant(3, tf.int32))
  assert r.dtype == tf.float32 and r.numpy() == np.float32(7.5) / np.float32(3)


def test_weighted_mean_update_casts_to_total_dtype():
  total, count = K.weighted_mean_update(tf.constant(1.0), tf.constant(2.0),
                                        tf.constant(0.5, tf.float64),
                                        tf.constant(4, tf.int32))
  assert total.dtype == count.dtype == tf.float32
  assert total.numpy() == 3.0 and count.numpy() == 6.0


def test_static_batch_weight():
  assert K.static_batch_weight(tf.zeros((5, 3))) == 5
  assert K.static_batch_weight(tf.zeros((1,))) == 1
  assert K.static_batch_weight(tf.constant(2.0)) == 1  # rank 0
  seen = {}

  @tf.function(input_signature=[tf.TensorSpec([None, 3])])
  def unknown_batch(x):
    seen["batch"] = K.static_batch_weight(x)
    return x

  @tf.function(input_signature=[tf.TensorSpec(None)])
  def unknown_rank(x):
    seen["rank"] = K.static_batch_weight(x)
    return x

  unknown_batch.get_concrete_function()
  unknown_rank.get_concrete_function()
  assert seen == {"batch": 1, "rank": 1}


# ----------------------------------------------------------------------------
# Bit-identical against keras.metrics.Mean
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("int_weights", [True, False], ids=["sizes", "floats"])
def test_weighted_mean_update_bitwise_vs_keras_mean(int_weights):
  for seed in SEEDS:
    values, weights = batches(seed, int_weights=int_weights)
    metric = keras.metrics.Mean()
    for b, ((total, count, result), v, w) in enumerate(
        zip(run_kernel(values, weights), values, weights)):
      metric.update_state(tf.constant(v), sample_weight=w)
      msg = f"seed={seed} batch={b}"
      np.testing.assert_array_equal(total, metric.total.numpy(), err_msg=msg)
      np.testing.assert_array_equal(count, metric.count.numpy(), err_msg=msg)
      np.testing.assert_array_equal(result, metric.result().numpy(),
                                    err_msg=msg)


def test_loss_tracker_path_bitwise_vs_keras():
  """`loss` tracker: sample_weight = tf.shape(x)[0], an int32 tensor."""
  metric = keras.metrics.Mean()

  @tf.function
  def keras_step(x, loss):
    metric.update_state(loss, sample_weight=tf.shape(x)[0])

  @tf.function
  def kernel_step(total, count, x, loss):
    return K.weighted_mean_update(total, count, loss, tf.shape(x)[0])

  total, count = tf.constant(0.0), tf.constant(0.0)
  rng = np.random.default_rng(7)
  for batch in (32, 32, 17, 5):
    x = tf.zeros((batch, 2))
    loss = tf.constant(rng.uniform(0, 2), tf.float32)
    keras_step(x, loss)
    total, count = kernel_step(total, count, x, loss)
    np.testing.assert_array_equal(total.numpy(), metric.total.numpy())
    np.testing.assert_array_equal(count.numpy(), metric.count.numpy())
    np.testing.assert_array_equal(K.mean_result(total, count).numpy(),
                                  metric.result().numpy())


def test_output_loss_tracker_path_bitwise_vs_keras():
  """`<output>_loss`: Keras passes sample_weight=y_pred.shape[0] (static).

  With an unknown batch dimension that is None, which Keras's Mean counts as
  1 per update: the kernel's static_batch_weight must give the same state.
  """
  for spec_batch in (None, 6):
    metric = keras.metrics.Mean()
    spec = [tf.TensorSpec([spec_batch, 3]), tf.TensorSpec([])]

    @tf.function(input_signature=spec)
    def keras_step(y_pred, value):
      metric.update_state(value, sample_weight=y_pred.shape[0])

    @tf.function(input_signature=[tf.TensorSpec([]), tf.TensorSpec([])] + spec)
    def kernel_step(total, count, y_pred, value):
      return K.weighted_mean_update(total, count, value,
                                    K.static_batch_weight(y_pred))

    total, count = tf.constant(0.0), tf.constant(0.0)
    rng = np.random.default_rng(8)
    for _ in range(4):
      y_pred = tf.zeros((6, 3))
      value = tf.constant(rng.uniform(0, 2), tf.float32)
      keras_step(y_pred, value)
      total, count = kernel_step(total, count, y_pred, value)
      msg = f"spec_batch={spec_batch}"
      np.testing.assert_array_equal(total.numpy(), metric.total.numpy(),
                                    err_msg=msg)
      np.testing.assert_array_equal(count.numpy(), metric.count.numpy(),
                                    err_msg=msg)
    # 4 updates: weight 1 each when unknown, 6 each when static.
    assert count.numpy() == (4.0 if spec_batch is None else 24.0)


def test_scalar_mean_in_call_weighted_by_one_like_keras():
  """A `Mean` updated without sample_weight on a scalar counts 1 per batch."""
  metric = keras.metrics.Mean()
  total, count = tf.constant(0.0), tf.constant(0.0)
  for v in np.random.default_rng(3).uniform(-1, 1, 5).astype(np.float32):
    metric.update_state(tf.constant(v))
    total, count = K.weighted_mean_update(total, count, tf.constant(v), 1)
    np.testing.assert_array_equal(total.numpy(), metric.total.numpy())
    np.testing.assert_array_equal(count.numpy(), metric.count.numpy())


def test_non_finite_value_poisons_total_like_keras():
  """No special handling: Inf/NaN make `total` non-finite for the epoch."""
  for bad, expect in ((np.inf, np.isposinf), (np.nan, np.isnan)):
    metric = keras.metrics.Mean()
    total, count = tf.constant(0.0), tf.constant(0.0)
    for v, w in ((1.0, 4), (bad, 4), (2.0, 4), (0.5, 0)):
      metric.update_state(tf.constant(v), sample_weight=w)
      total, count = K.weighted_mean_update(total, count, tf.constant(v), w)
    assert expect(total.numpy()) and expect(metric.total.numpy())
    assert count.numpy() == metric.count.numpy() == 12.0
    r = K.mean_result(total, count).numpy()
    np.testing.assert_array_equal(r, metric.result().numpy())
    assert not np.isfinite(r)


# ----------------------------------------------------------------------------
# XLA
# ----------------------------------------------------------------------------


def test_metric_updates_xla_vs_eager():
  values, weights = batches(11, int_weights=False)

  def step(total, count, v, w):
    total, count = K.weighted_mean_update(total, count, v, w)
    return total, count, K.mean_result(total, count)

  compiled = xla(step)
  te = ce = tx = cx = tf.constant(0.0)
  for v, w in zip(values, weights):
    te, ce, re = step(te, ce, tf.constant(v), tf.constant(w))
    tx, cx, rx = compiled(tx, cx, tf.constant(v), tf.constant(w))
    # total + v*w may be contracted into one FMA by XLA's CPU backend (one
    # rounding instead of two), and the division may be fused: ~1 ulp per
    # step, so 1e-6 relative over 6 steps.
    for a, b in ((tx, te), (cx, ce), (rx, re)):
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=0)
  # empty mean under XLA is 0 too (divide_no_nan)
  assert xla(K.mean_result)(tf.constant(0.0), tf.constant(0.0)).numpy() == 0.0
