"""Scenario 7: Dropout. History's training-mode loss versus `evaluate`.

An MLP with Dropout(0.3, seed) trains with `loss="mse"`. History's `loss` is
the batch-size-weighted mean of per-batch losses computed in TRAINING mode
(dropout masks applied) at each step's PRE-update weights; `evaluate` runs in
INFERENCE mode at the FINAL weights. The gap splits into two measured parts:

    L_hist - L_eval = (L_hist - L_inf_traj)  +  (L_inf_traj - L_eval)
                       dropout part              moving-weights part

    L_inf_traj = sum_b n_b * mse(model(x_b, training=False) at step b's
                 pre-update weights, y_b) / N

Each term is predicted from its own record, never from History:
  * L_hist: a RowRecorder after the output records the training-mode y_pred
    rows of every step (same forward pass, same masks); the batch-weighted
    float64 mse of those rows.
  * L_inf_traj: a callback at `on_train_batch_begin` (steps_per_execution=1)
    calls model(x_b, training=False) on the batch the step is about to see.
    Inference mode draws no dropout RNG, which is checked: a plain
    `Model.fit` without the callback ends bitwise where the probed runs do.
  * L_eval: a float64 NumPy forward pass at the final weights.
"""

import keras
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from trainer import compare, synthetic

NAME = "dropout"
TITLE = "Dropout: training-mode History vs inference-mode evaluate"
RELATION = ("L_hist - L_eval = (L_hist - L_inf_traj) [dropout] + (L_inf_traj - L_eval) "
            "[moving weights]; L_inf_traj = sum_b n_b mse(f_inf(x_b; w_b^pre)) / N")

BATCH_SIZE = 32
RATE = 0.3
SEED = 123


class InferenceTrajectory(keras.callbacks.Callback):
  """Per step: float64 squared errors of model(x_b, training=False), pre-update.

  At `on_train_batch_begin` with steps_per_execution=1 the weights are the
  ones the step's loss is about to see. Records separately per model, since
  `compare.run_both` passes the same callback to both fits.
  """

  def __init__(self, x, y, batch_size):
    super().__init__()
    self.x, self.y, self.batch_size = x, y, batch_size
    self.records = {}

  def on_train_batch_begin(self, batch, logs=None):
    lo = batch * self.batch_size
    xb, yb = self.x[lo:lo + self.batch_size], self.y[lo:lo + self.batch_size]
    y_pred = np.asarray(self.model(xb, training=False), np.float64)
    self.records.setdefault(id(self.model), []).append(
        np.mean((y_pred - yb.astype(np.float64)) ** 2, axis=-1))


def build_dropout_model(num_features, capacity):
  x = keras.Input((num_features,), name="x")
  h = keras.layers.Dense(32, activation="relu", name="hidden")(x)
  h = keras.layers.Dropout(RATE, seed=SEED, name="dropout")(h)
  y_pred = keras.layers.Dense(1, name="out")(h)
  # Identity: records the training-mode y_pred rows (after the dropout mask).
  out = probes.RowRecorder(lambda t: t, 1, capacity, name="y_pred_rows")(y_pred)
  model = keras.Model(x, out)
  model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse",
                jit_compile=False, steps_per_execution=1)
  return model


def float64_forward(weights, x):
  """Inference-mode MLP (Dropout is the identity) in float64."""
  k1, b1, k2, b2 = [np.asarray(w, np.float64) for w in weights]
  h = np.maximum(x.astype(np.float64) @ k1 + b1, 0.0)
  return h @ k2 + b2


def forward_error_bound(weights, x):
  """Per-sample bound on |float32 forward - float64 forward| of that MLP.

  Standard dot-product bound, any summation order: a length-m dot product
  plus bias rounds by <= (m+1)u * sum|terms|, u = eps/2; ReLU is exact and
  the hidden layer's error passes through |k2|. So
  |err| <= (d_in + d_h + 2)u * ((|x||k1| + |b1|)|k2| + |b2|), to first order.
  """
  k1, b1, k2, b2 = [np.abs(np.asarray(w, np.float64)) for w in weights]
  magnitude = (np.abs(x.astype(np.float64)) @ k1 + b1) @ k2 + b2
  u = float(np.finfo(np.float32).eps) / 2
  return (k1.shape[0] + k2.shape[0] + 2) * u * magnitude[:, 0]


@scenario(NAME, TITLE, RELATION)
def run(config):
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  sizes = probes.batch_sizes(config.num_samples, BATCH_SIZE)
  capacity = config.num_samples * config.epochs

  def build():
    return build_dropout_model(config.num_features, capacity)

  trajectory = InferenceTrajectory(x, y, BATCH_SIZE)
  result = compare.run_both(build, x, y, batch_size=BATCH_SIZE, epochs=config.epochs,
                            shuffle=False, callbacks=[trajectory])

  # The same fit without the probing callback: if model(x, training=False)
  # drew dropout RNG or touched any state, this run would diverge.
  # `run_both` seeds 1234 before each build, so a fresh build here has the
  # same initial weights and seed-generator state as both probed models.
  keras.utils.set_random_seed(1234)
  plain = build()
  plain_history = plain.fit(x, y, batch_size=BATCH_SIZE, epochs=config.epochs,
                            shuffle=False, verbose=0).history
  # All layer variables: weights, the recorded rows and the Dropout layer's
  # seed-generator state (which would have advanced had inference drawn RNG).
  plain_state = [v.numpy() for v in plain.variables]
  probed_state = [v.numpy() for v in result.keras_model.variables]
  callback_is_inert = (
      plain_history["loss"] == result.keras_history["loss"]
      and len(plain_state) == len(probed_state)
      and all(np.array_equal(a, b) for a, b in zip(plain_state, probed_state)))

  model = result.tapefit_model
  y64 = y.astype(np.float64)[:, 0]
  train_rows = model.get_layer("y_pred_rows").rows()[:, 0]
  per_epoch_train = np.split(train_rows, config.epochs)
  per_epoch_inf = probes.split_by_epoch(trajectory.records[id(model)], config.num_samples,
                                        BATCH_SIZE, config.epochs)
  history = result.tapefit_history
  final = [w.numpy() for w in (model.get_layer("hidden").kernel,
                               model.get_layer("hidden").bias,
                               model.get_layer("out").kernel, model.get_layer("out").bias)]
  residual = float64_forward(final, x)[:, 0] - y64
  l_eval_pred = float(np.mean(residual ** 2))
  l_eval = result.tapefit_eval["loss"]
  # evaluate's float32 forward pass moves each residual by <= E_i, so each
  # squared error by <= 2|d_i|E_i + E_i^2; plus its float32 accumulation.
  err = forward_error_bound(final, x)

  # float32 accumulation of a reported mean, with u = eps/2, first order:
  # per element <= 3u (subtract, square), the batch's reduce_sum (n-1)u, /n and
  # the tracker's *n 2u, its total over B batches (B-1)u, total/count u:
  # (n + B + 4)u of the (nonnegative) value. Allowed: (n + B + 4)eps (x2).
  eps = float(np.finfo(np.float32).eps)
  rounding = (BATCH_SIZE + len(sizes) + 4) * eps

  epochs, checks = [], {}
  for e in range(config.epochs):
    # Batch-weighted mean of per-batch means = per-sample mean (shuffle=False).
    l_hist_pred = float(np.mean((per_epoch_train[e] - y64) ** 2))
    l_inf_traj = float(np.sum([np.sum(r) for r in per_epoch_inf[e]]) / config.num_samples)
    row = {"epoch": e + 1, "History loss": history["loss"][e],
           "predicted L_hist (recorded training-mode rows)": l_hist_pred,
           "L_inf_traj": l_inf_traj, "dropout part": l_hist_pred - l_inf_traj}
    tol = rounding * max(abs(l_hist_pred), 1e-3)
    checks[f"epoch {e + 1}: History loss = recorded training-mode mean (tol {tol:.2g})"] = (
        abs(history["loss"][e] - l_hist_pred) <= tol)
    epochs.append(row)
  last = epochs[-1]
  # Not a check: E_masks[training-mode loss] >= inference-mode loss at the same
  # weights (inverted dropout before a linear layer keeps the mean and adds
  # variance), but one epoch's masks can fall below it early in training,
  # when the residual is large (measured: N=64, 1 epoch, dropout part < 0).
  dropout_part = last["dropout part"]
  moving_part = last["L_inf_traj"] - l_eval_pred
  predicted = dropout_part + moving_part
  measured = history["loss"][-1] - l_eval
  eval_tol = float(np.mean(2 * np.abs(residual) * err + err ** 2)) + rounding * l_eval_pred
  # History side as per epoch (the training rows are float32 y_pred recorded
  # from the very forward pass, so only the accumulation rounds) + evaluate's.
  tolerance = rounding * max(abs(last["predicted L_hist (recorded training-mode rows)"]),
                             1e-3) + eval_tol
  checks[f"evaluate = float64 recomputation at the final weights (tol {eval_tol:.2g})"] = (
      abs(l_eval - l_eval_pred) <= eval_tol)
  checks["callback calling model(x_b, training=False) leaves fit bitwise unchanged"] = (
      callback_is_inert)
  checks["inference trajectory recorded identically in Model.fit and trainer.fit"] = all(
      np.array_equal(a, b) for a, b in zip(trajectory.records[id(result.keras_model)],
                                           trajectory.records[id(model)]))
  return Measurement(
      scenario=NAME, relation=RELATION, loss=history["loss"][-1], metric=l_eval,
      predicted_diff=predicted, measured_diff=measured, tolerance=tolerance,
      fit_max_diff=result.max_abs_diff(), checks=checks,
      details={"setup": f"MLP {config.num_features}-32-1, Dropout({RATE}, seed={SEED}), "
                        f"SGD(0.05), batch {BATCH_SIZE}, shuffle=False",
               "dropout part (L_hist - L_inf_traj)": dropout_part,
               "moving-weights part (L_inf_traj - L_eval)": moving_part,
               "evaluate loss": l_eval, "float64 eval at final weights": l_eval_pred,
               "per epoch": epochs})

