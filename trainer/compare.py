"""Runs `Model.fit` and `trainer.fit` from identical initial weights and compares.

Used by the tests, the main job and the benchmarks, so that every claim of
equality with `fit` is made by the same code.

    result = run_both(build, x, y, batch_size=32, epochs=2, shuffle=False)
    result.assert_bit_identical()           # XLA off
    result.assert_within(rel=XLA_REL_BOUND) # XLA on
    absolute, max_rel = result.measure()    # the numbers behind both

`build()` must return a freshly built *and compiled* model (a new optimizer
every call); the second model gets the first one's weights, including
non-trainable state such as BatchNormalization statistics and seed-generator
states, before either trains.
"""

import dataclasses
from typing import Any, Dict, List

import keras
import numpy as np

from trainer import loop

# The exactness bar: with XLA off every number is bit-identical to fit's; with
# XLA on, within this relative bound (XLA may fuse and reorder float math
# differently in two programs that compute the same step).
XLA_REL_BOUND = 1e-6


def diffs(a, b):
  """Elementwise (|a - b|, |a - b| / |a|) in float64; equal values (NaN and NaN
  included) give 0, a NaN against a number gives inf, as does any difference
  from an exact 0."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  with np.errstate(invalid="ignore", divide="ignore"):
    absolute = np.where(same, 0.0, np.abs(a - b))
    absolute = np.where(np.isnan(absolute), np.inf, absolute)
    relative = np.where(same, 0.0, np.where(a == 0, np.inf, absolute / np.abs(a)))
  return absolute, relative


def format_diff(value):
  """A difference for a table: "0" when bit-identical, else 3 significant digits."""
  return "0" if value == 0 else f"{value:.3g}"


@dataclasses.dataclass
class Comparison:
  keras_history: Dict[str, List[float]]
  tapefit_history: Dict[str, List[float]]
  keras_weights: List[np.ndarray]
  tapefit_weights: List[np.ndarray]
  keras_iterations: int
  tapefit_iterations: int
  keras_eval: Dict[str, float]
  tapefit_eval: Dict[str, float]
  keras_model: Any = None
  tapefit_model: Any = None

  @classmethod
  def of(cls, reference, ours, keras_history, tapefit_history, keras_eval=None,
         tapefit_eval=None):
    """The comparison of two trained models (`reference` by Keras, `ours` by tapefit)."""
    return cls(
        keras_history=keras_history, tapefit_history=tapefit_history,
        keras_weights=[w.numpy() for w in reference.weights],
        tapefit_weights=[w.numpy() for w in ours.weights],
        keras_iterations=int(reference.optimizer.iterations.numpy()),
        tapefit_iterations=int(ours.optimizer.iterations.numpy()),
        keras_eval=keras_eval or {}, tapefit_eval=tapefit_eval or {},
        keras_model=reference, tapefit_model=ours)

  def differences(self):
    """{quantity: max |keras - tapefit|}, and the same relative to |keras|."""
    out = {}
    for key in self.keras_history:
      a = np.asarray(self.keras_history[key], np.float64)
      b = np.asarray(self.tapefit_history[key], np.float64)
      out[f"history/{key}"] = (a, b)
    for key in self.keras_eval:
      out[f"evaluate/{key}"] = (np.float64(self.keras_eval[key]),
                                np.float64(self.tapefit_eval[key]))
    for i, (a, b) in enumerate(zip(self.keras_weights, self.tapefit_weights)):
      out[f"weight/{i}"] = (np.asarray(a, np.float64), np.asarray(b, np.float64))
    return out

  def max_abs_diff(self):
    return max(float(np.max(np.abs(a - b))) for a, b in self.differences().values())

  def measure(self):
    """({"history"|"evaluate"|"weights": max |keras - tapefit|}, max relative diff)."""
    out = {"history": 0.0, "evaluate": 0.0, "weights": 0.0}
    max_rel = 0.0
    for name, (a, b) in self.differences().items():
      group = {"history": "history", "evaluate": "evaluate", "weight": "weights"}[
          name.split("/")[0]]
      absolute, relative = diffs(a, b)
      if absolute.size:
        out[group] = max(out[group], float(np.max(absolute)))
        max_rel = max(max_rel, float(np.max(relative)))
    return out, max_rel

  def structure_mismatch(self):
    """What makes the two runs incomparable value by value, or None: other
    History keys or epochs, other evaluate keys, another number of weights,
    another optimizer step count."""
    if sorted(self.keras_history) != sorted(self.tapefit_history):
      return (f"History keys {sorted(self.keras_history)} vs "
              f"{sorted(self.tapefit_history)}")
    for key in self.keras_history:
      if len(self.keras_history[key]) != len(self.tapefit_history[key]):
        return (f"History[{key!r}] has {len(self.keras_history[key])} vs "
                f"{len(self.tapefit_history[key])} epochs")
    if sorted(self.keras_eval) != sorted(self.tapefit_eval):
      return f"evaluate keys {sorted(self.keras_eval)} vs {sorted(self.tapefit_eval)}"
    if len(self.keras_weights) != len(self.tapefit_weights):
      return f"{len(self.keras_weights)} vs {len(self.tapefit_weights)} weights"
    if self.keras_iterations != self.tapefit_iterations:
      return f"iterations {self.keras_iterations} vs {self.tapefit_iterations}"
    return None

  def _check_structure(self):
    mismatch = self.structure_mismatch()
    assert mismatch is None, mismatch

  def assert_bit_identical(self):
    """Every History value, evaluate result and weight equal, bit for bit."""
    self._check_structure()
    for name, (a, b) in self.differences().items():
      np.testing.assert_array_equal(a, b, err_msg=name)

  def assert_within(self, rel, abs_floor=0.0):
    """|keras - tapefit| <= rel * |keras| + abs_floor, elementwise."""
    self._check_structure()
    for name, (a, b) in self.differences().items():
      bound = rel * np.abs(a) + abs_floor
      assert np.all(np.abs(a - b) <= bound), (
          f"{name}: max |diff| {np.max(np.abs(a - b)):.3g} exceeds "
          f"{rel:g}*|keras| + {abs_floor:g}")


def _all_state(model):
  """Trainable and non-trainable weights plus seed-generator states."""
  seen = {id(v) for v in model.weights}
  return list(model.weights) + [v for v in model.variables if id(v) not in seen]


def copy_state(source, target):
  for s, t in zip(_all_state(source), _all_state(target)):
    t.assign(s.numpy())


def run_both(build, x, y=None, *, eval_x=None, eval_y=None, eval_kwargs=None,
             evaluate=True, tapefit_kwargs=None, **fit_kwargs):
  """Fits a Keras-trained and a tapefit-trained copy of `build()`.

  `fit_kwargs` go to both `Model.fit` and `trainer.fit` unchanged; verbose is
  0 unless given. `tapefit_kwargs` (e.g. `xla_scope`) go to `trainer.fit` and
  `trainer.evaluate` only. `evaluate` compares `Model.evaluate` with
  `trainer.evaluate` on (eval_x, eval_y), default the training data.
  """
  tapefit_kwargs = dict(tapefit_kwargs or {})
  fit_kwargs.setdefault("verbose", 0)
  keras.utils.set_random_seed(1234)
  reference = build()
  keras.utils.set_random_seed(1234)
  ours = build()
  copy_state(reference, ours)
  keras_history = reference.fit(x, y, **fit_kwargs).history
  tapefit_history = loop.fit(ours, x, y, **fit_kwargs, **tapefit_kwargs).history
  eval_kwargs = dict(eval_kwargs or {})
  eval_kwargs.setdefault("verbose", 0)
  keras_eval, tapefit_eval = {}, {}
  if evaluate:
    ex = x if eval_x is None else eval_x
    ey = y if eval_x is None else eval_y
    keras_eval = reference.evaluate(ex, ey, return_dict=True, **eval_kwargs)
    tapefit_eval = loop.evaluate(ours, ex, ey, return_dict=True, **eval_kwargs,
                                 **tapefit_kwargs)
  return Comparison.of(reference, ours, keras_history, tapefit_history, keras_eval,
                       tapefit_eval)
