"""tf_keras (Keras 2) models through `trainer.fit` / `trainer.evaluate`.

Each comparison builds two tf_keras models with different seeds, copies the
first one's weights into the second, then runs tf_keras's own `Model.fit` on
one and `trainer.fit` on the other (shuffle=False) and checks, bit for bit:
every History value (val_* included), `evaluate` (dict and list forms), the
final weights and the optimizer's `iterations`. With XLA the tolerance is
1e-6 relative.
"""

import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")

import trainer  # noqa: E402
from kernels import keras2_clipping, keras2_reduction  # noqa: E402
from trainer import semantics as semantics_module  # noqa: E402
from trainer import keras2  # noqa: E402

layers = tf_keras.layers
optimizers = tf_keras.optimizers


@pytest.fixture(autouse=True)
def _fresh_tf_keras_state():
  tf_keras.mixed_precision.set_global_policy("float32")
  tf_keras.backend.clear_session()
  yield
  tf_keras.mixed_precision.set_global_policy("float32")


# -- models and data ------------------------------------------------------------

class AddLossAndMetric(layers.Layer):
  """Passes its input through; adds scale * mean(x^2) as a loss and mean(x^2) as a metric."""

  def __init__(self, scale=1.0, **kwargs):
    super().__init__(**kwargs)
    self.scale = scale

  def call(self, inputs):
    t = tf.reduce_mean(tf.square(inputs))
    self.add_loss(self.scale * t)
    self.add_metric(t, name="t_metric")
    return inputs


def mlp(*, regularize=False, add_loss=None, outputs=1, dropout=None):
  inputs = tf_keras.Input((8,))
  regularizer = tf_keras.regularizers.L2(0.01) if regularize else None
  h = layers.Dense(16, activation="relu", kernel_regularizer=regularizer)(inputs)
  if dropout:
    h = layers.Dropout(dropout, seed=123)(h)
  if add_loss is not None:
    h = AddLossAndMetric(add_loss)(h)
  if outputs == 1:
    return tf_keras.Model(inputs, layers.Dense(1)(h))
  return tf_keras.Model(inputs, [layers.Dense(1, name="a")(h), layers.Dense(2, name="b")(h)])


def regression(n=100, outputs=1, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8)).astype("float32")
  y = (x @ rng.normal(size=(8, 1)) + 0.3 * rng.normal(size=(n, 1))).astype("float32")
  if outputs == 2:
    y = [y, rng.normal(size=(n, 2)).astype("float32")]
  return x, y


def twin_models(build):
  """Two models with the same architecture and identical initial weights."""
  tf_keras.utils.set_random_seed(1)
  reference = build()
  tf_keras.utils.set_random_seed(2)
  ours = build()
  ours.set_weights(reference.get_weights())
  return reference, ours


# -- comparison -------------------------------------------------------------------

def _values(values):
  return np.asarray([float(v) for v in values], np.float64)


def assert_logs_match(expected, actual, rtol=0.0):
  assert sorted(expected) == sorted(actual)
  for key in expected:
    e = _values(expected[key] if isinstance(expected[key], list) else [expected[key]])
    a = _values(actual[key] if isinstance(actual[key], list) else [actual[key]])
    if rtol:
      np.testing.assert_allclose(a, e, rtol=rtol, atol=0, err_msg=key)
    else:
      np.testing.assert_array_equal(a, e, err_msg=key)


def assert_weights_match(reference, ours, rtol=0.0):
  for e, a in zip(reference.get_weights(), ours.get_weights()):
    if rtol:
      np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-7)
    else:
      np.testing.assert_array_equal(a, e)


def compare(build, compile_model, x, y, *, rtol=0.0, evaluate=True, **fit_kwargs):
  """tf_keras `Model.fit` vs `trainer.fit` from identical weights; returns both."""
  reference, ours = twin_models(build)
  compile_model(reference)
  compile_model(ours)
  expected = reference.fit(x, y, shuffle=False, verbose=0, **fit_kwargs)
  actual = trainer.fit(ours, x, y, shuffle=False, verbose=0, **fit_kwargs)
  assert_logs_match(expected.history, actual.history, rtol)
  assert_weights_match(reference, ours, rtol)
  assert int(reference.optimizer.iterations) == int(ours.optimizer.iterations)
  if evaluate:
    assert_logs_match(reference.evaluate(x, y, batch_size=32, verbose=0, return_dict=True),
                      trainer.evaluate(ours, x, y, batch_size=32, verbose=0), rtol)
  return expected.history, actual.history, reference, ours


# -- the seven scenarios ------------------------------------------------------------

def test_add_loss_and_add_metric_without_compiled_loss_are_both_per_batch_means():
  """loss=None, only add_loss: Keras 2 counts each batch once, like the metric.

  With 100 samples and batch 32 the last batch holds 4; Keras 3 would weight
  it by 4/32 in `loss` but not in `t_metric`. Keras 2 gives both the same
  per-batch mean, and trainer.fit must too.
  """
  x, _ = regression()
  expected, actual, _, _ = compare(
      lambda: mlp(add_loss=1.0),
      lambda m: m.compile(optimizer=optimizers.SGD(0.05), loss=None),
      x, None, batch_size=32, epochs=3)
  np.testing.assert_array_equal(_values(actual["loss"]), _values(actual["t_metric"]))
  np.testing.assert_array_equal(_values(expected["loss"]), _values(expected["t_metric"]))


def test_compiled_loss_add_loss_regularizer_metrics_and_validation():
  x, y = regression()
  val_x, val_y = regression(n=50, seed=1)
  expected, _, _, _ = compare(
      lambda: mlp(regularize=True, add_loss=0.1),
      lambda m: m.compile(optimizer=optimizers.SGD(0.05), loss="mse", metrics=["mae"]),
      x, y, batch_size=32, epochs=3, validation_data=(val_x, val_y))
  assert sorted(expected) == ["loss", "mae", "t_metric", "val_loss", "val_mae",
                              "val_t_metric"]


def test_two_outputs_with_loss_weights():
  x, y = regression(outputs=2)
  expected, _, _, _ = compare(
      lambda: mlp(outputs=2),
      lambda m: m.compile(optimizer=optimizers.SGD(0.05), loss=["mse", "mae"],
                          loss_weights=[1.0, 0.5], metrics=["mae"]),
      x, y, batch_size=32, epochs=3)
  assert sorted(expected) == ["a_loss", "a_mae", "b_loss", "b_mae", "loss"]


def test_sample_weight_and_weighted_metrics():
  x, y = regression()
  weights = np.random.default_rng(3).uniform(0, 2, size=100).astype("float32")
  val_weights = np.random.default_rng(4).uniform(0, 2, size=50).astype("float32")
  val_x, val_y = regression(n=50, seed=1)
  compare(lambda: mlp(),
          lambda m: m.compile(optimizer=optimizers.SGD(0.05), loss="mse", metrics=["mae"],
                              weighted_metrics=["mse"]),
          x, y, batch_size=32, epochs=3, sample_weight=weights,
          validation_data=(val_x, val_y, val_weights))


@pytest.mark.parametrize("make_optimizer", [
    lambda: optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: optimizers.Adam(0.01, clipnorm=0.5),
    lambda: optimizers.Adam(0.01, global_clipnorm=0.5),
    lambda: optimizers.SGD(0.05, clipvalue=0.05),
    lambda: optimizers.SGD(0.05, use_ema=True, ema_momentum=0.9),
    lambda: optimizers.SGD(0.05, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3),
    lambda: optimizers.AdamW(0.01, weight_decay=0.05),
    lambda: optimizers.SGD(optimizers.schedules.ExponentialDecay(0.1, 3, 0.5)),
], ids=["sgd_momentum", "adam_clipnorm", "adam_global_clipnorm", "sgd_clipvalue",
        "sgd_ema", "sgd_ema_overwrite", "adamw", "lr_schedule"])
def test_optimizers_clipping_and_ema(make_optimizer):
  x, y = regression()
  compare(lambda: mlp(regularize=True),
          lambda m: m.compile(optimizer=make_optimizer(), loss="mse"),
          x, y, batch_size=32, epochs=3)


def test_steps_per_execution():
  x, y = regression()
  val_x, val_y = regression(n=50, seed=1)
  compare(lambda: mlp(regularize=True),
          lambda m: m.compile(optimizer=optimizers.Adam(0.01), loss="mse", metrics=["mae"],
                              steps_per_execution=4),
          x, y, batch_size=32, epochs=3, validation_data=(val_x, val_y))


def test_jit_compile():
  x, y = regression()
  val_x, val_y = regression(n=50, seed=1)
  _, _, _, ours = compare(
      lambda: mlp(regularize=True, add_loss=0.1),
      lambda m: m.compile(optimizer=optimizers.Adam(0.01), loss="mse", metrics=["mae"],
                          jit_compile=True),
      x, y, rtol=1e-6, batch_size=32, epochs=3, validation_data=(val_x, val_y))
  assert ours._tapefit_runner.config.jit_compile


def test_evaluate():
  """evaluate on fresh models (nothing built yet) and with sample weights; both forms."""
  x, y = regression(outputs=2)
  weights = np.random.default_rng(3).uniform(0, 2, size=100).astype("float32")
  reference, ours = twin_models(lambda: mlp(outputs=2, regularize=True, add_loss=0.1))
  for model in (reference, ours):
    model.compile(optimizer=optimizers.SGD(0.05), loss=["mse", "mae"], loss_weights=[1.0, 0.5],
                  metrics=["mae"], weighted_metrics=["mse"])
  for kwargs in ({}, {"sample_weight": weights}):
    expected = reference.evaluate(x, y, batch_size=32, verbose=0, return_dict=True, **kwargs)
    actual = trainer.evaluate(ours, x, y, batch_size=32, verbose=0, **kwargs)
    assert_logs_match(expected, actual)
    expected_list = reference.evaluate(x, y, batch_size=32, verbose=0, **kwargs)
    actual_list = trainer.evaluate(ours, x, y, batch_size=32, verbose=0, return_dict=False,
                                   **kwargs)
    np.testing.assert_array_equal(_values(actual_list), _values(expected_list))
  assert int(ours._test_counter) == int(reference._test_counter) == 4
  assert not ours.optimizer._variables[1:]  # evaluate does not build the optimizer


# -- more of tf_keras ----------------------------------------------------------------

def test_mixed_float16_loss_scale_skips_and_growth():
  """Dynamic loss scaling: overflowing steps are skipped but still counted in iterations."""
  tf_keras.mixed_precision.set_global_policy("mixed_float16")
  x, y = regression()

  def compile_model(model):
    inner = optimizers.SGD(0.05, use_ema=True, ema_momentum=0.9)
    model.compile(optimizer=tf_keras.mixed_precision.LossScaleOptimizer(
        inner, initial_scale=2.0 ** 19, dynamic_growth_steps=2), loss="mse")

  _, _, reference, ours = compare(lambda: mlp(), compile_model, x, y, batch_size=32, epochs=3)
  assert float(ours.optimizer.loss_scale) == float(reference.optimizer.loss_scale)
  assert int(ours.optimizer.dynamic_counter) == int(reference.optimizer.dynamic_counter)


def test_dataset_input_and_dropout_with_generator_rng():
  """The iterator path; Dropout reproduces fit when its RNG state is a variable."""
  x, y = regression()
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
  tf_keras.backend.experimental.enable_tf_random_generator()
  try:
    compare(lambda: mlp(dropout=0.3),
            lambda m: m.compile(optimizer=optimizers.SGD(0.05), loss="mse", metrics=["mae"]),
            dataset, None, evaluate=False, epochs=2)
    compare(lambda: mlp(dropout=0.3),
            lambda m: m.compile(optimizer=optimizers.SGD(0.05), loss="mse"),
            x, y, evaluate=False, batch_size=32, epochs=2)
  finally:
    tf_keras.backend.experimental.disable_tf_random_generator()


def test_semantics_selection_and_config():
  model = mlp()
  model.compile(optimizer=optimizers.Adam(0.01, clipnorm=1.0, clipvalue=0.5, use_ema=True),
                loss="mse", steps_per_execution=3, jit_compile=True)
  semantics = semantics_module.semantics_for(model)
  assert semantics is keras2.KERAS2
  assert semantics.callbacks is tf_keras.callbacks
  config = semantics.config(model)
  assert (config.steps_per_execution, config.jit_compile) == (3, True)
  assert (config.clipnorm, config.clipvalue) == (1.0, None)  # clipnorm wins, as in tf_keras
  assert config.use_ema and config.ema_momentum == 0.99
  assert semantics.config(model, jit_compile=False, steps_per_execution=1).jit_compile is False
  legacy = mlp()
  legacy.compile(optimizer=optimizers.legacy.SGD(0.1), loss="mse")
  with pytest.raises(ValueError, match="legacy"):
    semantics.config(legacy)


# -- kernels ---------------------------------------------------------------------------

def test_keras2_global_norm_clipping_is_tf_clip_by_global_norm():
  rng = np.random.default_rng(0)
  grads = [tf.constant(rng.normal(size=s).astype("float32") * 3) for s in ((7, 5), (5,), (3, 3))]
  # Bounds above the norm included: there c * (1/c) != 1 in float32 for some c,
  # and how 1/c is rounded decides the last bit.
  for clip in [0.3, 1.7, 100.0] + [float(c) for c in rng.uniform(20, 3000, size=20)]:
    expected, _ = tf.clip_by_global_norm(grads, clip)
    actual = keras2_clipping.clip_by_global_norm(grads + [None], clip)
    assert actual[-1] is None
    for e, a in zip(expected, actual):
      np.testing.assert_array_equal(a.numpy(), e.numpy())
  nan = keras2_clipping.clip_by_global_norm([tf.constant([1.0, np.inf]), grads[1]], 1.0)
  assert all(np.isnan(g.numpy()).all() for g in nan)


@pytest.mark.parametrize("weight_shape", [None, (12,), (12, 1), ()])
def test_keras2_weighted_loss_is_tf_keras_loss_call(weight_shape):
  rng = np.random.default_rng(1)
  y_true = tf.constant(rng.normal(size=(12, 3)).astype("float32"))
  y_pred = tf.constant(rng.normal(size=(12, 3)).astype("float32"))
  weight = None
  if weight_shape is not None:
    weight = tf.constant(rng.uniform(0, 2, size=weight_shape).astype("float32"))
  for loss in (tf_keras.losses.MeanSquaredError(), tf_keras.losses.MeanAbsoluteError(
      reduction="sum")):
    expected = loss(y_true, y_pred, sample_weight=weight)
    actual = keras2_reduction.compute_weighted_loss(
        loss.call(y_true, y_pred), weight, loss.reduction)
    assert actual.numpy() == expected.numpy()
