"""Loss weighting and reduction: per-sample loss values to one scalar.

Pure tensor functions, no Keras state, safe to trace under XLA. They reproduce
`keras/src/losses/loss.py` (`reduce_weighted_values`, `reduce_values`,
`apply_mask`, `squeeze_or_expand_to_same_rank`) op for op, because the order of
the floating-point operations decides whether the result is bit-identical to
`Model.fit`.

The formula for the default reduction `"sum_over_batch_size"` is

    C = (sum_i w_i * l_i / n) * (1 / R)

where `n` is the number of *elements* of the per-sample loss tensor (not the
sum of the weights), and `R` is the number of replicas in sync (the factor is
skipped when `R == 1`).
"""

import tensorflow as tf

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


def match_ranks(values, weights, expand_rank_1=True):
  """Squeezes or expands a trailing unit axis so two tensors have equal rank.

  Reproduces Keras's `squeeze_or_expand_to_same_rank`: only a difference of
  exactly one in rank, with a trailing dimension of 1, is reconciled.
  """
  v_rank, w_rank = len(values.shape), len(weights.shape)
  if v_rank == w_rank + 1 and values.shape[-1] == 1:
    if w_rank == 1 and expand_rank_1:
      weights = tf.expand_dims(weights, -1)
    else:
      values = tf.squeeze(values, -1)
  if w_rank == v_rank + 1 and weights.shape[-1] == 1:
    if v_rank == 1 and expand_rank_1:
      values = tf.expand_dims(values, -1)
    else:
      weights = tf.squeeze(weights, -1)
  return values, weights


def mask_to_weights(sample_weight, mask, dtype, reduction):
  """Folds a Keras mask into the sample weights.

  For the mean-style reductions, valid entries are up-weighted by
  `total / valid` so that dividing by the element count later gives the mean
  over the valid entries only (Keras's `apply_mask`). A mask with no valid
  entry gives weight 0 everywhere (`divide_no_nan`).
  """
  if mask is None:
    return sample_weight
  if reduction in ("mean", "sum_over_batch_size"):
    total = tf.cast(tf.reduce_prod(tf.shape(mask)), dtype)
    valid = tf.reduce_sum(tf.cast(mask, dtype))
    mask_weight = tf.math.divide_no_nan(total, valid)
    float_mask = tf.where(tf.cast(mask, tf.bool), mask_weight, tf.zeros((), dtype))
  else:
    float_mask = tf.cast(mask, dtype)
  if sample_weight is None:
    return float_mask
  sample_weight = tf.cast(sample_weight, dtype)
  float_mask, sample_weight = match_ranks(float_mask, sample_weight)
  return sample_weight * float_mask


def replica_scale(value, num_replicas):
  """Multiplies a loss term by 1/R, as Keras does to every term under R replicas.

  With `R == 1` no op is added, so the single-device graph is unchanged.
  """
  if num_replicas > 1:
    value = value * tf.cast(1.0 / num_replicas, value.dtype)
  return value


def reduce_weighted_loss(values, sample_weight=None, mask=None,
                         reduction="sum_over_batch_size", num_replicas=1):
  """Weights per-sample loss values and reduces them to a scalar.

  Args:
    values: per-sample (or per-element) loss values, already in the loss dtype.
    sample_weight: optional weights broadcastable to `values` after a trailing
      unit axis is squeezed or expanded.
    mask: optional boolean mask of `values`' shape (a Keras mask).
    reduction: one of `REDUCTIONS`. `"sum_over_batch_size"` and `"mean"` divide
      by the element count n; `"mean_with_sample_weight"` divides by sum(w);
      `"sum"` does not divide; `"none"`/`None` returns the weighted values.
    num_replicas: replicas in sync; mean-style reductions are scaled by 1/R.

  Returns:
    The reduced loss. A scalar `values` (a loss function that reduces by
    itself) is weighted (a weight vector broadcasts, then the result is
    summed and divided like any other) but, when it arrives as a scalar, it
    is returned without the 1/R factor, exactly as Keras does. A `(0,)` loss
    is returned as the empty tensor itself.

  NaN/Inf: no special handling; a non-finite value propagates into the sum.
  A zero divisor (an empty `(0, k)` batch, all weights zero with
  `"mean_with_sample_weight"`) gives 0, not NaN (`divide_no_nan`).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(
        f"`reduction` ({reduction!r}) must be one of {REDUCTIONS}.")
  dtype = values.dtype
  if sample_weight is not None:
    sample_weight = tf.cast(sample_weight, dtype)
  sample_weight = mask_to_weights(sample_weight, mask, dtype, reduction)
  if sample_weight is not None:
    sample_weight = tf.cast(sample_weight, dtype)
    values, sample_weight = match_ranks(values, sample_weight)
    values = values * sample_weight
  if reduction in (None, "none") or tuple(values.shape) in ((), (0,)):
    return values
  loss = tf.reduce_sum(values)
  if reduction == "sum":
    return loss
  if reduction == "mean_with_sample_weight" and sample_weight is not None:
    divisor = tf.cast(tf.reduce_sum(sample_weight), dtype)
  else:
    divisor = tf.cast(tf.reduce_prod(tf.shape(values)), dtype)
  loss = tf.math.divide_no_nan(loss, divisor)
  return replica_scale(loss, num_replicas)


def sum_loss_terms(terms):
  """Adds the compiled loss and the extra (`model.losses`) terms.

  One term is returned as is; several are summed by a single `reduce_sum`
  over their stack, which is the association order Keras uses.
  """
  if not terms:
    raise ValueError("`terms` is empty: there is no loss to sum.")
  if len(terms) == 1:
    return terms[0]
  return tf.reduce_sum(tf.stack(terms))


def class_weights_to_sample_weights(y, class_weight_table):
  """Looks up a per-sample weight for each label.

  Args:
    y: labels. Integer class ids of shape (n,) or (n, 1), or one-hot / one
      probability per class of shape (n, k>1), in which case the class is the
      argmax. A (n, 1) float target is rounded to the nearest class id (binary
      labels stored as floats).
    class_weight_table: 1-D float tensor; entry c is the weight of class c.

  Returns:
    Float32 weights of shape (n,).
  """
  if len(y.shape) >= 2 and y.shape[-1] is not None and y.shape[-1] > 1:
    ids = tf.argmax(y, axis=-1)
  else:
    ids = tf.reshape(y, [-1]) if len(y.shape) == 2 else y
    if ids.dtype.is_floating:
      ids = tf.round(ids)
    ids = tf.cast(ids, tf.int64)
  return tf.gather(tf.cast(class_weight_table, tf.float32), ids)
