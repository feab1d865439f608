"""Gradient clipping as the tf_keras (Keras 2) optimizer does it, op for op.

tf_keras `Optimizer._clip_gradients` calls `tf.clip_by_norm` per variable,
`tf.clip_by_global_norm`, or `tf.clip_by_value`, with this precedence:
clipnorm, then global_clipnorm, then clipvalue (the first one set wins; the
others are ignored). Per-variable norm and value clipping are the same ops as
Keras 3's (`kernels.clipping`), so they are reused. The global norm is not:

  * Keras 2: norm = sqrt(sum_v l2_loss(g_v) * 2)  (L2Loss = sum(g^2)/2 per
    variable), and the bound's reciprocal is float32(1) / float32(c);
  * Keras 3: norm = sqrt(sum_v sum(g_v^2)), reciprocal 1/c in float64.

Both can round differently in the last bit, so Keras 2 gets its own kernel.
`tf.IndexedSlices` gradients (embeddings) are clipped on their values, as TF
does. NaN / Inf policy: as in `kernels.clipping` (a non-finite global norm
makes every gradient NaN).
"""

import tensorflow as tf

from kernels import clipping


def _values(grad):
  return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _like(grad, values):
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
  return values


def global_norm(grads):
  """sqrt(2 * sum over variables of l2_loss(g)), skipping `None` entries."""
  halves = [tf.nn.l2_loss(_values(g)) for g in grads if g is not None]
  half_squared = tf.reduce_sum(tf.stack(halves))
  return tf.sqrt(half_squared * tf.constant(2.0, dtype=half_squared.dtype))


def clip_by_global_norm(grads, clip_norm):
  """`global_clipnorm`: g * (c * min(1/norm, 1/c) + (norm - norm)).

  `1/c` is float32(1) / float32(c); the last term turns a non-finite norm into
  NaN everywhere.
  """
  norm = global_norm(grads)
  scale = clip_norm * tf.minimum(
      1.0 / norm, tf.constant(1.0, dtype=norm.dtype) / clip_norm) + (norm - norm)
  return [None if g is None else
          _like(g, tf.identity(_values(g) * tf.cast(scale, _values(g).dtype)))
          for g in grads]


def clip_each_by_norm(grads, clip_norm):
  """`clipnorm`: each variable's gradient by its own L2 norm (`tf.clip_by_norm`)."""
  return [None if g is None else _like(g, clipping.clip_by_norm(_values(g), clip_norm))
          for g in grads]


def clip_by_value(grads, clip_value):
  """`clipvalue`: every element to [-clip_value, clip_value]."""
  return [None if g is None else
          _like(g, tf.clip_by_value(_values(g), -clip_value, clip_value))
          for g in grads]


def clip_gradients(grads, *, clipnorm=None, clipvalue=None, global_clipnorm=None):
  """The one clipping tf_keras applies: clipnorm, else global_clipnorm, else clipvalue.

  A value that is None or <= 0 disables a kind.
  """
  if clipnorm and clipnorm > 0:
    return clip_each_by_norm(grads, clipnorm)
  if global_clipnorm and global_clipnorm > 0:
    return clip_by_global_norm(grads, global_clipnorm)
  if clipvalue and clipvalue > 0:
    return clip_by_value(grads, clipvalue)
  return list(grads)
