"""Assertions shared by the catalogue scenario tests."""


def assert_holds(m):
  """Every check holds, the formula holds within its tolerance, and tapefit == fit."""
  for name, ok in m.checks.items():
    assert ok, f"{m.scenario}: check failed: {name}"
  assert abs(m.measured_diff - m.predicted_diff) <= m.tolerance, (
      m.measured_diff, m.predicted_diff, m.tolerance)
  assert m.relation_holds
  assert m.fit_max_diff == 0.0 and m.equals_fit, m.fit_max_diff
  assert m.verdict == "holds"
