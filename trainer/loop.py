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

import keras
import tensorflow as tf
from keras import tree

from trainer import checks, data, structure
from trainer.config import StepConfig
from trainer.functions import CompiledStep
from trainer.step import TestStep, TrainStep, reset_metrics, results


def _build(model, element_spec):
  """Creates every variable before tracing: model, compiled loss/metrics, optimizer.

  `Model.fit` builds them symbolically (no data consumed, no RNG drawn);
  doing it up front keeps variable creation out of the compiled step.
  """
  needs_build = (
      not all(layer.built for layer in model._flatten_layers())
      or (model._compile_loss is not None and not model._compile_loss.built)
      or (model._compile_metrics is not None and not model._compile_metrics.built)
      or (model.optimizer is not None and not model.optimizer.built))
  if needs_build:
    batch = tree.map_structure(lambda spec: spec, element_spec)
    model._symbolic_build(data_batch=batch)


def _output_shapes(model, x):
  """Per-output shapes of `model` on inputs shaped like `x`, without running it."""
  def spec(a):
    return keras.KerasTensor((None,) + tuple(a.shape[1:]), dtype=str(a.dtype))

  outputs = model.compute_output_spec(tree.map_structure(spec, tree.lists_to_tuples(x)))
  return [tuple(o.shape) for o in tree.flatten(outputs)]


def _check_data_against_model(model, x, y, class_weight):
  if isinstance(x, tf.data.Dataset) or x is None:
    return
  try:
    shapes = _output_shapes(model, x)
  except Exception as error:  # pylint: disable=broad-except
    raise ValueError(
        f"`x` (shapes {[tuple(a.shape) for a in tree.flatten(x)]}) does not fit the "
        f"model's inputs: {error}") from error
  names = list(getattr(model, "output_names", None) or [])
  checks.check_targets_fit_outputs(y, shapes, names)
  checks.check_class_weight(class_weight, y, shapes)


class Runner:
  """The compiled train and test functions of one model, built once and cached."""

  def __init__(self, model, config):
    self.model = model
    self.config = config
    self.train_step = TrainStep(model, config)
    self.test_step = TestStep(model)
    self._train = {}
    self._test = {}

  def _compiled(self, cache, step, element_spec):
    key = repr(element_spec)
    if key not in cache:
      cache[key] = CompiledStep(
          step, element_spec=element_spec, jit_compile=self.config.jit_compile,
          steps_per_execution=self.config.steps_per_execution,
          run_eagerly=self.config.run_eagerly)
    return cache[key]

  def train_function(self, element_spec):
    return self._compiled(self._train, self.train_step, element_spec)

  def test_function(self, element_spec):
    return self._compiled(self._test, self.test_step, element_spec)


def _runner(model, jit_compile, steps_per_execution):
  """One Runner per model and configuration, kept on the model across calls."""
  config = StepConfig.from_model(model, jit_compile=jit_compile,
                                 steps_per_execution=steps_per_execution)
  cached = getattr(model, "_tapefit_runner", None)
  if cached is None or cached.config != config or cached.model.optimizer is not (
      cached.train_step.loss_scaler or cached.train_step.optimizer):
    cached = Runner(model, config)
    model._tapefit_runner = cached
  return cached


def _run_epoch(function, steps, on_begin, on_end, should_stop):
  """Runs one epoch of executions; returns the last logs."""
  logs = {}
  iterator = steps.iterator()
  for begin, end in steps.executions():
    on_begin(begin)
    try:
      logs = function(iterator)
    except tf.errors.OutOfRangeError:
      steps.exhausted()
      break
    on_end(end, logs)
    if should_stop():
      break
  return logs


def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
        validation_data=None, sample_weight=None, class_weight=None, shuffle=True,
        initial_epoch=0, steps_per_epoch=None, validation_freq=1, **kwargs):
  """Trains `model` exactly as `model.fit(...)` would, with tapefit's step.

  Same arguments and semantics as `keras.Model.fit` (Keras 3), plus
  `jit_compile` and `steps_per_execution` keywords that override what
  `model.compile` set. Also accepts `validation_steps` and
  `validation_batch_size`. Returns the `keras.callbacks.History`.
  """
  extra = dict(kwargs)
  jit_compile = extra.pop("jit_compile", None)
  steps_per_execution = extra.pop("steps_per_execution", None)
  validation_steps = extra.pop("validation_steps", None)
  validation_batch_size = extra.pop("validation_batch_size", None)
  checks.check_keywords("trainer.fit", extra, checks.FIT_KEYWORDS)
  checks.check_model(model)
  batch_size = 32 if batch_size is None else batch_size
  checks.check_positive_int("batch_size", batch_size)
  checks.check_positive_int("epochs", epochs)
  checks.check_non_negative_int("initial_epoch", initial_epoch)
  checks.check_positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)
  checks.check_arrays(x, y, sample_weight, class_weight)
  if validation_data is not None:
    val_x, val_y, val_sw = structure.unpack_batch(
        validation_data if isinstance(validation_data, tuple) else (validation_data,))
    checks.check_arrays(val_x, val_y, val_sw, None)
  runner = _runner(model, jit_compile, steps_per_execution)
  _check_data_against_model(model, x, y, class_weight)

  batches = data.make_batches(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle,
                              class_weight=class_weight)
  _build(model, batches.element_spec)
  steps = data.EpochSteps(batches, steps_per_epoch, runner.config.steps_per_execution)
  train_function = runner.train_function(batches.element_spec)

  if not isinstance(callbacks, keras.callbacks.CallbackList):
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose,
        epochs=epochs, steps=steps.num_batches, model=model)
  val_batches = None
  if validation_data is not None:
    val_batches = data.make_batches(val_x, val_y, val_sw,
                                    batch_size=validation_batch_size or batch_size)

  model.stop_training = False
  callbacks.on_train_begin()
  training_logs = None
  logs = {}
  for epoch in range(initial_epoch, epochs):
    reset_metrics(model)
    callbacks.on_epoch_begin(epoch)
    logs = _run_epoch(train_function, steps, callbacks.on_train_batch_begin,
                      callbacks.on_train_batch_end, lambda: model.stop_training)
    epoch_logs = dict(results(model))
    if val_batches is not None and _should_validate(epoch, validation_freq):
      val_logs = _evaluate(runner, val_batches, validation_steps, callbacks)
      epoch_logs.update({f"val_{k}": v for k, v in val_logs.items()})
    callbacks.on_epoch_end(epoch, epoch_logs)
    training_logs = epoch_logs
    if model.stop_training:
      break
  if epochs > 0:
    runner.train_step.finalize()
  callbacks.on_train_end(logs=training_logs)
  return model.history


def _should_validate(epoch, validation_freq):
  if isinstance(validation_freq, int) and not isinstance(validation_freq, bool):
    if validation_freq < 1:
      raise ValueError(f"`validation_freq` ({validation_freq!r}) must be >= 1.")
    return (epoch + 1) % validation_freq == 0
  if isinstance(validation_freq, (list, tuple, set)):
    return epoch + 1 in validation_freq
  raise ValueError(
      f"`validation_freq` ({validation_freq!r}) must be an int or a list of epochs.")


def _evaluate(runner, batches, steps, callbacks):
  """Runs the test step over `batches` with the `on_test_*` hooks."""
  model = runner.model
  _build(model, batches.element_spec)
  epoch = data.EpochSteps(batches, steps, runner.config.steps_per_execution)
  test_function = runner.test_function(batches.element_spec)
  model.stop_evaluating = False
  callbacks.on_test_begin()
  reset_metrics(model)
  _run_epoch(test_function, epoch, callbacks.on_test_batch_begin,
             callbacks.on_test_batch_end, lambda: model.stop_evaluating)
  logs = {k: float(v) for k, v in results(model).items()}
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
  checks.check_keywords("trainer.evaluate", extra, checks.EVALUATE_KEYWORDS)
  checks.check_model(model)
  batch_size = 32 if batch_size is None else batch_size
  checks.check_positive_int("batch_size", batch_size)
  checks.check_positive_int("steps", steps, allow_none=True)
  checks.check_arrays(x, y, sample_weight, None)
  runner = _runner(model, jit_compile, steps_per_execution)
  _check_data_against_model(model, x, y, None)
  batches = data.make_batches(x, y, sample_weight, batch_size=batch_size)
  if not isinstance(callbacks, keras.callbacks.CallbackList):
    callbacks = keras.callbacks.CallbackList(
        callbacks, add_progbar=verbose != 0, verbose=verbose, epochs=1,
        steps=steps or batches.num_batches, model=model)
  logs = _evaluate(runner, batches, steps, callbacks)
  if return_dict:
    return logs
  return _in_metric_order(model, logs)


def _in_metric_order(model, logs):
  names = []
  for metric in model.metrics:
    sub = getattr(metric, "metrics", None)
    if isinstance(metric, type(model._compile_metrics)) and sub is not None:
      names += [m.name for m in sub]
    else:
      names.append(metric.name)
  values = [logs[n] for n in names if n in logs]
  values += [logs[k] for k in sorted(logs) if k not in names]
  return values[0] if len(values) == 1 else values
