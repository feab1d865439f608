"""Keras 2 (tf_keras) loss weighting and reduction, op for op.

Pure tensor functions, no Keras state, safe under XLA. They differ from
`kernels.loss_reduction` (Keras 3) where tf_keras orders or spells the
floating-point operations differently, which decides bit-identity with
`tf_keras.Model.fit`:

  * targets are cast to the *prediction's* dtype and rank-1 targets / weights
    get a trailing axis when the prediction has rank 2 (tf_keras
    `compile_utils.match_dtype_and_rank`), instead of casting both sides to
    the loss dtype;
  * a missing sample weight is the scalar 1.0 and is still multiplied in;
    a weight of rank r+1 is squeezed and one of rank r-1 expanded without
    looking at the size of the trailing axis (`squeeze_or_expand_dimensions`);
  * a mask is folded into the weights twice: once on the prediction's mask
    before the loss (`apply_mask`) and once on the loss's own mask, with the
    `size/valid` up-weighting for the mean reductions (`apply_valid_mask`);
  * the divisor of `"sum_over_batch_size"` is `size(weighted losses)`;
  * loss terms are summed with `tf.add_n` (AddN) in list order, after a cast
    to their most precise float dtype (`cast_losses_to_common_dtype`), and
    the regularization / `add_loss` terms are first summed among themselves.

The formula is the same as Keras 3's: C = sum_i w_i * l_i / n (x 1/R).
"""

import tensorflow as tf

SUM = "sum"
SUM_OVER_BATCH_SIZE = "sum_over_batch_size"
AUTO = "auto"
NONE = "none"
REDUCTIONS = (AUTO, NONE, SUM, SUM_OVER_BATCH_SIZE)


def match_dtype_and_rank(y_true, y_pred, sample_weight=None):
  """Aligns a target and its sample weight with the prediction, as tf_keras does.

  A rank-1 target or weight gets a trailing axis when the prediction has rank
  2; the target is cast to the prediction's dtype when both are floating or
  both are integer; the weight is always cast to the prediction's dtype.
  """
  if y_true.shape.rank == 1 and y_pred.shape.rank == 2:
    y_true = tf.expand_dims(y_true, axis=-1)
  if sample_weight is not None and sample_weight.shape.rank == 1 and y_pred.shape.rank == 2:
    sample_weight = tf.expand_dims(sample_weight, axis=-1)
  if ((y_true.dtype.is_floating and y_pred.dtype.is_floating)
      or (y_true.dtype.is_integer and y_pred.dtype.is_integer)):
    y_true = tf.cast(y_true, y_pred.dtype)
  if sample_weight is not None:
    sample_weight = tf.cast(sample_weight, y_pred.dtype)
  return y_true, y_pred, sample_weight


def match_weight_rank(values, sample_weight):
  """Squeezes or expands the weight's last axis when ranks differ by exactly one.

  A scalar weight is kept. Unlike Keras 3 the size of the trailing axis is
  not checked. Static ranks only (the batches `trainer` builds always have
  them).
  """
  w_rank = sample_weight.shape.rank
  v_rank = values.shape.rank
  if w_rank == 0:
    return sample_weight
  if w_rank is None or v_rank is None:
    raise ValueError(
        "Loss values and sample weights need a static rank; received ranks "
        f"{v_rank} and {w_rank}.")
  if w_rank - v_rank == 1:
    return tf.squeeze(sample_weight, [-1])
  if v_rank - w_rank == 1:
    return tf.expand_dims(sample_weight, [-1])
  return sample_weight


def apply_mask(reference, sample_weight, mask):
  """Folds a Keras mask into the sample weight: w * mask, or the mask alone.

  The mask is cast to `reference`'s dtype (the prediction, or the loss values).
  """
  if mask is None:
    return sample_weight
  mask = tf.cast(mask, reference.dtype)
  if sample_weight is None:
    return mask
  sample_weight = tf.cast(sample_weight, mask.dtype)
  sample_weight = match_weight_rank(mask, sample_weight)
  return sample_weight * mask


def apply_valid_mask(values, sample_weight, mask, reduction):
  """The loss's own mask: for the mean reductions, valid entries weigh size/valid."""
  if mask is not None:
    mask = tf.cast(mask, values.dtype)
    if reduction in (AUTO, SUM_OVER_BATCH_SIZE):
      total = tf.cast(tf.size(mask), values.dtype)
      valid = tf.reduce_sum(mask)
      mask = mask * (total / valid)
  return apply_mask(values, sample_weight, mask)


def compute_weighted_loss(values, sample_weight=None, reduction=SUM_OVER_BATCH_SIZE):
  """Weights per-sample loss values and reduces them (tf_keras `Loss.__call__`).

  Args:
    values: the loss function's per-sample (or per-element) values.
    sample_weight: None (then the scalar 1.0 is multiplied in) or weights of
      rank r, r - 1 or r + 1.
    reduction: "sum_over_batch_size" (or "auto"): sum(w*l) / size; "sum":
      sum(w*l); "none": the weighted values.

  Returns:
    The reduced loss in `values`' dtype (integer values are reduced in float32
    and cast back). A zero divisor (empty batch) gives 0 (`divide_no_nan`).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` ({reduction!r}) must be one of {REDUCTIONS}.")
  if reduction == AUTO:
    reduction = SUM_OVER_BATCH_SIZE
  if sample_weight is None:
    sample_weight = 1.0
  values = tf.convert_to_tensor(values)
  sample_weight = tf.convert_to_tensor(sample_weight)
  input_dtype = None
  if not values.dtype.is_floating:
    input_dtype = values.dtype
    values = tf.cast(values, tf.float32)
  sample_weight = tf.cast(sample_weight, values.dtype)
  sample_weight = match_weight_rank(values, sample_weight)
  weighted = tf.multiply(values, sample_weight)
  if reduction == NONE:
    loss = weighted
  else:
    loss = tf.reduce_sum(weighted)
    if reduction == SUM_OVER_BATCH_SIZE:
      count = tf.cast(tf.size(weighted), weighted.dtype)
      loss = tf.math.divide_no_nan(loss, count)
  if input_dtype is not None:
    loss = tf.cast(loss, input_dtype)
  return loss


def cast_to_common_dtype(terms):
  """Casts loss terms to the dtype of their widest float term.

  Among floats of equal width the first one wins: tf_keras means to promote a
  float16 + bfloat16 mix to float32, but its test compares a set of DTypes
  with a set of strings, which is never true, so it does not. Terms are left
  alone when any is complex or none is floating.
  """
  highest = None
  for term in terms:
    if term.dtype.is_complex:
      return list(terms)
    if term.dtype.is_floating and (highest is None or term.dtype.size > highest.size):
      highest = term.dtype
  if highest is None:
    return list(terms)
  return [tf.cast(term, highest) for term in terms]


def add_terms(terms):
  """Sum of loss terms as tf_keras forms it: common dtype, then one `tf.add_n`."""
  if not terms:
    raise ValueError("`terms` is empty: there is no loss to sum.")
  return tf.add_n(cast_to_common_dtype(terms))
