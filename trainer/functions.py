"""From one step to a compiled function: step -> steps_per_execution loop -> XLA.

The layering follows `Model.fit`'s `make_train_function`:

  * `one_step(batch)`: the step under `tf.function`, with `jit_compile` when
    XLA is on. Its input signature is the dataset's element spec, so a
    partial last batch (batch dimension None in the spec) does not retrace.
  * `multi_step(iterator)`: runs up to `steps_per_execution` steps inside one
    `tf.function` with a `tf.while_loop` over the iterator, and returns the
    logs of the last step run. Python (callbacks, progress) runs only between
    calls: one host round trip per execution, not per step.

The builder counts traces, so tests can assert that epochs and the last
partial batch reuse the compiled function.
"""

import tensorflow as tf


class CompiledStep:
  """A step function compiled for repeated execution over an iterator.

  Args:
    step: a callable taking one batch and returning a dict of logs.
    element_spec: the dataset's element spec (the batch signature).
    jit_compile: compile `step` with XLA.
    steps_per_execution: steps per call of `__call__`.
    run_eagerly: no `tf.function` at all (for debugging).
  """

  def __init__(self, step, *, element_spec, jit_compile=False, steps_per_execution=1,
               run_eagerly=False):
    self.step = step
    self.steps_per_execution = steps_per_execution
    self.trace_count = 0
    if run_eagerly:
      self.one_step = self._counted(step)
      self.multi_step = self._run_steps
    else:
      self.one_step = tf.function(self._counted(step), jit_compile=jit_compile,
                                  input_signature=[element_spec],
                                  autograph=False)
      self.multi_step = tf.function(self._run_steps, autograph=False)

  def _counted(self, step):
    def traced_step(batch):
      self.trace_count += 1  # Python side effect: runs once per trace.
      return step(batch)
    return traced_step

  def _run_steps(self, iterator):
    """Runs the first step, then up to steps_per_execution - 1 more.

    The caller only calls this when the iterator has at least one batch left;
    the loop stops early when the iterator runs dry (end of an epoch of
    unknown length), and never pulls a batch it will not use.
    """
    logs = self.one_step(iterator.get_next())
    if self.steps_per_execution == 1:
      return logs

    def more(i, exhausted, logs):
      del logs
      return tf.logical_and(i < self.steps_per_execution, tf.logical_not(exhausted))

    def body(i, exhausted, logs):
      del exhausted
      batch = iterator.get_next_as_optional()
      logs = tf.cond(batch.has_value(), lambda: self.one_step(batch.get_value()),
                     lambda: logs)
      return i + 1, tf.logical_not(batch.has_value()), logs

    _, _, logs = tf.while_loop(more, body, (tf.constant(1), tf.constant(False), logs))
    return logs

  def __call__(self, iterator):
    return self.multi_step(iterator)
