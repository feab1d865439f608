"""Tests for kernels/accumulation.py.

1. float64 NumPy references (update-step schedule, accumulated mean, EMA);
2. bit for bit against a real Keras optimizer driven by `apply()`:
   `SGD(gradient_accumulation_steps=k)` (accumulators, variables, iterations,
   also with clipping after the averaging) and `SGD(use_ema=True)` (the moving
   averages), and both together;
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

from kernels import accumulation as K  # noqa: E402
from kernels import clipping  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
SEEDS = (0, 1, 2)
SHAPES = [(3,), (2, 2)]


def xla(fn):
  return tf.function(fn, jit_compile=True, autograph=False)


def rand_grads(rng, shapes=SHAPES, scale=1.0):
  return [tf.constant((scale * rng.standard_normal(s)).astype(np.float32))
          for s in shapes]


# ----------------------------------------------------------------------------
# float64 NumPy references
# ----------------------------------------------------------------------------


def test_is_update_step_vs_python():
  """Update on micro-step m (0-based count before it) iff (m + 1) % k == 0."""
  for k in (1, 2, 3, 5):
    for m in range(12):
      want = (m + 1) % k == 0
      assert bool(K.is_update_step(m, k).numpy()) == want, (k, m)
      assert bool(K.is_update_step(tf.constant(m, tf.int64), k).numpy()) == want


def test_accumulated_mean_is_mean_of_micro_batches_vs_numpy():
  """After k micro-steps the update gradient is (1/k) sum_j g_j."""
  for seed, k in [(s, k) for s in SEEDS for k in (2, 3, 4)]:
    rng = np.random.default_rng(seed)
    micro = [rand_grads(rng) + [None] for _ in range(k)]
    acc = [tf.zeros(s) for s in SHAPES] + [None]
    for j in range(k - 1):
      acc = K.accumulate(micro[j], acc)
    assert acc[-1] is None
    mean = K.accumulated_mean(micro[-1], acc, k)
    assert mean[-1] is None
    for i in range(len(SHAPES)):
      ref = np.mean([m[i].numpy().astype(np.float64) for m in micro], axis=0)
      scale = np.mean([np.abs(m[i].numpy().astype(np.float64)) for m in micro],
                      axis=0)
      # k-1 additions and a division: error <= k eps * mean(|g_j|) (an
      # absolute bound, as the signed gradients can cancel).
      np.testing.assert_array_less(np.abs(mean[i].numpy() - ref),
                                   (k + 1) * EPS32 * scale + 1e-30,
                                   err_msg=f"seed={seed} k={k} var={i}")


def test_accumulate_and_accumulated_mean_elementwise_vs_numpy():
  rng = np.random.default_rng(3)
  g = rand_grads(rng)
  a = rand_grads(rng)
  for got, x, y in zip(K.accumulate(g, a), g, a):
    # one float32 addition: exactly the rounded float64 sum
    np.testing.assert_array_equal(
        got.numpy(), (x.numpy().astype(np.float64) +
                      y.numpy().astype(np.float64)).astype(np.float32))
  for got, x, y in zip(K.accumulated_mean(g, a, 4), g, a):
    # (x + y) / 4: the division by a power of two is exact
    np.testing.assert_array_equal(
        got.numpy(), (x.numpy().astype(np.float64) +
                      y.numpy().astype(np.float64)).astype(np.float32) / 4)
  for got, x, y in zip(K.accumulated_mean(g, a, 3), g, a):
    ref = (x.numpy().astype(np.float64) + y.numpy().astype(np.float64)) / 3
    scale = (np.abs(x.numpy()) + np.abs(y.numpy())) / 3
    np.testing.assert_array_less(np.abs(got.numpy() - ref),
                                 2 * EPS32 * scale + 1e-30)


def test_ema_vs_numpy():
  """avg_t = m_t avg_{t-1} + (1 - m_t) w_t, m_t = 0 if iterations == 0 else m."""
  for seed in SEEDS:
    rng = np.random.default_rng(seed)
    for momentum in (0.9, 0.99, 0.5):
      avg = tf.constant(rng.standard_normal(4).astype(np.float32))
      ref = None
      scale = 0.0
      for it in range(6):
        w = rng.standard_normal(4).astype(np.float32)
        scale = max(scale, float(np.max(np.abs(w))))
        m = K.ema_momentum(tf.constant(it, tf.int64), momentum, tf.float32)
        assert m.numpy() == (0.0 if it == 0 else np.float32(momentum))
        avg = K.ema_update(avg, tf.constant(w), m)
        m64 = 0.0 if it == 0 else momentum
        ref = w.astype(np.float64) if ref is None else (
            m64 * ref + (1 - m64) * w.astype(np.float64))
        if it == 0:
          # m = 0: 0 * avg + 1 * w is exact.
          np.testing.assert_array_equal(avg.numpy(), w)
        else:
          # Each step adds <= ~4 roundings of terms bounded by max|w| (three
          # for m*a + (1-m)*w, one for fl32(m) vs m); the convex combination
          # does not amplify earlier errors. Absolute, as a and w can cancel.
          np.testing.assert_allclose(avg.numpy(), ref, rtol=0,
                                     atol=4 * it * EPS32 * scale,
                                     err_msg=f"seed={seed} m={momentum}")


# ----------------------------------------------------------------------------
# Bit-identical against Keras optimizers
# ----------------------------------------------------------------------------


def _sgd_expected(weights, grads, lr):
  """SGD without momentum, as Keras does it: w - g * cast(lr, float32)."""
  lr32 = tf.constant(lr, tf.float32)
  return [w - g * lr32 for w, g in zip(weights, grads)]


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("clip", [None, ("clipnorm", 0.5),
                                  ("global_clipnorm", 0.7)],
                         ids=["noclip", "clipnorm", "global"])
def test_gradient_accumulation_bitwise_vs_keras_sgd(k, clip):
  for seed in SEEDS[:2]:
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    variables = [keras.Variable(v) for v in init]
    lr = 0.1
    clip_kw = {} if clip is None else {clip[0]: clip[1]}
    opt = keras.optimizers.SGD(learning_rate=lr, gradient_accumulation_steps=k,
                               **clip_kw)
    weights = [tf.constant(v) for v in init]
    acc = [tf.zeros(s) for s in SHAPES]
    for micro_step in range(2 * k + 1):
      grads = rand_grads(rng, scale=2.0)
      msg = f"seed={seed} k={k} micro_step={micro_step} clip={clip}"
      update = bool(K.is_update_step(tf.constant(micro_step, tf.int64),
                                     k).numpy())
      assert update == ((micro_step + 1) % k == 0), msg
      opt.apply(grads, variables)
      if update:
        mean = K.accumulated_mean(grads, acc, k)
        mean = clipping.clip_gradients(mean, **clip_kw)  # clip after averaging
        weights = _sgd_expected(weights, mean, lr)
        acc = [tf.zeros_like(a) for a in acc]
      else:
        acc = K.accumulate(grads, acc)
      for a, ka in zip(acc, opt._accumulated_gradients):
        np.testing.assert_array_equal(a.numpy(), ka.numpy(), err_msg=msg)
      for w, v in zip(weights, variables):
        np.testing.assert_array_equal(w.numpy(), v.numpy(), err_msg=msg)
      assert opt._iterations.numpy() == micro_step + 1, msg


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_ema_bitwise_vs_keras_sgd(momentum):
  for seed in SEEDS:
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    variables = [keras.Variable(v) for v in init]
    lr = 0.05
    opt = keras.optimizers.SGD(learning_rate=lr, use_ema=True,
                               ema_momentum=momentum)
    weights = [tf.constant(v) for v in init]
    averages = None
    for step in range(4):
      grads = rand_grads(rng)
      iterations_before = opt.iterations.numpy()
      opt.apply(grads, variables)
      weights = _sgd_expected(weights, grads, lr)
      m = K.ema_momentum(tf.constant(iterations_before), momentum, tf.float32)
      if averages is None:
        # m = 0 on the first step: 0 * avg + 1 * w == w for any finite
        # starting average, so the kernel side may start from zeros.
        averages = [tf.zeros_like(w) for w in weights]
      averages = [K.ema_update(a, w, m) for a, w in zip(averages, weights)]
      msg = f"seed={seed} m={momentum} step={step}"
      for a, ka in zip(averages, opt._model_variables_moving_average):
        np.testing.assert_array_equal(a.numpy(), ka.numpy(), err_msg=msg)
      if step == 0:  # the average starts at the first updated weights
        for a, w in zip(averages, weights):
          np.testing.assert_array_equal(a.numpy(), w.numpy(), err_msg=msg)


def test_ema_with_accumulation_bitwise_vs_keras_sgd():
  """EMA runs every micro-step; its `iterations` is micro_steps // k."""
  k, momentum, lr = 2, 0.9, 0.1
  rng = np.random.default_rng(21)
  init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
  variables = [keras.Variable(v) for v in init]
  opt = keras.optimizers.SGD(learning_rate=lr, gradient_accumulation_steps=k,
                             use_ema=True, ema_momentum=momentum)
  weights = [tf.constant(v) for v in init]
  acc = [tf.zeros(s) for s in SHAPES]
  averages = [tf.zeros(s) for s in SHAPES]
  raw_momenta = []
  for micro_step in range(6):
    grads = rand_grads(rng)
    assert opt.iterations.numpy() == micro_step // k
    opt.apply(grads, variables)
    if K.is_update_step(micro_step, k):
      weights = _sgd_expected(weights, K.accumulated_mean(grads, acc, k), lr)
      acc = [tf.zeros_like(a) for a in acc]
    else:
      acc = K.accumulate(grads, acc)
    m = K.ema_momentum(tf.constant(micro_step // k, tf.int64), momentum,
                       tf.float32)
    raw_momenta.append(K.ema_momentum(micro_step, momentum, tf.float32).numpy())
    averages = [K.ema_update(a, w, m) for a, w in zip(averages, weights)]
    for a, ka in zip(averages, opt._model_variables_moving_average):
      np.testing.assert_array_equal(a.numpy(), ka.numpy(),
                                    err_msg=f"micro_step={micro_step}")
  # The trainer must pass the *accumulated* iterations (micro_steps // k):
  # with the raw micro-step count the momentum is already m on micro-step 1.
  assert raw_momenta[1] != 0.0


# ----------------------------------------------------------------------------
# XLA
# ----------------------------------------------------------------------------


def test_accumulation_xla_vs_eager():
  rng = np.random.default_rng(6)
  g = rand_grads(rng)
  a = rand_grads(rng)

  acc_fn = lambda g0, g1, a0, a1: K.accumulate([g0, g1], [a0, a1])
  mean_fn = lambda g0, g1, a0, a1: K.accumulated_mean([g0, g1], [a0, a1], 3)
  for fn in (acc_fn, mean_fn):
    for x, e in zip(xla(fn)(*g, *a), fn(*g, *a)):
      # one add (and one divide by 3): XLA keeps IEEE add/div on CPU but may
      # turn /3 into *fl(1/3); allow 1e-6 relative (a couple of ulps).
      np.testing.assert_allclose(x.numpy(), e.numpy(), rtol=1e-6, atol=0)

  upd = xla(lambda m: K.is_update_step(m, 3))
  for m in range(7):
    assert bool(upd(tf.constant(m, tf.int64)).numpy()) == ((m + 1) % 3 == 0)


def test_ema_xla_vs_eager():
  rng = np.random.default_rng(7)
  avg = tf.constant(rng.standard_normal(5).astype(np.float32))
  w = tf.constant(rng.standard_normal(5).astype(np.float32))

  def fn(it, a, v):
    return K.ema_update(a, v, K.ema_momentum(it, 0.99, tf.float32))

  for it in (0, 1, 7):
    it = tf.constant(it, tf.int64)
    # m*a + (1-m)*v may be contracted to an FMA by XLA's CPU backend (one
    # rounding fewer); allow 1e-6 relative plus an absolute eps for the
    # cancelling sum of two signed terms.
    np.testing.assert_allclose(xla(fn)(it, avg, w).numpy(),
                               fn(it, avg, w).numpy(), rtol=1e-6,
                               atol=4 * EPS32)
