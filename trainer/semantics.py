"""Which `fit` to reproduce: Keras 3's, chosen from the model's type.

The outer loop asks a `Semantics` object for everything that differs between
Keras versions: the step classes, the callback module, how the model and its
compiled state are built, and how metrics are read and reset. Keras 3 is
`KERAS3`; Keras 2 (tf_keras) models get `trainer.keras2.KERAS2`.
"""

import sys

import keras
from keras import tree

from trainer import step as step_module
from trainer.config import StepConfig


class Keras3Semantics:
  """`keras.Model.fit` (Keras 3, TF backend)."""

  name = "keras3"
  # In-memory arrays may take the fused fast path (`trainer.functions.FusedArraySteps`).
  fused_inputs = True
  TrainStep = step_module.TrainStep
  TestStep = step_module.TestStep
  callbacks = keras.callbacks

  @staticmethod
  def matches(model):
    return isinstance(model, keras.Model)

  @staticmethod
  def config(model, **overrides):
    return StepConfig.from_model(model, **overrides)

  @staticmethod
  def build(model, element_spec):
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
      model._symbolic_build(data_batch=element_spec)

  @staticmethod
  def output_shapes(model, x):
    """Per-output shapes of `model` on inputs shaped like `x`, without running it."""
    def spec(a):
      return keras.KerasTensor((None,) + tuple(a.shape[1:]),
                               dtype=keras.backend.standardize_dtype(a.dtype))

    outputs = model.compute_output_spec(tree.map_structure(spec, tree.lists_to_tuples(x)))
    return [tuple(o.shape) for o in tree.flatten(outputs)]

  results = staticmethod(step_module.results)
  reset_metrics = staticmethod(step_module.reset_metrics)

  @staticmethod
  def metric_names(model):
    """Names in `model.metrics` order, compiled metrics expanded (evaluate's list order)."""
    names = []
    for metric in model.metrics:
      if metric is model._compile_metrics:
        names += [m.name for m in metric.metrics]
      else:
        names.append(metric.name)
    return names


KERAS3 = Keras3Semantics()
_REGISTRY = [KERAS3]


def register(semantics):
  """Adds another `fit` to reproduce (e.g. Keras 2), tried before Keras 3."""
  _REGISTRY.insert(0, semantics)


def semantics_for(model):
  if "tf_keras" in sys.modules:  # Only then can `model` be a tf_keras model.
    import trainer.keras2  # noqa: F401  pylint: disable=g-import-not-at-top  (registers KERAS2)
  for semantics in _REGISTRY:
    if semantics.matches(model):
      return semantics
  raise TypeError(
      f"`model` ({type(model).__module__}.{type(model).__name__}) must be a Keras 3 "
      "`keras.Model` or a tf_keras (Keras 2) model.")
