"""Scenario 6: two outputs with loss_weights; `<o>_loss` ignores lambda and batch sizes.

A shared hidden layer feeds outputs a and b, compiled with loss "mse" on
each and loss_weights {a: 1.0, b: 0.5}. With C_{o,b} = sum_{i in b} l_{o,i} / n_b
the per-output compiled loss of step b:

    loss     = sum_b n_b (sum_o lambda_o C_{o,b}) / N      (tracker weighted by n_b)
    <o>_loss = mean_b C_{o,b}                               (before lambda_o)

`<o>_loss` is a `Mean` updated with sample_weight = y_pred.shape[0], the
*static* batch dimension: with a partial last batch it is None and every
batch counts once. So

    loss - sum_o lambda_o <o>_loss = sum_b n_b X_b / N - mean_b X_b,
    X_b = sum_o lambda_o C_{o,b},

predicted from C_{o,b} recomputed in float64 from per-sample outputs recorded
in the training forward pass (a `RowRecorder` on each output). With a batch
size dividing N the two weightings coincide and the gap is rounding only.
`evaluate` (same batch size) obeys the same formula at the final weights,
checked against a float64 forward pass (in the partial-batch run).
"""

import keras
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from catalogue.scenarios import same_tensor
from catalogue.scenarios.weights import dense_chain64, mlp_layers, rounding_bound
from trainer import compare, synthetic

LOSS_WEIGHTS = {"a": 1.0, "b": 0.5}
OUTPUTS = tuple(LOSS_WEIGHTS)
RELATION = ("loss - sum_o l_o <o>_loss = sum_b n_b X_b / N - mean_b X_b, "
            "X_b = sum_o l_o C_{o,b} (<o>_loss = mean_b C_{o,b})")


def build_two_outputs(num_features, capacity):
  x = keras.Input((num_features,), name="x")
  hidden = keras.layers.Dense(16, activation="relu", name="hidden")(x)
  outputs = []
  for name in OUTPUTS:
    y_pred = keras.layers.Dense(1, name=f"{name}_dense")(hidden)
    # The recorder is the output layer, so the output (and `<o>_loss`) is named `name`.
    outputs.append(probes.RowRecorder(lambda t: t, 1, capacity, name=name)(y_pred))
  model = keras.Model(x, outputs)
  model.compile(optimizer=keras.optimizers.SGD(0.05),
                loss={name: "mse" for name in OUTPUTS}, loss_weights=dict(LOSS_WEIGHTS))
  return model


def targets(config):
  """y_a: the synthetic regression target; y_b: a second, nonlinear target of the same x."""
  x, y_a = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  rng = np.random.default_rng([config.seed, 6])
  v = rng.normal(size=(config.num_features, 1)).astype(np.float32)
  y_b = (np.tanh(x @ v) + 0.1 * rng.normal(size=(config.num_samples, 1))).astype(np.float32)
  return x, {"a": y_a, "b": y_b}


def per_batch_means(values, sizes):
  """[mean of each batch's slice of `values`] in float64."""
  bounds = np.cumsum([0] + list(sizes))
  return np.array([np.mean(values[s:t]) for s, t in zip(bounds[:-1], bounds[1:])])


def predict(c_by_output, sizes):
  """(loss, {o: <o>_loss}) predicted from per-batch C_{o,b}, float64."""
  n = np.asarray(sizes, np.float64)
  x_b = sum(LOSS_WEIGHTS[o] * c_by_output[o] for o in OUTPUTS)
  return (float(np.sum(n * x_b) / n.sum()),
          {o: float(np.mean(c_by_output[o])) for o in OUTPUTS})


def compare_with(checks, tag, logs, c_by_output, sizes, forward_bounds=None):
  """Checks loss, each <o>_loss and the gap against the prediction; returns a row.

  `forward_bounds[o]` bounds how far a float32 forward pass moves C_{o,b}
  from the float64 recomputation (0 when C comes from recorded outputs).
  """
  forward = forward_bounds or {o: 0.0 for o in OUTPUTS}
  p_loss, p_out = predict(c_by_output, sizes)
  # Each reported value is float32: a per-batch sum of n_b terms, the tracker's
  # B additions, ~6 single roundings (nonnegative terms, so relative to the value).
  terms = len(sizes) + max(sizes) + 6
  row = {}
  tol_loss = (rounding_bound(terms, abs(logs["loss"]))
              + sum(LOSS_WEIGHTS[o] * forward[o] for o in OUTPUTS))
  row["loss"] = {"measured": logs["loss"], "predicted": p_loss, "tolerance": tol_loss}
  checks[f"{tag}: loss = sum n_b X_b / N"] = abs(logs["loss"] - p_loss) <= tol_loss
  combined_measured, combined_tol = 0.0, tol_loss
  for o in OUTPUTS:
    key = f"{o}_loss"
    tol = rounding_bound(terms, abs(logs[key])) + forward[o]
    row[key] = {"measured": logs[key], "predicted": p_out[o], "tolerance": tol}
    checks[f"{tag}: {key} = mean_b C_{o},b"] = abs(logs[key] - p_out[o]) <= tol
    combined_measured += LOSS_WEIGHTS[o] * logs[key]
    combined_tol += LOSS_WEIGHTS[o] * tol
  combined_predicted = sum(LOSS_WEIGHTS[o] * p_out[o] for o in OUTPUTS)
  row["gap"] = {"measured": logs["loss"] - combined_measured,
                "predicted": p_loss - combined_predicted, "tolerance": combined_tol,
                "sum_o l_o <o>_loss": combined_measured}
  checks[f"{tag}: loss - sum_o l_o <o>_loss"] = (
      abs(row["gap"]["measured"] - row["gap"]["predicted"]) <= combined_tol)
  return row


def run(config, batch_size, label, evaluate=True):
  x, y = targets(config)
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  capacity = config.num_samples * config.epochs
  result = compare.run_both(lambda: build_two_outputs(config.num_features, capacity), x, y,
                            batch_size=batch_size, epochs=config.epochs, shuffle=False,
                            evaluate=evaluate, eval_kwargs={"batch_size": batch_size})
  model = result.tapefit_model
  history = result.tapefit_history
  y64 = {o: y[o][:, 0].astype(np.float64) for o in OUTPUTS}
  recorded = {o: model.get_layer(o).rows()[:, 0] for o in OUTPUTS}
  checks, epochs = {}, []
  for e in range(config.epochs):
    part = slice(e * config.num_samples, (e + 1) * config.num_samples)
    c = {o: per_batch_means(np.square(recorded[o][part] - y64[o]), sizes) for o in OUTPUTS}
    logs = {k: history[k][e] for k in ["loss"] + [f"{o}_loss" for o in OUTPUTS]}
    epochs.append({"epoch": e + 1,
                   **compare_with(checks, f"{label}, epoch {e + 1}", logs, c, sizes)})

  details = {"batch sizes": f"{len(sizes)} batches, last {sizes[-1]}", "per epoch": epochs}
  if not evaluate:
    return result, checks, details
  # evaluate at the final weights: float64 forward pass; |d l/d y_pred| = 2|r|, so a
  # forward error d moves l by <= 2|r| d + d^2 (averaged: bounds every C and the loss).
  c_eval, forward = {}, {}
  for o in OUTPUTS:
    out64, bound = dense_chain64(x, mlp_layers(model, ["hidden", f"{o}_dense"]))
    r = out64[:, 0] - y64[o]
    c_eval[o] = per_batch_means(np.square(r), sizes)
    d = bound[:, 0]
    forward[o] = float(np.max(per_batch_means(2 * np.abs(r) * d + d * d, sizes)))
  details["evaluate"] = compare_with(checks, f"{label}, evaluate", result.tapefit_eval,
                                    c_eval, sizes, forward_bounds=forward)
  return result, checks, details


@scenario("loss_weights", "two outputs, loss_weights {a: 1, b: 0.5}, partial last batch",
          RELATION)
def loss_weights(config):
  partial = same_tensor.partial_batch_size(config.num_samples)
  divisor = same_tensor.divisor_batch_size(config.num_samples)
  p_result, p_checks, p_details = run(config, partial, f"bs={partial}")
  # With equal batch sizes the prediction is the same formula; it comes out as
  # float64 rounding (~1e-17), and the measured gap must stay within float32
  # rounding. (Its evaluate is skipped to save time: the partial run covers it.)
  d_result, d_checks, d_details = run(config, divisor, f"bs={divisor}", evaluate=False)
  last = p_details["per epoch"][-1]
  return Measurement(
      scenario="loss_weights", relation=RELATION,
      loss=last["loss"]["measured"], metric=last["gap"]["sum_o l_o <o>_loss"],
      predicted_diff=last["gap"]["predicted"], measured_diff=last["gap"]["measured"],
      tolerance=last["gap"]["tolerance"],
      fit_max_diff=max(p_result.max_abs_diff(), d_result.max_abs_diff()),
      checks={**p_checks, **d_checks},
      details={"loss / metric columns": "loss / sum_o lambda_o <o>_loss (partial last batch)",
               "loss_weights": LOSS_WEIGHTS, f"batch size {partial} (partial)": p_details,
               f"batch size {divisor} (divides N)": d_details})
