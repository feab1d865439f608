"""Gradient clipping: per-variable norm, value, and global norm.

Pure functions from a list of gradients to a list of gradients: no variables,
no Keras objects, safe under XLA. `None` entries (variables without a gradient)
pass through untouched. Each reproduces the op sequence of the Keras 3 TF
optimizer (`keras/src/optimizers/base_optimizer.py` `_clip_gradients`,
`clip_by_global_norm`; `keras/src/backend/tensorflow/optimizer.py`
`_clip_by_norm`, which is `tf.clip_by_norm`), so that a step clipped here is
bit-identical to one clipped by `Model.fit`.

NaN / Inf policy (the same as Keras; tested in tests/test_kernels_clipping.py):
  * `clip_by_norm`: a variable whose gradient holds a NaN gets a NaN norm and
    every element of that gradient becomes NaN. One holding +-Inf (and no
    NaN) gets an infinite norm: its +-Inf elements become NaN (Inf/Inf) and
    its finite elements become +-0. Other variables are unaffected. An
    all-zero gradient stays zero (the norm is 0 and no 0/0 is formed).
  * `clip_by_value`: Inf is clipped to the bound like any large number; NaN
    stays NaN.
  * `clip_by_global_norm`: if any gradient holds NaN or Inf, the global norm
    is non-finite and *every* gradient becomes NaN (the `norm - norm` term
    turns an infinite norm into NaN on purpose), so a following finite check
    or `TerminateOnNaN` sees it. All-zero gradients stay zero.
"""

import tensorflow as tf


def clip_by_norm(grad, clip_norm):
  """Rescales one gradient so that its L2 norm is at most `clip_norm`.

  (g * c) / max(||g||, c). Below the threshold this is the identity up to
  rounding: (g*c)/c is exact only when c is a power of two, else an element
  can move by one ulp (as in Keras). The norm of a zero gradient is taken as 0 without
  evaluating sqrt(0)'s derivative path (the two-`where` trick).
  """
  if grad is None:
    return None
  l2sum = tf.reduce_sum(grad * grad, None, keepdims=True)
  positive = l2sum > 0
  l2sum_safe = tf.where(positive, l2sum, tf.ones_like(l2sum))
  l2norm = tf.where(positive, tf.sqrt(l2sum_safe), l2sum)
  clip_norm = tf.cast(clip_norm, grad.dtype)
  return tf.identity(grad * clip_norm / tf.maximum(l2norm, clip_norm))


def clip_each_by_norm(grads, clip_norm):
  """`clipnorm`: clips each variable's gradient by its own norm."""
  return [clip_by_norm(g, clip_norm) for g in grads]


def clip_by_value(grads, clip_value):
  """`clipvalue`: clips every element to [-clip_value, clip_value]."""
  return [None if g is None else tf.clip_by_value(g, -clip_value, clip_value)
          for g in grads]


def global_norm(grads):
  """sqrt(sum over variables of sum(g^2)), skipping `None` entries."""
  squared = [tf.reduce_sum(tf.square(g)) for g in grads if g is not None]
  return tf.sqrt(tf.reduce_sum(tf.stack(squared)))


def clip_by_global_norm(grads, clip_norm):
  """`global_clipnorm`: scales all gradients by min(1, c / global_norm).

  The scale is written as c * min(1/norm, 1/c) + (norm - norm): the last term
  is 0 for a finite norm and NaN otherwise, which is the NaN policy above.
  `1/c` is formed in Python double precision and then rounded to float32,
  exactly as Keras does with a Python float `clip_norm`.
  """
  norm = global_norm(grads)
  scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
  return [None if g is None else g * scale for g in grads]


def clip_gradients(grads, *, clipnorm=None, clipvalue=None, global_clipnorm=None):
  """Applies the one configured clipping kind (Keras allows at most one).

  Precedence when several are set follows Keras: clipnorm, then
  global_clipnorm, then clipvalue. A value that is None or <= 0 disables a kind.
  """
  if clipnorm and clipnorm > 0:
    return clip_each_by_norm(grads, clipnorm)
  if global_clipnorm and global_clipnorm > 0:
    return clip_by_global_norm(grads, global_clipnorm)
  if clipvalue and clipvalue > 0:
    return clip_by_value(grads, clipvalue)
  return list(grads)
