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


def scale_loss(loss, scale):
  """loss * scale (scale is a float32 scalar)."""
  return loss * scale


def unscale_gradients(grads, scale):
  """g / scale for each gradient; `None` entries pass through."""
  return [None if g is None else g / scale for g in grads]


def all_finite(grads):
  """A boolean scalar: True when every element of every gradient is finite."""
  checks = [tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None]
  return tf.reduce_all(tf.convert_to_tensor(checks))


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
