"""Bad input fails before any training step, with a message that says what and why.

Every case checks that the error names the argument and the value received,
and that the call left the weights and `optimizer.iterations` untouched.
The last tests check that valid edge inputs are not rejected.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer
from trainer import checks

N = 16


def says(*parts):
  """A `match=` pattern: every part, literally, in this order."""
  return ".*".join(re.escape(p) for p in parts)


def dense(units=1, activation=None, *, inputs=4, compiled=True, **compile_kwargs):
  """A tiny built model: Input(inputs) -> Dense(3) -> Dense(units)."""
  model = keras.Sequential([
      keras.Input((inputs,)), keras.layers.Dense(3, activation="relu"),
      keras.layers.Dense(units, activation=activation)])
  if compiled:
    compile_kwargs.setdefault("optimizer", "sgd")
    compile_kwargs.setdefault(
        "loss", "sparse_categorical_crossentropy" if activation == "softmax" else "mse")
    model.compile(**compile_kwargs)
  return model


def two_inputs():
  a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
  out = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b]))
  model = keras.Model({"a": a, "b": b}, out)
  model.compile(optimizer="sgd", loss="mse")
  return model


def two_outputs():
  inp = keras.Input((4,))
  hidden = keras.layers.Dense(3)(inp)
  model = keras.Model(inp, [keras.layers.Dense(1, name="reg")(hidden),
                            keras.layers.Dense(3, activation="softmax", name="cls")(hidden)])
  model.compile(optimizer="sgd", loss=["mse", "sparse_categorical_crossentropy"])
  return model


def data(features=4, n=N, targets=1, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, features)).astype("float32")
  y = rng.normal(size=(n, targets)).astype("float32")
  return x, y


def labels(classes=3, n=N, seed=0):
  return np.random.default_rng(seed).integers(0, classes, size=(n,))


class State:
  """A model's variables and optimizer step count, to compare after a call.

  `model.variables` holds the weights, BatchNormalization statistics and
  seed-generator states: all that a forward or train step could move.
  """

  def __init__(self, model):
    self.model = model
    self.variables = self._variables()
    self.iterations = self._iterations()

  def _variables(self):
    return [keras.ops.convert_to_numpy(v) for v in self.model.variables]

  def _iterations(self):
    optimizer = getattr(self.model, "optimizer", None)
    return None if optimizer is None else int(optimizer.iterations)

  def assert_unchanged(self):
    after = self._variables()
    assert len(after) == len(self.variables)
    for before, now in zip(self.variables, after):
      np.testing.assert_array_equal(before, now)
    assert self._iterations() == self.iterations


def rejects(model, error, pattern, call=None, *args, **kwargs):
  """Asserts `call(model, *args, **kwargs)` raises and left `model` as it was."""
  call = call or trainer.fit
  state = State(model)
  with pytest.raises(error, match=pattern):
    call(model, *args, verbose=0, **kwargs)
  state.assert_unchanged()


# -- the model ----------------------------------------------------------------

@pytest.mark.parametrize("call", [trainer.fit, trainer.evaluate], ids=["fit", "evaluate"])
def test_uncompiled_model(call):
  model = dense(compiled=False)
  x, y = data()
  rejects(model, ValueError, says("`model`", repr(model.name), "not compiled", "compile("),
          call, x, y)


@pytest.mark.parametrize("call", [trainer.fit, trainer.evaluate], ids=["fit", "evaluate"])
def test_not_a_model(call):
  x, y = data()
  with pytest.raises(TypeError, match=says("`model`", "array of shape (16, 4)", "keras.Model")):
    call(x, y, verbose=0)


@pytest.mark.parametrize("call", [trainer.fit, trainer.evaluate], ids=["fit", "evaluate"])
def test_no_loss_to_compute(call):
  model = dense(loss=None)
  x, y = data()
  rejects(model, ValueError, says("`loss`", "None", "model.compile(", "loss="), call, x, y)


def test_no_loss_when_y_is_missing():
  model = dense()
  x, _ = data()
  rejects(model, ValueError, says("`y`", "None", "loss"), trainer.fit, x)


class AddsNoLoss(keras.layers.Layer):
  """A custom layer: it could call `add_loss`, so only tracing can tell."""

  def call(self, inputs):
    return inputs


def stateful_custom_model(run_eagerly):
  """A custom layer, then layers whose forward pass writes state: BN stats, Dropout seeds."""
  model = keras.Sequential([keras.Input((4,)), AddsNoLoss(), keras.layers.BatchNormalization(),
                            keras.layers.Dropout(0.5), keras.layers.Dense(1)])
  model.compile(optimizer="sgd", run_eagerly=run_eagerly)
  return model


@pytest.mark.parametrize("run_eagerly", [False, True], ids=["graph", "eager"])
def test_no_loss_with_custom_layer(run_eagerly):
  # Found by a symbolic forward pass, so even an eager step never starts.
  model = stateful_custom_model(run_eagerly)
  x, y = data()
  rejects(model, ValueError, says("No loss to compute", repr(model.name), "`loss` (None)"),
          trainer.fit, x, y)


def test_no_loss_found_when_the_step_is_traced(monkeypatch):
  # A model the symbolic probe cannot call: the traced step still refuses, before
  # the first update runs.
  monkeypatch.setattr(checks, "_symbolic_loss_count", lambda model, x: None)
  model = stateful_custom_model(run_eagerly=False)
  x, y = data()
  rejects(model, ValueError, says("No loss to compute", repr(model.name), "`loss`"),
          trainer.fit, x, y)


def test_custom_add_loss_without_compiled_loss_is_accepted():
  class Penalty(keras.layers.Layer):
    def call(self, inputs):
      self.add_loss(0.1 * keras.ops.sum(keras.ops.square(inputs)))
      return inputs

  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), Penalty()])
  model.compile(optimizer="sgd")
  x, _ = data()
  trainer.fit(model, x, batch_size=8, epochs=1, verbose=0)
  assert int(model.optimizer.iterations) == 2


def test_regularizer_without_compiled_loss_is_accepted():
  model = keras.Sequential([keras.Input((4,)),
                            keras.layers.Dense(2, kernel_regularizer="l2")])
  model.compile(optimizer="sgd")
  x, y = data(targets=2)
  trainer.fit(model, x, y, batch_size=8, verbose=0)
  assert int(model.optimizer.iterations) == 2


# -- arrays ---------------------------------------------------------------------

def test_x_and_y_lengths_differ():
  x, y = data()
  rejects(dense(), ValueError, says("`y`", "12 samples", "`x`", "16"), trainer.fit,
          x, y[:12])


def test_evaluate_x_and_y_lengths_differ():
  x, y = data()
  rejects(dense(), ValueError, says("`y`", "12 samples", "`x`", "16"), trainer.evaluate,
          x, y[:12])


def test_sample_weight_wrong_length():
  x, y = data()
  rejects(dense(), ValueError, says("`sample_weight`", "10 samples", "16"), trainer.fit,
          x, y, sample_weight=np.ones(10))


def test_dict_x_lengths_differ():
  rng = np.random.default_rng(0)
  x = {"a": rng.normal(size=(N, 2)), "b": rng.normal(size=(N - 3, 3))}
  rejects(two_inputs(), ValueError, says("`x`", "13 samples", "x['b']", "16"), trainer.fit,
          x, np.zeros((N, 1)))


@pytest.mark.parametrize("target_shape,model_kwargs,expected", [
    ((N, 3), {}, "(1,)"),
    ((N, 2), {"units": 4, "activation": "softmax"}, "(4,)"),
    ((N, 4, 2), {"units": 4, "activation": "softmax"}, "(4,)"),
], ids=["3-vs-dense1", "2-vs-softmax4", "rank3-vs-softmax4"])
def test_y_shape_does_not_fit_output(target_shape, model_kwargs, expected):
  x, _ = data()
  y = np.zeros(target_shape, "float32")
  rejects(dense(**model_kwargs), ValueError, says("`y`", str(target_shape), expected),
          trainer.fit, x, y)


def test_validation_y_shape_does_not_fit_output():
  x, y = data()
  rejects(dense(), ValueError, says("`validation_data[1]`", "(16, 3)", "(1,)"), trainer.fit,
          x, y, validation_data=(x, np.zeros((N, 3))))


def test_y_count_does_not_match_outputs():
  x, y = data()
  rejects(two_outputs(), ValueError, says("`y`", "3 array(s)", "2 output(s)"), trainer.fit,
          x, [y, labels(), y])


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tf.Tensor"])
@pytest.mark.parametrize("bad", [
    {"x": np.nan}, {"x": np.inf}, {"y": np.nan}, {"y": -np.inf}], ids=str)
def test_non_finite_values(bad, as_tensor):
  """NumPy arrays and tf.Tensors (checked on their device) alike."""
  x, y = data()
  arrays = {"x": x, "y": y}
  (name, value), = bad.items()
  arrays[name] = arrays[name].copy()
  arrays[name][3, 0] = value
  if as_tensor:
    arrays = {k: tf.constant(v) for k, v in arrays.items()}
  rejects(dense(), ValueError, says(f"`{name}`", "1 non-finite", "finite"), trainer.fit,
          arrays["x"], arrays["y"])


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tf.Tensor"])
def test_non_finite_imaginary_part(as_tensor):
  """A complex value is finite only when both parts are."""
  x = np.ones((N, 2), np.complex64)
  x[1, 1] = complex(1.0, np.inf)
  x = tf.constant(x) if as_tensor else x
  with pytest.raises(ValueError, match="`x` .* holds 1 non-finite"):
    checks.check_arrays(x, None, None, None)
  checks.check_arrays(np.ones((N, 2), np.complex64) if not as_tensor
                      else tf.ones((N, 2), tf.complex64), None, None, None)


def test_non_finite_sample_weight():
  x, y = data()
  weights = np.ones(N)
  weights[0] = np.nan
  rejects(dense(), ValueError, says("`sample_weight`", "non-finite"), trainer.fit,
          x, y, sample_weight=weights)


def test_python_list_of_numbers_as_x():
  _, y = data()
  rejects(dense(), ValueError, says("`x[0][0]`", "scalar", "np.asarray"), trainer.fit,
          [[0.0] * 4] * N, y)


def test_x_features_do_not_fit_inputs():
  x, y = data(features=5)
  rejects(dense(), ValueError, says("`x`", "(16, 5)", "does not fit"), trainer.fit, x, y)


def test_y_with_dataset_x():
  x, y = data()
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
  rejects(dense(), ValueError, says("`y`", "array of shape (16, 1)", "None", "Dataset"),
          trainer.fit, dataset, y)


def test_evaluate_y_with_dataset_x():
  x, y = data()
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
  rejects(dense(), ValueError, says("`y`", "array of shape (16, 1)", "None", "Dataset"),
          trainer.evaluate, dataset, y)


def test_dataset_without_targets_and_no_other_loss():
  x, _ = data()
  dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
  rejects(dense(), ValueError, says("`y`", "batches hold only x", "loss"), trainer.fit,
          dataset)


# -- weights ------------------------------------------------------------------

@pytest.mark.parametrize("class_weight,pattern", [
    ({0: 1.0, 5: 2.0}, says("`class_weight`", "key 5", "[0, 2]")),
    ({-1: 1.0}, says("`class_weight`", "key -1", "[0, 2]")),
    ({"0": 1.0}, says("`class_weight`", "key '0'", "integer class ids")),
    ({0.5: 1.0}, says("`class_weight`", "key 0.5", "integer class ids")),
    ({0: -1.0}, says("`class_weight[0]`", "-1.0", ">= 0")),
    ([1.0, 2.0, 3.0], says("`class_weight`", "[1.0, 2.0, 3.0]", "dict")),
    ({}, says("`class_weight`", "{}", "non-empty dict")),
], ids=["out-of-range", "negative-key", "str-key", "float-key", "negative-weight",
        "list", "empty"])
def test_bad_class_weight(class_weight, pattern):
  x, _ = data()
  rejects(dense(3, "softmax"), ValueError, pattern, trainer.fit, x, labels(),
          class_weight=class_weight)


def test_class_weight_not_a_dict_with_dataset():
  x, _ = data()
  dataset = tf.data.Dataset.from_tensor_slices((x, labels())).batch(4)
  rejects(dense(3, "softmax"), ValueError, says("`class_weight`", "'balanced'", "dict"),
          trainer.fit, dataset, class_weight="balanced")


def test_sample_weight_and_class_weight_together():
  x, _ = data()
  rejects(dense(3, "softmax"), ValueError,
          says("`sample_weight`", "`class_weight`", "cannot both"), trainer.fit,
          x, labels(), sample_weight=np.ones(N), class_weight={0: 1.0, 1: 2.0})


# -- counts and options -------------------------------------------------------

@pytest.mark.parametrize("name,value", [
    ("batch_size", 0), ("batch_size", -4), ("batch_size", 2.5), ("batch_size", "8"),
    ("batch_size", True), ("epochs", 0), ("epochs", -1), ("epochs", 1.0),
    ("steps_per_epoch", 0), ("steps_per_epoch", -2), ("initial_epoch", -1),
    ("validation_freq", 0), ("validation_freq", -1), ("validation_freq", 1.5),
    ("validation_steps", 0), ("validation_batch_size", 0),
], ids=lambda v: repr(v))
def test_bad_count(name, value):
  x, y = data()
  rejects(dense(), ValueError, says(f"`{name}`", f"({value!r})"), trainer.fit,
          x, y, validation_data=(x, y), **{name: value})


@pytest.mark.parametrize("name,value", [
    ("batch_size", 0), ("steps", 0), ("steps", -1), ("steps_per_execution", 0)],
    ids=lambda v: repr(v))
def test_evaluate_bad_count(name, value):
  x, y = data()
  rejects(dense(), ValueError, says(f"`{name}`", f"({value!r})"), trainer.evaluate,
          x, y, **{name: value})


def test_validation_freq_list_of_non_positive_epochs():
  x, y = data()
  rejects(dense(), ValueError, says("`validation_freq`", "[0, 2]", ">= 1"), trainer.fit,
          x, y, validation_data=(x, y), validation_freq=[0, 2])


@pytest.mark.parametrize("call,keyword,suggestion", [
    (trainer.fit, "epoch", "epochs"),
    (trainer.fit, "validation_split", None),
    (trainer.evaluate, "epochs", None),
    (trainer.evaluate, "validation_data", None),
], ids=["fit-epoch", "fit-validation_split", "evaluate-epochs", "evaluate-validation_data"])
def test_unknown_keyword(call, keyword, suggestion):
  x, y = data()
  pattern = says(f"`{keyword}`", "batch_size", "steps_per_execution")
  if suggestion:
    pattern += ".*" + says(f"Did you mean `{suggestion}` instead of `{keyword}`?")
  rejects(dense(), TypeError, pattern, call, x, y, **{keyword: 3})


def test_jit_compile_conflicts_with_run_eagerly():
  x, y = data()
  rejects(dense(run_eagerly=True), ValueError,
          says("`jit_compile=True`", "`run_eagerly=True`"), trainer.fit,
          x, y, jit_compile=True)


@pytest.mark.parametrize("value", ["yes", 1, 0.5], ids=repr)
def test_jit_compile_not_a_bool(value):
  x, y = data()
  rejects(dense(), ValueError, says("`jit_compile`", f"({value!r})", "True or False"),
          trainer.fit, x, y, jit_compile=value)


@pytest.mark.parametrize("value", [0, -1, 2.0, "2"], ids=repr)
def test_bad_steps_per_execution(value):
  x, y = data()
  rejects(dense(), ValueError, says("`steps_per_execution`", f"({value!r})", "positive"),
          trainer.fit, x, y, steps_per_execution=value)


@pytest.mark.parametrize("function", ["fit", "evaluate"])
@pytest.mark.parametrize("value", ["whole", None, True], ids=repr)
def test_bad_xla_scope(function, value):
  x, y = data()
  rejects(dense(), ValueError, says("`xla_scope`", f"({value!r})", "'auto', 'loop', 'step'"),
          getattr(trainer, function), x, y, xla_scope=value)


@pytest.mark.parametrize("value", ["yes", 2], ids=repr)
def test_bad_shuffle(value):
  x, y = data()
  rejects(dense(), ValueError, says("`shuffle`", f"({value!r})", "True, False or \"batch\""),
          trainer.fit, x, y, shuffle=value)


# -- validation data ----------------------------------------------------------

def test_validation_data_lengths_differ():
  x, y = data()
  rejects(dense(), ValueError,
          says("`validation_data[1]`", "10 samples", "`validation_data[0]`", "16"),
          trainer.fit, x, y, validation_data=(x, y[:10]))


def test_validation_sample_weight_wrong_length():
  x, y = data()
  rejects(dense(), ValueError, says("`validation_data[2]`", "5 samples", "16"),
          trainer.fit, x, y, validation_data=(x, y, np.ones(5)))


def test_validation_data_non_finite():
  x, y = data()
  val_y = y.copy()
  val_y[0, 0] = np.nan
  rejects(dense(), ValueError, says("`validation_data[1]`", "non-finite"), trainer.fit,
          x, y, validation_data=(x, val_y))


def test_validation_data_wrong_tuple_length():
  x, y = data()
  rejects(dense(), ValueError, says("`validation_data`", "tuple of length 4", "(x, y)"),
          trainer.fit, x, y, validation_data=(x, y, np.ones(N), np.ones(N)))


def test_validation_data_without_targets():
  x, y = data()
  rejects(dense(), ValueError, says("`validation_data`", "no `y`", "loss"), trainer.fit,
          x, y, validation_data=(x,))


# -- valid edge inputs are accepted ---------------------------------------------

def trains(model, *args, **kwargs):
  """Fits one epoch and checks that the weights moved (so the step really ran)."""
  state = State(model)
  kwargs.setdefault("batch_size", 8)
  history = trainer.fit(model, *args, verbose=0, **kwargs)
  assert int(model.optimizer.iterations) > state.iterations
  assert any(not np.array_equal(a, b) for a, b in zip(state.variables, state._variables()))
  return history


def test_list_y_for_two_outputs():
  x, y = data()
  trains(two_outputs(), x, [y, labels()])


def test_dict_y_keyed_by_output_names():
  x, y = data()
  model = two_outputs()
  trains(model, x, {"reg": y, "cls": labels()}, validation_data=(x, {"reg": y, "cls": labels()}))


@pytest.mark.parametrize("shape", [(N,), (N, 1)], ids=str)
def test_sparse_int_labels_for_softmax(shape):
  x, _ = data()
  trains(dense(3, "softmax"), x, labels().reshape(shape).astype("int32"),
         class_weight={0: 1.0, 2: 3.0})


def test_flat_targets_for_dense1():
  x, y = data()
  trains(dense(), x, y[:, 0])


def test_float64_inputs_and_batch_larger_than_n():
  x, y = data()
  history = trains(dense(), x.astype("float64"), y.astype("float64"), batch_size=10 * N,
                   validation_data=(x.astype("float64"), y.astype("float64")),
                   validation_freq=[1])
  assert "val_loss" in history.history
  logs = trainer.evaluate(dense(), x.astype("float64"), y, batch_size=10 * N, verbose=0)
  assert np.isfinite(logs["loss"])


def test_dict_x_and_dataset_x():
  rng = np.random.default_rng(0)
  x = {"a": rng.normal(size=(N, 2)), "b": rng.normal(size=(N, 3))}
  y = np.zeros((N, 1))
  trains(two_inputs(), x, y)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
  trains(two_inputs(), dataset, batch_size=None)
