"""The named stages of `trainer.TrainStep`, called one at a time."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer
from trainer import synthetic


def _model(**compile_kwargs):
  inputs = keras.Input((8,))
  hidden = keras.layers.Dense(16, activation="relu",
                              kernel_regularizer=keras.regularizers.L2(0.02))(inputs)
  outputs = keras.layers.Dense(1, kernel_regularizer=keras.regularizers.L1(0.01))(hidden)
  model = keras.Model(inputs, outputs)
  compile_kwargs.setdefault("optimizer", keras.optimizers.SGD(0.05))
  model.compile(loss="mse", metrics=["mae"], **compile_kwargs)
  return model


def _batch(n=24, seed=0):
  x, y = synthetic.regression(n, 8, seed=seed)
  return tf.constant(x), tf.constant(y)


def test_losses_stage_matches_float64_formula():
  """L = mean((y - y_pred)^2) + 0.02 * sum(W1^2) + 0.01 * sum(|W2|)."""
  model = _model()
  x, y = _batch()
  step = trainer.TrainStep(model)
  y_pred = step.forward(x, training=True)
  terms = step.losses(x, y, y_pred, None)
  w1 = model.layers[1].kernel.numpy().astype(np.float64)
  w2 = model.layers[2].kernel.numpy().astype(np.float64)
  residual = y.numpy().astype(np.float64) - y_pred.numpy().astype(np.float64)
  expected = np.mean(residual ** 2) + 0.02 * np.sum(w1 ** 2) + 0.01 * np.sum(np.abs(w2))
  np.testing.assert_allclose(float(terms.total), expected, rtol=2e-6)
  assert terms.output_losses[0].shape == ()


def test_losses_stage_equals_keras_compute_loss_bitwise():
  model = _model()
  x, y = _batch()
  step = trainer.TrainStep(model)
  y_pred = step.forward(x, training=True)
  ours = step.losses(x, y, y_pred, None).total
  theirs = model.compute_loss(x, y, y_pred, training=True)
  assert float(ours) == float(theirs)


def test_stages_composed_equal_one_call_of_the_step():
  """forward, losses, scale, gradients, transform, apply == step(batch)."""
  x, y = _batch()
  keras.utils.set_random_seed(0)
  a = _model(optimizer=keras.optimizers.Adam(0.01, clipnorm=0.1))
  b = _model(optimizer=keras.optimizers.Adam(0.01, clipnorm=0.1))
  b.set_weights(a.get_weights())
  step_a, step_b = trainer.TrainStep(a), trainer.TrainStep(b)
  a.optimizer.build(a.trainable_variables)
  b.optimizer.build(b.trainable_variables)
  step_a((x, y))
  with tf.GradientTape() as tape:
    y_pred = step_b.forward(x, training=True)
    terms = step_b.losses(x, y, y_pred, None)
    scaled = step_b.scale(terms.total)
  grads = step_b.gradients(tape, scaled)
  transformed = step_b.transform(grads)
  step_b.apply(transformed)
  step_b.metrics(x, y, y_pred, None, terms)
  for wa, wb in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_array_equal(wa, wb)
  assert int(a.optimizer.iterations) == int(b.optimizer.iterations) == 1


def test_transform_clips_once_in_the_kernel_not_in_the_optimizer(monkeypatch):
  model = _model(optimizer=keras.optimizers.SGD(0.1, global_clipnorm=0.01))

  def forbidden(*args, **kwargs):
    raise AssertionError("the optimizer's own clipping ran")

  monkeypatch.setattr(model.optimizer, "_clip_gradients", forbidden)
  x, y = _batch()
  history = trainer.fit(model, x.numpy(), y.numpy(), batch_size=8, epochs=1, verbose=0)
  assert len(history.history["loss"]) == 1
  step = trainer.TrainStep(model)
  with tf.GradientTape() as tape:
    terms = step.losses(x, y, step.forward(x, training=True), None)
  clipped = step.transform(step.gradients(tape, terms.total)).grads
  norm = np.sqrt(sum(np.sum(g.numpy().astype(np.float64) ** 2) for g in clipped))
  np.testing.assert_allclose(norm, 0.01, rtol=1e-5)


def test_metrics_stage_weights_loss_by_batch_size():
  """loss tracker: total = sum_b n_b L_b, count = sum_b n_b."""
  model = _model()
  step = trainer.TrainStep(model)
  values = []
  for n, seed in [(8, 1), (3, 2)]:
    x, y = _batch(n, seed)
    y_pred = step.forward(x, training=False)
    terms = step.losses(x, y, y_pred, None)
    values.append((n, float(terms.total)))
    logs = step.metrics(x, y, y_pred, None, terms)
  expected = np.float32(sum(np.float32(v) * np.float32(n) for n, v in values)) / np.float32(11)
  assert float(logs["loss"]) == pytest.approx(float(expected), rel=1e-7)
  assert float(model._loss_tracker.count) == 11.0


def test_no_retrace_across_epochs_or_on_the_partial_last_batch():
  model = _model()
  x, y = synthetic.regression(100, 8)
  trainer.fit(model, x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
  runner = model._tapefit_runner
  (compiled,) = runner._train.values()
  assert compiled.trace_count == 1
  trainer.fit(model, x, y, batch_size=32, epochs=2, verbose=0, shuffle=False)
  assert compiled.trace_count == 1


@pytest.mark.parametrize("steps_per_execution, expected_ends", [(1, [0, 1, 2, 3]), (4, [3])])
def test_batch_callbacks_fire_once_per_execution(steps_per_execution, expected_ends):
  model = _model(steps_per_execution=steps_per_execution)
  ends = []
  record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: ends.append(b))
  x, y = synthetic.regression(100, 8)
  trainer.fit(model, x, y, batch_size=32, epochs=1, verbose=0, callbacks=[record])
  assert ends == expected_ends
  assert int(model.optimizer.iterations) == 4
