"""Catalogue scenarios 1, 2 and 10: the same tensor through add_loss and a metric."""

import pytest

from catalogue import CatalogueConfig
from catalogue.scenarios import keras2_vs_keras3, same_tensor

SMALL = CatalogueConfig(num_samples=200, epochs=2)


def test_full_batches_agree_up_to_rounding():
  m = same_tensor.same_tensor_full_batches(SMALL)
  assert m.equals_fit and m.fit_max_diff == 0.0
  assert m.predicted_diff == 0.0
  assert m.relation_holds, m.checks
  assert abs(m.measured_diff) <= m.tolerance


def test_partial_batch_difference_is_predicted_from_per_batch_values():
  m = same_tensor.same_tensor_partial_batch(SMALL)
  assert m.equals_fit and m.fit_max_diff == 0.0
  assert m.relation_holds, m.checks
  # The effect is real: far larger than rounding, and matched by the prediction.
  assert abs(m.predicted_diff) > 20 * m.tolerance
  assert abs(m.measured_diff - m.predicted_diff) <= m.tolerance


def test_predicted_loss_and_metric_formula():
  loss, metric = same_tensor.predicted_loss_and_metric([1.0, 2.0, 4.0], [32, 32, 8])
  assert loss == pytest.approx((32 * 1 + 32 * 2 + 8 * 4) / 72)
  assert metric == pytest.approx(7 / 3)


def test_keras2_add_metric_equals_add_loss_exactly_while_keras3_differs():
  m = keras2_vs_keras3.keras2_add_metric(SMALL)
  assert m.equals_fit and m.fit_max_diff == 0.0
  assert m.measured_diff == 0.0
  assert all(m.checks.values()), m.checks
  side_by_side = m.details["per epoch (side by side)"]
  assert any(abs(row["K2 loss"] - row["K3 loss"]) > 1e-4 for row in side_by_side)
