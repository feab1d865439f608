"""Argument checks that run before any step: fail early, say what and why.

Every error names the argument, the value received and what was expected.
"""

import numbers

import numpy as np
import tensorflow as tf
from keras import tree

FIT_KEYWORDS = (
    "batch_size", "epochs", "verbose", "callbacks", "validation_data", "sample_weight",
    "class_weight", "shuffle", "initial_epoch", "steps_per_epoch", "validation_freq",
    "validation_steps", "validation_batch_size", "jit_compile", "steps_per_execution")
EVALUATE_KEYWORDS = ("batch_size", "sample_weight", "verbose", "return_dict", "steps",
                     "callbacks", "jit_compile", "steps_per_execution")


def _describe(value):
  if isinstance(value, np.ndarray):
    return f"array of shape {value.shape} and dtype {value.dtype}"
  text = repr(value)
  return text if len(text) < 80 else text[:77] + "..."


def check_keywords(function_name, kwargs, allowed):
  if kwargs:
    names = ", ".join(f"`{k}`" for k in sorted(kwargs))
    raise TypeError(
        f"{function_name} got unknown keyword argument(s) {names}; "
        f"expected a subset of: {', '.join(allowed)}.")


def check_model(model):
  if not getattr(model, "compiled", False):
    raise ValueError(
        f"`model` ({getattr(model, 'name', model)!r}) is not compiled: call "
        "`model.compile(optimizer=..., loss=...)` before `trainer.fit` or "
        "`trainer.evaluate`.")


def check_positive_int(name, value, allow_none=False):
  if value is None and allow_none:
    return
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
      or value < 1):
    raise ValueError(f"`{name}` ({_describe(value)}) must be a positive integer.")


def check_non_negative_int(name, value):
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
    raise ValueError(f"`{name}` ({_describe(value)}) must be an integer >= 0.")


def _lengths(name, structure):
  return [(f"{name}{_path(p)}", np.shape(a)[0] if np.ndim(a) else None)
          for p, a in tree.flatten_with_path(structure)]


def _path(path):
  return "".join(f"[{p!r}]" for p in path)


def check_arrays(x, y, sample_weight, class_weight):
  """Checks in-memory inputs: lengths, finiteness, sample/class weights."""
  if isinstance(x, tf.data.Dataset):
    if y is not None:
      raise ValueError(
          f"`y` ({_describe(y)}) must be None when `x` is a tf.data.Dataset; "
          "the dataset yields (x, y[, sample_weight]) itself.")
    if sample_weight is not None:
      raise ValueError(
          f"`sample_weight` ({_describe(sample_weight)}) must be None when `x` is "
          "a tf.data.Dataset; include it as the third element of each batch.")
    return
  if x is None:
    raise ValueError("`x` (None) must be an array, a list or dict of arrays, or a "
                     "tf.data.Dataset.")
  if sample_weight is not None and class_weight is not None:
    raise ValueError(
        "`sample_weight` and `class_weight` cannot both be given; received "
        f"sample_weight={_describe(sample_weight)} and class_weight={class_weight!r}. "
        "Fold the class weights into `sample_weight` instead.")
  entries = _lengths("x", x)
  if y is not None:
    entries += _lengths("y", y)
  if sample_weight is not None:
    entries += _lengths("sample_weight", sample_weight)
  for name, length in entries:
    if length is None:
      raise ValueError(f"`{name}` must have a batch (first) dimension; received a scalar.")
  first_name, first_len = entries[0]
  for name, length in entries[1:]:
    if length != first_len:
      argument = name.split("[")[0]
      raise ValueError(
          f"`{argument}` has {length} samples ({name}) but `{first_name}` has "
          f"{first_len}; every array must have the same first dimension.")
  for name, array in [("x", x), ("y", y), ("sample_weight", sample_weight)]:
    if array is None:
      continue
    for path, leaf in tree.flatten_with_path(array):
      leaf = np.asarray(leaf)
      if leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)):
        bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
        raise ValueError(
            f"`{name}{_path(path)}` holds {bad} non-finite value(s) (NaN or Inf); "
            "expected finite numbers, since one NaN makes the loss NaN.")


def check_targets_fit_outputs(y, output_shapes, output_names):
  """Checks that each target's shape can be compared with its output.

  A target fits an output of shape (n, d1, ..., dk) when it has the same
  rank with equal trailing dimensions, or its last dimension is 1, or it has
  one dimension less (sparse class ids against per-class scores).
  """
  if y is None or isinstance(y, tf.data.Dataset):
    return
  if isinstance(y, dict):
    targets = [(f"y[{k!r}]", y[k]) for k in output_names if k in y]
    shapes = [s for k, s in zip(output_names, output_shapes) if k in y]
  else:
    flat = tree.flatten(y)
    targets = [(f"y[{i}]" if len(flat) > 1 else "y", t) for i, t in enumerate(flat)]
    shapes = list(output_shapes)
    if len(targets) != len(shapes):
      raise ValueError(
          f"`y` holds {len(targets)} array(s) but the model has {len(shapes)} "
          f"output(s) {list(output_names)}.")
  for (name, target), out_shape in zip(targets, shapes):
    t_shape = tuple(np.shape(target))[1:]
    o_shape = tuple(out_shape)[1:]
    if t_shape == o_shape:
      continue
    if len(t_shape) == len(o_shape) and t_shape[:-1] == o_shape[:-1] and (
        t_shape[-1:] == (1,) or o_shape[-1:] == (1,)):
      continue
    if len(t_shape) + 1 == len(o_shape) and t_shape == o_shape[:-1]:
      continue
    if len(t_shape) == len(o_shape) + 1 and t_shape == o_shape + (1,):
      continue
    raise ValueError(
        f"`{name}` has per-sample shape {t_shape} but the model output it "
        f"trains has per-sample shape {o_shape}; expected {o_shape}, or class "
        "ids of shape () or (1,) for a per-class output.")


def check_class_weight(class_weight, y, output_shapes):
  """Keys must be integer class ids of a single-output model's classes."""
  if class_weight is None:
    return
  if not isinstance(class_weight, dict) or not class_weight:
    raise ValueError(
        f"`class_weight` ({_describe(class_weight)}) must be a non-empty dict "
        "{class id: weight}.")
  if len(output_shapes) != 1:
    raise ValueError(
        f"`class_weight` ({class_weight!r}) is only supported for a model with a "
        f"single output; this model has {len(output_shapes)}.")
  units = output_shapes[0][-1] if len(output_shapes[0]) > 1 else 1
  num_classes = 2 if units in (1, None) else units
  for key, weight in class_weight.items():
    if (not isinstance(key, numbers.Integral) or isinstance(key, bool)
        or not 0 <= key < num_classes):
      raise ValueError(
          f"`class_weight` has key {key!r}, outside the model's classes; expected "
          f"integer class ids in [0, {num_classes - 1}].")
    if not isinstance(weight, numbers.Real) or not np.isfinite(weight) or weight < 0:
      raise ValueError(
          f"`class_weight[{key!r}]` ({weight!r}) must be a finite number >= 0.")
