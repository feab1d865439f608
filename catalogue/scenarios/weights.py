"""Scenario 5: sample_weight and class_weight: loss, metrics and weighted_metrics differ.

Keras 3 reduces a compiled loss with `sum_over_batch_size`: step b's loss is
sum_{i in b} w_i l_i / n_b, divided by the number of samples, *not* by
sum w. The loss tracker weights it by n_b. Plain `metrics` ignore the
weights; `weighted_metrics` divide by sum w. Over an epoch of N samples:

    loss             = sum_i w_i l_i / N
    mse              = sum_i l_i / N
    weighted_mse     = sum_i w_i l_i / sum_i w_i

Regression part: w ~ U(0, 2), loss "mse", metrics ["mse"], weighted_metrics
["mse"]. Classification part: a binary problem, sigmoid output +
binary_crossentropy, class_weight {0: 1, 1: 3} (turned into per-sample
weights w_i = cw[y_i]), metrics ["accuracy"], weighted_metrics ["accuracy"].

The per-sample outputs are recorded inside the training forward pass by a
`RowRecorder` sitting on the output (identity, so it is part of the model and
not pruned), and every value is recomputed from them in float64. For the
classifier the recorder sits on the logits (before the sigmoid): Keras uses
the cached logits for the crossentropy, so l = softplus(z) - y z, and a second
recorder on the probabilities gives the accuracy.

`evaluate` has no class_weight argument: `trainer.evaluate` (like
`Model.evaluate`) returns the *unweighted* loss at the final weights, checked
against a float64 forward pass.
"""

import keras
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from catalogue.scenarios import same_tensor
from trainer import compare, synthetic

RELATION = ("loss = sum w_i l_i / N; mse = sum l_i / N; weighted_mse = sum w_i l_i / sum w_i "
            "(class_weight likewise; evaluate unweighted)")
CLASS_WEIGHT = {0: 1.0, 1: 3.0}
EPS32 = float(np.finfo(np.float32).eps)
U32 = 0.5 * EPS32  # unit roundoff of float32


def rounding_bound(num_terms, magnitude):
  """Worst-case float32 error of a value built from `num_terms` nonnegative additions.

  Each float32 addition of nonnegative terms rounds by at most u = eps/2 of
  the running total, so k terms stay within k u of the exact total, relative;
  the callers add a few terms for products, divisions and final roundings.
  """
  return U32 * num_terms * magnitude


def dense_chain64(x, layers):
  """Float64 forward pass through Dense layers, and a bound on float32's deviation.

  `layers` is a list of (kernel, bias, relu). Returns (out64, bound) where
  |out_float32 - out64| <= bound elementwise for any summation order of the
  float32 matmul (standard dot-product bound gamma_{k+1} sum |terms| per
  layer, propagated through |W|; relu is 1-Lipschitz). Inputs and weights are
  float32 values, so the float64 pass is exact to ~1e-16.
  """
  a = np.asarray(x, np.float64)
  err = np.zeros_like(a)
  for kernel, bias, relu in layers:
    kernel = np.asarray(kernel, np.float64)
    bias = np.asarray(bias, np.float64)
    k = kernel.shape[0] + 1
    gamma = k * U32 / (1 - k * U32)
    pre = a @ kernel + bias
    err = err @ np.abs(kernel) + gamma * ((np.abs(a) + err) @ np.abs(kernel) + np.abs(bias))
    a = np.maximum(pre, 0.0) if relu else pre
  return a, err


def mlp_layers(model, names):
  """[(kernel, bias, relu)] for Dense layers `names` of `model` (relu on all but last)."""
  out = []
  for i, name in enumerate(names):
    layer = model.get_layer(name)
    out.append((layer.kernel.numpy(), layer.bias.numpy(), i < len(names) - 1))
  return out


def bce_from_logits64(z, y):
  """softplus(z) - y z, the form of tf.nn.sigmoid_cross_entropy_with_logits."""
  z = np.asarray(z, np.float64)
  return np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))


def build_regression(num_features, capacity):
  x = keras.Input((num_features,), name="x")
  hidden = keras.layers.Dense(16, activation="relu", name="hidden")(x)
  y_pred = keras.layers.Dense(1, name="out")(hidden)
  recorded = probes.RowRecorder(lambda t: t, 1, capacity, name="pred_rec")(y_pred)
  model = keras.Model(x, recorded)
  model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mse"],
                weighted_metrics=["mse"])
  return model


def build_classifier(num_features, capacity):
  x = keras.Input((num_features,), name="x")
  hidden = keras.layers.Dense(16, activation="relu", name="hidden")(x)
  logits = keras.layers.Dense(1, name="logit")(hidden)
  logits = probes.RowRecorder(lambda t: t, 1, capacity, name="logit_rec")(logits)
  probs = keras.layers.Activation("sigmoid", name="sigmoid")(logits)
  probs = probes.RowRecorder(lambda t: t, 1, capacity, name="prob_rec")(probs)
  model = keras.Model(x, probs)
  model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                metrics=["accuracy"], weighted_metrics=["accuracy"])
  return model


def per_epoch_rows(rows, num_samples, epochs):
  assert len(rows) == num_samples * epochs, (len(rows), num_samples, epochs)
  return [rows[e * num_samples:(e + 1) * num_samples] for e in range(epochs)]


def check_close(checks, name, measured, predicted, tolerance):
  checks[f"{name}: |measured - predicted| <= tolerance"] = (
      abs(measured - predicted) <= tolerance)
  return {"measured": measured, "predicted": predicted, "tolerance": tolerance}


def regression_part(config, batch_size, sizes):
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  w = np.random.default_rng([config.seed, 5]).uniform(0.0, 2.0, config.num_samples)
  w = w.astype(np.float32)
  capacity = config.num_samples * config.epochs
  result = compare.run_both(lambda: build_regression(config.num_features, capacity), x, y,
                            batch_size=batch_size, epochs=config.epochs, shuffle=False,
                            sample_weight=w, evaluate=False)
  rows = result.tapefit_model.get_layer("pred_rec").rows()[:, 0]
  y64, w64 = y[:, 0].astype(np.float64), w.astype(np.float64)
  # Numerators, denominators and the tracker each sum <= n_max + B nonnegative
  # terms; a ratio of two such values doubles that; +8 single roundings.
  terms = 2 * (len(sizes) + max(sizes)) + 8
  history = result.tapefit_history
  checks, epochs = {}, []
  for e, pred in enumerate(per_epoch_rows(rows, config.num_samples, config.epochs)):
    loss_i = np.square(pred - y64)
    p_loss = float(np.sum(w64 * loss_i) / config.num_samples)
    p_mse = float(np.sum(loss_i) / config.num_samples)
    p_wmse = float(np.sum(w64 * loss_i) / np.sum(w64))
    loss, mse, wmse = history["loss"][e], history["mse"][e], history["weighted_mse"][e]
    tag = f"sample_weight, epoch {e + 1}"
    row = {"epoch": e + 1,
           "loss": check_close(checks, f"{tag}: loss = sum w l / N", loss, p_loss,
                               rounding_bound(terms, abs(loss))),
           "mse": check_close(checks, f"{tag}: mse = sum l / N", mse, p_mse,
                              rounding_bound(terms, abs(mse))),
           "weighted_mse": check_close(checks, f"{tag}: weighted_mse = sum w l / sum w",
                                       wmse, p_wmse, rounding_bound(terms, abs(wmse)))}
    row["loss - weighted_mse"] = check_close(
        checks, f"{tag}: loss - weighted_mse", loss - wmse, p_loss - p_wmse,
        rounding_bound(terms, abs(loss) + abs(wmse)))
    epochs.append(row)
  return result, checks, epochs


def classification_part(config, batch_size, sizes):
  x, labels = synthetic.classification(config.num_samples, config.num_features,
                                       num_classes=2, seed=config.seed)
  y = labels[:, None].astype(np.float32)
  capacity = config.num_samples * config.epochs
  result = compare.run_both(lambda: build_classifier(config.num_features, capacity), x, y,
                            batch_size=batch_size, epochs=config.epochs, shuffle=False,
                            class_weight=CLASS_WEIGHT,
                            eval_kwargs={"batch_size": batch_size})
  model = result.tapefit_model
  logits = model.get_layer("logit_rec").rows()[:, 0]
  probs = model.get_layer("prob_rec").rows()[:, 0]
  y64 = y[:, 0].astype(np.float64)
  cw = np.array([CLASS_WEIGHT[int(c)] for c in labels], np.float64)
  terms = 2 * (len(sizes) + max(sizes)) + 8  # as in the regression part
  history = result.tapefit_history
  checks, epochs = {}, []
  epoch_logits = per_epoch_rows(logits, config.num_samples, config.epochs)
  epoch_probs = per_epoch_rows(probs, config.num_samples, config.epochs)
  for e, (z, p) in enumerate(zip(epoch_logits, epoch_probs)):
    loss_i = bce_from_logits64(z, y64)
    # binary accuracy: float32 probability > 0.5 (recorded exactly) equals the label.
    acc_i = ((p > 0.5).astype(np.float64) == y64).astype(np.float64)
    p_loss = float(np.sum(cw * loss_i) / config.num_samples)
    p_acc = float(np.sum(acc_i) / config.num_samples)
    p_wacc = float(np.sum(cw * acc_i) / np.sum(cw))
    loss, acc, wacc = (history["loss"][e], history["accuracy"][e],
                       history["weighted_accuracy"][e])
    tag = f"class_weight, epoch {e + 1}"
    epochs.append({
        "epoch": e + 1,
        "loss": check_close(checks, f"{tag}: loss = sum cw l / N", loss, p_loss,
                            rounding_bound(terms, abs(loss))),
        "accuracy": check_close(checks, f"{tag}: accuracy = sum acc / N", acc, p_acc,
                                rounding_bound(terms, abs(acc))),
        "weighted_accuracy": check_close(
            checks, f"{tag}: weighted_accuracy = sum cw acc / sum cw", wacc, p_wacc,
            rounding_bound(terms, abs(wacc))),
        "unweighted loss (for contrast)": float(np.mean(loss_i))})

  # evaluate: no class_weight argument, so unweighted, at the final weights.
  z64, z_bound = dense_chain64(x, mlp_layers(model, ["hidden", "logit"]))
  eval_i = bce_from_logits64(z64[:, 0], y64)
  p_eval = float(np.mean(eval_i))
  p_eval_weighted = float(np.sum(cw * eval_i) / config.num_samples)
  eval_loss = result.tapefit_eval["loss"]
  # |d l / d z| = |sigmoid(z) - y| <= 1, so the forward-pass error moves l_i by
  # at most z_bound_i; plus the float32 accumulation bound.
  eval_terms = len(sizes) + max(sizes) + 8  # evaluate runs with the same batch size
  eval_tol = float(np.mean(z_bound)) + rounding_bound(eval_terms, abs(eval_loss))
  evaluate = check_close(checks, "class_weight: evaluate loss = sum l / N (unweighted)",
                         eval_loss, p_eval, eval_tol)
  evaluate["class-weighted alternative"] = p_eval_weighted
  checks["class_weight: evaluate loss != class-weighted alternative"] = (
      abs(eval_loss - p_eval_weighted) > eval_tol)
  return result, checks, epochs, evaluate


@scenario("weights", "sample_weight / class_weight: loss vs metrics vs weighted_metrics",
          RELATION)
def weights(config):
  batch_size = same_tensor.partial_batch_size(config.num_samples)
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  reg_result, reg_checks, reg_epochs = regression_part(config, batch_size, sizes)
  cls_result, cls_checks, cls_epochs, cls_eval = classification_part(
      config, batch_size, sizes)
  last = reg_epochs[-1]["loss - weighted_mse"]
  return Measurement(
      scenario="weights", relation=RELATION,
      loss=reg_epochs[-1]["loss"]["measured"],
      metric=reg_epochs[-1]["weighted_mse"]["measured"],
      predicted_diff=last["predicted"], measured_diff=last["measured"],
      tolerance=last["tolerance"],
      fit_max_diff=max(reg_result.max_abs_diff(), cls_result.max_abs_diff()),
      checks={**reg_checks, **cls_checks},
      details={"batch sizes": f"{len(sizes)} batches, last {sizes[-1]}",
               "loss / metric columns": "loss / weighted_mse (sample_weight ~ U(0, 2))",
               "sample_weight per epoch": reg_epochs,
               "class_weight": CLASS_WEIGHT,
               "class_weight per epoch": cls_epochs,
               "class_weight evaluate": cls_eval})
