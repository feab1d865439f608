"""Accumulator updates behind the reported `loss` and the `<output>_loss` values.

Pure functions from (total, count, new value, weight) to the new (total,
count). The trainer's metrics stage assigns the results to the Keras metric
variables, so `Model.metrics` and callbacks read the same state as under
`Model.fit`.

A Keras `Mean` keeps float32 `total` and `count` and reports total / count
(`divide_no_nan`). What differs between the trackers is the weight:

  * the `loss` tracker weights each batch by its dynamic size n_b:
      total += L_b * n_b, count += n_b  =>  loss = sum_b n_b L_b / sum_b n_b;
  * a `<output>_loss` tracker weights each batch by the *static* batch
    dimension of that output, or by 1 when it is unknown (a dataset whose last
    batch is partial), which makes it a per-batch mean;
  * a scalar `Mean` updated in a layer's `call()` weights every batch by 1.

NaN / Inf: no special handling; a non-finite value makes `total` non-finite
for the rest of the epoch, as in Keras.
"""

import tensorflow as tf


def weighted_mean_update(total, count, value, weight):
  """Returns (total + sum(value * weight), count + sum(weight)) in `total`'s dtype.

  `weight` is broadcast to `value`'s shape first, so a scalar weight counts
  once per element; for the scalar values of the trackers this is
  (total + value * weight, count + weight). The op sequence (broadcast,
  multiply, two sums) is the one `keras.metrics.Mean.update_state` uses.
  """
  dtype = total.dtype
  value = tf.cast(value, dtype)
  weight = tf.broadcast_to(tf.cast(weight, dtype), tf.shape(value))
  return total + tf.reduce_sum(value * weight), count + tf.reduce_sum(weight)


def mean_result(total, count):
  """total / count, and 0 when nothing has been counted yet."""
  return tf.math.divide_no_nan(total, tf.cast(count, total.dtype))


def static_batch_weight(tensor):
  """The weight of a `<output>_loss` update: the static batch size, else 1."""
  size = tensor.shape[0] if tensor.shape.rank else None
  return 1 if size is None else size
