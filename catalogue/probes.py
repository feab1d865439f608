"""Instruments that record, during training, what a relation is predicted from.

They record in the same forward pass as the loss (so they see exactly the
pre-update weights and the same Dropout masks) but compute nothing that the
loss or metrics use: the model's outputs are unchanged.
"""

import keras
import numpy as np
import tensorflow as tf


class RowRecorder(keras.layers.Layer):
  """Identity layer that appends `fn(inputs)` rows to a buffer in training calls.

  `fn` maps the layer's input to a (batch, width) float tensor. After a run,
  `rows()` returns everything recorded, in order, as float64.
  """

  def __init__(self, fn, width, capacity, **kwargs):
    super().__init__(**kwargs)
    self.fn = fn
    self.width = width
    self.capacity = capacity

  def build(self, input_shape):
    self.buffer = self.add_weight(shape=(self.capacity, self.width), initializer="zeros",
                                  trainable=False, name="buffer")
    self.cursor = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                  trainable=False, name="cursor")

  def call(self, inputs, training=None):
    if training:
      rows = tf.cast(self.fn(inputs), tf.float32)
      n = tf.shape(rows)[0]
      index = self.cursor.value + tf.range(n)
      self.buffer.assign(tf.tensor_scatter_nd_update(self.buffer.value, index[:, None],
                                                     rows))
      self.cursor.assign_add(n)
    return inputs

  def compute_output_spec(self, inputs, training=None):
    return keras.KerasTensor(inputs.shape, inputs.dtype)

  def rows(self):
    return self.buffer.numpy()[: int(self.cursor.numpy())].astype(np.float64)

  def reset(self):
    self.buffer.assign(tf.zeros_like(self.buffer))
    self.cursor.assign(0)


class PreUpdateWeights(keras.callbacks.Callback):
  """Keeps float64 copies of chosen weights at the start of every train batch.

  With steps_per_execution=1 `on_train_batch_begin` runs right before each
  step, so these are the weights that step's loss (and regularizers) see.
  """

  def __init__(self, pick):
    super().__init__()
    self.pick = pick
    self.snapshots = []

  def on_train_batch_begin(self, batch, logs=None):
    self.snapshots.append([np.array(w, np.float64) for w in self.pick(self.model)])


def batch_sizes(num_samples, batch_size):
  full, rest = divmod(num_samples, batch_size)
  return [batch_size] * full + ([rest] if rest else [])


def split_by_epoch(values, num_samples, batch_size, epochs):
  """Splits a flat per-batch list into epochs of ceil(N/B) batches."""
  per_epoch = len(batch_sizes(num_samples, batch_size))
  assert len(values) == per_epoch * epochs, (len(values), per_epoch, epochs)
  return [values[e * per_epoch:(e + 1) * per_epoch] for e in range(epochs)]
