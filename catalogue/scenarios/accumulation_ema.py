"""Scenario 9: gradient accumulation and weight EMA. What stays and what moves.

(a) SGD(gradient_accumulation_steps=2). Every micro-step computes its loss at
    the current weights and enters History with the usual formula
        loss = sum_b n_b L_b / N          (unchanged)
    but the weights change only on every 2nd micro-step k (k = 1, 2, ...
    counted across epochs: the accumulator carries over epoch boundaries),
        w_k == w_{k-1} for odd k,   w_k != w_{k-1} for even k,
        optimizer.iterations = floor(K / 2),  optimizer._iterations = K,
    and after an odd total K the last micro-batch's gradient is left in the
    accumulator, never applied: acc = grad L_K(w_final); after an even K, 0.
    The batch size is chosen so that an epoch has an odd number of batches.

(b) SGD(use_ema=True, ema_momentum=m). History is the raw-weights loss, bit-
    identical to the same run without EMA (what stays); `fit` ends by copying
    the EMA into the weights (what moves):
        ema_0 = 0, ema_k = m_k ema_{k-1} + (1-m_k) w_k  (w_k raw, after step k;
        m_1 = 0, so ema_1 = w_1; m_k = m after)
        final weights = ema_K,  max |ema_K - w_K| > 0
    and `evaluate` after `fit` sees the EMA: its loss equals a float64
    recomputation at the final (EMA) weights, not at the raw w_K.

Every prediction comes from a callback's per-batch weight records, a
RowRecorder's per-step y_pred rows, or float64 recomputation.
"""

import keras
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from catalogue.scenarios.dropout import float64_forward, forward_error_bound
from trainer import compare, synthetic

NAME = "accumulation_ema"
TITLE = "Gradient accumulation and EMA: what stays, what moves"
RELATION = ("accum k=2: loss = sum n_b L_b / N, w changes only at even micro-steps, "
            "iterations = floor(K/2); EMA: History(ema) = History(no ema), "
            "w_final = ema_K != w_K, evaluate = L(ema_K)")

ACCUMULATION_STEPS = 2
EMA_MOMENTUM = 0.9
EPS32 = float(np.finfo(np.float32).eps)


def odd_batch_size(num_samples, target=48):
  """A batch size near `target` giving an odd number (>= 3) of batches per epoch."""
  for b in sorted(range(8, num_samples + 1), key=lambda b: (abs(b - target), b)):
    count = len(probes.batch_sizes(num_samples, b))
    if count % 2 and count >= 3:
      return b
  raise ValueError(f"No batch size gives an odd number of batches for N={num_samples}.")


class WeightsAfterBatch(keras.callbacks.Callback):
  """float64 copies of the trainable weights at train begin and after every batch."""

  def __init__(self):
    super().__init__()
    self.records = {}

  def _record(self):
    self.records.setdefault(id(self.model), []).append(
        [np.array(w, np.float64) for w in self.model.trainable_weights])

  def on_train_begin(self, logs=None):
    self.records[id(self.model)] = []
    self._record()

  def on_train_batch_end(self, batch, logs=None):
    self._record()


def build_mlp(num_features, capacity, optimizer):
  x = keras.Input((num_features,), name="x")
  h = keras.layers.Dense(16, activation="relu", name="hidden")(x)
  y_pred = keras.layers.Dense(1, name="out")(h)
  out = probes.RowRecorder(lambda t: t, 1, capacity, name="y_pred_rows")(y_pred)
  model = keras.Model(x, out)
  model.compile(optimizer=optimizer, loss="mse", jit_compile=False, steps_per_execution=1)
  return model


def mlp_weights(model):
  return [w.numpy() for w in (model.get_layer("hidden").kernel,
                              model.get_layer("hidden").bias,
                              model.get_layer("out").kernel, model.get_layer("out").bias)]


def float64_mse_gradient(weights, x, y):
  """(gradients, elementwise float32 error bound) of mean((f(x) - y)^2) for the MLP.

  Hand-written backprop in float64. The bound: every gradient entry is a sum
  of at most n + d_in + d_h + 4 rounded products/additions (u = eps/2 each) of
  terms whose magnitudes the same backprop on |.| gives; plus the float32
  forward pass's error E_i in each residual, which moves dL/dy_pred by 2E_i/n.
  """
  k1, b1, k2, b2 = [np.asarray(w, np.float64) for w in weights]
  x = x.astype(np.float64)
  n = x.shape[0]
  pre = x @ k1 + b1
  mask = (pre > 0).astype(np.float64)
  h = pre * mask
  g = 2 * (h @ k2 + b2 - y.astype(np.float64)) / n

  def backprop(g, h, k2, x):
    dh = (g @ k2.T) * mask
    return [x.T @ dh, dh.sum(0), h.T @ g, g.sum(0)]

  grads = backprop(g, h, k2, x)
  u = EPS32 / 2
  error = forward_error_bound(weights, x)[:, None]
  magnitude = backprop(np.abs(g), np.abs(h), np.abs(k2), np.abs(x))
  forward = backprop(2 * error / n, np.abs(h), np.abs(k2), np.abs(x))
  count = n + k1.shape[0] + k1.shape[1] + 4
  bounds = [count * u * m + f for m, f in zip(magnitude, forward)]
  return grads, bounds


def _epoch_losses(rows, y, epochs):
  """Per epoch: batch-weighted float64 mse of the recorded y_pred rows."""
  y64 = y.astype(np.float64)[:, 0]
  return [float(np.mean((r - y64) ** 2)) for r in np.split(rows, epochs)]


def _history_tolerance(batch_size, num_batches, value):
  # float32 accumulation of a reported mean, u = eps/2, first order: element
  # 3u, reduce_sum (n-1)u, /n and *n 2u, tracker total (B-1)u, total/count u:
  # (n + B + 4)u of the value; allowed (n + B + 4)eps.
  return (batch_size + num_batches + 4) * EPS32 * max(abs(value), 1e-3)


def accumulation_part(config, x, y, batch_size):
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  total = len(sizes) * config.epochs
  capacity = config.num_samples * config.epochs

  def build():
    return build_mlp(config.num_features, capacity, keras.optimizers.SGD(
        0.05, gradient_accumulation_steps=ACCUMULATION_STEPS))

  recorder = WeightsAfterBatch()
  result = compare.run_both(build, x, y, batch_size=batch_size, epochs=config.epochs,
                            shuffle=False, callbacks=[recorder])
  model = result.tapefit_model
  weights = recorder.records[id(model)]
  changed = [any(not np.array_equal(a, b) for a, b in zip(before, after))
             for before, after in zip(weights[:-1], weights[1:])]
  expected = [k % ACCUMULATION_STEPS == 0 for k in range(1, total + 1)]
  optimizer = model.optimizer
  iterations = int(optimizer.iterations.numpy())
  micro_steps = int(optimizer._iterations.numpy())

  def leftovers(m):
    opt = m.optimizer
    return [opt._accumulated_gradients[opt._get_variable_index(v)].numpy()
            for v in (m.get_layer("hidden").kernel, m.get_layer("hidden").bias,
                      m.get_layer("out").kernel, m.get_layer("out").bias)]

  leftover = leftovers(model)
  n_last = sizes[-1]
  if total % ACCUMULATION_STEPS:
    # The last micro-step ran at the final weights (no update after it).
    grads, bounds = float64_mse_gradient(mlp_weights(model), x[-n_last:], y[-n_last:])
  else:
    grads = [np.zeros_like(a, np.float64) for a in leftover]
    bounds = [np.zeros_like(a, np.float64) for a in leftover]
  leftover_ok = all(np.all(np.abs(a - g.reshape(a.shape)) <= b.reshape(a.shape))
                    for a, g, b in zip(leftover, grads, bounds))
  leftover_max = max(float(np.max(np.abs(a))) for a in leftover)

  history = result.tapefit_history
  predicted = _epoch_losses(model.get_layer("y_pred_rows").rows()[:, 0], y, config.epochs)
  checks = {
      f"accum: weights change exactly at even micro-steps ({total} micro-steps)":
          changed == expected,
      f"accum: iterations ({iterations}) = floor({total}/{ACCUMULATION_STEPS})":
          iterations == total // ACCUMULATION_STEPS,
      f"accum: _iterations ({micro_steps}) = micro-steps ({total})": micro_steps == total,
      ("accum: leftover accumulator = float64 gradient of the last micro-batch at the "
       "final weights" if total % ACCUMULATION_STEPS else
       "accum: leftover accumulator = 0 (even number of micro-steps)"): leftover_ok,
      "accum: leftover accumulator identical in Model.fit and trainer.fit": all(
          np.array_equal(a, b) for a, b in zip(leftovers(result.keras_model), leftover)),
  }
  for e, value in enumerate(predicted):
    tol = _history_tolerance(batch_size, len(sizes), value)
    checks[f"accum epoch {e + 1}: History loss = recorded per-step losses, batch-weighted "
           f"(tol {tol:.2g})"] = abs(history["loss"][e] - value) <= tol
  details = {
      "accum setup": f"SGD(0.05, gradient_accumulation_steps={ACCUMULATION_STEPS}), "
                     f"batch {batch_size}, {len(sizes)} batches/epoch, {total} micro-steps",
      "accum iterations / _iterations": (iterations, micro_steps),
      "accum leftover accumulator max |.|": leftover_max,
      "accum History loss": history["loss"], "accum recomputed loss": predicted}
  return result, checks, details


def ema_momentum_schedule(total):
  """Momentum used at micro-step k = 1..K: 0 at the first step, then m (float32)."""
  m = float(np.float32(EMA_MOMENTUM))
  return [0.0] + [m] * (total - 1)


def ema_part(config, x, y, batch_size):
  sizes = probes.batch_sizes(config.num_samples, batch_size)
  total = len(sizes) * config.epochs
  capacity = config.num_samples * config.epochs

  def build(use_ema=True):
    return build_mlp(config.num_features, capacity, keras.optimizers.SGD(
        0.05, use_ema=use_ema, ema_momentum=EMA_MOMENTUM))

  recorder = WeightsAfterBatch()
  result = compare.run_both(build, x, y, batch_size=batch_size, epochs=config.epochs,
                            shuffle=False, callbacks=[recorder])
  # The same run without EMA, from the same initial weights (run_both seeds
  # 1234 before each build).
  keras.utils.set_random_seed(1234)
  plain = build(use_ema=False)
  plain_history = plain.fit(x, y, batch_size=batch_size, epochs=config.epochs,
                            shuffle=False, verbose=0).history

  model = result.tapefit_model
  raw = recorder.records[id(model)][1:]  # w_k after each micro-step k
  # The average starts at zero (Keras creates it with `add_optimizer_variables`,
  # zeros); the momentum-0 first step then sets it to w_1.
  ema = [np.zeros_like(w) for w in raw[0]]
  for momentum, w in zip(ema_momentum_schedule(total), raw):
    ema = [momentum * a + (1 - momentum) * b for a, b in zip(ema, w)]
  final = [w.numpy().astype(np.float64) for w in model.trainable_weights]
  # Per step: momentum*a, (1-momentum)*w and their sum round by u each, on
  # values <= max|w|; errors decay by m per step: <= 3u max|w| / (1 - m);
  # allowed 3 eps max|w| / (1 - m) (x2).
  max_w = max(float(np.max(np.abs(a))) for step in raw for a in step)
  ema_tol = 3 * EPS32 * max_w / (1 - EMA_MOMENTUM)
  ema_error = max(float(np.max(np.abs(a - b))) for a, b in zip(final, ema))
  ema_minus_raw = max(float(np.max(np.abs(a - b))) for a, b in zip(final, raw[-1]))

  y64 = y.astype(np.float64)[:, 0]
  evaluated = result.tapefit_eval["loss"]
  final_mlp = mlp_weights(model)
  residual = float64_forward(final_mlp, x)[:, 0] - y64
  err = forward_error_bound(final_mlp, x)
  eval_tol = (float(np.mean(2 * np.abs(residual) * err + err ** 2))
              + _history_tolerance(batch_size, len(sizes), float(np.mean(residual ** 2))))
  at_final = float(np.mean(residual ** 2))
  raw_mlp = [raw[-1][i] for i in range(4)]  # trainable_weights order: k1, b1, k2, b2
  at_raw = float(np.mean((float64_forward(raw_mlp, x)[:, 0] - y64) ** 2))

  history = result.tapefit_history
  checks = {
      "ema: History bit-identical to the run without EMA": (
          history["loss"] == plain_history["loss"]
          and result.keras_history["loss"] == plain_history["loss"]),
      f"ema: final weights = float64 EMA of the recorded raw weights (tol {ema_tol:.2g})":
          ema_error <= ema_tol,
      "ema: final weights moved off the raw weights (max |ema - raw| > tol)":
          ema_minus_raw > ema_tol,
      f"ema: evaluate = float64 loss at the final (EMA) weights (tol {eval_tol:.2g})":
          abs(evaluated - at_final) <= eval_tol,
      "ema: evaluate != float64 loss at the raw weights": abs(evaluated - at_raw) > eval_tol,
  }
  for e in range(config.epochs):
    checks[f"ema epoch {e + 1}: History(ema) - History(no ema) = 0"] = (
        history["loss"][e] - plain_history["loss"][e] == 0)
  details = {
      "ema setup": f"SGD(0.05, use_ema=True, ema_momentum={EMA_MOMENTUM}), batch "
                   f"{batch_size}",
      "ema max |final - float64 EMA|": ema_error, "ema max |EMA - raw|": ema_minus_raw,
      "ema evaluate": evaluated, "ema float64 loss at EMA weights": at_final,
      "ema float64 loss at raw weights": at_raw,
      "ema History loss": history["loss"], "no-ema History loss": plain_history["loss"]}
  return result, plain_history, checks, details


@scenario(NAME, TITLE, RELATION)
def run(config):
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  batch_size = odd_batch_size(config.num_samples)
  accum, accum_checks, accum_details = accumulation_part(config, x, y, batch_size)
  ema, plain_history, ema_checks, ema_details = ema_part(config, x, y, batch_size)
  loss = ema.tapefit_history["loss"][-1]
  metric = plain_history["loss"][-1]
  return Measurement(
      scenario=NAME, relation=RELATION, loss=loss, metric=metric,
      # What stays: History with EMA minus History without, predicted 0 exactly.
      predicted_diff=0.0, measured_diff=loss - metric, tolerance=0.0,
      fit_max_diff=max(accum.max_abs_diff(), ema.max_abs_diff()),
      checks={**accum_checks, **ema_checks},
      details={"loss / metric columns": "History loss with EMA / without EMA (last epoch)",
               **accum_details, **ema_details})
