"""Scenario 3: kernel regularizers enter `loss` at the pre-update weights, never `mse`.

An MLP 8 -> 16 (relu) -> 1 has an L1(0.01) regularizer on the hidden kernel
W1 and an L2(0.02) regularizer on the output kernel W2, and is compiled with
loss "mse" and metrics ["mse"]. Step b's loss is

    L_b = sum_{i in b} l_i / n_b + R_b,   R_b = 0.01 sum |W1_b| + 0.02 sum W2_b^2

with W_b the weights *before* step b's update. The loss tracker weights L_b by
n_b, the `mse` metric sums l_i and counts samples, so the data parts cancel:

    loss - mse = sum_b n_b R_b / N

R_b is recomputed in float64 from kernels copied at every
`on_train_batch_begin` (steps_per_execution=1, so that is right before the
step). `evaluate` sees the final weights only: eval loss - eval mse = R(final).
"""

import keras
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from catalogue.scenarios import same_tensor
from trainer import compare, synthetic

L1 = 0.01
L2 = 0.02
RELATION = ("loss - mse = sum_b n_b R_b / N, R_b = l1 sum abs(W1) + l2 sum W2^2 at step b's "
            "pre-update weights")
EPS32 = float(np.finfo(np.float32).eps)


class PerRunWeights(probes.PreUpdateWeights):
  """PreUpdateWeights that keeps one snapshot list per `fit` call.

  `run_both` hands the same callback to `Model.fit` and then to
  `trainer.fit`; `runs[0]` is Keras's, `runs[1]` tapefit's.
  """

  def __init__(self, pick):
    super().__init__(pick)
    self.runs = []

  def on_train_begin(self, logs=None):
    self.snapshots = []
    self.runs.append(self.snapshots)


def build_regularized_model(num_features):
  x = keras.Input((num_features,), name="x")
  hidden = keras.layers.Dense(16, activation="relu", name="hidden",
                              kernel_regularizer=keras.regularizers.L1(L1))(x)
  y_pred = keras.layers.Dense(1, name="out",
                              kernel_regularizer=keras.regularizers.L2(L2))(hidden)
  model = keras.Model(x, y_pred)
  model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mse"])
  return model


def kernels(model):
  return [model.get_layer("hidden").kernel, model.get_layer("out").kernel]


def regularization64(w1, w2):
  """R = l1 sum|W1| + l2 sum W2^2 in float64."""
  w1 = np.asarray(w1, np.float64)
  w2 = np.asarray(w2, np.float64)
  return L1 * float(np.sum(np.abs(w1))) + L2 * float(np.sum(np.square(w2)))


def sum_rounding_bound(num_terms, magnitude):
  """Worst-case float32 error of a quantity built from `num_terms` nonnegative additions.

  Each float32 addition of nonnegative terms rounds by at most u = eps/2 of the
  running total, so a sum of k terms is within (k - 1) u of its exact value
  relative to the total; products/divisions/final roundings add a few u more
  (counted in `num_terms` by the callers).
  """
  return 0.5 * EPS32 * num_terms * magnitude


@scenario("regularizers", "L1/L2 kernel regularizers: loss vs mse", RELATION)
def regularizers(config):
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  batch_size = same_tensor.partial_batch_size(config.num_samples)
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  recorder = PerRunWeights(kernels)

  result = compare.run_both(lambda: build_regularized_model(config.num_features), x, y,
                            batch_size=batch_size, epochs=config.epochs, shuffle=False,
                            callbacks=[recorder])
  keras_snaps, tapefit_snaps = recorder.runs
  final = [np.asarray(w.numpy(), np.float64) for w in kernels(result.tapefit_model)]
  r_pre = [regularization64(*s) for s in tapefit_snaps]
  # Post-update weights of step b = pre-update weights of step b+1 (final weights last).
  r_post = r_pre[1:] + [regularization64(*final)]
  r_pre_epochs = probes.split_by_epoch(r_pre, config.num_samples, batch_size, config.epochs)
  r_post_epochs = probes.split_by_epoch(r_post, config.num_samples, batch_size,
                                        config.epochs)
  n = np.asarray(sizes, np.float64)
  # loss and mse are float32 results of: a per-batch sum of n_b terms, the two
  # regularizer sums (at most `params` terms), and the tracker's B additions,
  # plus ~6 single roundings (products, divisions, result); the difference's
  # error is bounded by the sum of both sides' errors.
  params = max(int(np.prod(w.shape)) for w in final)
  terms = len(sizes) + max(sizes) + params + 6

  history = result.tapefit_history
  epochs, checks = [], {}
  for e in range(config.epochs):
    predicted = float(np.sum(n * np.asarray(r_pre_epochs[e])) / n.sum())
    post_update = float(np.sum(n * np.asarray(r_post_epochs[e])) / n.sum())
    loss, mse = history["loss"][e], history["mse"][e]
    tolerance = sum_rounding_bound(terms, abs(loss) + abs(mse))
    epochs.append({"epoch": e + 1, "loss": loss, "mse": mse, "measured diff": loss - mse,
                   "predicted diff (pre-update R)": predicted,
                   "if R were post-update": post_update, "tolerance": tolerance})
    checks[f"epoch {e + 1}: |(loss - mse) - sum n_b R_b / N| <= tolerance"] = (
        abs((loss - mse) - predicted) <= tolerance)

  # Same weights seen by both loops' batch hooks (independent of the History check).
  checks["pre-update kernels identical in Model.fit and trainer.fit"] = (
      len(keras_snaps) == len(tapefit_snaps) and all(
          np.array_equal(a, b) for sa, sb in zip(keras_snaps, tapefit_snaps)
          for a, b in zip(sa, sb)))

  eval_loss, eval_mse = result.tapefit_eval["loss"], result.tapefit_eval["mse"]
  eval_predicted = regularization64(*final)
  eval_tolerance = sum_rounding_bound(terms, abs(eval_loss) + abs(eval_mse))
  checks["evaluate: |(loss - mse) - R(final weights)| <= tolerance"] = (
      abs((eval_loss - eval_mse) - eval_predicted) <= eval_tolerance)

  last = epochs[-1]
  return Measurement(
      scenario="regularizers", relation=RELATION, loss=last["loss"], metric=last["mse"],
      predicted_diff=last["predicted diff (pre-update R)"],
      measured_diff=last["measured diff"], tolerance=last["tolerance"],
      fit_max_diff=result.max_abs_diff(), checks=checks,
      details={"batch sizes": f"{len(sizes)} batches, last {sizes[-1]}",
               "regularizers": f"L1({L1}) on hidden kernel, L2({L2}) on output kernel",
               "per epoch": epochs,
               "evaluate": {"loss": eval_loss, "mse": eval_mse,
                            "measured diff": eval_loss - eval_mse,
                            "predicted R(final)": eval_predicted,
                            "tolerance": eval_tolerance}})
