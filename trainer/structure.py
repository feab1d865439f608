"""Matching targets and sample weights to a model's outputs.

`Model.fit` accepts `y` as one array, a list, or a dict keyed by output name;
these helpers put `y` (and `sample_weight`) in the shape of `y_pred` so that the
losses and metrics stages can walk the outputs in one fixed order.
"""

from keras import tree


def unpack_batch(data):
  """Splits a batch into (x, y, sample_weight), the convention of `Model.fit`.

  A tuple of length 1, 2 or 3 is (x,), (x, y) or (x, y, sample_weight);
  anything else is x alone.
  """
  if isinstance(data, tuple):
    if len(data) == 1:
      return data[0], None, None
    if len(data) == 2:
      return data[0], data[1], None
    if len(data) == 3:
      return data
    raise ValueError(
        "A batch must be x, (x,), (x, y) or (x, y, sample_weight); received a "
        f"tuple of length {len(data)}.")
  return data, None, None


def pack_batch(x, y=None, sample_weight=None):
  """The inverse of `unpack_batch`, leaving out trailing Nones."""
  if y is None:
    return (x,)
  if sample_weight is None:
    return (x, y)
  return (x, y, sample_weight)


def batch_size_of(x):
  """The dynamic size of the first axis of the first input tensor."""
  import tensorflow as tf
  first = next(t for t in tree.flatten(x) if t is not None)
  return tf.shape(first)[0]


def resolve_path(path, structure):
  for key in path:
    structure = structure[key]
  return structure


def align_targets(y, y_pred, output_names):
  """Returns `y` with the structure of `y_pred`.

  Accepts a single target for a single output, a list or tuple in output
  order, or a dict keyed by output name (for list outputs) or by `y_pred`'s
  own keys (for dict outputs).
  """
  if not tree.is_nested(y_pred):
    if tree.is_nested(y):
      flat = tree.flatten(y)
      if len(flat) != 1:
        raise ValueError(
            f"`y` has {len(flat)} arrays but the model has a single output.")
      return flat[0]
    return y
  if isinstance(y_pred, dict):
    if isinstance(y, dict):
      return {k: y[k] for k in y_pred}
    return dict(zip(y_pred.keys(), tree.flatten(y)))
  if isinstance(y, dict):
    names = list(output_names or [])
    if set(y) != set(names):
      raise ValueError(
          f"`y` is a dict with keys {sorted(y)}, expected the output names {names}.")
    y = [y[name] for name in names]
  flat = tree.flatten(y)
  return tree.pack_sequence_as(y_pred, flat)


def flatten_outputs(values, output_names):
  """Flattens per-output values in output order (dicts by output name)."""
  if isinstance(values, dict) and output_names and set(values) == set(output_names):
    return [values[name] for name in output_names]
  return tree.flatten(values)
