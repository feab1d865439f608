"""Argument checks that run before any step: fail early, say what and why.

Every error names the argument, the value received and what was expected.
Nothing here changes a variable: the checks read shapes and values, and the
only model call is a symbolic one (`compute_output_spec`) in a scratch graph.
"""

import difflib
import numbers
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from trainer.functions import XLA_SCOPES

FIT_KEYWORDS = (
    "batch_size", "epochs", "verbose", "callbacks", "validation_data", "sample_weight",
    "class_weight", "shuffle", "initial_epoch", "steps_per_epoch", "validation_freq",
    "validation_steps", "validation_batch_size", "jit_compile", "steps_per_execution",
    "xla_scope")
EVALUATE_KEYWORDS = ("batch_size", "sample_weight", "verbose", "return_dict", "steps",
                     "callbacks", "jit_compile", "steps_per_execution", "xla_scope")

# Keras layers that run user code in `call`, which may call `add_loss`.
_USER_CODE_LAYERS = ("Lambda", "TFSMLayer")


def _describe(value):
  if isinstance(value, np.ndarray):
    return f"array of shape {value.shape} and dtype {value.dtype}"
  if isinstance(value, (tf.Tensor, tf.Variable)):
    return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype.name}"
  if isinstance(value, tf.data.Dataset):
    return "a tf.data.Dataset"
  text = repr(value)
  return text if len(text) < 80 else text[:77] + "..."


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_bool(value):
  return isinstance(value, (bool, np.bool_))


# -- keywords and the model ---------------------------------------------------

def check_keywords(function_name, kwargs, allowed):
  """Unknown keywords are a TypeError, as for any Python function."""
  if kwargs:
    names = ", ".join(f"`{k}`" for k in sorted(kwargs))
    hints = []
    for name in sorted(kwargs):
      close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.8)
      if close:
        hints.append(f" Did you mean `{close[0]}` instead of `{name}`?")
    raise TypeError(
        f"{function_name} got unknown keyword argument(s) {names}; "
        f"expected a subset of: {', '.join(allowed)}.{''.join(hints)}")


def is_tf_keras_model(model):
  """True for a tf_keras (Keras 2) model; tf_keras is imported only if already loaded."""
  tf_keras = sys.modules.get("tf_keras")
  return tf_keras is not None and isinstance(model, tf_keras.Model)


def _is_compiled(model):
  if is_tf_keras_model(model):
    return bool(getattr(model, "_is_compiled", False))
  return bool(getattr(model, "compiled", False))


def has_compiled_loss(model):
  """Whether `model.compile` got a `loss` (Keras 3: `_compile_loss`; Keras 2: `loss`)."""
  if is_tf_keras_model(model):
    return bool(getattr(model, "loss", None))
  return model._compile_loss is not None


def check_model(model):
  if not isinstance(model, keras.Model) and not is_tf_keras_model(model):
    raise TypeError(
        f"`model` ({_describe(model)}) must be a compiled keras.Model (or a "
        "tf_keras.Model); the call is "
        "`trainer.fit(model, x, y, ...)` / `trainer.evaluate(model, x, y, ...)`.")
  if not _is_compiled(model):
    raise ValueError(
        f"`model` ({getattr(model, 'name', model)!r}) is not compiled: call "
        "`model.compile(optimizer=..., loss=...)` before `trainer.fit` or "
        "`trainer.evaluate`.")


def check_xla_scope(xla_scope):
  if not isinstance(xla_scope, str) or xla_scope not in XLA_SCOPES:
    raise ValueError(
        f"`xla_scope` ({xla_scope!r}) must be one of "
        f"{', '.join(repr(s) for s in XLA_SCOPES)}: what XLA compiles on the "
        "in-memory fast path (the whole loop, or each step).")


def check_step_options(model, jit_compile, steps_per_execution):
  """The `jit_compile` / `steps_per_execution` keywords, and their conflicts."""
  if jit_compile is not None and not _is_bool(jit_compile):
    raise ValueError(
        f"`jit_compile` ({jit_compile!r}) must be True or False, or None to keep "
        f"what `model.compile` set ({model.jit_compile!r}).")
  check_positive_int("steps_per_execution", steps_per_execution, allow_none=True)
  effective = model.jit_compile if jit_compile is None else jit_compile
  if effective is True and model.run_eagerly:
    source = "`model.compile`" if jit_compile is None else "the keyword"
    raise ValueError(
        f"`jit_compile=True` (from {source}) conflicts with `run_eagerly=True` (from "
        "`model.compile`): XLA needs a traced function. Set one of them to False.")


# -- counts and options ---------------------------------------------------------

def check_positive_int(name, value, allow_none=False):
  if value is None and allow_none:
    return
  if not _is_int(value) or value < 1:
    expected = "a positive integer" + (" or None" if allow_none else "")
    raise ValueError(f"`{name}` ({_describe(value)}) must be {expected}.")


def check_non_negative_int(name, value):
  if not _is_int(value) or value < 0:
    raise ValueError(f"`{name}` ({_describe(value)}) must be an integer >= 0.")


def check_validation_freq(validation_freq):
  """An int n >= 1 (every n-th epoch) or a collection of epoch numbers >= 1."""
  if isinstance(validation_freq, int) and not isinstance(validation_freq, bool):
    if validation_freq < 1:
      raise ValueError(
          f"`validation_freq` ({validation_freq!r}) must be an integer >= 1 "
          "(validate every that many epochs) or a list of epoch numbers.")
    return
  if isinstance(validation_freq, (list, tuple, set)):
    bad = [e for e in validation_freq if not _is_int(e) or e < 1]
    if bad:
      raise ValueError(
          f"`validation_freq` ({validation_freq!r}) holds {bad!r}; epoch numbers "
          "count from 1 and must be integers >= 1.")
    return
  raise ValueError(
      f"`validation_freq` ({_describe(validation_freq)}) must be a Python int >= 1 "
      "or a list of epoch numbers.")


def check_shuffle(shuffle):
  if not (_is_bool(shuffle) or (isinstance(shuffle, str) and shuffle == "batch")):
    raise ValueError(f"`shuffle` ({_describe(shuffle)}) must be True, False or \"batch\".")


# -- arrays ---------------------------------------------------------------------

def _path(path):
  return "".join(f"[{p!r}]" for p in path)


def _check_class_weight_type(class_weight):
  if class_weight is None:
    return
  if not isinstance(class_weight, dict) or not class_weight:
    raise ValueError(
        f"`class_weight` ({_describe(class_weight)}) must be a non-empty dict "
        "{class id: weight}.")


def check_arrays(x, y, sample_weight, class_weight,
                 names=("x", "y", "sample_weight")):
  """Checks in-memory inputs: lengths, finiteness, sample/class weights.

  `names` are what the messages call x, y and sample_weight (for validation
  data: "validation_data[0]", ...).
  """
  x_name, y_name, sw_name = names
  _check_class_weight_type(class_weight)
  if isinstance(x, tf.data.Dataset):
    if y is not None:
      raise ValueError(
          f"`{y_name}` ({_describe(y)}) must be None when `{x_name}` is a "
          "tf.data.Dataset; the dataset yields (x, y[, sample_weight]) itself.")
    if sample_weight is not None:
      raise ValueError(
          f"`{sw_name}` ({_describe(sample_weight)}) must be None when `{x_name}` is "
          "a tf.data.Dataset; include it as the third element of each batch.")
    return
  if x is None:
    raise ValueError(f"`{x_name}` (None) must be an array, a list or dict of arrays, "
                     "or a tf.data.Dataset.")
  if sample_weight is not None and class_weight is not None:
    raise ValueError(
        "`sample_weight` and `class_weight` cannot both be given; received "
        f"sample_weight={_describe(sample_weight)} and class_weight={class_weight!r}. "
        "Fold the class weights into `sample_weight` instead.")
  entries = []  # (argument, full name of the leaf, number of samples)
  for name, structure in [(x_name, x), (y_name, y), (sw_name, sample_weight)]:
    if structure is None:
      continue
    for path, leaf in tree.flatten_with_path(structure):
      full = f"{name}{_path(path)}"
      if not np.ndim(leaf):
        raise ValueError(
            f"`{full}` ({_describe(leaf)}) is a scalar, but every array needs a batch "
            "(first) dimension; expected NumPy arrays (a Python list is read as a "
            "list of separate inputs: convert it with np.asarray).")
      entries.append((name, full, np.shape(leaf)[0]))
  _, first_full, first_len = entries[0]
  for name, full, length in entries[1:]:
    if length != first_len:
      where = "" if full == name else f" (in `{full}`)"
      raise ValueError(
          f"`{name}` has {length} samples{where} but `{first_full}` has "
          f"{first_len}; every array must have the same first dimension.")
  for name, structure in [(x_name, x), (y_name, y), (sw_name, sample_weight)]:
    if structure is None:
      continue
    for path, leaf in tree.flatten_with_path(structure):
      if _all_finite(leaf):
        continue
      leaf = np.asarray(leaf)
      bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
      raise ValueError(
          f"`{name}{_path(path)}` ({_describe(leaf)}) holds {bad} non-finite "
          "value(s) (NaN or Inf); expected finite numbers, since one NaN makes the "
          "loss NaN.")


def _all_finite(leaf):
  """True when `leaf` has no NaN or Inf (non-float leaves always). A tf.Tensor
  is checked where it lives (only the verdict comes back, not the data)."""
  if isinstance(leaf, tf.Tensor):
    if leaf.dtype.is_complex:  # Finite when both parts are, as np.isfinite has it.
      return _all_finite(tf.math.real(leaf)) and _all_finite(tf.math.imag(leaf))
    return not leaf.dtype.is_floating or bool(tf.reduce_all(tf.math.is_finite(leaf)))
  leaf = np.asarray(leaf)
  return leaf.dtype.kind not in "fc" or bool(np.all(np.isfinite(leaf)))


def _dims_match(a, b):
  return len(a) == len(b) and all(p is None or q is None or p == q for p, q in zip(a, b))


def target_fits_output(target_shape, output_shape):
  """Whether a per-sample target shape can be compared with an output's.

  Accepted: the same shape (None matches anything); class ids against a
  per-class output, of shape output[:-1] or output[:-1] + (1,); and an extra
  trailing 1 on the target (squeezed by the loss).
  """
  t, o = tuple(target_shape), tuple(output_shape)
  if _dims_match(t, o):
    return True
  if len(t) == len(o) and t and t[-1] == 1 and _dims_match(t[:-1], o[:-1]):
    return True
  if len(t) + 1 == len(o) and _dims_match(t, o[:-1]):
    return True
  return len(t) == len(o) + 1 and _dims_match(t, o + (1,))


def check_targets_fit_outputs(y, output_shapes, output_names, argument="y"):
  """Checks that each target's shape can be compared with its output.

  A target fits an output of per-sample shape (d1, ..., dk) when it has that
  shape, or is class ids of shape (d1, ..., dk-1) or (d1, ..., dk-1, 1).
  """
  if y is None or isinstance(y, tf.data.Dataset):
    return
  if isinstance(y, dict):
    targets = [(f"{argument}[{k!r}]", y[k]) for k in output_names if k in y]
    shapes = [s for k, s in zip(output_names, output_shapes) if k in y]
  else:
    flat = tree.flatten(y)
    targets = [(f"{argument}[{i}]" if len(flat) > 1 else argument, t)
               for i, t in enumerate(flat)]
    shapes = list(output_shapes)
    if len(targets) != len(shapes):
      raise ValueError(
          f"`{argument}` holds {len(targets)} array(s) but the model has {len(shapes)} "
          f"output(s) {list(output_names)}; expected one target per output.")
  for (name, target), out_shape in zip(targets, shapes):
    shape = tuple(np.shape(target))
    t_shape, o_shape = shape[1:], tuple(out_shape)[1:]
    if target_fits_output(t_shape, o_shape):
      continue
    ids = o_shape[:-1]
    raise ValueError(
        f"`{name}` has shape {shape} (per sample {t_shape}) but the model output it "
        f"is compared with has per-sample shape {o_shape}; expected per-sample shape "
        f"{o_shape}, or class ids of shape {ids} or {ids + (1,)} for a per-class "
        "output.")


def check_class_weight(class_weight, y, output_shapes):
  """Keys must be integer class ids of a single-output model's classes."""
  del y  # The classes come from the output's width.
  if class_weight is None:
    return
  _check_class_weight_type(class_weight)
  if len(output_shapes) != 1:
    raise ValueError(
        f"`class_weight` ({class_weight!r}) is only supported for a model with a "
        f"single output; this model has {len(output_shapes)}.")
  units = output_shapes[0][-1] if len(output_shapes[0]) > 1 else 1
  num_classes = 2 if units in (1, None) else units
  for key, weight in class_weight.items():
    if not _is_int(key) or not 0 <= key < num_classes:
      raise ValueError(
          f"`class_weight` has key {key!r}, outside the model's classes; expected "
          f"integer class ids in [0, {num_classes - 1}].")
    if (not isinstance(weight, numbers.Real) or isinstance(weight, (bool, np.bool_))
        or not np.isfinite(weight) or weight < 0):
      raise ValueError(
          f"`class_weight[{key!r}]` ({weight!r}) must be a finite number >= 0.")


# -- the loss -------------------------------------------------------------------

def _loss_sources(model):
  """"yes", "no" or "maybe": can anything in `model` put a term in `model.losses`?

  Weight or activity regularizers always do ("yes"). A layer or model running
  code that is not Keras's own (a custom class, a Lambda) may call `add_loss`
  in `call` ("maybe": only a forward pass can tell). Keras's built-in layers
  never do ("no").
  """
  maybe = False
  for layer in model._flatten_layers(include_self=True):
    cls = type(layer)
    if not cls.__module__.startswith(("keras.", "tf_keras.")) or cls.__name__ in _USER_CODE_LAYERS:
      maybe = True
    for attribute, value in vars(layer).items():
      # tf_keras layers also hold `_captured_weight_regularizer` (a list, often empty).
      if attribute.endswith("regularizer") and value is not None and value != []:
        return "yes"
  if any(getattr(v, "regularizer", None) is not None for v in model.weights):
    return "yes"
  return "maybe" if maybe else "no"


def _symbolic_loss_count(model, x):
  """How many `add_loss` terms one training forward pass on x-like inputs adds.

  The pass is symbolic: placeholders in a scratch graph, under a
  `StatelessScope` that collects the losses and keeps every variable
  assignment (BatchNormalization statistics, seed generators) out of the
  variables. Returns None when the model cannot be called that way; the step
  then finds out when it is traced.
  """
  if is_tf_keras_model(model):
    # Not probed: a tf_keras forward pass would draw a legacy Dropout seed.
    # The Keras 2 step raises the same error when it is traced.
    return None
  if isinstance(x, tf.data.Dataset):
    spec = x.element_spec
    x_spec = spec[0] if isinstance(spec, tuple) else spec

    def placeholder(s):
      return tf.compat.v1.placeholder(shape=s.shape, dtype=s.dtype)

    map_structure = tf.nest.map_structure
  else:
    x_spec = tree.lists_to_tuples(x)

    def placeholder(a):
      a = a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)
      dtype = tf.as_dtype(a.dtype)
      dtype = tf.as_dtype(keras.config.floatx()) if dtype.is_floating else dtype
      return tf.compat.v1.placeholder(shape=(None,) + tuple(a.shape[1:]), dtype=dtype)

    map_structure = tree.map_structure
  try:
    with keras.StatelessScope(collect_losses=True) as scope, keras.SymbolicScope():
      with tf.__internal__.FuncGraph("tapefit_loss_probe").as_default():
        inputs = map_structure(placeholder, x_spec)
        if getattr(model, "_call_has_training_arg", True):
          model(inputs, training=True)
        else:
          model(inputs)
        return len(scope.losses)
  except Exception:  # pylint: disable=broad-except
    return None


def _has_targets(x, y):
  if isinstance(x, tf.data.Dataset):
    spec = x.element_spec
    return isinstance(spec, tuple) and len(spec) >= 2
  return y is not None


def check_has_loss(model, x, y, argument="y"):
  """Fails when the step would have no loss term at all.

  Without a compiled loss (or without targets for it) the loss must come from
  regularizers or `add_loss`. Custom layers are asked with one symbolic
  forward pass. The step keeps raising the same error when it is traced, for
  a model that cannot be called symbolically here.
  """
  compiled = has_compiled_loss(model)
  if compiled and _has_targets(x, y):
    return
  sources = _loss_sources(model)
  if sources == "yes":
    return
  if sources == "maybe":
    count = _symbolic_loss_count(model, x)
    if count is None or count > 0:
      return
  nothing_else = ("nothing in the model adds a loss (no regularizers, no `add_loss` "
                  "in a training forward pass)")
  if not compiled:
    raise ValueError(
        f"No loss to compute for model {model.name!r}: `loss` (None) was not given to "
        f"`model.compile`, and {nothing_else}; expected "
        "`model.compile(optimizer=..., loss=...)`.")
  if argument != "y":
    raise ValueError(
        f"`{argument}` has no `y` (targets), so the compiled loss cannot be computed "
        f"on it, and {nothing_else}; expected (x, y) or (x, y, sample_weight).")
  received = "a dataset whose batches hold only x" if isinstance(
      x, tf.data.Dataset) else "None"
  raise ValueError(
      f"`y` ({received}) gives no targets, so the compiled loss cannot be computed, "
      f"and {nothing_else}; expected targets `y` (or a dataset of (x, y) batches).")


# -- validation data ------------------------------------------------------------

def check_validation_data(model, validation_data, output_shapes):
  """Unpacks `validation_data` as `Model.fit` does and checks it like x and y.

  A tuple or list is (x,), (x, y) or (x, y, sample_weight); anything else is
  x alone (a tf.data.Dataset yields the batches). Returns (x, y, sample_weight),
  all None when `validation_data` is None.
  """
  if validation_data is None:
    return None, None, None
  if isinstance(validation_data, (tuple, list)):
    if not 1 <= len(validation_data) <= 3:
      raise ValueError(
          f"`validation_data` (a {type(validation_data).__name__} of length "
          f"{len(validation_data)}) must be (x, y) or (x, y, sample_weight), or a "
          "tf.data.Dataset.")
    val_x, val_y, val_sw = (tuple(validation_data) + (None, None))[:3]
  else:
    val_x, val_y, val_sw = validation_data, None, None
  names = tuple(f"validation_data[{i}]" for i in range(3))
  check_arrays(val_x, val_y, val_sw, None, names=names)
  if not isinstance(val_x, tf.data.Dataset):
    try:
      shapes = output_shapes(model, val_x)
    except Exception as error:  # pylint: disable=broad-except
      raise ValueError(
          f"`validation_data[0]` (shapes {[np.shape(a) for a in tree.flatten(val_x)]}) "
          f"does not fit the model's inputs: {error}") from error
    check_targets_fit_outputs(val_y, shapes, list(getattr(model, "output_names", None)
                                                  or []), argument="validation_data[1]")
  check_has_loss(model, val_x, val_y, argument="validation_data")
  return val_x, val_y, val_sw
