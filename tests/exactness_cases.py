"""The exactness matrix: `Model.fit` vs `trainer.fit`, case by case.

Every case starts both models from identical state (`fit_compare.copy_state`)
with `shuffle=False` unless it says otherwise (the `shuffle_*` cases train
on `fit`'s own permutations under the same global seed) and compares every History value (incl. `val_*`), the
`evaluate` results, every final weight and `optimizer.iterations`.

The rule:
  * XLA off (`jit_compile=False`): bit-identical (`Case.rel is None`).
  * XLA on: |keras - tapefit| <= 1e-6 * |keras| (+ `abs_floor`, with the
    reason written next to it in the case).

Most cases use a batch size that leaves a partial last batch; a few use one
that divides N. Features are combined so that the matrix stays small.

Used by tests/test_fit_exactness.py (pytest) and tests/exactness_report.py
(the Markdown table in docs/exactness.md).
"""

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import trainer  # noqa: E402

try:  # pytest puts tests/ on sys.path; the report script does the same.
  import fit_compare  # noqa: E402
except ImportError:  # pragma: no cover
  from tests import fit_compare  # noqa: E402

D = 8        # input features
UNITS = 16   # hidden units
SEED = 1234  # fit_compare.run_both seeds every build() with this
XLA_REL = fit_compare.XLA_REL_BOUND


# ---------------------------------------------------------------------------
# Data: small, deterministic, float32.
# ---------------------------------------------------------------------------

def features(n, seed):
  return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def regression(n, seed=0):
  rng = np.random.default_rng(seed + 100)
  x = features(n, seed)
  w = rng.normal(size=(D, 1)).astype(np.float32)
  y = (x @ w + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
  return x, y


def binary(n, seed=0):
  rng = np.random.default_rng(seed + 200)
  x = features(n, seed)
  w = rng.normal(size=(D, 1))
  y = ((x @ w + 0.5 * rng.normal(size=(n, 1))) > 0).astype(np.float32)
  return x, y


def classes(n, k=3, seed=0):
  """Integer class ids of shape (n,)."""
  rng = np.random.default_rng(seed + 300)
  x = features(n, seed)
  w = rng.normal(size=(D, k))
  y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, k)), axis=-1).astype(np.int32)
  return x, y


def one_hot(y, k=3):
  return np.eye(k, dtype=np.float32)[y]


def sample_weights(n, seed=0):
  return np.random.default_rng(seed + 400).uniform(0.2, 2.0, size=(n,)).astype(np.float32)


# ---------------------------------------------------------------------------
# Layers and models.
# ---------------------------------------------------------------------------

class ActivityPenalty(keras.layers.Layer):
  """Identity layer: `add_loss(rate * mean(x^2))`, and a Mean of |x| it owns."""

  def __init__(self, rate=0.05, **kwargs):
    super().__init__(**kwargs)
    self.rate = rate
    self.activity = keras.metrics.Mean(name="activity")

  def call(self, inputs):
    self.add_loss(self.rate * keras.ops.mean(keras.ops.square(inputs)))
    self.activity.update_state(keras.ops.mean(keras.ops.abs(inputs)))
    return inputs


def mlp(outputs=1, activation=None, *, hidden=(UNITS,), batchnorm=False, dropout=None,
        kernel_regularizers=(), penalty=False, final_dtype=None, kernel_constraint=None):
  layers = [keras.Input((D,))]
  for i, units in enumerate(hidden):
    reg = kernel_regularizers[i] if i < len(kernel_regularizers) else None
    layers.append(keras.layers.Dense(units, activation="relu", kernel_regularizer=reg,
                                     kernel_constraint=kernel_constraint))
    if batchnorm:
      layers.append(keras.layers.BatchNormalization())
    if dropout:
      layers.append(keras.layers.Dropout(dropout))
    if penalty:
      layers.append(ActivityPenalty(0.05))
  reg = kernel_regularizers[len(hidden)] if len(kernel_regularizers) > len(hidden) else None
  layers.append(keras.layers.Dense(outputs, activation=activation, kernel_regularizer=reg,
                                   dtype=final_dtype))
  return keras.Sequential(layers)


def two_output_model(cls_units=1, cls_activation="sigmoid"):
  """Functional model with outputs named "reg" and "cls" (in that order)."""
  inputs = keras.Input((D,))
  h = keras.layers.Dense(UNITS, activation="relu")(inputs)
  reg = keras.layers.Dense(1, name="reg")(h)
  cls = keras.layers.Dense(cls_units, activation=cls_activation, name="cls")(h)
  return keras.Model(inputs, [reg, cls])


# ---------------------------------------------------------------------------
# Callbacks.
# ---------------------------------------------------------------------------

def _exact(value):
  """A float's exact bits as text (NaN == NaN, -0.0 != 0.0)."""
  return float(np.asarray(value, np.float64)).hex()


class Recorder(keras.callbacks.Callback):
  """Records (hook, batch/epoch index, sorted log keys, exact log values)."""

  def __init__(self):
    super().__init__()
    self.events = []

  def _record(self, hook, index=None, logs=None):
    logs = dict(logs or {})
    keys = tuple(sorted(logs))
    self.events.append((hook, index, keys, tuple(_exact(logs[k]) for k in keys)))

  def on_train_begin(self, logs=None):
    self._record("on_train_begin", None, logs)

  def on_train_end(self, logs=None):
    self._record("on_train_end", None, logs)

  def on_epoch_begin(self, epoch, logs=None):
    self._record("on_epoch_begin", epoch, logs)

  def on_epoch_end(self, epoch, logs=None):
    self._record("on_epoch_end", epoch, logs)

  def on_train_batch_begin(self, batch, logs=None):
    self._record("on_train_batch_begin", batch, logs)

  def on_train_batch_end(self, batch, logs=None):
    self._record("on_train_batch_end", batch, logs)

  def on_test_begin(self, logs=None):
    self._record("on_test_begin", None, logs)

  def on_test_end(self, logs=None):
    self._record("on_test_end", None, logs)

  def on_test_batch_begin(self, batch, logs=None):
    self._record("on_test_batch_begin", batch, logs)

  def on_test_batch_end(self, batch, logs=None):
    self._record("on_test_batch_end", batch, logs)


# ---------------------------------------------------------------------------
# The case type and its runner.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
  """One row of the matrix.

  Attributes:
    name: pytest id and table row.
    build: returns a fresh compiled model (fresh optimizer) per call; the
      Keras reference.
    data: returns {"x": ..., "y": ...} plus any data-like fit kwargs
      (sample_weight, class_weight, validation_data).
    fit_kwargs: passed to both `Model.fit` and `trainer.fit`.
    xla: the step runs under XLA (for the table; checked against the model).
    rel, abs_floor: the asserted bound; rel None means bit-identical.
    reason: why the bound is not bit-identity (or what an abs_floor is for).
    features: what the case covers (for the table).
    build_tapefit: a different build for the tapefit model (same weights,
      different compile options), used with `tapefit_kwargs`.
    tapefit_kwargs: passed only to `trainer.fit` (and `trainer.evaluate`):
      the `jit_compile=` / `steps_per_execution=` overrides.
    callbacks: returns a fresh list of callbacks; called once per run.
    checks: extra checks `check(result)` run after the comparison.
  """

  name: str
  build: Callable[[], Any]
  data: Callable[[], Dict[str, Any]]
  fit_kwargs: Dict[str, Any]
  xla: bool = False
  rel: Optional[float] = None
  abs_floor: float = 0.0
  reason: str = ""
  features: str = ""
  build_tapefit: Optional[Callable[[], Any]] = None
  tapefit_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  callbacks: Optional[Callable[[], List[Any]]] = None
  checks: List[Callable[["Result"], None]] = dataclasses.field(default_factory=list)

  @property
  def bound(self):
    if self.rel is None:
      return "bit-identical"
    text = f"rel {self.rel:g}"
    if self.abs_floor:
      text += f" + abs {self.abs_floor:g}"
    return text

  def assert_bound(self, comparison):
    if self.rel is None:
      comparison.assert_bit_identical()
    else:
      comparison.assert_within(rel=self.rel, abs_floor=self.abs_floor)


@dataclasses.dataclass
class Result:
  case: Case
  comparison: Any                      # fit_compare.Comparison
  data: Dict[str, Any]
  fit_kwargs: Dict[str, Any]
  keras_callbacks: Optional[List[Any]] = None
  tapefit_callbacks: Optional[List[Any]] = None


def run_case(case):
  """Runs one case; `fit_compare.run_both` unless the case needs more."""
  data = case.data()
  x, y = data.pop("x"), data.pop("y", None)
  fit_kwargs = {**data, "shuffle": False, **case.fit_kwargs}
  if case.build_tapefit is None and not case.tapefit_kwargs and case.callbacks is None:
    comparison = fit_compare.run_both(case.build, x, y, **fit_kwargs)
    result = Result(case, comparison, {"x": x, "y": y, **data}, fit_kwargs)
  else:
    result = _run_pair(case, x, y, data, fit_kwargs)
  for model in (result.comparison.keras_model, result.comparison.tapefit_model):
    # A misconfigured case must not silently claim XLA (or its absence).
    jit = getattr(getattr(model, "_tapefit_runner", None), "config", model)
    assert bool(jit.jit_compile) == case.xla, (case.name, model.name, jit.jit_compile)
  return result


def _run_pair(case, x, y, data, fit_kwargs):
  """`run_both` with separate callbacks per run and tapefit-only overrides.

  Same protocol as `fit_compare.run_both`: seed, build twice, copy all state
  from the reference to the second model, fit both, evaluate both.
  """
  fit_kwargs = dict(fit_kwargs)
  fit_kwargs.setdefault("verbose", 0)
  keras.utils.set_random_seed(SEED)
  reference = case.build()
  keras.utils.set_random_seed(SEED)
  ours = (case.build_tapefit or case.build)()
  fit_compare.copy_state(reference, ours)
  keras_callbacks = case.callbacks() if case.callbacks else None
  tapefit_callbacks = case.callbacks() if case.callbacks else None
  keras_history = reference.fit(x, y, callbacks=keras_callbacks, **fit_kwargs).history
  tapefit_history = trainer.fit(ours, x, y, callbacks=tapefit_callbacks,
                                **fit_kwargs, **case.tapefit_kwargs).history
  keras_eval = reference.evaluate(x, y, return_dict=True, verbose=0)
  tapefit_eval = trainer.evaluate(ours, x, y, return_dict=True, verbose=0,
                                  **case.tapefit_kwargs)
  comparison = fit_compare.Comparison.of(reference, ours, keras_history, tapefit_history,
                                         keras_eval, tapefit_eval)
  return Result(case, comparison, {"x": x, "y": y, **data}, fit_kwargs,
                keras_callbacks, tapefit_callbacks)


# ---------------------------------------------------------------------------
# Extra checks (each must be able to fail).
# ---------------------------------------------------------------------------

def check_optimizer_state(result):
  """Every optimizer variable (slots, accumulators, EMA, loss scale) matches.

  Bit for bit when the case is bit-identical, else within the case's bound.
  """
  c, case = result.comparison, result.case
  a_vars = c.keras_model.optimizer.variables
  b_vars = c.tapefit_model.optimizer.variables
  # Paths differ by layer-name suffixes between the two builds; order and
  # shapes must match.
  assert len(a_vars) == len(b_vars), ([v.path for v in a_vars], [v.path for v in b_vars])
  for va, vb in zip(a_vars, b_vars):
    assert tuple(va.shape) == tuple(vb.shape), (va.path, vb.path)
    a = np.asarray(va.numpy(), np.float64)
    b = np.asarray(vb.numpy(), np.float64)
    if case.rel is None:
      np.testing.assert_array_equal(a, b, err_msg=f"optimizer variable {va.path}")
    else:
      assert np.all(np.abs(a - b) <= case.rel * np.abs(a) + case.abs_floor), (
          f"optimizer variable {va.path}: max |diff| {np.max(np.abs(a - b)):.3g}")


def check_evaluate_list(result):
  """evaluate(return_dict=False): the same list, in Keras's order, bit for bit."""
  c = result.comparison
  x, y = result.data["x"], result.data["y"]
  expected = c.keras_model.evaluate(x, y, return_dict=False, verbose=0)
  got = trainer.evaluate(c.tapefit_model, x, y, return_dict=False, verbose=0,
                         **result.case.tapefit_kwargs)
  assert isinstance(expected, list) and len(expected) > 1, expected
  assert isinstance(got, list), got
  names = list(c.keras_model.evaluate(x, y, return_dict=True, verbose=0))
  assert len(got) == len(expected), (names, got, expected)
  for i, (e, g) in enumerate(zip(expected, got)):
    if result.case.rel is None:
      assert _exact(e) == _exact(g), (i, names, expected, got)
    else:
      assert abs(e - g) <= result.case.rel * abs(e) + result.case.abs_floor, (
          i, names, expected, got)


def check_callback_events(result):
  """The recorded hook sequences (index, log keys, exact values) are equal."""
  k = [cb for cb in result.keras_callbacks if isinstance(cb, Recorder)][0].events
  t = [cb for cb in result.tapefit_callbacks if isinstance(cb, Recorder)][0].events
  for i, (a, b) in enumerate(zip(k, t)):
    assert a == b, f"event {i}: keras {a} != tapefit {b}"
  assert len(k) == len(t), (len(k), len(t), k[len(t):] or t[len(k):])
  hooks = {e[0] for e in k}
  assert "on_train_batch_end" in hooks and "on_epoch_end" in hooks, hooks


def check_hooks_include_validation(result):
  hooks = [e[0] for e in [cb for cb in result.keras_callbacks
                          if isinstance(cb, Recorder)][0].events]
  for hook in ("on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end"):
    assert hook in hooks, (hook, hooks)


def check_stopped_early(result):
  """The stopping callback really stopped training (both runs, same epoch)."""
  c = result.comparison
  requested = result.fit_kwargs["epochs"] - result.fit_kwargs.get("initial_epoch", 0)
  k_epochs = len(c.keras_model.history.epoch)
  t_epochs = len(c.tapefit_model.history.epoch)
  assert k_epochs == t_epochs, (k_epochs, t_epochs)
  assert k_epochs < requested, f"did not stop early: {k_epochs} of {requested} epochs"


def check_terminated_mid_epoch(result):
  """TerminateOnNaN stopped inside the first epoch, at the same step."""
  c = result.comparison
  check_stopped_early(result)
  steps_per_epoch = -(-len(result.data["x"]) // result.fit_kwargs["batch_size"])
  assert c.keras_iterations < steps_per_epoch, c.keras_iterations
  assert not np.isfinite(c.keras_history["loss"][-1]), c.keras_history["loss"]


def check_some_step_skipped(result):
  """Loss scaling skipped some but not all steps, and the loss scale ends equal.

  Counts applied micro-steps with the inner optimizer's raw `_iterations`
  (`optimizer.iterations` is that divided by gradient_accumulation_steps).
  """
  c = result.comparison
  n, bs = len(result.data["x"]), result.fit_kwargs["batch_size"]
  steps = -(-n // bs) * result.fit_kwargs["epochs"]
  a, b = c.keras_model.optimizer, c.tapefit_model.optimizer
  assert isinstance(a, keras.optimizers.LossScaleOptimizer), type(a)
  applied = int(a.inner_optimizer._iterations.numpy())
  assert 0 < applied < steps, (applied, steps)
  assert applied == int(b.inner_optimizer._iterations.numpy())
  assert float(a.dynamic_scale.numpy()) == float(b.dynamic_scale.numpy())
  assert int(a.step_counter.numpy()) == int(b.step_counter.numpy())


def check_loss_scale_optimizer(result):
  """mixed_float16 compiled a plain optimizer; Keras wrapped it (dynamic scale)."""
  for model in (result.comparison.keras_model, result.comparison.tapefit_model):
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def check_history_has(*keys):
  def check(result):
    for key in keys:
      assert key in result.comparison.keras_history, (key, sorted(result.comparison.keras_history))
  check.__name__ = f"check_history_has({', '.join(keys)})"
  return check


def check_val_epochs(expected_len):
  def check(result):
    hist = result.comparison.keras_history
    val = [k for k in hist if k.startswith("val_")]
    assert val, sorted(hist)
    for key in val:
      assert len(hist[key]) == expected_len, (key, hist[key])
  return check


# ---------------------------------------------------------------------------
# The cases.
# ---------------------------------------------------------------------------

def _compile(model, optimizer, loss, *, metrics=None, weighted_metrics=None, loss_weights=None,
             jit_compile=False, steps_per_execution=1):
  model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                weighted_metrics=weighted_metrics, loss_weights=loss_weights,
                jit_compile=jit_compile, steps_per_execution=steps_per_execution)
  return model


# 1. Regression, SGD with Nesterov momentum, clipnorm, a MaxNorm kernel
#    constraint on the hidden layer, validation every epoch.
def build_regression_sgd():
  model = mlp(1, kernel_constraint=keras.constraints.MaxNorm(0.8))
  return _compile(model, keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, clipnorm=1.0),
                  "mse", metrics=["mae"])


def data_regression_val():
  x, y = regression(100)
  xv, yv = regression(40, seed=7)
  return {"x": x, "y": y, "validation_data": (xv, yv)}


def data_regression_tensors():
  """`tf.Tensor` inputs (already on the device), validation data too."""
  data = data_regression_val()
  xv, yv = data["validation_data"]
  return {"x": tf.constant(data["x"]), "y": tf.constant(data["y"]),
          "validation_data": (tf.constant(xv), tf.constant(yv))}


# 2. Binary on sigmoid probabilities, Adam + clipvalue, class_weight,
#    validation_freq=2.
def build_binary_sigmoid():
  return _compile(mlp(1, "sigmoid"), keras.optimizers.Adam(0.01, clipvalue=0.05),
                  "binary_crossentropy", metrics=["accuracy"])


def data_binary_classweight():
  x, y = binary(120)
  xv, yv = binary(40, seed=7)
  return {"x": x, "y": y, "class_weight": {0: 0.7, 1: 2.5}, "validation_data": (xv, yv)}


# 3. Binary from logits, RMSprop + global_clipnorm, sample_weight,
#    weighted_metrics, steps_per_execution=4, weighted validation data.
def build_binary_logits():
  return _compile(
      mlp(1), keras.optimizers.RMSprop(0.005, global_clipnorm=0.5),
      keras.losses.BinaryCrossentropy(from_logits=True),
      metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
      weighted_metrics=[keras.metrics.BinaryAccuracy(name="w_acc", threshold=0.0),
                        keras.metrics.MeanSquaredError(name="w_mse")],
      steps_per_execution=4)


def data_binary_weighted():
  x, y = binary(100)
  xv, yv = binary(40, seed=7)
  return {"x": x, "y": y, "sample_weight": sample_weights(100),
          "validation_data": (xv, yv, sample_weights(40, seed=7))}


# 4. Sparse categorical on softmax, AdamW weight decay + use_ema, L1 and L2
#    kernel regularizers, batch size dividing N.
def build_sparse_softmax():
  model = mlp(3, "softmax", hidden=(UNITS, UNITS),
              kernel_regularizers=(keras.regularizers.L1(1e-3), keras.regularizers.L2(1e-3),
                                   keras.regularizers.L1L2(l1=1e-4, l2=1e-3)))
  return _compile(model, keras.optimizers.AdamW(0.01, weight_decay=0.05, use_ema=True,
                                                ema_momentum=0.9),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])


def data_classes_128():
  x, y = classes(128)
  return {"x": x, "y": y}


# 5. Sparse categorical from logits, BatchNormalization + Dropout,
#    steps_per_execution=4 (7 batches: one execution of 4, one of 3).
def build_sparse_logits_bn_dropout():
  model = mlp(3, hidden=(UNITS, UNITS), batchnorm=True, dropout=0.3)
  return _compile(model, keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=4)


def data_classes_100():
  x, y = classes(100)
  xv, yv = classes(40, seed=7)
  return {"x": x, "y": y, "validation_data": (xv, yv)}


# 6. Categorical on one-hot labels, gradient_accumulation_steps=2 with 5
#    batches per epoch (a leftover micro-batch each epoch, last one partial),
#    use_ema on top (the EMA moves on every micro-step), class_weight on
#    one-hot labels (the class is the argmax).
def build_categorical_accum():
  return _compile(mlp(3, "softmax"),
                  keras.optimizers.SGD(0.05, momentum=0.9, gradient_accumulation_steps=2,
                                       use_ema=True, ema_momentum=0.7),
                  "categorical_crossentropy", metrics=["accuracy"])


def data_onehot():
  x, y = classes(100)
  return {"x": x, "y": one_hot(y), "class_weight": {0: 1.5, 1: 0.5, 2: 1.0}}


# 7. Two outputs, dict form: loss / loss_weights / metrics dicts, partial batch.
def build_two_outputs_dict():
  return _compile(two_output_model(), keras.optimizers.Adam(0.01),
                  {"reg": "mse", "cls": "binary_crossentropy"},
                  loss_weights={"reg": 0.5, "cls": 2.0},
                  metrics={"reg": ["mae"], "cls": ["accuracy"]})


def data_two_outputs_dict():
  x, y_reg = regression(100)
  _, y_cls = binary(100)
  return {"x": x, "y": {"reg": y_reg, "cls": y_cls}}


# 8. Two outputs, list form, one sample_weight for both, validation data,
#    weighted per-output metrics. Batch size 25 divides N=100, so every train
#    batch has a static batch dimension and each `<out>_loss` tracker weights
#    a batch by 25 (not a power of two, so the weighting shows in the bits);
#    the 40 validation rows leave a partial batch of 15.
def build_two_outputs_list():
  return _compile(two_output_model(3, "softmax"), keras.optimizers.RMSprop(0.003),
                  ["mse", "sparse_categorical_crossentropy"], loss_weights=[1.0, 0.3],
                  metrics=[["mae"], ["accuracy"]],
                  weighted_metrics=[["mse"], ["accuracy"]])


def data_two_outputs_list():
  x, y_reg = regression(100)
  _, y_cls = classes(100)
  xv, yv_reg = regression(40, seed=7)
  _, yv_cls = classes(40, seed=7)
  return {"x": x, "y": [y_reg, y_cls], "sample_weight": sample_weights(100),
          "validation_data": (xv, [yv_reg, yv_cls])}


# 9. A layer that calls add_loss and updates its own Mean in call(), plus an
#    L2 regularizer (three loss terms in the sum).
def build_add_loss_layer():
  model = mlp(1, penalty=True, kernel_regularizers=(keras.regularizers.L2(1e-2),))
  return _compile(model, keras.optimizers.Adam(0.01), "mse", metrics=["mae"])


def data_regression():
  x, y = regression(100)
  return {"x": x, "y": y}


# 10. EMA with ema_overwrite_frequency, a fixed loss_scale_factor, and a
#     loss with reduction="sum".
def build_ema_overwrite():
  return _compile(mlp(1), keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.8,
                                                ema_overwrite_frequency=3,
                                                loss_scale_factor=64.0),
                  keras.losses.MeanAbsoluteError(reduction="sum"), metrics=["mse"])


# 11. mixed_float16, Keras wraps the optimizer in a LossScaleOptimizer.
def build_mixed_float16():
  keras.mixed_precision.set_dtype_policy("mixed_float16")
  model = mlp(1, "sigmoid", final_dtype="float32")
  return _compile(model, keras.optimizers.Adam(0.01, clipnorm=0.3), "binary_crossentropy",
                  metrics=["accuracy"])


def data_binary():
  x, y = binary(100)
  return {"x": x, "y": y}


# 12. mixed_float16 with a first step that overflows: explicit
#     LossScaleOptimizer with initial_scale=2**17; float16 gradients overflow
#     for the first 3 steps (2**17 -> 2**16 -> 2**15 -> 2**14), which are
#     skipped (scale halves, iterations stays), then training proceeds.
def build_mixed_float16_overflow():
  keras.mixed_precision.set_dtype_policy("mixed_float16")
  model = mlp(1, final_dtype="float32")
  optimizer = keras.optimizers.LossScaleOptimizer(
      keras.optimizers.SGD(0.01, gradient_accumulation_steps=2), initial_scale=2.0**17)
  return _compile(model, optimizer, "mse", metrics=["mae"])


# 13. mixed_bfloat16, sparse classification on logits.
def build_mixed_bfloat16():
  keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
  model = mlp(3, final_dtype="float32")
  return _compile(model, keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


# 14. tf.data.Dataset input with a partial last batch, two outputs: the
#     batch dimension is unknown, so `<out>_loss` trackers weight batches by 1.
def data_dataset_two_outputs():
  x, y_reg = regression(100)
  _, y_cls = binary(100)
  xv, yv_reg = regression(40, seed=7)
  _, yv_cls = binary(40, seed=7)
  train = tf.data.Dataset.from_tensor_slices((x, {"reg": y_reg, "cls": y_cls})).batch(32)
  val = tf.data.Dataset.from_tensor_slices((xv, {"reg": yv_reg, "cls": yv_cls})).batch(32)
  return {"x": train, "y": None, "validation_data": val}


# 15. tf.data.Dataset of full batches (x, y, sample_weight), with Dropout
#     (the dataset path draws the same dropout masks as fit).
def data_dataset_weighted():
  x, y = regression(96)
  ds = tf.data.Dataset.from_tensor_slices((x, y, sample_weights(96))).batch(32)
  return {"x": ds, "y": None}


def build_regression_weighted_dropout():
  return _compile(mlp(1, dropout=0.2), keras.optimizers.Adam(0.01, clipnorm=0.5), "mse",
                  metrics=["mae"], weighted_metrics=["mae"])


# 16. initial_epoch > 0 and steps_per_epoch (iterator carried across epochs).
def build_regression_adam():
  return _compile(mlp(1), keras.optimizers.Adam(0.01), "mse", metrics=["mae"])


# XLA cases (compile-time bound).
def build_xla_bn_spe4():
  model = mlp(3, "softmax", batchnorm=True)
  return _compile(model, keras.optimizers.Adam(0.01, global_clipnorm=1.0),
                  "sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=True, steps_per_execution=4)


def build_xla_regression_accum():
  return _compile(mlp(1, kernel_regularizers=(keras.regularizers.L2(1e-3),)),
                  keras.optimizers.AdamW(0.01, weight_decay=0.01,
                                         gradient_accumulation_steps=2),
                  "mse", metrics=["mae"], weighted_metrics=["mse"], jit_compile=True)


def data_regression_weighted_val():
  x, y = regression(100)
  xv, yv = regression(40, seed=7)
  return {"x": x, "y": y, "sample_weight": sample_weights(100),
          "validation_data": (xv, yv)}


def build_xla_mixed_float16_spe4():
  keras.mixed_precision.set_dtype_policy("mixed_float16")
  model = mlp(1, "sigmoid", final_dtype="float32")
  return _compile(model, keras.optimizers.Adam(0.01), "binary_crossentropy",
                  metrics=["accuracy"], jit_compile=True, steps_per_execution=4)


def data_dataset_binary_partial():
  x, y = binary(100)
  xv, yv = binary(40, seed=7)
  return {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(16), "y": None,
          "validation_data": tf.data.Dataset.from_tensor_slices((xv, yv)).batch(16)}


# trainer.fit(jit_compile=True, steps_per_execution=4) overrides: the
# reference is compiled with those values, the tapefit model without.
def _two_outputs_sgd(**compile_kwargs):
  return _compile(two_output_model(), keras.optimizers.SGD(0.02, momentum=0.9, clipvalue=0.1),
                  ["mse", keras.losses.BinaryCrossentropy()], loss_weights=[0.7, 1.3],
                  metrics=[["mae"], ["accuracy"]], **compile_kwargs)


def build_override_reference():
  return _two_outputs_sgd(jit_compile=True, steps_per_execution=4)


def build_override_tapefit():
  return _two_outputs_sgd(jit_compile=False, steps_per_execution=1)


def data_two_outputs_list_binary():
  x, y_reg = regression(100)
  _, y_cls = binary(100)
  return {"x": x, "y": [y_reg, y_cls]}


# Callbacks: rising loss (EarlyStopping) and divergence (TerminateOnNaN).
def build_rising_loss():
  # Plain SGD with too large a step: the loss rises from the second epoch on.
  return _compile(mlp(1), keras.optimizers.SGD(0.3), "mse", metrics=["mae"])


def build_diverging():
  return _compile(mlp(1), keras.optimizers.SGD(50.0), "mse")


def recorder_only():
  return [Recorder()]


def early_stopping():
  return [keras.callbacks.EarlyStopping(monitor="loss", patience=0), Recorder()]


def terminate_on_nan():
  return [keras.callbacks.TerminateOnNaN(), Recorder()]


# Why XLA cases assert 1e-6 relative rather than bit-identity: XLA may fuse
# and reorder float32 ops (reduction order, FMA contraction, fused
# elementwise chains) per compiled program, and the two sides compile
# different programs (Keras compiles its train step; tapefit compiles its own
# step, or for in-memory arrays a fused loop over the whole epoch), so equal
# bits are not guaranteed. On this machine they measure 0 (docs/exactness.md).
XLA_REASON = ("XLA may fuse/reorder float32 ops differently in Keras's compiled step and "
              "tapefit's (different programs), so bit-identity is not guaranteed; "
              "the rule's 1e-6 relative bound is asserted, no abs floor needed")

CASES: List[Case] = [
    Case("regression_sgd_nesterov_clipnorm_val", build_regression_sgd, data_regression_val,
         dict(batch_size=32, epochs=2, validation_batch_size=15),
         features="mse+mae, SGD(momentum=0.9, nesterov), clipnorm, MaxNorm constraint, "
                  "validation_data with validation_batch_size=15, N=100 bs=32 (partial)",
         checks=[check_optimizer_state, check_val_epochs(2)]),
    Case("binary_sigmoid_adam_clipvalue_classweight_valfreq", build_binary_sigmoid,
         data_binary_classweight, dict(batch_size=50, epochs=2, validation_freq=2),
         features="binary_crossentropy(sigmoid)+accuracy, Adam, clipvalue, class_weight, "
                  "validation_freq=2, N=120 bs=50",
         checks=[check_optimizer_state, check_val_epochs(1)]),
    Case("binary_logits_rmsprop_globalclip_sw_weighted_spe4", build_binary_logits,
         data_binary_weighted, dict(batch_size=16, epochs=2),
         features="BCE(from_logits), RMSprop, global_clipnorm, sample_weight, "
                  "weighted_metrics, weighted val data, steps_per_execution=4, bs=16",
         checks=[check_optimizer_state, check_evaluate_list, check_history_has("val_w_acc")]),
    Case("sparse_softmax_adamw_ema_l1_l2_divides", build_sparse_softmax, data_classes_128,
         dict(batch_size=32, epochs=2),
         features="sparse CCE(softmax)+accuracy, AdamW(weight_decay), use_ema, "
                  "L1/L2/L1L2 regularizers, N=128 bs=32 (divides)",
         checks=[check_optimizer_state]),
    Case("sparse_logits_bn_dropout_spe4_val", build_sparse_logits_bn_dropout, data_classes_100,
         dict(batch_size=16, epochs=2),
         features="sparse CCE(from_logits), BatchNormalization, Dropout, "
                  "steps_per_execution=4 (7 batches), validation_data",
         checks=[check_optimizer_state]),
    Case("categorical_onehot_accum2_odd", build_categorical_accum, data_onehot,
         dict(batch_size=24, epochs=2),
         features="categorical_crossentropy(one-hot)+accuracy, SGD momentum, "
                  "gradient_accumulation_steps=2, 5 batches/epoch (odd, partial), use_ema, "
                  "class_weight on one-hot labels",
         checks=[check_optimizer_state]),
    Case("two_outputs_dict_loss_weights", build_two_outputs_dict, data_two_outputs_dict,
         dict(batch_size=32, epochs=2),
         features="2 outputs, dict loss/loss_weights/metrics, partial batch, "
                  "evaluate(return_dict=False)",
         checks=[check_optimizer_state, check_evaluate_list,
                 check_history_has("reg_loss", "cls_loss", "reg_mae", "cls_accuracy")]),
    Case("two_outputs_list_loss_weights_sw_val", build_two_outputs_list, data_two_outputs_list,
         dict(batch_size=25, epochs=2),
         features="2 outputs, list loss/loss_weights/metrics/weighted_metrics, "
                  "sample_weight, N=100 bs=25 (divides; static batch dim), "
                  "validation_data (40 rows: partial)",
         checks=[check_optimizer_state, check_evaluate_list]),
    Case("add_loss_layer_metric_l2", build_add_loss_layer, data_regression,
         dict(batch_size=32, epochs=2),
         features="custom layer add_loss + own keras.metrics.Mean, L2 regularizer",
         checks=[check_optimizer_state, check_history_has("activity")]),
    Case("ema_overwrite_frequency", build_ema_overwrite, data_regression,
         dict(batch_size=16, epochs=2),
         features="Adam use_ema, ema_overwrite_frequency=3, loss_scale_factor=64, "
                  "MAE(reduction=sum), bs=16",
         checks=[check_optimizer_state]),
    Case("mixed_float16_auto_loss_scale", build_mixed_float16, data_binary,
         dict(batch_size=32, epochs=2),
         features="mixed_float16 (auto LossScaleOptimizer), float32 head, BCE, "
                  "clipnorm after unscaling",
         checks=[check_optimizer_state, check_loss_scale_optimizer]),
    Case("mixed_float16_overflow_skips_step", build_mixed_float16_overflow,
         data_regression, dict(batch_size=20, epochs=2),
         features="mixed_float16, LossScaleOptimizer(SGD(gradient_accumulation_steps=2), "
                  "initial_scale=2**17): the first 3 of 10 micro-steps overflow and are "
                  "skipped, which shifts the accumulation phase (7 applied: iterations 3)",
         checks=[check_optimizer_state, check_some_step_skipped]),
    Case("mixed_bfloat16", build_mixed_bfloat16, data_classes_100,
         dict(batch_size=32, epochs=2),
         features="mixed_bfloat16, sparse CCE(from_logits), validation_data",
         checks=[check_optimizer_state]),
    Case("dataset_two_outputs_partial", build_two_outputs_dict, data_dataset_two_outputs,
         dict(epochs=2), callbacks=recorder_only,
         features="tf.data.Dataset (x, {reg, cls}), partial last batch (unknown batch dim), "
                  "dataset validation_data, recorded callback hooks/logs",
         checks=[check_optimizer_state, check_history_has("val_reg_loss"),
                 check_callback_events, check_hooks_include_validation]),
    Case("dataset_sample_weight_dropout_full_batches", build_regression_weighted_dropout,
         data_dataset_weighted, dict(epochs=2),
         features="tf.data.Dataset (x, y, sample_weight), N=96 bs=32, Dropout, "
                  "Adam clipnorm, weighted_metrics",
         checks=[check_optimizer_state]),
    Case("initial_epoch_steps_per_epoch", build_regression_adam, data_regression,
         dict(batch_size=32, epochs=3, initial_epoch=1, steps_per_epoch=3),
         callbacks=recorder_only,
         features="initial_epoch=1, epochs=3, steps_per_epoch=3 with 4 batches of data "
                  "(the second epoch runs out after 1 step), recorded callback hooks/logs",
         checks=[check_optimizer_state, check_callback_events]),
    Case("callbacks_sequence_spe1", build_regression_sgd, data_regression_val,
         dict(batch_size=32, epochs=2), callbacks=recorder_only,
         features="recorded callback hooks/logs, validation_data, steps_per_execution=1",
         checks=[check_callback_events, check_hooks_include_validation]),
    Case("callbacks_sequence_spe4", build_sparse_logits_bn_dropout, data_classes_100,
         dict(batch_size=16, epochs=2), callbacks=recorder_only,
         features="recorded callback hooks/logs, validation_data, steps_per_execution=4",
         checks=[check_callback_events, check_hooks_include_validation]),
    Case("callbacks_early_stopping", build_rising_loss, data_regression,
         dict(batch_size=32, epochs=5), callbacks=early_stopping,
         features="EarlyStopping(monitor=loss, patience=0), rising loss",
         checks=[check_callback_events, check_stopped_early]),
    Case("callbacks_terminate_on_nan", build_diverging, data_regression,
         dict(batch_size=10, epochs=3), callbacks=terminate_on_nan,
         features="TerminateOnNaN, diverging SGD: stops mid-epoch",
         checks=[check_callback_events, check_terminated_mid_epoch]),
    Case("shuffle_true_bn_dropout_spe4", build_sparse_logits_bn_dropout, data_classes_100,
         dict(batch_size=16, epochs=3, shuffle=True),
         features="shuffle=True (fit's default): a fresh permutation per epoch, gathered "
                  "in the fused loop; BatchNormalization, Dropout, steps_per_execution=4, "
                  "partial batch, validation_data",
         checks=[check_optimizer_state]),
    Case("shuffle_batch_weighted", build_binary_logits, data_binary_weighted,
         dict(batch_size=16, epochs=2, shuffle="batch"),
         features='shuffle="batch" (within each batch; the iterator path), sample_weight, '
                  "weighted_metrics, steps_per_execution=4",
         checks=[check_optimizer_state]),
    Case("shuffle_true_steps_per_epoch", build_regression_adam, data_regression,
         dict(batch_size=16, epochs=4, steps_per_epoch=5, shuffle=True),
         callbacks=recorder_only,
         features="shuffle=True with steps_per_epoch=5 over 7 batches: one iterator "
                  "(one permutation) carried across epochs, then a new one",
         checks=[check_optimizer_state, check_callback_events]),
    Case("tensor_inputs_val", build_regression_sgd, data_regression_tensors,
         dict(batch_size=32, epochs=2, shuffle=True),
         features="x, y and validation_data as tf.Tensors (the fused path keeps them on "
                  "the device), shuffle=True, partial batch",
         checks=[check_optimizer_state, check_val_epochs(2)]),
    # ---- XLA on ----
    Case("xla_sparse_softmax_bn_globalclip_spe4", build_xla_bn_spe4, data_classes_100,
         dict(batch_size=16, epochs=2), xla=True, rel=XLA_REL, reason=XLA_REASON,
         features="jit_compile=True (compile), steps_per_execution=4, BatchNormalization, "
                  "global_clipnorm, validation_data",
         checks=[check_optimizer_state]),
    Case("xla_regression_adamw_accum2_sw", build_xla_regression_accum,
         data_regression_weighted_val, dict(batch_size=20, epochs=2), xla=True,
         rel=XLA_REL, reason=XLA_REASON,
         features="jit_compile=True (compile), steps_per_execution=1, AdamW, "
                  "gradient_accumulation_steps=2 (5 batches), L2, sample_weight, val",
         checks=[check_optimizer_state]),
    Case("xla_dataset_mixed_float16_spe4", build_xla_mixed_float16_spe4,
         data_dataset_binary_partial, dict(epochs=2), xla=True, rel=XLA_REL,
         reason=XLA_REASON,
         features="jit_compile=True, steps_per_execution=4, tf.data.Dataset with partial "
                  "last batch (7 batches), mixed_float16 (auto LossScaleOptimizer), "
                  "dataset validation_data",
         checks=[check_optimizer_state, check_loss_scale_optimizer]),
    Case("xla_override_two_outputs_spe4", build_override_reference, data_two_outputs_list_binary,
         dict(batch_size=32, epochs=2), xla=True, rel=XLA_REL, reason=XLA_REASON,
         build_tapefit=build_override_tapefit,
         tapefit_kwargs=dict(jit_compile=True, steps_per_execution=4),
         features="trainer.fit(jit_compile=True, steps_per_execution=4) overrides; "
                  "2 outputs (list), SGD momentum, clipvalue",
         checks=[check_optimizer_state, check_evaluate_list]),
    Case("xla_shuffle_true_spe4", build_xla_bn_spe4, data_classes_100,
         dict(batch_size=16, epochs=2, shuffle=True), xla=True, rel=XLA_REL,
         reason=XLA_REASON,
         features="jit_compile=True, shuffle=True: the permutation gathered inside the "
                  "fused XLA loop, BatchNormalization, global_clipnorm, partial batch",
         checks=[check_optimizer_state]),
]

CASES_BY_NAME = {case.name: case for case in CASES}
assert len(CASES_BY_NAME) == len(CASES), "duplicate case names"


def reset_keras_state():
  """What tests/conftest.py does around each test (for the report script)."""
  keras.mixed_precision.set_dtype_policy("float32")
  keras.backend.clear_session()
