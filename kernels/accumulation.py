"""Gradient accumulation and the exponential moving average of weights.

Pure functions; the trainer's transform and apply stages own the variables.

Accumulation (`gradient_accumulation_steps = k`), as the Keras optimizer does
it: on micro-steps 1..k-1 the gradient is added to an accumulator; on micro-
step k the update uses (g + acc) / k, which is an equal-weight mean of the k
micro-batch gradients even when one micro-batch is partial, and the
accumulator is reset. Clipping happens after this averaging.

EMA (`use_ema`): average <- m * average + (1 - m) * w after every applied
micro-step, with m = 0 while the optimizer's `iterations` is still 0, so the
average starts at the first updated weights.
"""

import tensorflow as tf


def is_update_step(micro_step, steps):
  """True on the micro-step that applies the accumulated gradient.

  `micro_step` is the count of micro-steps already taken (before this one).
  """
  return tf.equal((micro_step + 1) % steps, 0)


def accumulated_mean(grads, accumulators, steps):
  """(g + acc) / steps for each variable: the gradient an update step applies."""
  return [None if g is None else (g + a) / steps for g, a in zip(grads, accumulators)]


def accumulate(grads, accumulators):
  """g + acc for each variable: the accumulator after a non-update micro-step."""
  return [None if g is None else g + a for g, a in zip(grads, accumulators)]


def ema_momentum(iterations, momentum, dtype):
  """The EMA momentum for this step: 0 on the very first update, else `momentum`."""
  return tf.cast(tf.not_equal(iterations, 0), dtype) * momentum


def ema_update(average, value, momentum):
  """m * average + (1 - m) * value."""
  return momentum * average + (1 - momentum) * value
