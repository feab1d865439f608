"""The exactness matrix: `trainer.fit` reproduces `keras.Model.fit`.

XLA off: bit-identical (History incl. val_*, evaluate, weights, iterations,
optimizer state, callback logs). XLA on: within 1e-6 relative. The cases,
and the reason for every bound that is not bit-identity, are in
tests/exactness_cases.py; docs/exactness.md holds the measured differences
(`python tests/exactness_report.py --out docs/exactness.md`).
"""

import pytest

import exactness_cases as cases

# Keras's fit warns when steps_per_epoch outlasts the data
# (initial_epoch_steps_per_epoch does that on purpose; tapefit must stop the
# same way).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Your input ran out of data:UserWarning")

@pytest.mark.parametrize("case", cases.CASES, ids=[c.name for c in cases.CASES])
def test_fit_matches_keras(case):
  result = cases.run_case(case)
  case.assert_bound(result.comparison)
  for check in case.checks:
    check(result)


def test_matrix_covers_the_rule():
  """Every XLA-off case is bit-identical; every XLA case asserts 1e-6 or tighter."""
  for case in cases.CASES:
    if not case.xla:
      assert case.rel is None, (case.name, case.bound)
    else:
      assert case.rel is not None and case.rel <= 1e-6 and case.reason, case.name
  assert any(c.xla for c in cases.CASES) and any(not c.xla for c in cases.CASES)
