"""Loss scaling as tf_keras's `LossScaleOptimizer` (mixed_float16) does it.

Pure functions; the train step holds the state (the optimizer's
`current_loss_scale` and `good_steps` variables) and assigns what these
return. Where Keras 2 differs from Keras 3 (`kernels.loss_scaling`):

  * gradients are unscaled by multiplying with the reciprocal
    float32(1) / S, not by dividing by S;
  * the scale is updated *before* the step is applied, and grows when
    good_steps + 1 >= growth_steps, but only to a finite value;
  * on a non-finite gradient the scale becomes max(S / 2, 1), never below 1;
  * a skipped step still increments the optimizer's `iterations` (handled by
    the train step).

NaN / Inf: `kernels.all_finite` is the policy (one NaN or Inf anywhere skips
the step); it is the same reduction tf_keras uses.
"""

import tensorflow as tf


def _values(grad):
  return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def scale_loss(loss, scale):
  """loss * cast(S, loss.dtype)."""
  return loss * tf.cast(scale, loss.dtype)


def unscale_gradients(grads, scale):
  """g * cast(1 / S, g.dtype) for each gradient; `None` entries pass through."""
  reciprocal = 1.0 / scale
  out = []
  for g in grads:
    if g is None:
      out.append(None)
    elif isinstance(g, tf.IndexedSlices):
      out.append(tf.IndexedSlices(g.values * tf.cast(reciprocal, g.values.dtype),
                                  g.indices, dense_shape=g.dense_shape))
    else:
      out.append(g * tf.cast(reciprocal, g.dtype))
  return out


def all_finite(grads):
  """True when every element of every (possibly sparse) gradient is finite.

  With no gradients at all (every entry None) the answer is True.
  """
  checks = [tf.reduce_all(tf.math.is_finite(_values(g))) for g in grads if g is not None]
  if not checks:
    return tf.constant(True)
  return tf.reduce_all(checks)


def next_loss_scale(scale, good_steps, finite, growth_steps, multiplier=2.0):
  """Returns (new scale, new good-step counter) after one step.

  finite, good_steps + 1 >= growth_steps: (S * m if finite else S, 0)
  finite otherwise:                       (S, good_steps + 1)
  not finite:                             (max(S / m, 1), 0)
  """
  grow = tf.logical_and(finite, good_steps + 1 >= growth_steps)
  grown = scale * multiplier
  grown = tf.where(tf.math.is_finite(grown), grown, scale)
  shrunk = tf.maximum(scale / multiplier, 1)
  new_scale = tf.where(finite, tf.where(grow, grown, scale), shrunk)
  new_steps = tf.where(finite, tf.where(grow, tf.zeros_like(good_steps), good_steps + 1),
                       tf.zeros_like(good_steps))
  return new_scale, new_steps
