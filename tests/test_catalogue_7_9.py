"""Catalogue scenarios 7-9: each relation holds, tapefit equals fit, and the checks can fail.

Each scenario runs on a small config (N=200, 2 epochs; 3 epochs for
accumulation, so that an odd number of micro-steps leaves a gradient in the
accumulator). Besides the verdict, each test asserts what a WRONG explanation
would violate.
"""

import json

import keras

from catalogue.framework import CatalogueConfig, all_scenarios, to_json
from catalogue.scenarios import accumulation_ema, dropout, mixed_precision
from tests.catalogue_asserts import assert_holds

CONFIG = CatalogueConfig(num_samples=200, epochs=2)


def assert_verdict(m):
  assert_holds(m)
  json.loads(to_json([m]))  # The report can be written.


def test_registered_consecutively_in_order():
  names = list(all_scenarios())
  mine = ["dropout", "mixed_precision", "accumulation_ema"]
  start = names.index("dropout")
  assert names[start:start + 3] == mine


def test_dropout():
  m = dropout.run(CONFIG)
  assert_verdict(m)
  d = m.details
  drop = d["dropout part (L_hist - L_inf_traj)"]
  moving = d["moving-weights part (L_inf_traj - L_eval)"]
  # Training-mode History is above the inference-mode trajectory in every epoch.
  assert drop > 0 and all(row["dropout part"] > 0 for row in d["per epoch"])
  # Neither part alone explains the gap: the moving weights contribute too.
  assert abs(m.measured_diff - drop) > 100 * m.tolerance
  assert abs(m.measured_diff - moving) > 100 * m.tolerance
  assert abs(drop + moving - m.measured_diff) <= m.tolerance
  # History is not the inference-mode loss of the trajectory (dropout matters).
  for row in d["per epoch"]:
    assert abs(row["History loss"] - row["L_inf_traj"]) > 1e-3


def test_mixed_precision():
  m = mixed_precision.run(CONFIG)
  assert_verdict(m)
  assert keras.mixed_precision.dtype_policy().name == "float32"  # restored
  d = m.details
  skipped, steps = d["fp16 skipped steps"], d["fp16 steps"]
  assert skipped >= 1
  assert d["fp16 iterations"] == steps - skipped < steps
  # Unscaled: History equals the recomputation, which a x2^14.. scaled loss would miss.
  for row in d["fp16 per epoch"]:
    low_scale = row["loss scale range in epoch"][0]
    assert low_scale >= 2 ** 10
    assert abs(row["History loss"] - row["float64 from recorded y_pred"]) < (
        1e-3 * (low_scale - 1) * row["float64 from recorded y_pred"])
  # bf16: the gap is the bf16 metric, not rounding, and it is emulated exactly.
  for row in d["bf16 per epoch"]:
    measured, emulated = row["measured loss - mse"], row["emulated loss - mse"]
    assert abs(measured) > 10 * row["tolerance"]
    assert abs(measured - emulated) <= row["tolerance"]
    assert abs(measured) <= row["bound mean e_i"] + row["tolerance"]


def test_accumulation_ema():
  config = CatalogueConfig(num_samples=200, epochs=3)
  m = accumulation_ema.run(config)
  assert_verdict(m)
  d = m.details
  iterations, micro_steps = d["accum iterations / _iterations"]
  assert micro_steps % 2 == 1 and iterations == micro_steps // 2
  # Odd number of micro-steps: the last gradient sits in the accumulator, unused.
  assert d["accum leftover accumulator max |.|"] > 0
  # EMA: History unchanged, weights moved, evaluate sees the EMA and not the raw weights.
  assert m.measured_diff == 0.0 and m.loss == m.metric
  assert d["ema History loss"] == d["no-ema History loss"]
  assert d["ema max |EMA - raw|"] > 1e-3
  assert abs(d["ema evaluate"] - d["ema float64 loss at raw weights"]) > 1e-4
  assert abs(d["ema evaluate"] - d["ema float64 loss at EMA weights"]) < 1e-5
