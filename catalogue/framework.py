"""The catalogue's frame: a scenario states a relation, measures it, and compares loops.

Each scenario trains the same model with `Model.fit` and with `trainer.fit`
from identical weights, measures a reported loss and a metric, predicts their
difference from independently recorded quantities (per-batch values,
pre-update weights, float64 recomputation), and returns a `Measurement`.
The verdict is computed from that run: nothing is hard-coded.
"""

import dataclasses
import json
import time
from typing import Any, Callable, Dict, List


@dataclasses.dataclass(frozen=True, kw_only=True)
class CatalogueConfig:
  """Data and training size shared by every scenario."""

  num_samples: int = 1000
  num_features: int = 8
  epochs: int = 3
  seed: int = 0

  def __post_init__(self):
    for name in ("num_samples", "num_features", "epochs"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` ({value!r}) must be a positive integer.")
    if self.num_samples < 64:
      raise ValueError(f"`num_samples` ({self.num_samples}) must be >= 64 so that "
                       "every scenario has several batches.")


@dataclasses.dataclass
class Measurement:
  """One scenario's numbers.

  Attributes:
    scenario: the scenario's name.
    relation: the expected relation, as a formula.
    loss, metric: the two reported values compared (last epoch, `trainer.fit`).
    predicted_diff: the difference the relation predicts (loss - metric, or the
      scenario's stated quantity), computed from independent records.
    measured_diff: the difference measured from History.
    tolerance: |measured - predicted| allowed (float32 rounding), stated.
    fit_max_diff: max |Model.fit - trainer.fit| over every History value,
      evaluate result and final weight in the scenario.
    fit_bound: the bound that difference must respect (0 = bit-identical).
    checks: further named booleans the scenario asserts (all must hold).
    details: per-epoch numbers for `--scenario=NAME`.
  """

  scenario: str
  relation: str
  loss: float
  metric: float
  predicted_diff: float
  measured_diff: float
  tolerance: float
  fit_max_diff: float
  fit_bound: float = 0.0
  checks: Dict[str, bool] = dataclasses.field(default_factory=dict)
  details: Dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0

  @property
  def relation_holds(self):
    return abs(self.measured_diff - self.predicted_diff) <= self.tolerance and all(
        self.checks.values())

  @property
  def equals_fit(self):
    return self.fit_max_diff <= self.fit_bound

  @property
  def verdict(self):
    if self.relation_holds and self.equals_fit:
      return "holds"
    failed = [] if self.relation_holds else ["relation"]
    failed += [] if self.equals_fit else ["tapefit != fit"]
    return "FAILS: " + ", ".join(failed)

  def as_dict(self):
    out = dataclasses.asdict(self)
    out.update(verdict=self.verdict, relation_holds=self.relation_holds,
               equals_fit=self.equals_fit)
    return out


@dataclasses.dataclass(frozen=True)
class Scenario:
  name: str
  title: str
  relation: str
  run: Callable[[CatalogueConfig], Measurement]


_SCENARIOS: Dict[str, Scenario] = {}


def scenario(name, title, relation):
  """Decorator: registers `run(config) -> Measurement` under `name`."""
  def register(run):
    if name in _SCENARIOS:
      raise ValueError(f"Scenario {name!r} is registered twice.")
    _SCENARIOS[name] = Scenario(name, title, relation, run)
    return run
  return register


def all_scenarios():
  """All registered scenarios, in catalogue order."""
  import catalogue.scenarios  # noqa: F401  pylint: disable=g-import-not-at-top (registers)
  return dict(_SCENARIOS)


def run_catalogue(names=None, config=None, progress=print):
  """Runs the named scenarios (default all) and returns their measurements."""
  config = config or CatalogueConfig()
  available = all_scenarios()
  names = list(available) if not names else list(names)
  unknown = [n for n in names if n not in available]
  if unknown:
    raise ValueError(f"Unknown scenario(s) {unknown}; expected names from "
                     f"{list(available)}.")
  measurements = []
  for index, name in enumerate(names, 1):
    started = time.perf_counter()
    if progress:
      progress(f"[{index}/{len(names)}] {name}: {available[name].title} ...")
    result = available[name].run(config)
    result.seconds = time.perf_counter() - started
    measurements.append(result)
    if progress:
      progress(f"    {result.verdict} ({result.seconds:.1f} s)")
  return measurements


def _number(value):
  return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_markdown(measurements: List[Measurement]):
  """The catalogue as one Markdown table, one row per scenario."""
  titles = {s.name: s.title for s in all_scenarios().values()}
  lines = [
      "| scenario | expected relation | loss | metric | predicted diff | "
      "measured diff | tapefit vs fit (max diff) | verdict |",
      "|---|---|---|---|---|---|---|---|"]
  for m in measurements:
    bound = "bit-identical" if m.fit_bound == 0 else f"<= {m.fit_bound:g}"
    equal = f"{m.fit_max_diff:.3g} ({bound})"
    lines.append(
        f"| {m.scenario}: {titles.get(m.scenario, '')} | {m.relation} | "
        f"{_number(m.loss)} | {_number(m.metric)} | {m.predicted_diff:.6g} | "
        f"{m.measured_diff:.6g} | {equal} | {m.verdict} |")
  return "\n".join(lines)


def format_details(measurement: Measurement):
  lines = [f"## {measurement.scenario}", "", f"Relation: {measurement.relation}", ""]
  for key, value in measurement.details.items():
    lines.append(f"- {key}: {value}")
  for key, value in measurement.checks.items():
    lines.append(f"- check {key}: {'ok' if value else 'FAILED'}")
  lines.append(f"- |measured - predicted| = "
               f"{abs(measurement.measured_diff - measurement.predicted_diff):.3g} "
               f"(tolerance {measurement.tolerance:.3g})")
  return "\n".join(lines)


def to_json(measurements):
  return json.dumps([m.as_dict() for m in measurements], indent=2, default=float)


def write_report(measurements, path):
  """Markdown for a .md path, JSON otherwise."""
  with open(path, "w") as f:
    if path.endswith(".md"):
      f.write(format_markdown(measurements) + "\n")
    else:
      f.write(to_json(measurements) + "\n")
