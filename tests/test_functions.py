"""The compiled functions: one trace per signature, one XLA program per shape."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer
from trainer import data, synthetic
from trainer.compare import Comparison, copy_state
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
  arrays = data.DeviceArrays(x, y, batch_size=32, shuffle=True)

  def hlo(first, order):
    return compiled.steps.experimental_get_compiler_ir(
        arrays.data, order, tf.constant(first), tf.constant(1), tf.constant(False),
        tf.constant(True))(
            stage="hlo")

  assert hlo(0, None) == hlo(2, None)
  assert hlo(0, arrays.epoch_order()) == hlo(2, arrays.epoch_order())


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


def _cnn(jit_compile=True):
  inputs = keras.Input((8, 8, 2))
  hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
  outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
  model = keras.Model(inputs, outputs)
  model.compile(optimizer="adam", metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile, steps_per_execution=3)
  return model


def _images(n):
  rng = np.random.default_rng(3)
  return (rng.normal(size=(n, 8, 8, 2)).astype(np.float32),
          rng.integers(0, 3, size=(n,)).astype(np.int32))


@pytest.mark.parametrize("xla_scope", ["auto", "loop", "step"])
def test_xla_scope_matches_fit_and_auto_picks_step_for_convolutions_on_cpu(xla_scope):
  """Both XLA scopes train as fit does (XLA rule: 1e-6 relative); "auto" resolves
  to "step" for a model with a Conv2D on this GPU-less machine."""
  x, y = _images(70)  # 3 full batches of 20 and a partial one of 10
  keras.utils.set_random_seed(0)
  reference, ours = _cnn(), _cnn()
  copy_state(reference, ours)
  expected = reference.fit(x, y, batch_size=20, epochs=2, verbose=0, shuffle=False).history
  got = trainer.fit(ours, x, y, batch_size=20, epochs=2, verbose=0, shuffle=False,
                    xla_scope=xla_scope).history
  compiled = _fused(ours)
  assert compiled.xla_scope == ("step" if xla_scope == "auto" else xla_scope)
  assert compiled.trace_count == 1
  # "loop" compiles the convolutions inside the while loop, where XLA's CPU
  # backend emits them as plain loops rather than the Eigen kernels fit's
  # per-step program calls: the sums are ordered differently, which moved a
  # near-zero conv bias by 7.4e-10 (beyond 1e-6 relative of a ~1e-4 value).
  # "step" compiles the same per-step program as fit: no floor.
  floor = 1e-8 if xla_scope == "loop" else 0.0
  Comparison.of(reference, ours, expected, got).assert_within(rel=1e-6, abs_floor=floor)


def test_auto_xla_scope_is_the_whole_loop_without_convolutions():
  model = _model(jit_compile=True, steps_per_execution=2)
  x, y = synthetic.regression(64, 8)
  trainer.fit(model, x, y, batch_size=32, epochs=1, verbose=0)
  assert _fused(model).xla_scope == "loop"
