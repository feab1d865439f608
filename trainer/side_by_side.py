"""The main job's core: one model trained by `Model.fit` and by `trainer.fit`.

`run(SideBySideConfig(...))` builds a small MLP on synthetic data, trains a
copy with each loop from identical weights, and returns every History value,
the evaluate results and the largest differences. `format_markdown` renders it.
"""

import dataclasses
import json
import time
from typing import Optional

import keras
import numpy as np

from trainer import compare, synthetic

OPTIMIZERS = {
    "sgd": lambda lr, kw: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **kw),
    "adam": lambda lr, kw: keras.optimizers.Adam(lr, **kw),
    "adamw": lambda lr, kw: keras.optimizers.AdamW(lr, weight_decay=0.004, **kw),
    "rmsprop": lambda lr, kw: keras.optimizers.RMSprop(lr, **kw),
}
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SideBySideConfig:
  """What to train. Checked on construction; see `__post_init__`."""

  optimizer: str = "adam"
  learning_rate: float = 0.01
  epochs: int = 3
  batch_size: int = 32
  num_samples: int = 1000
  hidden_units: int = 16
  l2: float = 0.01
  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None
  jit_compile: bool = False
  steps_per_execution: int = 1
  dtype_policy: str = "float32"
  seed: int = 0

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"`optimizer` ({self.optimizer!r}) must be one of {sorted(OPTIMIZERS)}.")
    if self.dtype_policy not in DTYPE_POLICIES:
      raise ValueError(
          f"`dtype_policy` ({self.dtype_policy!r}) must be one of {DTYPE_POLICIES}.")
    for name in ("epochs", "batch_size", "num_samples", "hidden_units",
                 "steps_per_execution"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` ({value!r}) must be a positive integer.")
    if not self.learning_rate > 0:
      raise ValueError(f"`learning_rate` ({self.learning_rate!r}) must be > 0.")
    clips = [n for n in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, n)]
    if len(clips) > 1:
      raise ValueError(f"Only one clipping kind may be set; received {', '.join(clips)}.")
    for name in clips:
      if not getattr(self, name) > 0:
        raise ValueError(f"`{name}` ({getattr(self, name)!r}) must be > 0.")


def build_model(config):
  """An MLP d -> hidden (relu, L2) -> 1, compiled with mse, mae and the config."""
  keras.mixed_precision.set_dtype_policy(config.dtype_policy)
  inputs = keras.Input((8,))
  hidden = keras.layers.Dense(config.hidden_units, activation="relu",
                              kernel_regularizer=keras.regularizers.L2(config.l2))(inputs)
  outputs = keras.layers.Dense(1, dtype="float32")(hidden)
  model = keras.Model(inputs, outputs)
  clip = {k: getattr(config, k) for k in ("clipnorm", "clipvalue", "global_clipnorm")
          if getattr(config, k)}
  model.compile(optimizer=OPTIMIZERS[config.optimizer](config.learning_rate, clip),
                loss="mse", metrics=["mae"], jit_compile=config.jit_compile,
                steps_per_execution=config.steps_per_execution)
  return model


def run(config):
  """Trains with both loops and returns a JSON-ready report."""
  x, y = synthetic.regression(config.num_samples, 8, seed=config.seed)
  split = int(0.8 * len(x))
  started = time.perf_counter()
  try:
    result = compare.run_both(lambda: build_model(config), x[:split], y[:split],
                              batch_size=config.batch_size, epochs=config.epochs,
                              shuffle=False, validation_data=(x[split:], y[split:]),
                              eval_x=x[split:], eval_y=y[split:])
  finally:
    keras.mixed_precision.set_dtype_policy("float32")
  rows = []
  for key in sorted(result.keras_history):
    for epoch, (a, b) in enumerate(zip(result.keras_history[key],
                                       result.tapefit_history[key])):
      rows.append({"quantity": key, "epoch": epoch + 1, "fit": a, "tapefit": b,
                   "abs_diff": abs(a - b)})
  for key in sorted(result.keras_eval):
    a, b = result.keras_eval[key], result.tapefit_eval[key]
    rows.append({"quantity": f"evaluate {key}", "epoch": None, "fit": a, "tapefit": b,
                 "abs_diff": abs(a - b)})
  weight_diff = max(float(np.max(np.abs(a - b)))
                    for a, b in zip(result.keras_weights, result.tapefit_weights))
  return {
      "config": dataclasses.asdict(config),
      "rows": rows,
      "max_abs_diff": result.max_abs_diff(),
      "max_weight_diff": weight_diff,
      "iterations": {"fit": result.keras_iterations, "tapefit": result.tapefit_iterations},
      "bit_identical": result.max_abs_diff() == 0.0
                       and result.keras_iterations == result.tapefit_iterations,
      "seconds": time.perf_counter() - started,
  }


def format_markdown(report):
  lines = ["| quantity | epoch | Model.fit | trainer.fit | abs diff |",
           "|---|---|---|---|---|"]
  for row in report["rows"]:
    epoch = "" if row["epoch"] is None else row["epoch"]
    lines.append(f"| {row['quantity']} | {epoch} | {row['fit']:.9g} | "
                 f"{row['tapefit']:.9g} | {row['abs_diff']:.3g} |")
  verdict = "bit-identical" if report["bit_identical"] else (
      f"max |diff| {report['max_abs_diff']:.3g}")
  lines.append("")
  lines.append(f"Final weights: max |diff| {report['max_weight_diff']:.3g}; "
               f"iterations fit={report['iterations']['fit']} "
               f"tapefit={report['iterations']['tapefit']}. Verdict: {verdict}.")
  return "\n".join(lines)


def write_report(report, path):
  """Writes JSON to `path` if it ends in .json, else Markdown."""
  with open(path, "w") as f:
    if path.endswith(".json"):
      json.dump(report, f, indent=2)
    else:
      f.write(format_markdown(report) + "\n")
