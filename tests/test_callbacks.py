"""Keras callbacks that write files see the same model state under both loops."""

import glob
import os

import keras
import numpy as np
import tensorflow as tf

import trainer
from tests.fit_compare import copy_state
from trainer import synthetic


def _build():
  inputs = keras.Input((8,))
  hidden = keras.layers.Dense(16, activation="relu")(inputs)
  outputs = keras.layers.Dense(1)(hidden)
  model = keras.Model(inputs, outputs)
  model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
  return model


def _pair():
  keras.utils.set_random_seed(0)
  reference = _build()
  ours = _build()
  copy_state(reference, ours)
  return reference, ours


def _scalars(log_dir):
  """{(tag, step): value} from every event file under log_dir."""
  values = {}
  for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
    split = os.path.basename(os.path.dirname(path))
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.HasField("simple_value"):
          values[(split, value.tag, event.step)] = value.simple_value
        elif value.HasField("tensor") and value.tensor.dtype == tf.float32.as_datatype_enum:
          values[(split, value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  return values


def test_tensorboard_scalars_equal_fit(tmp_path):
  x, y = synthetic.regression(100, 8)
  reference, ours = _pair()
  kwargs = dict(batch_size=32, epochs=2, shuffle=False, verbose=0,
                validation_data=(x[:40], y[:40]))
  reference.fit(x, y, callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "fit"))], **kwargs)
  trainer.fit(ours, x, y, callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "tf"))],
              **kwargs)
  fit_scalars = _scalars(str(tmp_path / "fit"))
  our_scalars = _scalars(str(tmp_path / "tf"))
  assert any(tag == "epoch_loss" for _, tag, _ in fit_scalars)
  assert fit_scalars == our_scalars


def test_model_checkpoint_saves_the_same_best_model(tmp_path):
  x, y = synthetic.regression(100, 8)
  reference, ours = _pair()
  kwargs = dict(batch_size=32, epochs=3, shuffle=False, verbose=0,
                validation_data=(x[:40], y[:40]))
  reference.fit(x, y, callbacks=[keras.callbacks.ModelCheckpoint(
      str(tmp_path / "fit.keras"), monitor="val_loss", save_best_only=True)], **kwargs)
  trainer.fit(ours, x, y, callbacks=[keras.callbacks.ModelCheckpoint(
      str(tmp_path / "tf.keras"), monitor="val_loss", save_best_only=True)], **kwargs)
  saved_fit = keras.models.load_model(str(tmp_path / "fit.keras"))
  saved_ours = keras.models.load_model(str(tmp_path / "tf.keras"))
  for a, b in zip(saved_fit.get_weights(), saved_ours.get_weights()):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(saved_fit.optimizer.iterations.numpy(),
                                saved_ours.optimizer.iterations.numpy())


class _MetricReader(keras.callbacks.Callback):
  """Reads every metric's state where fit has just reset it, and after each step."""

  def __init__(self):
    super().__init__()
    self.seen = []

  def _read(self, hook, index):
    values = {m.name: tuple(float(keras.ops.convert_to_numpy(v)) for v in m.variables)
              for m in self.model.metrics}
    self.seen.append((hook, index, values))

  def on_epoch_begin(self, epoch, logs=None):
    self._read("epoch_begin", epoch)

  def on_train_batch_begin(self, batch, logs=None):
    self._read("batch_begin", batch)

  def on_test_begin(self, logs=None):
    self._read("test_begin", 0)

  def on_test_batch_begin(self, batch, logs=None):
    self._read("test_batch_begin", batch)


def test_a_user_callback_sees_the_metrics_reset_where_fit_resets_them():
  """With a user callback the reset stays a call of its own, before on_epoch_begin:
  the callback reads the same (zeroed, then accumulated) metric state as under fit.
  (With only Keras's callbacks the fused path folds the reset into the first call.)"""
  x, y = synthetic.regression(96, 8)
  reference, ours = _pair()
  expected, got = _MetricReader(), _MetricReader()
  kwargs = dict(batch_size=32, epochs=2, verbose=0, shuffle=False,
                validation_data=(x[:40], y[:40]))
  reference.fit(x, y, callbacks=[expected], **kwargs)
  trainer.fit(ours, x, y, callbacks=[got], **kwargs)
  # fit builds its compiled metrics in the first step, tapefit before it, so
  # at the first on_epoch_begin only fit's have no variables yet: compare
  # the states that exist on both sides.
  assert [(h, i) for h, i, _ in got.seen] == [(h, i) for h, i, _ in expected.seen]
  for (hook, index, ours_state), (_, _, fit_state) in zip(got.seen, expected.seen):
    for name, state in fit_state.items():
      if state:
        assert ours_state[name] == state, (hook, index, name)
  begins = [values for hook, _, values in expected.seen if hook == "epoch_begin"]
  assert all(v == 0.0 for values in begins for state in values.values() for v in state)
