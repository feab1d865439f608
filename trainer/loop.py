"""The outer loop: `trainer.fit` and `trainer.evaluate`, in plain Python.

Epochs, metric resets, callbacks, validation and the end-of-training EMA swap
live here; only the step runs compiled (`trainer.functions`). The signatures
and the callback sequence are those of `Model.fit` / `Model.evaluate`:

    on_train_begin
      per epoch: reset metrics, on_epoch_begin,
        per execution: on_train_batch_begin(first step),
                       run steps_per_execution steps,
                       on_train_batch_end(last step, logs)
        epoch logs = metric results; validation (on_test_* hooks) as val_*;
        on_epoch_end(epoch, logs)
    EMA copied into the weights; on_train_end
"""

import numpy as np
import tensorflow as tf
from keras import tree

from trainer import checks, data
from trainer.functions import CompiledStep, FusedArraySteps, resolve_xla_scope
from trainer.semantics import semantics_for


def _check_data_against_model(runner, x, y, class_weight):
  if isinstance(x, tf.data.Dataset) or x is None:
    return
  model = runner.model
  try:
    shapes = runner.output_shapes(x)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(
        f"`x` (shapes {[tuple(a.shape) for a in tree.flatten(x)]}) does not fit the "
        f"model's inputs: {error}") from error
  names = list(getattr(model, "output_names", None) or [])
  checks.check_targets_fit_outputs(y, shapes, names)
  checks.check_class_weight(class_weight, y, shapes)


class Runner:
  """The compiled train and test functions of one model, built once and cached."""

  def __init__(self, model, semantics, config):
    self.model = model
    self.semantics = semantics
    self.config = config
    self.xla_scope = "auto"
    self.train_step = semantics.TrainStep(model, config)
    self.test_step = semantics.TestStep(model)
    self._train = {}
    self._test = {}
    self._reset = {}
    self._output_shapes = {}
    self._xla_scopes = {}

  def _compiled(self, cache, step, element_spec):
    key = repr(element_spec)
    if key not in cache:
      cache[key] = CompiledStep(
          step, element_spec=element_spec, jit_compile=self.config.jit_compile,
          steps_per_execution=self.config.steps_per_execution,
          run_eagerly=self.config.run_eagerly)
    return cache[key]

  def output_shapes(self, x):
    """The model's per-output shapes for inputs shaped like `x` (symbolic; cached
    per input signature, since every `fit` call checks its data against them)."""
    key = repr([(path, tuple(np.shape(a)[1:]), str(getattr(a, "dtype", type(a))))
                for path, a in tree.flatten_with_path(x)])
    if key not in self._output_shapes:
      self._output_shapes[key] = self.semantics.output_shapes(self.model, x)
    return self._output_shapes[key]

  def reset_metrics(self):
    """Zeroes every metric's state, at the start of each epoch and evaluation.

    One compiled call resets them all (eagerly, each variable's assign is a
    separate dispatch). It is traced per set of metric variables, so metrics
    built or replaced later get their own trace.
    """
    if self.config.run_eagerly:
      self.semantics.reset_metrics(self.model)
      return
    key = tuple(id(v) for metric in self.model.metrics for v in metric.variables)
    if key not in self._reset:
      def reset():
        self.semantics.reset_metrics(self.model)
        return tf.constant(True)
      self._reset[key] = tf.function(reset, autograph=False).get_concrete_function()
    self._reset[key]()

  def train_function(self, element_spec):
    return self._compiled(self._train, self.train_step, element_spec)

  def test_function(self, element_spec):
    return self._compiled(self._test, self.test_step, element_spec)

  def fused_function(self, training, element_spec, batch_size):
    if self.xla_scope not in self._xla_scopes:
      self._xla_scopes[self.xla_scope] = resolve_xla_scope(self.model, self.xla_scope)
    scope = self._xla_scopes[self.xla_scope]
    key = ("fused", training, repr(element_spec), batch_size, scope)
    cache = self._train if training else self._test
    if key not in cache:
      cache[key] = FusedArraySteps(
          self.train_step if training else self.test_step, element_spec=element_spec,
          batch_size=batch_size, logs_fn=lambda: self.semantics.results(self.model),
          reset_fn=lambda: self.semantics.reset_metrics(self.model),
          jit_compile=self.config.jit_compile, xla_scope=scope,
          run_eagerly=self.config.run_eagerly)
    return cache[key]

  def feed(self, training, x, y=None, sample_weight=None, *, batch_size, shuffle=False,
           class_weight=None, steps=None):
    """The batches of one `fit` or `evaluate` call and the function that runs them.

    In-memory arrays take the fused fast path (`FusedArraySteps` over
    `DeviceArrays`) unless `steps` limits the epoch (then `fit` carries one
    iterator across epochs), `shuffle="batch"`, or the semantics opts out
    (Keras 2); datasets take the iterator path (`CompiledStep`), as in `fit`.
    """
    spe = self.config.steps_per_execution
    if (self.semantics.fused_inputs and not isinstance(x, tf.data.Dataset)
        and steps is None and shuffle != "batch"):
      arrays = data.DeviceArrays(x, y, sample_weight, batch_size=batch_size,
                                 shuffle=shuffle, class_weight=class_weight)
      self.semantics.build(self.model, arrays.element_spec)
      return FusedFeed(arrays, self.fused_function(training, arrays.element_spec, batch_size),
                       spe)
    batches = data.make_batches(x, y, sample_weight, batch_size=batch_size,
                                shuffle=shuffle, class_weight=class_weight)
    self.semantics.build(self.model, batches.element_spec)
    compiled = (self.train_function if training else self.test_function)(
        batches.element_spec)
    return IteratorFeed(data.EpochSteps(batches, steps, spe), compiled)


def _runner(model, jit_compile, steps_per_execution, xla_scope="auto"):
  """One Runner per model and configuration, kept on the model across calls."""
  semantics = semantics_for(model)
  config = semantics.config(model, jit_compile=jit_compile,
                            steps_per_execution=steps_per_execution)
  cached = getattr(model, "_tapefit_runner", None)
  if cached is None or cached.config != config or (
      cached.train_step.model_optimizer is not model.optimizer):
    cached = Runner(model, semantics, config)
    model._tapefit_runner = cached
  cached.xla_scope = xla_scope
  return cached


class IteratorFeed:
  """Batches from a `tf.data` iterator, `steps_per_execution` per call."""

  def __init__(self, steps, function):
    self.steps = steps
    self.function = function

  @property
  def num_batches(self):
    return self.steps.num_batches

  folds_reset = False  # The metrics are reset by a call of their own.

  def run_epoch(self, on_begin, on_end, should_stop, reset=False):
    """Runs one epoch of executions with the batch hooks around each.

    Returns the logs of the last execution (the metric results after it), or
    None when no step ran.
    """
    del reset  # Never asked for: folds_reset is False.
    logs = None
    iterator = self.steps.iterator()
    for begin, end in self.steps.executions():
      on_begin(begin)
      try:
        logs = self.function(iterator)
      except tf.errors.OutOfRangeError:
        self.steps.exhausted()
        break
      on_end(end, logs)
      if should_stop():
        break
    return logs


class FusedFeed:
  """Device-resident arrays, `steps_per_execution` steps per fused call."""

  def __init__(self, arrays, function, steps_per_execution):
    self.arrays = arrays
    self.function = function
    self.steps_per_execution = steps_per_execution

  @property
  def num_batches(self):
    return self.arrays.num_batches

  folds_reset = True  # The first call of an epoch can reset the metrics itself.

  def run_epoch(self, on_begin, on_end, should_stop, reset=False):
    """As `IteratorFeed.run_epoch`; returns the last execution's logs.

    `reset`: the first execution zeroes the metrics before its first step.
    """
    logs = None
    order = self.arrays.epoch_order()
    for begin in range(0, self.arrays.num_batches, self.steps_per_execution):
      end = begin + self.steps_per_execution - 1
      on_begin(begin)
      logs = self.function.run(self.arrays, order, begin, end, reset=reset and begin == 0)
      on_end(end, logs)
      if should_stop():
        break
    if reset and logs is None:  # No step ran: reset on its own.
      self.function.reset_fn()
    return logs


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_data=None, sample_weight=None, class_weight=None, shuffle=True,
        initial_epoch=0, steps_per_epoch=None, validation_freq=1, **kwargs):
  """Trains `model` exactly as `model.fit(...)` would, with tapefit's step.

  Same arguments and semantics as `keras.Model.fit` (Keras 3), plus
  `jit_compile` and `steps_per_execution` keywords that override what
  `model.compile` set, and `xla_scope` ("auto", "loop" or "step": what XLA
  compiles on the in-memory fast path; see
  `trainer.functions.resolve_xla_scope`). Also accepts `validation_steps`
  and `validation_batch_size`. Returns the `keras.callbacks.History`.
  """
  extra = dict(kwargs)
  jit_compile = extra.pop("jit_compile", None)
  steps_per_execution = extra.pop("steps_per_execution", None)
  xla_scope = extra.pop("xla_scope", "auto")
  validation_steps = extra.pop("validation_steps", None)
  validation_batch_size = extra.pop("validation_batch_size", None)
  checks.check_keywords("trainer.fit", extra, checks.FIT_KEYWORDS)
  checks.check_model(model)
  checks.check_step_options(model, jit_compile, steps_per_execution)
  batch_size = 32 if batch_size is None else batch_size
  checks.check_positive_int("batch_size", batch_size)
  checks.check_positive_int("epochs", epochs)
  checks.check_non_negative_int("initial_epoch", initial_epoch)
  checks.check_positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
  checks.check_positive_int("validation_steps", validation_steps, allow_none=True)
  checks.check_positive_int("validation_batch_size", validation_batch_size, allow_none=True)
  checks.check_validation_freq(validation_freq)
  checks.check_shuffle(shuffle)
  checks.check_arrays(x, y, sample_weight, class_weight)
  checks.check_xla_scope(xla_scope)
  runner = _runner(model, jit_compile, steps_per_execution, xla_scope)
  _check_data_against_model(runner, x, y, class_weight)
  checks.check_has_loss(model, x, y)
  val_x, val_y, val_sw = checks.check_validation_data(
      model, validation_data, output_shapes=lambda _, val_x: runner.output_shapes(val_x))

  train_feed = runner.feed(True, x, y, sample_weight, batch_size=batch_size,
                           shuffle=shuffle, class_weight=class_weight, steps=steps_per_epoch)
  if not isinstance(callbacks, runner.semantics.callbacks.CallbackList):
    callbacks = runner.semantics.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose,
        epochs=epochs, steps=train_feed.num_batches, model=model)
  val_feed = None
  if validation_data is not None:
    val_feed = runner.feed(False, val_x, val_y, val_sw,
                           batch_size=validation_batch_size or batch_size,
                           steps=validation_steps)

  model.stop_training = False
  _begin_run(runner, training=True)
  callbacks.on_train_begin()
  training_logs = None
  fold_reset = train_feed.folds_reset and _callbacks_leave_metrics_alone(callbacks)
  for epoch in range(initial_epoch, epochs):
    if not fold_reset:
      runner.reset_metrics()
    callbacks.on_epoch_begin(epoch)
    logs = train_feed.run_epoch(callbacks.on_train_batch_begin,
                                callbacks.on_train_batch_end, lambda: model.stop_training,
                                reset=fold_reset)
    # The last execution returned every metric's result after the last step:
    # the epoch's values, without reading the metrics again.
    epoch_logs = dict(runner.semantics.results(model) if logs is None else logs)
    if val_feed is not None and _should_validate(epoch, validation_freq):
      val_logs = _evaluate(runner, val_feed, callbacks)
      epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
    callbacks.on_epoch_end(epoch, epoch_logs)
    training_logs = epoch_logs
    if model.stop_training:
      break
  if epochs > 0:
    runner.train_step.finalize()
  callbacks.on_train_end(logs=training_logs)
  return model.history


def _callbacks_leave_metrics_alone(callbacks):
  """True when only Keras's own callbacks run (History, progress bar, ...).

  None of them reads a metric between the epoch's reset and its first step
  (`on_epoch_begin`, `on_*_batch_begin` of step 0), so the reset can run
  inside the first compiled call instead of a call of its own. A user's
  callback might read them there, so with one the reset stays where `fit`
  has it: before `on_epoch_begin`.
  """
  return all(type(c).__module__.startswith(("keras.", "tf_keras."))
             for c in callbacks.callbacks)


def _begin_run(runner, training):
  """Per-version bookkeeping at the start of a fit / evaluation (Keras 2 step counters)."""
  begin = getattr(runner.semantics, "begin_run", None)
  if begin is not None:
    begin(runner.model, training=training)


def _should_validate(epoch, validation_freq):
  if isinstance(validation_freq, int) and not isinstance(validation_freq, bool):
    if validation_freq < 1:
      raise ValueError(f"`validation_freq` ({validation_freq!r}) must be >= 1.")
    return (epoch + 1) % validation_freq == 0
  if isinstance(validation_freq, (list, tuple, set)):
    return epoch + 1 in validation_freq
  raise ValueError(
      f"`validation_freq` ({validation_freq!r}) must be an int or a list of epochs.")


def _evaluate(runner, feed, callbacks):
  """Runs the test step over `feed` with the `on_test_*` hooks."""
  model = runner.model
  model.stop_evaluating = False
  _begin_run(runner, training=False)
  callbacks.on_test_begin()
  fold_reset = feed.folds_reset and _callbacks_leave_metrics_alone(callbacks)
  if not fold_reset:
    runner.reset_metrics()
  logs = feed.run_epoch(callbacks.on_test_batch_begin, callbacks.on_test_batch_end,
                        lambda: model.stop_evaluating, reset=fold_reset)
  if logs is None:
    logs = runner.semantics.results(model)
  logs = {k: float(v) for k, v in logs.items()}
  callbacks.on_test_end(logs)
  return logs


def evaluate(model, x=None, y=None, batch_size=None, sample_weight=None, verbose="auto",
             return_dict=True, steps=None, callbacks=None, **kwargs):
  """Evaluates `model` exactly as `model.evaluate(...)` would.

  Returns a dict `{metric name: value}` (or, with `return_dict=False`, the
  values in `model.metrics_names` order, as Keras does).
  """
  extra = dict(kwargs)
  jit_compile = extra.pop("jit_compile", None)
  steps_per_execution = extra.pop("steps_per_execution", None)
  xla_scope = extra.pop("xla_scope", "auto")
  checks.check_keywords("trainer.evaluate", extra, checks.EVALUATE_KEYWORDS)
  checks.check_model(model)
  checks.check_step_options(model, jit_compile, steps_per_execution)
  batch_size = 32 if batch_size is None else batch_size
  checks.check_positive_int("batch_size", batch_size)
  checks.check_positive_int("steps", steps, allow_none=True)
  checks.check_arrays(x, y, sample_weight, None)
  checks.check_xla_scope(xla_scope)
  runner = _runner(model, jit_compile, steps_per_execution, xla_scope)
  _check_data_against_model(runner, x, y, None)
  checks.check_has_loss(model, x, y)
  feed = runner.feed(False, x, y, sample_weight, batch_size=batch_size, steps=steps)
  if not isinstance(callbacks, runner.semantics.callbacks.CallbackList):
    callbacks = runner.semantics.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1,
        steps=feed.num_batches, model=model)
  logs = _evaluate(runner, feed, callbacks)
  if return_dict:
    return logs
  return _in_metric_order(runner.semantics, model, logs)


def _in_metric_order(semantics, model, logs):
  names = semantics.metric_names(model)
  values = [logs[n] for n in names if n in logs]
  values += [logs[k] for k in sorted(logs) if k not in names]
  return values[0] if len(values) == 1 else values
