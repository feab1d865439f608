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

from keras import tree

from trainer.data import epoch_layout


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


class FusedArraySteps:
  """Runs each execution over device-resident arrays in one compiled call.

  The in-memory fast path of `trainer.fit`: the whole dataset is an argument
  of the compiled function, which lays it out in batches in-graph
  (`trainer.data.epoch_layout`), so no `tf.data` iterator, `Optional`, eager
  slicing or host round trip runs per step. With XLA the whole loop of full
  batches is one XLA computation (`fit` compiles only the single step). The
  partial last batch, whose shape differs, runs in the same compiled call,
  in a `tf.cond` after the loop.

  The step itself is traced once, with the element spec `fit`'s dataset
  would have (batch dimension None when a partial batch exists), so the
  metric weights that depend on the static batch size match `fit`'s. The
  arrays are arguments, not captures, so a second `fit` on data of the same
  shapes reuses the traces.

  Each call goes straight to the concrete function of its data signature:
  `tf.function`'s generic dispatch (binding and matching the arguments)
  costs more than a whole step of a small model.

  Inside the loop the step's logs are dropped, and `logs_fn` reads the
  metric results once after the last step: the same values, without
  computing every metric's total/count division on every step.

  With XLA, `xla_scope` says what XLA compiles: "loop" (the default) makes
  the whole call one XLA program; "step" compiles each step with XLA and runs
  the loop in the TensorFlow graph around it, as `fit` does. See
  `resolve_xla_scope` for when "step" is the faster one.

  Args:
    step: a callable taking one batch and returning a dict of logs.
    element_spec: the batch signature (`DeviceArrays.element_spec`).
    batch_size: samples per full batch.
    logs_fn: returns the logs after the last step (the model's metric results).
    reset_fn: zeroes the metrics; a call with `reset=True` runs it before
      its first step (the epoch's reset, without a call of its own).
    jit_compile: compile with XLA.
    xla_scope: "loop" or "step" (with `jit_compile`).
    run_eagerly: no `tf.function` at all (for debugging).
  """

  def __init__(self, step, *, element_spec, batch_size, logs_fn, reset_fn, jit_compile=False,
               xla_scope="loop", run_eagerly=False):
    if xla_scope not in ("loop", "step"):
      raise ValueError(f'`xla_scope` ({xla_scope!r}) must be "loop" or "step" here.')
    self.trace_count = 0
    self.batch_size = batch_size
    self.xla_scope = xla_scope if jit_compile else None
    self.logs_fn = logs_fn
    self.reset_fn = reset_fn
    self._concrete = {}

    def traced_step(batch):
      self.trace_count += 1  # Python side effect: runs once per trace.
      return step(batch)

    if run_eagerly:
      self.one_step, self.steps = traced_step, self._steps
    else:
      per_step = jit_compile and xla_scope == "step"
      self.one_step = tf.function(traced_step, input_signature=[element_spec],
                                  jit_compile=per_step or None, autograph=False)
      self.steps = tf.function(self._steps, jit_compile=jit_compile and not per_step,
                               autograph=False)
    self._run_eagerly = run_eagerly

  def _steps(self, data, order, first, count, with_last, reset):
    """Resets the metrics if `reset`, then runs full batches first ..
    first+count-1, then the partial batch if `with_last`.

    One graph holds both, so every step of an epoch runs from the same traced
    code (stateful RNG ops keep one state, as under `fit`).
    """
    def reset_metrics():
      self.reset_fn()
      return tf.constant(True)

    tf.cond(reset, reset_metrics, lambda: tf.constant(False))
    batch_at, last = epoch_layout(data, order, self.batch_size)

    def body(i):
      self.one_step(batch_at(first + i))
      return (i + 1,)

    tf.while_loop(lambda i: i < count, body, (tf.constant(0),))
    if last is not None:

      def partial():
        self.one_step(last)
        return tf.constant(True)

      tf.cond(with_last, partial, lambda: tf.constant(False))
    return self.logs_fn()

  def function_for(self, data, order):
    """The compiled function for this data signature (the concrete function)."""
    if self._run_eagerly:
      return self.steps
    key = (tuple((tuple(t.shape), t.dtype) for t in tree.flatten(data)), order is None)
    if key not in self._concrete:
      self._concrete[key] = self.steps.get_concrete_function(
          data, order, tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
          tf.TensorSpec([], tf.bool), tf.TensorSpec([], tf.bool))
    return self._concrete[key]

  def run(self, arrays, order, begin, end, reset=False):
    """Runs steps begin..end (clipped to the epoch) and returns the last logs.

    `order` is `arrays.epoch_order()` for the current epoch; `reset` zeroes
    the metrics first.
    """
    stop = min(end + 1, arrays.num_full_batches)
    count = max(stop - begin, 0)
    with_last = bool(arrays.remainder) and begin <= arrays.num_full_batches <= end
    return self.function_for(arrays.data, order)(
        arrays.data, order, tf.constant(begin), tf.constant(count), tf.constant(with_last),
        tf.constant(reset))


XLA_SCOPES = ("auto", "loop", "step")


def resolve_xla_scope(model, xla_scope):
  """The XLA scope of the fused path: "loop" or "step".

  "auto" picks "step" for models with convolution layers when no GPU is
  visible, and "loop" otherwise. Measured on CPU (docs/performance.md): XLA
  leaves the backward convolutions of a step inside a while loop in a
  non-canonical layout that its CPU backend runs as plain loops, about 20x
  slower than the same step compiled alone (whose convolutions go to the
  optimized kernels); everything else (MLPs, attention) is faster with the
  whole loop in one program.
  """
  if xla_scope != "auto":
    return xla_scope
  has_conv = any("Conv" in type(layer).__name__ for layer in model._flatten_layers())
  on_cpu = not tf.config.list_logical_devices("GPU")
  return "step" if has_conv and on_cpu else "loop"
