"""Batches for the step: in-memory arrays or a `tf.data.Dataset`.

Arrays are batched in order (or reshuffled each epoch), float arrays are cast
to `keras.config.floatx()`, and `class_weight` becomes per-sample weights, as
`Model.fit`'s array adapter does. The batch dimension is static exactly when
every batch is full; that matters because a `<output>_loss` tracker weights a
batch by the static batch size (or by 1 when unknown).
"""

import dataclasses
import math
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf
from keras import tree

import kernels
from trainer import structure


@dataclasses.dataclass
class Batches:
  """A dataset of batches and how many there are per epoch (None: unknown)."""

  dataset: Any
  num_batches: Optional[int]

  @property
  def element_spec(self):
    return self.dataset.element_spec


def _to_array(value):
  """A NumPy array, float arrays cast to floatx; a tf.Tensor stays a tensor
  (already on its device: no round trip through the host)."""
  floatx = keras.config.floatx()
  if isinstance(value, tf.Tensor):
    if value.dtype.is_floating and value.dtype != tf.as_dtype(floatx):
      value = tf.cast(value, floatx)
    return value
  array = np.asarray(value)
  if array.dtype.kind == "f" and array.dtype != np.dtype(floatx):
    array = array.astype(floatx)
  return array


def class_weight_table(class_weight, num_classes):
  """A 1-D float32 table: entry c = class_weight.get(c, 1.0)."""
  size = max(num_classes, max(class_weight) + 1)
  return np.array([float(class_weight.get(c, 1.0)) for c in range(size)], np.float32)


def prepare_arrays(x, y=None, sample_weight=None, class_weight=None):
  """Returns the (x[, y[, sample_weight]]) tuple `fit` trains on, as NumPy arrays.

  Float arrays are cast to floatx, lists become tuples, one sample_weight
  array with several outputs applies to each output, and `class_weight`
  becomes per-sample weights.
  """
  x = tree.map_structure(_to_array, tree.lists_to_tuples(x))
  y = None if y is None else tree.map_structure(_to_array, tree.lists_to_tuples(y))
  if sample_weight is not None:
    sample_weight = tree.map_structure(_to_array, tree.lists_to_tuples(sample_weight))
    if tree.is_nested(y) and not tree.is_nested(sample_weight):
      sample_weight = tree.map_structure(lambda _: sample_weight, y)
  if class_weight is not None:
    y_np = np.asarray(y)
    if y_np.ndim > 1 and y_np.shape[-1] > 1:
      num_classes = y_np.shape[-1]
    else:
      num_classes = int(np.round(y_np).max()) + 1 if y_np.size else 0
    table = class_weight_table(class_weight, num_classes)
    sample_weight = kernels.class_weights_to_sample_weights(
        tf.constant(y_np), tf.constant(table)).numpy()
  return structure.pack_batch(x, y, sample_weight)


def batch_spec(data, batch_size):
  """The element spec `fit`'s dataset has: batch dim static iff no partial batch."""
  num_samples = tree.flatten(data)[0].shape[0]
  batch_dim = batch_size if num_samples % batch_size == 0 else None
  return tree.map_structure(
      lambda a: tf.TensorSpec((batch_dim,) + a.shape[1:], tf.as_dtype(a.dtype)), data)


def array_batches(x, y=None, sample_weight=None, *, batch_size, shuffle=False,
                  class_weight=None):
  """Batches in-memory arrays (nested lists and dicts of arrays allowed), as `fit` does.

  The same pipeline as `fit`'s array adapter, so the batches (and, with a
  global seed, the shuffles) are `fit`'s: one dataset element per epoch holds
  the sample order (`epoch_permutations`), split into index batches (the
  partial one last), optionally shuffled within each batch, then gathered
  from the arrays.

  Args:
    x, y, sample_weight: arrays with the same first dimension; a single
      sample_weight array with several outputs applies to each output.
    batch_size: samples per batch; the last batch holds the remainder.
    shuffle: True reshuffles all samples every epoch; "batch" shuffles within
      each batch; False keeps the order.
    class_weight: {class id: weight}; turned into sample weights.
  """
  data = prepare_arrays(x, y, sample_weight, class_weight)
  num_samples = tree.flatten(data)[0].shape[0]
  split = (num_samples // batch_size) * batch_size

  if shuffle and shuffle != "batch":
    orders = epoch_permutations(num_samples)
  else:
    orders = tf.data.Dataset.range(1).map(
        lambda _: tf.range(num_samples, dtype=tf.int64))

  def index_batches(order):
    full = tf.reshape(order[:split], [split // batch_size, batch_size])
    batches = tf.data.Dataset.from_tensor_slices(full)
    if split < num_samples:
      batches = batches.concatenate(tf.data.Dataset.from_tensors(order[split:]))
    return batches

  indices = orders.flat_map(index_batches)
  if shuffle == "batch":
    indices = indices.map(tf.random.shuffle)
  tensors = tf.data.Dataset.from_tensors(
      tree.map_structure(tf.convert_to_tensor, data)).repeat()

  def gather(batch_indices, arrays):
    return tree.map_structure(lambda a: tf.gather(a, batch_indices, axis=0), arrays)

  dataset = tf.data.Dataset.zip((indices, tensors)).map(gather)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  return Batches(dataset, int(math.ceil(num_samples / batch_size)))


class DeviceArrays:
  """In-memory training data held as tensors on the device, batched in-graph.

  The samples are converted to tensors once per `fit` call and passed whole
  to the fused loop (`trainer.functions.FusedArraySteps`), which lays them out
  as `[num_full, B, ...]` full batches plus the partial remainder inside the
  compiled function (`epoch_layout`), so an unshuffled epoch runs no eager op
  at all. With `shuffle=True`, `epoch_order()` draws the epoch's permutation
  (one `tf.random.shuffle`, as `fit` draws it) and the loop gathers each
  batch's rows through it. No `tf.data` iterator runs per step.
  """

  def __init__(self, x, y=None, sample_weight=None, *, batch_size, shuffle=False,
               class_weight=None):
    if shuffle == "batch":
      raise ValueError('`shuffle="batch"` is not supported by the in-memory fast path.')
    data = prepare_arrays(x, y, sample_weight, class_weight)
    self.element_spec = batch_spec(data, batch_size)
    self.data = tree.map_structure(tf.convert_to_tensor, data)
    self.num_samples = tree.flatten(data)[0].shape[0]
    self.batch_size = batch_size
    self.shuffle = bool(shuffle)
    self.num_full_batches = self.num_samples // batch_size
    self.remainder = self.num_samples % batch_size
    self.num_batches = int(math.ceil(self.num_samples / batch_size))

    self._orders = epoch_permutations(self.num_samples) if self.shuffle else None

  def epoch_order(self):
    """This epoch's sample order: None for 0..N-1, else the epoch's permutation."""
    if self._orders is None:
      return None
    return next(iter(self._orders))


def epoch_permutations(num_samples):
  """A dataset whose one element is an epoch's permutation of 0..N-1, drawn as `fit` draws it.

  `fit` shuffles arrays with `tf.random.shuffle` inside a `tf.data` map over
  `Dataset.range(1)`, one fresh iterator per epoch. Its op seed comes from the
  global seed and the op's position in the map function's graph, so drawing
  the permutation from the same one-op-for-one-op map function gives the
  permutations `fit` trains on (an eager `tf.random.shuffle` would draw
  different ones).
  """

  def permutation(_):
    indices = tf.range(num_samples, dtype=tf.int64)
    return tf.random.shuffle(indices)

  return tf.data.Dataset.range(1).map(permutation)


def epoch_layout(data, order, batch_size):
  """(batch_at, last): the epoch's batches, built inside the compiled function.

  `batch_at(i)` is full batch i; `last` is the partial last batch (None when
  every batch is full). The shapes are static, so the split is too. Without
  `order` a batch is a gather on the leading axis of the `[num_full, B, ...]`
  reshape (a dynamic slice: no copy of the data); with `order` it gathers the
  batch's rows of the permutation. Gathers, not `tf.slice`s: XLA treats a
  slice's start as a compile-time constant and would compile one program per
  batch index.
  """
  num_samples = tree.flatten(data)[0].shape[0]
  num_full = num_samples // batch_size
  split = num_full * batch_size

  def stacked(a):
    head = a if split == num_samples else a[:split]
    return tf.reshape(head, [num_full, batch_size] + a.shape[1:].as_list())

  if order is None:
    full = tree.map_structure(stacked, data)

    def batch_at(index):
      return tree.map_structure(lambda a: tf.gather(a, index, axis=0), full)

    last = tree.map_structure(lambda a: a[split:], data) if split < num_samples else None
  else:
    rows = stacked(order)

    def batch_at(index):
      picked = tf.gather(rows, index, axis=0)
      return tree.map_structure(lambda a: tf.gather(a, picked, axis=0), data)

    tail = order[split:]
    last = (tree.map_structure(lambda a: tf.gather(a, tail, axis=0), data)
            if split < num_samples else None)
  return batch_at, last


def dataset_batches(dataset, class_weight=None):
  """Uses a user's dataset of (x, y[, sample_weight]) batches as it is."""
  if class_weight is not None:
    table = tf.constant(class_weight_table(class_weight, 0))

    def add_class_weights(*batch):
      x, y, _ = structure.unpack_batch(batch)
      return x, y, kernels.class_weights_to_sample_weights(y, table)

    dataset = dataset.map(add_class_weights)
  cardinality = int(dataset.cardinality().numpy())
  return Batches(dataset, cardinality if cardinality >= 0 else None)


def make_batches(x, y=None, sample_weight=None, *, batch_size, shuffle=False,
                 class_weight=None):
  if isinstance(x, tf.data.Dataset):
    return dataset_batches(x, class_weight)
  return array_batches(x, y, sample_weight, batch_size=batch_size, shuffle=shuffle,
                       class_weight=class_weight)


class EpochSteps:
  """Yields (first step, last step) of each execution in one epoch.

  Mirrors `fit`'s epoch iterator: with `steps_per_epoch` set, one iterator
  carries over epochs until the data is used up; otherwise every epoch starts
  a fresh pass over the data. A dataset of unknown length ends the epoch when
  it raises `OutOfRangeError`.
  """

  def __init__(self, batches, steps_per_epoch=None, steps_per_execution=1):
    self.batches = batches
    self.steps_per_epoch = steps_per_epoch
    self.steps_per_execution = steps_per_execution
    self._iterator = None
    self._seen = 0

  @property
  def num_batches(self):
    return self.steps_per_epoch or self.batches.num_batches

  def iterator(self):
    if self._iterator is None or self.steps_per_epoch is None:
      self._iterator = iter(self.batches.dataset)
      self._seen = 0
    return self._iterator

  def executions(self):
    """(begin, end) step numbers of each call of the compiled function."""
    total = self.num_batches
    known = self.batches.num_batches
    step = 0
    while total is None or step < total:
      if known is not None and self._seen >= known:
        break
      yield step, step + self.steps_per_execution - 1
      self._seen += self.steps_per_execution
      step += self.steps_per_execution
    if known is not None and self._seen >= known:
      self._iterator = None

  def exhausted(self):
    """The iterator ran dry mid-epoch: start afresh next time."""
    if self.batches.num_batches is None:
      self.batches.num_batches = self._seen
    self._iterator = None
