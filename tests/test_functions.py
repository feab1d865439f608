"""The compiled functions: one trace per signature, one XLA program per shape."""

import keras
import numpy as np
import tensorflow as tf

import trainer
from trainer import data, synthetic
from trainer.functions import FusedArraySteps


def _model(jit_compile=False, steps_per_execution=1):
  inputs = keras.Input((8,))
  outputs = keras.layers.Dense(1)(keras.layers.Dense(16, activation="relu")(inputs))
  model = keras.Model(inputs, outputs)
  model.compile(optimizer="adam", loss="mse", metrics=["mae"], jit_compile=jit_compile,
                steps_per_execution=steps_per_execution)
  return model


def _fused(model):
  (compiled,) = model._tapefit_runner._train.values()
  assert isinstance(compiled, FusedArraySteps)
  return compiled


def test_fused_path_traces_the_step_once_with_a_partial_batch():
  model = _model(steps_per_execution=3)
  x, y = synthetic.regression(100, 8)  # 4 batches of 32, the last of 4
  trainer.fit(model, x, y, batch_size=32, epochs=3, verbose=0)
  compiled = _fused(model)
  assert compiled.trace_count == 1
  assert int(model.optimizer.iterations) == 12


def test_xla_program_does_not_depend_on_the_first_batch_index():
  """The batch position is data, not a compile-time constant: one program."""
  model = _model(jit_compile=True, steps_per_execution=2)
  x, y = synthetic.regression(96, 8)
  trainer.fit(model, x, y, batch_size=32, epochs=1, verbose=0)
  compiled = _fused(model)
  arrays = data.DeviceArrays(x, y, batch_size=32)
  full, last = arrays.epoch_batches()

  def hlo(first):
    return compiled.steps.experimental_get_compiler_ir(
        full, last, tf.constant(first), tf.constant(1), tf.constant(False))(stage="hlo")

  assert hlo(0) == hlo(2)


def test_fused_and_iterator_paths_give_identical_history():
  x, y = synthetic.regression(100, 8)
  keras.utils.set_random_seed(0)
  a = _model(steps_per_execution=2)
  b = _model(steps_per_execution=2)
  b.set_weights(a.get_weights())
  fused = trainer.fit(a, x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
  iterated = trainer.fit(b, dataset, epochs=2, verbose=0).history
  assert fused == iterated
  for wa, wb in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_array_equal(wa, wb)
