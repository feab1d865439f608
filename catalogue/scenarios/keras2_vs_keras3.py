"""Scenario 10: Keras 2's `add_metric` versus `add_loss`, beside Keras 3.

The same network, data and initial weights under tf_keras (Keras 2) and
Keras 3, compiled with `loss=None`, so the only loss is `add_loss(t)` for
t = mean((y_pred - y)^2), and the metric tracks the same t:

  * Keras 2: `add_metric(t)`. With no compiled loss, Keras 2's loss tracker
    has no batch dimension to weight by, so both are per-batch means:
        loss = t_metric = sum_b t_b / B          (exactly, same accumulation)
  * Keras 3: `Mean(t)` in `call()`; the loss tracker weights by n_b:
        loss - t_metric = sum_b n_b t_b / N - mean_b t_b

With a partial last batch the two versions report different losses for the
same model. `trainer.fit` reproduces each version's `fit` bit for bit.
"""

import numpy as np
import tf_keras

from catalogue import probes
from catalogue.framework import Measurement, scenario
from catalogue.scenarios import same_tensor
from trainer import compare, synthetic


class Keras2SameTensor(tf_keras.layers.Layer):
  """Keras 2: add_loss(t), add_metric(t) and a record of t per training call."""

  def __init__(self, capacity, **kwargs):
    super().__init__(**kwargs)
    self.capacity = capacity

  def build(self, input_shape):
    self.t_values = self.add_weight("t_values", shape=(self.capacity,), trainable=False,
                                    initializer="zeros")
    self.t_count = self.add_weight("t_count", shape=(), dtype="int32", trainable=False,
                                   initializer="zeros")

  def call(self, inputs, training=None):
    import tensorflow as tf
    y_pred, y_true = inputs
    t = tf.reduce_mean(tf.square(y_pred - y_true))
    self.add_loss(t)
    self.add_metric(t, name="t_metric")
    if training:
      self.t_values.assign(tf.tensor_scatter_nd_update(
          self.t_values, tf.reshape(self.t_count, [1, 1]), tf.reshape(t, [1])))
      self.t_count.assign_add(1)
    return y_pred

  def recorded(self):
    return self.t_values.numpy()[: int(self.t_count.numpy())].astype(np.float64)


def build_keras2_model(num_features, capacity, weights=None):
  x = tf_keras.Input((num_features,), name="x")
  y = tf_keras.Input((1,), name="y")
  hidden = tf_keras.layers.Dense(16, activation="relu")(x)
  y_pred = tf_keras.layers.Dense(1)(hidden)
  out = Keras2SameTensor(capacity, name="same_tensor")([y_pred, y])
  model = tf_keras.Model([x, y], out)
  if weights is not None:
    model.set_weights(weights)
  model.compile(optimizer=tf_keras.optimizers.SGD(0.05), loss=None)
  return model


RELATION = ("K2: loss = t_metric = sum_b t_b / B; "
            "K3: loss - t_metric = sum_b n_b t_b / N - mean_b t_b")


@scenario("keras2_add_metric", "Keras 2 add_metric vs add_loss, beside Keras 3", RELATION)
def keras2_add_metric(config):
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  batch_size = same_tensor.partial_batch_size(config.num_samples)
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  capacity = len(sizes) * config.epochs
  fit_kwargs = dict(batch_size=batch_size, epochs=config.epochs, shuffle=False)

  # Shared initial weights: the Keras 2 model's, copied into every model.
  tf_keras.utils.set_random_seed(config.seed)
  initial = build_keras2_model(config.num_features, capacity).get_weights()
  k2 = compare.run_both(lambda: build_keras2_model(config.num_features, capacity, initial),
                        [x, y], None, **fit_kwargs)

  def build_keras3():
    model = same_tensor.build_same_tensor_model(config.num_features, capacity)
    trainable = [w for w in model.weights if w.trainable]
    for variable, value in zip(trainable, initial):
      variable.assign(value)
    return model

  k3 = compare.run_both(build_keras3, [x, y], None, **fit_kwargs)

  k2_t = probes.split_by_epoch(
      list(k2.tapefit_model.get_layer("same_tensor").recorded()),
      config.num_samples, batch_size, config.epochs)
  k3_t = probes.split_by_epoch(
      list(k3.tapefit_model.get_layer("same_tensor").recorder.rows()[:, 0]),
      config.num_samples, batch_size, config.epochs)
  tolerance = 4 * len(sizes) * np.finfo(np.float32).eps
  epochs, checks = [], {}
  for e in range(config.epochs):
    k2_loss, k2_metric = k2.tapefit_history["loss"][e], k2.tapefit_history["t_metric"][e]
    k3_loss, k3_metric = k3.tapefit_history["loss"][e], k3.tapefit_history["t_metric"][e]
    k2_mean = float(np.mean(k2_t[e]))
    k3_loss_pred, k3_metric_pred = same_tensor.predicted_loss_and_metric(k3_t[e], sizes)
    scale = max(abs(k3_loss), 1.0)
    checks[f"epoch {e + 1}: K2 loss == K2 t_metric exactly"] = k2_loss == k2_metric
    checks[f"epoch {e + 1}: K2 loss = mean_b t_b (recorded)"] = (
        abs(k2_loss - k2_mean) <= tolerance * scale)
    checks[f"epoch {e + 1}: K3 loss - t_metric as predicted"] = (
        abs((k3_loss - k3_metric) - (k3_loss_pred - k3_metric_pred)) <= tolerance * scale)
    epochs.append({"epoch": e + 1, "K2 loss": k2_loss, "K2 t_metric": k2_metric,
                   "K3 loss": k3_loss, "K3 t_metric": k3_metric,
                   "K3 predicted loss - t_metric": k3_loss_pred - k3_metric_pred,
                   "K2 loss - K3 loss": k2_loss - k3_loss})
  last = epochs[-1]
  return Measurement(
      scenario="keras2_add_metric", relation=RELATION,
      loss=last["K2 loss"], metric=last["K2 t_metric"], predicted_diff=0.0,
      measured_diff=last["K2 loss"] - last["K2 t_metric"],
      tolerance=0.0, fit_max_diff=max(k2.max_abs_diff(), k3.max_abs_diff()),
      checks=checks,
      details={"batch sizes": f"{len(sizes)} batches, last {sizes[-1]}",
               "tf_keras fit vs trainer.fit max diff": k2.max_abs_diff(),
               "keras fit vs trainer.fit max diff": k3.max_abs_diff(),
               "per epoch (side by side)": epochs})
