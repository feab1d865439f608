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
