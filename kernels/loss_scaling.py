"""Loss scaling for mixed precision, and the finite-gradient check.

Pure functions; the trainer's scale and transform stages hold the state (the
optimizer's `dynamic_scale` and `step_counter` variables) and assign what
these return.

Dynamic loss scaling, as Keras's `LossScaleOptimizer` does it
(`keras/src/optimizers/loss_scale_optimizer.py`):
  * the loss is multiplied by the current scale S before `tape.gradient`;
  * if every gradient is finite, gradients are divided by S and applied, the
    good-step counter grows, and after `growth_steps` good steps in a row S
    doubles and the counter restarts;
  * otherwise the step is skipped (no update, no `iterations` increment), S is
    halved and the counter restarts.

NaN / Inf: `all_finite` is the policy; one NaN or Inf anywhere skips the step.
"""

import tensorflow as tf


def _promote(a, b):
  """Casts a and b to their common float dtype (half precision widens), as Keras ops do."""
  a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b, dtype_hint=tf.float32)
  if a.dtype != b.dtype:
    wide = a.dtype if a.dtype.size > b.dtype.size else b.dtype
    a, b = tf.cast(a, wide), tf.cast(b, wide)
  return a, b


def scale_loss(loss, scale):
  """loss * scale; a float16/bfloat16 loss is widened to the scale's float32."""
  loss, scale = _promote(loss, scale)
  return loss * scale


def unscale_gradients(grads, scale):
  """g / scale for each gradient (half precision widened); `None` passes through."""
  out = []
  for g in grads:
    if g is None:
      out.append(None)
    else:
      g, s = _promote(g, scale)
      out.append(g / s)
  return out


def all_finite(grads):
  """A boolean scalar: True when every element of every gradient is finite.

  With no gradients at all (every entry None) the answer is True.
  """
  checks = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
  if not checks:
    return tf.constant(True)
  return tf.reduce_all(tf.stack(checks))


def next_loss_scale(scale, good_steps, finite, growth_steps):
  """Returns (new scale, new good-step counter) after one step.

  finite and good_steps == growth_steps - 1: (2 S, 0)
  finite otherwise:                            (S, good_steps + 1)
  not finite:                                  (S / 2, 0)
  """
  grow = tf.logical_and(finite, tf.equal(good_steps, growth_steps - 1))
  new_scale = tf.where(grow, scale * 2.0, tf.where(finite, scale, scale * 0.5))
  new_steps = tf.where(finite, tf.where(grow, tf.zeros_like(good_steps),
                                        good_steps + 1), tf.zeros_like(good_steps))
  return new_scale, new_steps
