"""Catalogue scenarios 3-6: each relation holds, tapefit equals fit, and the checks can fail.

Every scenario runs on a small config (N=200, 2 epochs). Besides the
scenario's own verdict, each test asserts something the *wrong* relation
would violate, so a scenario whose prediction did not depend on the run
could not pass.
"""

from catalogue.framework import CatalogueConfig, all_scenarios
from catalogue.scenarios import clipping, loss_weights, regularizers, weights
from tests.catalogue_asserts import assert_holds

CONFIG = CatalogueConfig(num_samples=200, epochs=2)


def assert_verdict(m):
  assert_holds(m)
  assert len(m.checks) >= CONFIG.epochs


def test_registered_in_catalogue_order():
  names = list(all_scenarios())
  mine = ["regularizers", "clipping", "weights", "loss_weights"]
  assert [n for n in names if n in mine] == mine
  assert names.index("regularizers") == names.index("same_tensor_partial_batch") + 1


def test_regularizers():
  m = regularizers.regularizers(CONFIG)
  assert_verdict(m)
  epochs = m.details["per epoch"]
  assert len(epochs) == CONFIG.epochs
  # The gap is the regularizer, not rounding: "loss == mse" is off by >> tolerance.
  assert m.predicted_diff > 0
  assert abs(m.measured_diff - 0.0) > 100 * m.tolerance
  for row in epochs:
    assert abs(row["measured diff"]) > 100 * row["tolerance"]
  # Pre-update weights matter: R at the post-update weights misses by > 10x tolerance.
  assert max(abs(r["measured diff"] - r["if R were post-update"]) / r["tolerance"]
             for r in epochs) > 10
  ev = m.details["evaluate"]
  assert ev["predicted R(final)"] > 100 * ev["tolerance"]
  assert abs(ev["measured diff"] - ev["predicted R(final)"]) <= ev["tolerance"]


def test_clipping():
  m = clipping.clipping(CONFIG)
  assert_verdict(m)
  # Bitwise: the batch-0 loss is the same number with and without clipping.
  assert m.measured_diff == 0.0 and m.predicted_diff == 0.0 and m.tolerance == 0.0
  assert m.loss == m.metric
  for kind in clipping.CLIPPING:
    if kind == "none":
      continue
    d = m.details[kind]
    assert d["batch-0 loss"] == m.details["none"]["batch-0 loss"]
    # Clipping bites: the trajectory (epoch-1 loss) moves by far more than rounding,
    # so the equal batch-0 loss is not because clipping did nothing.
    assert abs(d["epoch-1 loss shift vs no clipping"]) > 100 * d["per epoch"][0]["tolerance"]
    unclipped, clipped, threshold = d["step-0 clip statistic: unclipped / clipped / threshold"]
    assert unclipped > 1.01 * threshold and clipped <= threshold * (1 + 1e-4)
  assert sum("scenario 1 relation" in k for k in m.checks) == 4 * CONFIG.epochs


def test_weights():
  m = weights.weights(CONFIG)
  assert_verdict(m)
  # loss = sum w l / N is not weighted_mse = sum w l / sum w (nor mse): the gap is real.
  assert abs(m.predicted_diff) > 100 * m.tolerance
  for row in m.details["sample_weight per epoch"]:
    gap = row["loss - weighted_mse"]
    assert abs(gap["measured"]) > 10 * gap["tolerance"]
    assert abs(row["loss"]["measured"] - row["mse"]["measured"]) > 10 * row["loss"]["tolerance"]
  for row in m.details["class_weight per epoch"]:
    # class_weight enters the training loss: the unweighted loss is far off.
    assert abs(row["loss"]["measured"] - row["unweighted loss (for contrast)"]) > (
        100 * row["loss"]["tolerance"])
  ev = m.details["class_weight evaluate"]
  assert abs(ev["measured"] - ev["predicted"]) <= ev["tolerance"]
  assert abs(ev["measured"] - ev["class-weighted alternative"]) > 100 * ev["tolerance"]


def test_loss_weights():
  m = loss_weights.loss_weights(CONFIG)
  assert_verdict(m)
  partial = next(v for k, v in m.details.items() if "(partial)" in k)
  divisor = next(v for k, v in m.details.items() if "(divides N)" in k)
  # Partial last batch: loss != sum lambda <o>_loss by far more than rounding, and
  # the recorded per-batch C predict the gap.
  assert abs(m.predicted_diff) > 100 * m.tolerance
  for row in partial["per epoch"]:
    assert abs(row["gap"]["measured"]) > 10 * row["gap"]["tolerance"]
  ev = partial["evaluate"]["gap"]
  assert abs(ev["measured"] - ev["predicted"]) <= ev["tolerance"]
  # Batch size dividing N: the gap is rounding only.
  for row in divisor["per epoch"]:
    assert abs(row["gap"]["predicted"]) < 1e-12
    assert abs(row["gap"]["measured"]) <= row["gap"]["tolerance"]

