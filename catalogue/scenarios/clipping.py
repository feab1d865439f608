"""Scenario 4: gradient clipping changes the trajectory, never the reported loss.

The same-tensor model of scenario 1 (add_loss(t) and a `Mean` of t, all
batches full) is trained four times from identical weights: without
clipping, with `clipnorm`, `clipvalue` and `global_clipnorm`. The loss is
computed in the forward pass, before the optimizer sees (and clips) the
gradients, so:

  * batch 0's `logs["loss"]` (on_train_batch_end(0) of epoch 1: forward pass
    on the initial weights) is bitwise equal in all four runs;
  * in every run, loss vs t_metric obeys scenario 1's relation
    (sum n_b t_b / N = mean_b t_b with equal n_b, up to float32 rounding);
  * only the trajectory differs: later losses and the final weights move.

The clip thresholds are small enough for SGD(0.05) that clipping bites from
the first step; the scenario checks that it does (the gradient read from
the unclipped run's first SGD update exceeds the threshold), otherwise "only
the trajectory changes" would be vacuous.
"""

import keras
import numpy as np

from catalogue.framework import Measurement, scenario
from catalogue.scenarios import same_tensor

RELATION = ("batch-0 loss identical with and without clipping; loss vs metric obeys "
            "scenario 1's relation; only the trajectory changes")
LEARNING_RATE = 0.05
CLIPPING = {
    "none": {},
    "clipnorm=0.5": {"clipnorm": 0.5},
    "clipvalue=0.05": {"clipvalue": 0.05},
    "global_clipnorm=0.5": {"global_clipnorm": 0.5},
}


class FirstBatchLoss(keras.callbacks.Callback):
  """logs["loss"] at on_train_batch_end(0) of the first epoch, one value per fit call.

  Also keeps float64 copies of the trainable weights before the first two
  steps of each fit call (`weights[run]`), from which the first update is read.
  """

  def __init__(self):
    super().__init__()
    self.values = []
    self.weights = []
    self._epoch = None

  def on_train_begin(self, logs=None):
    self._epoch = None
    self.weights.append([])

  def on_train_batch_begin(self, batch, logs=None):
    if len(self.weights[-1]) < 2:
      self.weights[-1].append(
          [np.array(w, np.float64) for w in self.model.trainable_weights])

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if batch == 0 and self._epoch == 0:
      self.values.append(np.float32(logs["loss"]))


def run_kind(config, batch_size, clip_kwargs):
  """run_both on the same-tensor model with one clipping setting."""
  first = FirstBatchLoss()
  result, per_epoch, sizes = same_tensor.run_recorded(
      config, batch_size, lambda: keras.optimizers.SGD(LEARNING_RATE, **clip_kwargs),
      callbacks=[first], evaluate=False)
  epochs = same_tensor.epoch_rows(result.tapefit_history, per_epoch, sizes)
  for row in epochs:
    # Scenario 1's bound, scaled by this epoch's loss.
    row["tolerance"] = same_tensor.rounding_tolerance(len(sizes), row["loss"])
  assert len(first.values) == 2, first.values  # Model.fit, then trainer.fit
  before, *after = first.weights[1]
  if not after:  # a single step in the whole run: its update ends in the final weights
    after = [[np.asarray(w, np.float64) for w in result.tapefit_model.trainable_weights]]
  # Plain SGD: w1 = w0 - lr g, so the applied (clipped) first-step gradient is
  # (w0 - w1) / lr (float32 rounding of the update: relative ~1e-6 here).
  applied = [(w0 - w1) / LEARNING_RATE for w0, w1 in zip(before, after[0])]
  return {"result": result, "batch0": first.values, "epochs": epochs,
          "first step gradient": applied}


def clip_statistic(kind, grads):
  """The quantity each clipping compares with its threshold."""
  if kind.startswith("clipnorm"):
    return max(float(np.linalg.norm(g)) for g in grads)
  if kind.startswith("clipvalue"):
    return max(float(np.max(np.abs(g))) for g in grads)
  if kind.startswith("global_clipnorm"):
    return float(np.sqrt(sum(np.sum(np.square(g)) for g in grads)))
  raise ValueError(kind)


@scenario("clipping", "clipnorm / clipvalue / global_clipnorm: loss unchanged at batch 0",
          RELATION)
def clipping(config):
  batch_size = same_tensor.divisor_batch_size(config.num_samples)
  runs = {kind: run_kind(config, batch_size, kwargs) for kind, kwargs in CLIPPING.items()}
  base = runs["none"]
  base_batch0 = base["batch0"][1]
  base_weights = base["result"].tapefit_weights

  checks, details = {}, {"batch size": batch_size, "optimizer": f"SGD({LEARNING_RATE})"}
  batch0_diffs = {}
  for kind, run in runs.items():
    keras_b0, tapefit_b0 = run["batch0"]
    checks[f"{kind}: batch-0 loss equal in Model.fit and trainer.fit (bitwise)"] = (
        keras_b0.tobytes() == tapefit_b0.tobytes())
    if kind != "none":
      checks[f"{kind}: batch-0 loss bitwise equal to the unclipped run"] = (
          tapefit_b0.tobytes() == base_batch0.tobytes())
    batch0_diffs[kind] = abs(float(tapefit_b0) - float(base_batch0))
    for row in run["epochs"]:
      checks[f"{kind}, epoch {row['epoch']}: scenario 1 relation (|measured - predicted| "
             f"<= tolerance)"] = (
                 abs(row["measured diff"] - row["predicted diff"]) <= row["tolerance"])
    if kind != "none":
      changed = max(float(np.max(np.abs(np.asarray(a, np.float64) - b)))
                    for a, b in zip(run["result"].tapefit_weights, base_weights))
      # Clipping bites at step 0 if the unclipped gradient (read from the unclipped
      # run's first SGD update) exceeds the threshold; 1% margin >> float32 rounding.
      threshold = next(iter(CLIPPING[kind].values()))
      unclipped = clip_statistic(kind, base["first step gradient"])
      clipped = clip_statistic(kind, run["first step gradient"])
      checks[f"{kind}: clipping bites at step 0 (unclipped statistic > 1.01 x threshold)"] = (
          unclipped > 1.01 * threshold)
      details[f"{kind}"] = {
          "batch-0 loss": float(tapefit_b0),
          "step-0 clip statistic: unclipped / clipped / threshold":
              (unclipped, clipped, threshold),
          "epoch-1 loss shift vs no clipping":
              run["epochs"][0]["loss"] - base["epochs"][0]["loss"],
          "last-epoch loss shift vs no clipping":
              run["epochs"][-1]["loss"] - base["epochs"][-1]["loss"],
          "max |final weight - unclipped|": changed,
          "per epoch": run["epochs"]}
    else:
      details["none"] = {"batch-0 loss": float(tapefit_b0), "per epoch": run["epochs"]}

  # Which run a tapefit-vs-fit difference comes from (SGD + global_clipnorm is
  # exposed to grappler's arithmetic rewrite of (g * scale) * lr, see the notes).
  details["max |Model.fit - trainer.fit| per kind"] = {
      kind: run["result"].max_abs_diff() for kind, run in runs.items()}
  clipped = [kind for kind in CLIPPING if kind != "none"]
  worst = max(clipped, key=lambda kind: batch0_diffs[kind])
  return Measurement(
      scenario="clipping", relation=RELATION,
      loss=float(base_batch0), metric=float(runs[worst]["batch0"][1]),
      # The loss is computed before the update: clipping cannot change batch 0.
      predicted_diff=0.0, measured_diff=batch0_diffs[worst],
      # Bitwise claim: same weights, same forward pass, no rounding allowed.
      tolerance=0.0,
      fit_max_diff=max(run["result"].max_abs_diff() for run in runs.values()),
      checks=checks,
      details={"loss / metric columns": f"batch-0 loss without clipping / with {worst} "
                                        "(largest batch-0 |diff| across kinds)",
               **details})
