"""Scenario 8: mixed precision. What loss scaling hides and what bf16 metrics show.

(a) mixed_float16 with a LossScaleOptimizer (initial scale 2^24, so the first
    steps overflow in float16):
      * History's `loss` is the UNSCALED loss: it equals the batch-weighted
        float64 mse of the y_pred rows recorded during training, not S times it.
      * A step whose float16 gradients overflow is skipped and the scale is
        halved; its loss still enters History (all N*epochs rows count), but
        `iterations` does not move:
            iterations = steps - skipped,
        with `skipped` counted by a callback that reads `dynamic_scale` after
        every batch (a halving = a skip; the weights are checked unchanged
        exactly at those steps and changed at every other one).

(b) mixed_bfloat16 (no loss scaling): the loss casts the bf16 y_pred UP and is
    float32; the compiled `mse` metric casts y_true DOWN and runs in bf16:
            loss_i = (yp_i - y_i)^2                         (float32)
            mse_i  = bf16(bf16(yp_i - bf16(y_i))^2)         (bf16)
    so loss - mse = mean_i (loss_i - mse_i) + float32 accumulation rounding.
    The prediction emulates the bf16 ops with `ml_dtypes` on the recorded
    y_pred rows (TF and ml_dtypes both compute a bf16 op in float32 and round
    once; the difference and the square of bf16 values are exact in float32,
    so there is no double rounding). Targets are shifted by +8 (TARGET_OFFSET)
    so that the gap stands well above float32 accumulation rounding.
    Bound, with u = 2^-8 (bf16 unit roundoff, 8 significant bits) and
    d_i = yp_i - y_i:
            bf16(y) = y(1+a), bf16(s) = s(1+b), bf16(q) = q(1+c), |a|,|b|,|c| <= u
            |d'_i - d_i| <= A_i = u(|d_i| + (1+u)|y_i|)
            |mse_i - d_i^2| <= e_i = A_i(2|d_i| + A_i) + u(|d_i| + A_i)^2
                             ~= u(2|d_i||y_i| + 3 d_i^2)
            |loss - mse| <= mean_i e_i + float32 rounding.
"""

import keras
import ml_dtypes
import numpy as np

from catalogue import probes
from catalogue.framework import Measurement, scenario
from trainer import compare, synthetic

NAME = "mixed_precision"
TITLE = "Mixed precision: unscaled fp16 loss, skipped steps, bf16 metric"
RELATION = ("fp16: loss = unscaled sum n_b L_b / N, iterations = steps - skipped; "
            "bf16: loss - mse = mean_i[(yp-y)^2 - bf16(bf16(yp-bf16(y))^2)], "
            "abs(loss - mse) <= mean_i u(2 abs(d y) + 3d^2) to 1st order, u = 2^-8")

BATCH_SIZE = 32
INITIAL_SCALE = 2.0 ** 24
# bf16 part: targets shifted by +8, so bf16's rounding of y_true (spacing 2^-4
# for 8 <= |y| < 16) is large against the residual; the loss - mse gap then
# typically stands ~100x above float32 accumulation rounding (it is a signed
# sum over samples, so a single epoch can still nearly cancel).
TARGET_OFFSET = 8.0
U_BF16 = 2.0 ** -8
EPS32 = float(np.finfo(np.float32).eps)


class ScaleAndWeights(keras.callbacks.Callback):
  """Records the loss scale and a copy of the first kernel, at begin and after every batch."""

  def __init__(self):
    super().__init__()
    self.records = {}

  def _record(self):
    optimizer = self.model.optimizer
    # Before the first step the optimizer may not be built yet: the scale is
    # then its configured `initial_scale`.
    scale = getattr(optimizer, "dynamic_scale", None)
    scale = optimizer.initial_scale if scale is None else float(scale.numpy())
    self.records.setdefault(id(self.model), []).append(
        (scale, self.model.get_layer("hidden").kernel.numpy().copy()))

  def on_train_begin(self, logs=None):
    self.records[id(self.model)] = []
    self._record()

  def on_train_batch_end(self, batch, logs=None):
    self._record()


def _build(policy, num_features, capacity, optimizer_fn, metrics):
  keras.mixed_precision.set_dtype_policy(policy)
  try:
    x = keras.Input((num_features,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    out_dtype = "float32" if policy == "mixed_float16" else None
    y_pred = keras.layers.Dense(1, dtype=out_dtype, name="out")(h)
    # autocast=False: no input cast and no autocast of the float32 buffer, so
    # the output keeps y_pred's dtype (float32 for fp16, bfloat16 for bf16).
    out = probes.RowRecorder(lambda t: t, 1, capacity, autocast=False,
                             name="y_pred_rows")(y_pred)
    model = keras.Model(x, out)
    model.compile(optimizer=optimizer_fn(), loss="mse", metrics=metrics,
                  jit_compile=False, steps_per_execution=1)
    return model
  finally:
    keras.mixed_precision.set_dtype_policy("float32")


def _float32_rounding(sizes):
  """Relative float32 rounding allowed for one epoch's reported mean.

  With u = eps/2, first order: per element <= 3u (subtract, square); the
  batch's reduce_sum <= (n-1)u; /n and *n (tracker weight) 2u; the tracker's
  total over B batches <= (B-1)u; result total/count u: (n + B + 4)u of the
  (nonnegative) value. We allow (n + B + 4)eps, twice that, for second-order
  terms.
  """
  return (max(sizes) + len(sizes) + 4) * EPS32


def float16_part(config, x, y):
  sizes = probes.batch_sizes(config.num_samples, BATCH_SIZE)
  steps = len(sizes) * config.epochs
  capacity = config.num_samples * config.epochs

  def build():
    return _build("mixed_float16", config.num_features, capacity,
                  lambda: keras.optimizers.LossScaleOptimizer(
                      keras.optimizers.SGD(0.05), initial_scale=INITIAL_SCALE), None)

  recorder = ScaleAndWeights()
  result = compare.run_both(build, x, y, batch_size=BATCH_SIZE, epochs=config.epochs,
                            shuffle=False, callbacks=[recorder])
  model = result.tapefit_model
  history = result.tapefit_history
  rows = model.get_layer("y_pred_rows").rows()[:, 0]
  y64 = y.astype(np.float64)[:, 0]
  scales = np.array([s for s, _ in recorder.records[id(model)]])
  kernels = [k for _, k in recorder.records[id(model)]]
  halved = scales[1:] == scales[:-1] / 2
  unchanged = np.array([np.array_equal(a, b) for a, b in zip(kernels[:-1], kernels[1:])])
  skipped = int(np.sum(halved))
  iterations = int(model.optimizer.iterations.numpy())
  rounding = _float32_rounding(sizes)

  checks = {
      "fp16: model optimizer is a LossScaleOptimizer":
          isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
      f"fp16: every step's loss recorded ({steps} steps, {capacity} rows)":
          rows.size == capacity,
      "fp16: at least one skipped step (scale halved)": skipped >= 1,
      "fp16: weights unchanged exactly at the halving steps, changed at all others":
          bool(np.array_equal(unchanged, halved)),
      f"fp16: iterations ({iterations}) = steps ({steps}) - skipped ({skipped})":
          iterations == steps - skipped,
      "fp16: Model.fit saw the same scale sequence":
          [s for s, _ in recorder.records[id(result.keras_model)]] == list(scales),
  }
  per_epoch = []
  for e, epoch_rows in enumerate(np.split(rows, config.epochs)):
    predicted = float(np.mean((epoch_rows - y64) ** 2))
    # The scale that multiplied the loss inside the epoch's steps.
    epoch_scales = scales[e * len(sizes):(e + 1) * len(sizes)]
    tol = rounding * max(predicted, 1e-3)
    checks[f"fp16 epoch {e + 1}: History loss = unscaled float64 recomputation "
           f"(tol {tol:.2g})"] = abs(history["loss"][e] - predicted) <= tol
    per_epoch.append({"epoch": e + 1, "History loss": history["loss"][e],
                      "float64 from recorded y_pred": predicted,
                      "loss scale range in epoch": (float(epoch_scales.min()),
                                                    float(epoch_scales.max()))})
  details = {
      "fp16 setup": f"LossScaleOptimizer(SGD(0.05), initial_scale=2^24), batch {BATCH_SIZE}",
      "fp16 scale after each step (first 16)": [float(s) for s in scales[1:17]],
      "fp16 skipped steps": skipped, "fp16 steps": steps, "fp16 iterations": iterations,
      "fp16 per epoch": per_epoch}
  return result, checks, details


def bf16_mse(y_pred_bf16_values, y):
  """The compiled mse metric's per-sample values, emulated in bfloat16."""
  bf16 = ml_dtypes.bfloat16
  yp = np.asarray(y_pred_bf16_values, np.float32).astype(bf16)
  yt = np.asarray(y, np.float32).astype(bf16)
  diff = (yt - yp).astype(bf16)
  return (diff * diff).astype(bf16).astype(np.float64)


def bf16_bound(d, y):
  """Per-sample rigorous bound e_i on |(yp - y)^2 - mse_i| (see module docstring)."""
  u = U_BF16
  a = u * (np.abs(d) + (1 + u) * np.abs(y))
  return a * (2 * np.abs(d) + a) + u * (np.abs(d) + a) ** 2


def bfloat16_part(config, x, y):
  sizes = probes.batch_sizes(config.num_samples, BATCH_SIZE)
  capacity = config.num_samples * config.epochs

  def build():
    return _build("mixed_bfloat16", config.num_features, capacity,
                  lambda: keras.optimizers.SGD(0.05), ["mse"])

  y = (y + TARGET_OFFSET).astype(np.float32)
  result = compare.run_both(build, x, y, batch_size=BATCH_SIZE, epochs=config.epochs,
                            shuffle=False)
  model = result.tapefit_model
  history = result.tapefit_history
  rows = model.get_layer("y_pred_rows").rows()[:, 0]
  y64 = y.astype(np.float64)[:, 0]
  rounding = _float32_rounding(sizes)
  checks = {
      "bf16: y_pred is bfloat16, optimizer not loss-scaled":
          model.output.dtype == "bfloat16"
          and not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
      "bf16: recorded y_pred rows are bfloat16 values":
          bool(np.array_equal(rows, rows.astype(np.float32).astype(ml_dtypes.bfloat16)
                              .astype(np.float64)))}
  per_epoch = []
  for e, epoch_rows in enumerate(np.split(rows, config.epochs)):
    d = epoch_rows - y64
    loss_pred = float(np.mean(d ** 2))
    mse_pred = float(np.mean(bf16_mse(epoch_rows, y64)))
    bound = float(np.mean(bf16_bound(d, y64)))
    first_order = float(np.mean(U_BF16 * (2 * np.abs(d) * np.abs(y64) + 3 * d ** 2)))
    measured = history["loss"][e] - history["mse"][e]
    # Both sides accumulate in float32 (see `_float32_rounding`); the metric's
    # per-sample bf16 values are emulated exactly, so only sums round.
    tol = rounding * (abs(history["loss"][e]) + abs(history["mse"][e]))
    checks[f"bf16 epoch {e + 1}: |measured - emulated| <= tol ({tol:.2g})"] = (
        abs(measured - (loss_pred - mse_pred)) <= tol)
    checks[f"bf16 epoch {e + 1}: |loss - mse| <= bound + tol"] = abs(measured) <= bound + tol
    checks[f"bf16 epoch {e + 1}: loss - mse != 0"] = measured != 0
    per_epoch.append({"epoch": e + 1, "loss": history["loss"][e], "mse": history["mse"][e],
                      "measured loss - mse": measured,
                      "emulated loss - mse": loss_pred - mse_pred,
                      "bound mean e_i": bound, "first-order bound": first_order,
                      "tolerance": tol})
  # The gap is a signed sum over samples and can nearly cancel in one epoch
  # (measured: N=200, seed 1, epoch 2: 6e-6 against a tolerance of 1.7e-5), so
  # "beyond float32 rounding" is required of the largest epoch, not of each.
  checks["bf16: max_e |loss - mse| > float32 tolerance (the gap is not rounding)"] = any(
      abs(r["measured loss - mse"]) > r["tolerance"] for r in per_epoch)
  details = {"bf16 setup": f"mixed_bfloat16, SGD(0.05), metrics=['mse'], batch {BATCH_SIZE}, "
                           f"targets y + {TARGET_OFFSET:g}",
             "bf16 per epoch": per_epoch}
  return result, checks, details


@scenario(NAME, TITLE, RELATION)
def run(config):
  x, y = synthetic.regression(config.num_samples, config.num_features, seed=config.seed)
  fp16, fp16_checks, fp16_details = float16_part(config, x, y)
  bf16, bf16_checks, bf16_details = bfloat16_part(config, x, y)
  last = bf16_details["bf16 per epoch"][-1]
  return Measurement(
      scenario=NAME, relation=RELATION, loss=last["loss"], metric=last["mse"],
      predicted_diff=last["emulated loss - mse"], measured_diff=last["measured loss - mse"],
      tolerance=last["tolerance"],
      fit_max_diff=max(fp16.max_abs_diff(), bf16.max_abs_diff()),
      checks={**fp16_checks, **bf16_checks}, details={**fp16_details, **bf16_details})
