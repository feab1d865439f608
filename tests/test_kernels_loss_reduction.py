"""Tests for kernels/loss_reduction.py.

Three checks per kernel:
  1. against a float64 NumPy reference of the documented formula, with a
     tolerance derived from float32 rounding;
  2. bit for bit against Keras 3 (`keras.src.losses.loss`, real `keras.losses`
     objects, the class-weight helpers of the data adapters);
  3. under `tf.function(jit_compile=True)` against eager.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.backend import set_keras_mask  # noqa: E402
from keras.src.losses import loss as keras_loss  # noqa: E402
from keras.src.trainers.data_adapters import data_adapter_utils  # noqa: E402
from keras.src.trainers.data_adapters.tf_dataset_adapter import \
    make_class_weight_map_fn  # noqa: E402

from kernels import loss_reduction as K  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
SEEDS = (0, 1, 2)
REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight",
              "none")

# name -> (shape of the per-sample loss values, shape of sample_weight or None)
LAYOUTS = {
    "n_w_n": ((8,), (8,)),
    "n1_w_n": ((6, 1), (6,)),        # weight gets a trailing axis
    "n_w_n1": ((6,), (6, 1)),        # values get a trailing axis
    "nt_w_n1": ((4, 5), (4, 1)),     # same rank, broadcast over t
    "nt_w_nt": ((3, 5), (3, 5)),
    "nt_w_none": ((4, 3), None),
    "n_w_scalar": ((7,), ()),
}


def xla(fn):
  return tf.function(fn, jit_compile=True, autograph=False)


def make_inputs(seed, vshape, wshape, with_mask):
  """Non-negative losses (as real losses are), weights in [0, 3) with a zero."""
  rng = np.random.default_rng(seed)
  values = rng.uniform(0.0, 2.0, vshape).astype(np.float32)
  sw = None
  if wshape is not None:
    sw = rng.uniform(0.0, 3.0, wshape).astype(np.float32)
    if sw.size > 1:
      sw.flat[0] = 0.0
  mask = None
  if with_mask:
    mask = rng.random(vshape) < 0.6
    mask.flat[-1] = True  # at least one valid entry
    mask.flat[0] = False  # at least one masked entry
  return values, sw, mask


def tf_or_none(x, dtype=None):
  return None if x is None else tf.constant(x, dtype=dtype)


# ----------------------------------------------------------------------------
# float64 NumPy reference
# ----------------------------------------------------------------------------


def np_match_ranks(a, b):
  """Keras's rank rule: reconcile a rank difference of one with a trailing 1."""
  if a.ndim == b.ndim + 1 and a.shape[-1] == 1:
    return (a, b[..., None]) if b.ndim == 1 else (a[..., 0], b)
  if b.ndim == a.ndim + 1 and b.shape[-1] == 1:
    return (a[..., None], b) if a.ndim == 1 else (a, b[..., 0])
  return a, b


def np_reduce(values, sw, mask, reduction, num_replicas=1):
  """float64 reference of the documented formula.

  w   = sw * m, with m = mask * (N_mask / valid) for "mean" and
        "sum_over_batch_size" (0 when valid == 0), m = mask otherwise;
  "none":                        v * w
  "sum":                         S = sum_i v_i w_i
  "sum_over_batch_size"/"mean":  S / n / R    (n = element count of v * w)
  "mean_with_sample_weight":     S / sum(w) / R   (0 when sum(w) == 0)
  """
  v = values.astype(np.float64)
  w = None if sw is None else np.asarray(sw, np.float64)
  if mask is not None:
    m = mask.astype(np.float64)
    if reduction in ("mean", "sum_over_batch_size"):
      valid = m.sum()
      m = m * (m.size / valid if valid else 0.0)
    if w is None:
      w = m
    else:
      m, w = np_match_ranks(m, w)
      w = w * m
  if w is not None:
    v, w = np_match_ranks(v, w)
    v = v * w
  if reduction == "none" or v.shape in ((), (0,)):
    return v
  total = v.sum()
  if reduction == "sum":
    return total
  if reduction == "mean_with_sample_weight" and w is not None:
    divisor = w.sum()
  else:
    divisor = v.size
  return (total / divisor if divisor else 0.0) / num_replicas


def reduction_rtol(n_elements):
  # Non-negative terms, so no cancellation: the float32 sum of n terms is off
  # by at most (n-1)*eps relative, the divisor sum(w) likewise, plus a few
  # single roundings (v*w, sw*mask_weight, total/valid, the division, 1/R).
  return (2 * n_elements + 10) * EPS32


# The conftest's per-test `clear_session()` costs ~0.08 s, so seeds and masks
# are looped inside a test rather than parametrized; `err_msg` names the case.


def _cases(layout):
  """All reductions x seeds x (no mask, mask) for one layout."""
  vshape, wshape = LAYOUTS[layout]
  for reduction in REDUCTIONS:
    for seed in SEEDS:
      for with_mask in (False, True):
        yield (f"{reduction} seed={seed} mask={with_mask}", reduction,
               make_inputs(seed, vshape, wshape, with_mask))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reduce_weighted_loss_vs_numpy(layout):
  for name, reduction, (values, sw, mask) in _cases(layout):
    got = K.reduce_weighted_loss(tf.constant(values), tf_or_none(sw),
                                 tf_or_none(mask), reduction).numpy()
    want = np_reduce(values, sw, mask, reduction)
    assert got.shape == np.shape(want), name
    if reduction == "none":
      # Each element is v * (sw * (N/valid)): at most three roundings.
      np.testing.assert_allclose(got, want, rtol=4 * EPS32, atol=0,
                                 err_msg=name)
    else:
      np.testing.assert_allclose(got, want, rtol=reduction_rtol(values.size),
                                 atol=0, err_msg=name)


def test_reduce_weighted_loss_replicas_vs_numpy():
  values, sw, mask = make_inputs(5, (6, 4), (6, 1), True)
  for num_replicas in (1, 2, 3, 7):
    for reduction in REDUCTIONS:
      got = K.reduce_weighted_loss(tf.constant(values), tf.constant(sw),
                                   tf.constant(mask), reduction,
                                   num_replicas=num_replicas).numpy()
      want = np_reduce(values, sw, mask, reduction, num_replicas)
      rtol = 4 * EPS32 if reduction == "none" else reduction_rtol(values.size)
      np.testing.assert_allclose(got, want, rtol=rtol, atol=0,
                                 err_msg=f"{reduction} R={num_replicas}")


def test_replica_scale_vs_numpy():
  for num_replicas in (2, 3, 7, 8, 12):
    x = np.random.default_rng(num_replicas).uniform(0.1, 5.0, ()).astype(
        np.float32)
    got = K.replica_scale(tf.constant(x), num_replicas).numpy()
    # x * fl32(1/R): two roundings at most.
    np.testing.assert_allclose(got, np.float64(x) / num_replicas,
                               rtol=2 * EPS32)
    # and exactly the float32 product Keras forms: x * cast(1.0 / R, float32)
    assert got == np.float32(x) * np.float32(1.0 / num_replicas)


def test_replica_scale_single_replica_adds_no_op():
  x = tf.constant(1.2345)
  assert K.replica_scale(x, 1) is x


def test_sum_loss_terms_vs_numpy():
  for seed in SEEDS:
    for n_terms in (1, 2, 3, 5):
      rng = np.random.default_rng(seed)
      terms = rng.uniform(0.0, 3.0, n_terms).astype(np.float32)
      got = K.sum_loss_terms([tf.constant(t) for t in terms]).numpy()
      # sum of k non-negative float32 terms: at most (k-1) roundings.
      np.testing.assert_allclose(got, terms.astype(np.float64).sum(),
                                 rtol=(n_terms - 1) * EPS32, atol=0)


MATCH_CASES = [((5, 1), (5,), True), ((5, 1), (5,), False), ((5,), (5, 1), True),
               ((5,), (5, 1), False), ((2, 3, 1), (2, 3), True),
               ((2, 3), (2, 3, 1), True), ((4, 3), (4,), True),
               ((4, 3), (4, 3), True), ((3,), (), True)]


def test_match_ranks_vs_numpy_and_keras():
  rng = np.random.default_rng(0)
  for vshape, wshape, expand in MATCH_CASES:
    name = f"{vshape} {wshape} expand={expand}"
    v = rng.standard_normal(vshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    got_v, got_w = K.match_ranks(tf.constant(v), tf.constant(w), expand)
    if expand:
      want_v, want_w = np_match_ranks(v, w)
      assert got_v.shape == want_v.shape and got_w.shape == want_w.shape, name
      np.testing.assert_array_equal(got_v.numpy(), want_v, err_msg=name)
      np.testing.assert_array_equal(got_w.numpy(), want_w, err_msg=name)
    kv, kw = keras_loss.squeeze_or_expand_to_same_rank(
        tf.constant(v), tf.constant(w), expand_rank_1=expand)
    assert got_v.shape == kv.shape and got_w.shape == kw.shape, name
    np.testing.assert_array_equal(got_v.numpy(), kv.numpy(), err_msg=name)
    np.testing.assert_array_equal(got_w.numpy(), kw.numpy(), err_msg=name)


# ----------------------------------------------------------------------------
# Bit-identical against Keras
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reduce_weighted_loss_bitwise_vs_keras(layout):
  for name, reduction, (values, sw, mask) in _cases(layout):
    got = K.reduce_weighted_loss(tf.constant(values), tf_or_none(sw),
                                 tf_or_none(mask), reduction)
    want = keras_loss.reduce_weighted_values(
        tf.constant(values), sample_weight=tf_or_none(sw),
        mask=tf_or_none(mask), reduction=reduction, dtype="float32")
    assert got.dtype == want.dtype and got.shape == want.shape, name
    np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=name)


def test_mask_to_weights_bitwise_vs_keras():
  rng = np.random.default_rng(3)
  mask = rng.random((4, 6)) < 0.5
  mask[0, 0] = True
  for reduction in REDUCTIONS:
    for sw in (None, rng.uniform(0, 2, (4, 1)).astype(np.float32),
               rng.uniform(0, 2, (4, 6)).astype(np.float32)):
      got = K.mask_to_weights(tf_or_none(sw), tf.constant(mask), tf.float32,
                              reduction)
      want = keras_loss.apply_mask(tf_or_none(sw), tf.constant(mask), "float32",
                                   reduction)
      np.testing.assert_array_equal(got.numpy(), want.numpy(),
                                    err_msg=f"{reduction} sw={sw is not None}")


def test_mask_to_weights_without_mask_returns_weights_unchanged():
  sw = tf.constant([1.0, 2.0])
  assert K.mask_to_weights(sw, None, tf.float32, "sum") is sw


class _FakeStrategy:

  def __init__(self, n):
    self.num_replicas_in_sync = n


def test_reduce_weighted_loss_replicas_bitwise_vs_keras(monkeypatch):
  # Keras reads R from tf.distribute.get_strategy() inside
  # scale_loss_for_distribution; a stand-in strategy avoids a real multi-
  # device setup.
  values, sw, mask = make_inputs(11, (5, 3), (5, 1), True)
  for num_replicas in (2, 3, 7):
    got = {r: K.reduce_weighted_loss(tf.constant(values), tf.constant(sw),
                                     tf.constant(mask), r,
                                     num_replicas=num_replicas)
           for r in REDUCTIONS}
    with monkeypatch.context() as patch:
      patch.setattr(tf.distribute, "get_strategy",
                    lambda: _FakeStrategy(num_replicas))
      for reduction in REDUCTIONS:
        want = keras_loss.reduce_weighted_values(
            tf.constant(values), sample_weight=tf.constant(sw),
            mask=tf.constant(mask), reduction=reduction, dtype="float32")
        np.testing.assert_array_equal(got[reduction].numpy(), want.numpy(),
                                      err_msg=f"{reduction} R={num_replicas}")


def _regression_data(rng, shape):
  return (rng.standard_normal(shape).astype(np.float32),
          rng.standard_normal(shape).astype(np.float32))


def _categorical_data(rng, shape):
  logits = rng.standard_normal(shape)
  y_pred = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(
      np.float32)
  y_true = np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1],
                                                            shape[:-1])]
  return y_true, y_pred


LOSS_CASES = {
    # name: (loss class, data maker, y shape, sample_weight shape, keras mask)
    "mse_flat": (keras.losses.MeanSquaredError, _regression_data, (8, 3), None,
                 False),
    "mse_flat_sw": (keras.losses.MeanSquaredError, _regression_data, (8, 3),
                    (8,), False),
    "mse_flat_sw_n1": (keras.losses.MeanSquaredError, _regression_data, (8, 3),
                       (8, 1), False),
    "mse_seq_mask": (keras.losses.MeanSquaredError, _regression_data, (4, 5, 3),
                     None, True),
    "mse_seq_sw_mask": (keras.losses.MeanSquaredError, _regression_data,
                        (4, 5, 3), (4, 5), True),
    "mae_seq_swn1_mask": (keras.losses.MeanAbsoluteError, _regression_data,
                          (4, 5, 2), (4, 1), True),
    "cce_flat_sw": (keras.losses.CategoricalCrossentropy, _categorical_data,
                    (9, 4), (9,), False),
    "cce_seq_mask": (keras.losses.CategoricalCrossentropy, _categorical_data,
                     (3, 6, 4), None, True),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_real_keras_loss_bitwise(case):
  """keras.losses.X(reduction)(y, y_hat, sw) == kernel(loss.call(y, y_hat))."""
  loss_cls, make_data, yshape, wshape, with_mask = LOSS_CASES[case]
  for seed in (0, 1):
    rng = np.random.default_rng(seed)
    y_true, y_pred = make_data(rng, yshape)
    sw = None if wshape is None else rng.uniform(0, 2, wshape).astype(
        np.float32)
    mask = None
    if with_mask:
      mask = rng.random(yshape[:-1]) < 0.6
      mask.flat[0] = True
    for reduction in REDUCTIONS:
      name = f"seed={seed} {reduction}"
      loss_obj = loss_cls(reduction=reduction)
      y_pred_keras = tf.constant(y_pred)
      if mask is not None:
        set_keras_mask(y_pred_keras, tf.constant(mask))
      want = loss_obj(tf.constant(y_true), y_pred_keras,
                      sample_weight=tf_or_none(sw))

      per_sample = loss_obj.call(tf.constant(y_true), tf.constant(y_pred))
      got = K.reduce_weighted_loss(per_sample, tf_or_none(sw),
                                   tf_or_none(mask), reduction)
      assert got.shape == want.shape, name
      np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=name)


def test_all_masked_gives_zero_like_keras():
  values = tf.constant([[1.0, 2.0], [3.0, 4.0]])
  mask = tf.zeros((2, 2), tf.bool)
  for reduction in ("sum_over_batch_size", "mean", "sum",
                    "mean_with_sample_weight"):
    got = K.reduce_weighted_loss(values, None, mask, reduction)
    want = keras_loss.reduce_weighted_values(values, mask=mask,
                                             reduction=reduction,
                                             dtype="float32")
    assert got.numpy() == 0.0, reduction
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_zero_weights_mean_with_sample_weight_gives_zero_like_keras():
  values = tf.constant([1.0, 2.0, 3.0])
  sw = tf.zeros((3,))
  got = K.reduce_weighted_loss(values, sw, None, "mean_with_sample_weight")
  want = keras_loss.reduce_weighted_values(values, sw,
                                           reduction="mean_with_sample_weight")
  assert got.numpy() == 0.0 and want.numpy() == 0.0


def test_empty_batch_like_keras():
  # NOTE: the docstring says an empty batch "gives 0". That holds for an empty
  # (0, k) batch, but a 1-D empty batch of shape (0,) is returned as the empty
  # tensor itself (Keras's `reduce_values` early return), not a scalar 0.
  for reduction in ("sum_over_batch_size", "mean_with_sample_weight", "sum"):
    got = K.reduce_weighted_loss(tf.zeros((0, 3)), tf.zeros((0, 3)),
                                 reduction=reduction)
    want = keras_loss.reduce_weighted_values(tf.zeros((0, 3)), tf.zeros((0, 3)),
                                             reduction=reduction)
    assert got.shape == () and got.numpy() == 0.0
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    got1 = K.reduce_weighted_loss(tf.zeros((0,)), reduction=reduction)
    want1 = keras_loss.reduce_weighted_values(tf.zeros((0,)),
                                              reduction=reduction)
    assert got1.shape == want1.shape == (0,)


def test_scalar_values_like_keras():
  # NOTE: the docstring says a scalar `values` "is returned unweighted and
  # unscaled". Unscaled yes (no division, no 1/R), but it *is* weighted:
  # Keras and the kernel multiply by the sample weight before the
  # scalar check (2 * 3 = 6), and a vector weight broadcasts it to (n,)
  # which is then reduced like any other loss.
  v = tf.constant(2.0)
  assert K.reduce_weighted_loss(v, num_replicas=4).numpy() == 2.0
  for sw, expected in ((None, 2.0), (tf.constant(3.0), 6.0),
                       (tf.constant([1.0, 3.0]), 4.0)):
    got = K.reduce_weighted_loss(v, sw)
    want = keras_loss.reduce_weighted_values(v, sw)
    assert got.numpy() == expected == want.numpy()


def test_nan_propagates_even_when_masked_like_keras():
  # "no special handling": 0 * NaN is NaN, so a masked-out NaN still poisons
  # the sum, in Keras and in the kernel.
  values = tf.constant([1.0, np.nan, 3.0])
  mask = tf.constant([True, False, True])
  got = K.reduce_weighted_loss(values, None, mask)
  want = keras_loss.reduce_weighted_values(values, mask=mask, dtype="float32")
  assert np.isnan(got.numpy()) and np.isnan(want.numpy())
  got = K.reduce_weighted_loss(tf.constant([1.0, np.inf]), None, None, "sum")
  assert got.numpy() == np.inf


def test_invalid_reduction_raises():
  with pytest.raises(ValueError):
    K.reduce_weighted_loss(tf.constant([1.0]), reduction="avg")


def test_sum_loss_terms_bitwise_vs_keras():
  # Keras's compute_loss: one term as is, else ops.sum(list_of_terms).
  # The association order matters: tf.reduce_sum adds up to 7 terms left to
  # right but vectorises longer ones, so 1 + 9 * 2^-24 is 1.0000005 there and
  # 1.0 for a left-to-right Python sum; the adversarial cases catch both a
  # reversed and a sequential order.
  tiny = np.float32(2.0**-24)
  adversarial = [[np.float32(1.0)] + [tiny] * 9, [tiny] * 2 + [np.float32(1.0)],
                 [np.float32(1.0)] + [tiny] * 2]
  for seed in SEEDS:
    for n_terms in (1, 2, 4, 7, 12):
      rng = np.random.default_rng(seed)
      terms = [tf.constant(t)
               for t in rng.uniform(0, 5, n_terms).astype(np.float32)]
      if seed == 0 and n_terms > 1:
        terms = [tf.constant(t) for t in adversarial[n_terms % 3]]
      got = K.sum_loss_terms(terms)
      if n_terms == 1:
        assert got is terms[0]
        continue
      np.testing.assert_array_equal(got.numpy(), keras.ops.sum(terms).numpy(),
                                    err_msg=f"seed={seed} n={n_terms}")


def test_sum_loss_terms_empty_raises():
  with pytest.raises(ValueError):
    K.sum_loss_terms([])


# ----------------------------------------------------------------------------
# class weights
# ----------------------------------------------------------------------------


def _labels(kind, rng, n=12, k=4):
  if kind == "int_n":
    return rng.integers(0, k, (n,)).astype(np.int32)
  if kind == "int_n1":
    return rng.integers(0, k, (n, 1)).astype(np.int64)
  if kind == "float_n1":  # binary/sparse labels stored as floats, incl. halves
    return np.array([0.0, 1.0, 0.5, 1.5, 2.5, 0.49, 0.51, 2.0, 3.0, 1.0, 0.0,
                     2.4])[:n, None].astype(np.float32)
  if kind == "float_n":
    return np.array([0.0, 1.0, 0.5, 1.5, 2.5, 0.49, 0.51, 2.0, 3.0, 1.0, 0.0,
                     2.4])[:n].astype(np.float32)
  if kind == "onehot":
    return np.eye(k, dtype=np.float32)[rng.integers(0, k, (n,))]
  if kind == "probs":
    p = rng.uniform(0, 1, (n, k)).astype(np.float32)
    return p / p.sum(-1, keepdims=True)
  raise ValueError(kind)


LABEL_KINDS = ["int_n", "int_n1", "float_n1", "float_n", "onehot", "probs"]


def _class_weight_dict(rng, k, missing):
  cw = {c: float(rng.uniform(0.1, 5.0)) for c in range(k)}
  for c in missing:
    del cw[c]
  return cw


def _table(cw, k):
  # Keras's own dict -> table rule (make_class_weight_map_fn): absent -> 1.0.
  return tf.constant([cw.get(c, 1.0) for c in range(k)], tf.float64)


@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_class_weights_vs_numpy_and_keras(kind):
  for seed in (0, 1):
    for missing in ((), (1,)):  # all classes in the dict / class 1 absent
      _check_class_weights(seed, kind, missing)


def _check_class_weights(seed, kind, missing):
  rng = np.random.default_rng(seed)
  k = 4
  y = _labels(kind, rng, k=k)
  cw = _class_weight_dict(rng, k, missing)
  got = K.class_weights_to_sample_weights(tf.constant(y), _table(cw, k))
  assert got.dtype == tf.float32 and got.shape == (y.shape[0],)

  # NumPy reference: class = argmax for (n, k>1), else round-half-to-even id.
  ids = (np.argmax(y, -1) if y.ndim == 2 and y.shape[1] > 1 else
         np.rint(y.reshape(-1)).astype(np.int64))
  want_np = np.array([cw.get(int(c), 1.0) for c in ids], np.float64)
  np.testing.assert_allclose(got.numpy(), want_np, rtol=EPS32 / 2, atol=0)

  # Keras, NumPy-array path (ArrayDataAdapter).
  want_keras = data_adapter_utils.class_weight_to_sample_weights(y, cw)
  np.testing.assert_array_equal(got.numpy(), want_keras)
  # Keras, tf.data path (TFDatasetAdapter): needs the max class present.
  if max(cw) == k - 1:
    _, _, want_ds = make_class_weight_map_fn(cw)(tf.zeros((y.shape[0], 1)),
                                                 tf.constant(y))
    np.testing.assert_array_equal(got.numpy(), want_ds.numpy())


# ----------------------------------------------------------------------------
# XLA
# ----------------------------------------------------------------------------


def test_reduce_weighted_loss_xla_vs_eager():
  for reduction, layout in [(r, l) for r in REDUCTIONS for l in
                            ("n_w_n", "nt_w_n1", "n_w_scalar", "nt_w_none")]:
    vshape, wshape = LAYOUTS[layout]
    for with_mask in (False, True):
      values, sw, mask = make_inputs(7, vshape, wshape, with_mask)

      def fn(v, s, m):
        return K.reduce_weighted_loss(v, s, m, reduction, num_replicas=3)

      args = (tf.constant(values), tf_or_none(sw), tf_or_none(mask))
      eager = fn(*args).numpy()
      compiled = xla(fn)(*args).numpy()
      # XLA may sum in another association order (vectorised/tree reduction)
      # and fuse the elementwise products; for non-negative terms a
      # re-association moves the result by at most ~(n-1) ulps relative,
      # hence max(1e-6, n*eps).
      np.testing.assert_allclose(compiled, eager,
                                 rtol=max(1e-6, values.size * EPS32), atol=0,
                                 err_msg=f"{reduction} {layout} "
                                 f"mask={with_mask}")


def test_sum_loss_terms_and_replica_scale_xla_vs_eager():
  terms = [tf.constant(v) for v in (0.25, 1.7, 3.1, 0.003)]

  def fn(*t):
    return K.replica_scale(K.sum_loss_terms(list(t)), 3)

  # A 4-term sum and one multiply: XLA may re-associate the sum (<= 3 ulps).
  np.testing.assert_allclose(xla(fn)(*terms).numpy(), fn(*terms).numpy(),
                             rtol=1e-6, atol=0)


def test_mask_to_weights_xla_vs_eager():
  rng = np.random.default_rng(2)
  mask = tf.constant(rng.random((5, 4)) < 0.5)
  sw = tf.constant(rng.uniform(0, 2, (5, 1)).astype(np.float32))
  fn = lambda s, m: K.mask_to_weights(s, m, tf.float32, "sum_over_batch_size")
  # total/valid and one product per element: XLA keeps IEEE division and
  # multiplication but may fuse them; allow ~1 ulp (1e-6 relative).
  np.testing.assert_allclose(xla(fn)(sw, mask).numpy(), fn(sw, mask).numpy(),
                             rtol=1e-6, atol=0)


def test_class_weights_xla_vs_eager():
  rng = np.random.default_rng(4)
  table = _table(_class_weight_dict(rng, 4, ()), 4)
  fn = K.class_weights_to_sample_weights
  for kind in LABEL_KINDS:
    y = tf.constant(_labels(kind, rng))
    # argmax/round/gather only select table entries: no arithmetic, so exact.
    np.testing.assert_array_equal(xla(fn)(y, table).numpy(),
                                  fn(y, table).numpy(), err_msg=kind)
