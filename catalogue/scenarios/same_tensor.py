"""Scenarios 1 and 2: one tensor through `add_loss` and through a `Mean` metric.

The model computes t = mean((y_pred - y)^2) inside a layer, passes it to
`add_loss(t)` and to a `keras.metrics.Mean` updated in `call()` (Keras 3's
replacement for `add_metric`), and is compiled with `loss=None`, so the
reported `loss` and the metric `t_metric` track the very same tensor.

The loss tracker weights batch b by its size n_b; the `Mean` weights every
batch by 1:

    loss     = sum_b n_b t_b / sum_b n_b
    t_metric = sum_b t_b / B

Equal batch sizes make them equal up to float32 rounding (scenario 1); a
partial last batch pulls them apart by a difference predicted from the
per-batch t_b recorded during the same forward passes (scenario 2).
"""

import keras
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from trainer import compare, synthetic


class SameTensorLoss(keras.layers.Layer):
  """add_loss(t) and t_metric.update_state(t) for t = mean((y_pred - y)^2)."""

  def __init__(self, capacity, **kwargs):
    super().__init__(**kwargs)
    self.t_metric = keras.metrics.Mean(name="t_metric")
    self.recorder = probes.RowRecorder(lambda t: keras.ops.reshape(t, (1, 1)), 1, capacity)

  def call(self, inputs, training=None):
    y_pred, y_true = inputs
    t = keras.ops.mean(keras.ops.square(y_pred - y_true))
    self.add_loss(t)
    self.t_metric.update_state(t)
    self.recorder(t, training=training)
    return y_pred


def build_same_tensor_model(num_features, capacity, optimizer=None):
  x = keras.Input((num_features,), name="x")
  y = keras.Input((1,), name="y")
  hidden = keras.layers.Dense(16, activation="relu")(x)
  y_pred = keras.layers.Dense(1)(hidden)
  out = SameTensorLoss(capacity, name="same_tensor")([y_pred, y])
  model = keras.Model([x, y], out)
  model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05), loss=None)
  return model


def predicted_loss_and_metric(t_values, sizes):
  """(sum n_b t_b / sum n_b, mean_b t_b) in float64 for one epoch."""
  t = np.asarray(t_values, np.float64)
  n = np.asarray(sizes, np.float64)
  return float(np.sum(n * t) / np.sum(n)), float(np.mean(t))


def run_recorded(config, batch_size, optimizer_fn=None, **run_kwargs):
  """Trains the same-tensor model with Model.fit and trainer.fit from equal weights.

  Returns (comparison, the recorded t_b of each epoch from the tapefit run,
  the batch sizes n_b). `run_kwargs` go to `compare.run_both`.
  """
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  capacity = len(sizes) * config.epochs

  def build():
    return build_same_tensor_model(config.num_features, capacity,
                                   optimizer_fn() if optimizer_fn else None)

  result = compare.run_both(build, [x, y], None, batch_size=batch_size,
                            epochs=config.epochs, shuffle=False, **run_kwargs)
  t_rows = result.tapefit_model.get_layer("same_tensor").recorder.rows()[:, 0]
  per_epoch = probes.split_by_epoch(list(t_rows), config.num_samples, batch_size,
                                    config.epochs)
  return result, per_epoch, sizes


def rounding_tolerance(num_batches, loss):
  """float32 accumulators: each of ~B additions rounds by <= eps/2 of the running total."""
  return 4 * num_batches * np.finfo(np.float32).eps * max(abs(loss), 1.0)


def epoch_rows(history, per_epoch, sizes):
  """Per epoch: History's loss and t_metric beside the values predicted from t_b."""
  rows = []
  for e, t_values in enumerate(per_epoch):
    loss_pred, metric_pred = predicted_loss_and_metric(t_values, sizes)
    rows.append({
        "epoch": e + 1, "loss": history["loss"][e], "t_metric": history["t_metric"][e],
        "predicted loss": loss_pred, "predicted t_metric": metric_pred,
        "predicted diff": loss_pred - metric_pred,
        "measured diff": history["loss"][e] - history["t_metric"][e]})
  return rows


def measure(config, batch_size, name, relation, optimizer_fn=None):
  result, per_epoch, sizes = run_recorded(config, batch_size, optimizer_fn)
  epochs = epoch_rows(result.tapefit_history, per_epoch, sizes)
  last = epochs[-1]
  tolerance = rounding_tolerance(len(sizes), last["loss"])
  checks = {
      f"epoch {row['epoch']}: |measured - predicted| <= tolerance":
          abs(row["measured diff"] - row["predicted diff"]) <= tolerance for row in epochs}
  return Measurement(
      scenario=name, relation=relation, loss=last["loss"], metric=last["t_metric"],
      predicted_diff=last["predicted diff"], measured_diff=last["measured diff"],
      tolerance=tolerance, fit_max_diff=result.max_abs_diff(), checks=checks,
      details={"batch sizes": f"{len(sizes)} batches, last {sizes[-1]}",
               "per epoch": epochs})


def divisor_batch_size(num_samples, target=40):
  """The batch size nearest `target` that divides N (all batches full)."""
  divisors = [b for b in range(8, num_samples + 1) if num_samples % b == 0]
  return min(divisors, key=lambda b: (abs(b - target), b))


def partial_batch_size(num_samples, target=32):
  """A batch size near `target` that leaves a partial last batch."""
  for b in [target] + [target + k for k in range(1, target)]:
    if num_samples % b:
      return b
  raise ValueError(f"No batch size near {target} leaves a partial batch of {num_samples}.")


@scenario("same_tensor_full_batches", "add_loss(t) vs Mean(t), all batches full",
          "loss = sum n_b t_b / N = mean_b t_b (n_b all equal)")
def same_tensor_full_batches(config):
  return measure(config, divisor_batch_size(config.num_samples), "same_tensor_full_batches",
                 "loss = sum n_b t_b / N = mean_b t_b (n_b all equal)")


@scenario("same_tensor_partial_batch", "add_loss(t) vs Mean(t), partial last batch",
          "loss - metric = sum n_b t_b / N - mean_b t_b")
def same_tensor_partial_batch(config):
  return measure(config, partial_batch_size(config.num_samples), "same_tensor_partial_batch",
                 "loss - metric = sum n_b t_b / N - mean_b t_b")
