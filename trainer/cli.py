"""The command line: flags in, a config out, the library does the rest.

    python -m trainer                          # the catalogue: every scenario, one table
    python -m trainer --list_scenarios
    python -m trainer --scenario=same_tensor_partial_batch   # one scenario, per-epoch detail
    python -m trainer --report_out=catalogue.md           # also write Markdown (or .json)
    python -m trainer --side_by_side --optimizer=sgd --clipnorm=0.5 --jit_compile
                                               # one model, Model.fit vs trainer.fit

Only this module reads flags.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

# The catalogue (the default job).
_SCENARIO = flags.DEFINE_multi_string(
    "scenario", None, "Run only this scenario (repeatable), with per-epoch detail.")
_LIST_SCENARIOS = flags.DEFINE_bool("list_scenarios", False, "List the scenarios and exit.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Synthetic samples.", lower_bound=64)
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Data and initialisation seed.")
_REPORT_OUT = flags.DEFINE_string("report_out", None,
                                  "Also write the report here (.md for Markdown, else JSON).")

# The side-by-side job.
_SIDE_BY_SIDE = flags.DEFINE_bool(
    "side_by_side", False, "Instead of the catalogue, train one MLP with Model.fit and "
    "trainer.fit from identical weights and print every History value.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", ["sgd", "adam", "adamw", "rmsprop"],
                               "Optimizer (side by side).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.01, "Learning rate (side by side).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size (side by side).",
                                   lower_bound=1)
_CLIPNORM = flags.DEFINE_float("clipnorm", None, "Per-variable gradient norm clip.")
_CLIPVALUE = flags.DEFINE_float("clipvalue", None, "Gradient value clip.")
_GLOBAL_CLIPNORM = flags.DEFINE_float("global_clipnorm", None, "Global gradient norm clip.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA.")
_STEPS_PER_EXECUTION = flags.DEFINE_integer("steps_per_execution", 1,
                                            "Steps per compiled call.", lower_bound=1)
_DTYPE_POLICY = flags.DEFINE_enum("dtype_policy", "float32",
                                  ["float32", "mixed_float16", "mixed_bfloat16"],
                                  "Keras dtype policy (side by side).")


def _side_by_side():
  from trainer import side_by_side
  config = side_by_side.SideBySideConfig(
      optimizer=_OPTIMIZER.value, learning_rate=_LEARNING_RATE.value, epochs=_EPOCHS.value,
      batch_size=_BATCH_SIZE.value, num_samples=_NUM_SAMPLES.value,
      clipnorm=_CLIPNORM.value, clipvalue=_CLIPVALUE.value,
      global_clipnorm=_GLOBAL_CLIPNORM.value, jit_compile=_JIT_COMPILE.value,
      steps_per_execution=_STEPS_PER_EXECUTION.value, dtype_policy=_DTYPE_POLICY.value,
      seed=_SEED.value)
  print(f"Training with Model.fit and trainer.fit from identical weights: {config}")
  report = side_by_side.run(config)
  print(side_by_side.format_markdown(report))
  print(f"({report['seconds']:.1f} s)")
  if _REPORT_OUT.value:
    side_by_side.write_report(report, _REPORT_OUT.value)
    print(f"Report written to {_REPORT_OUT.value}")
  return 0 if report["bit_identical"] or config.jit_compile else 1


def _catalogue():
  import catalogue
  available = catalogue.all_scenarios()
  if _LIST_SCENARIOS.value:
    for name, item in available.items():
      print(f"{name:32s} {item.title}\n{'':32s} relation: {item.relation}")
    return 0
  names = _SCENARIO.value or None
  if names:
    unknown = [n for n in names if n not in available]
    if unknown:
      raise app.UsageError(
          f"--scenario: unknown {unknown}; expected one of {list(available)} "
          "(see --list_scenarios).")
  config = catalogue.CatalogueConfig(num_samples=_NUM_SAMPLES.value, epochs=_EPOCHS.value,
                                     seed=_SEED.value)
  print(f"Loss versus metric: {len(names or available)} scenario(s), {config}")
  measurements = catalogue.run_catalogue(names, config)
  print()
  print(catalogue.format_markdown(measurements))
  if names:
    for measurement in measurements:
      print()
      print(catalogue.format_details(measurement))
  if _REPORT_OUT.value:
    catalogue.write_report(measurements, _REPORT_OUT.value)
    print(f"\nReport written to {_REPORT_OUT.value}")
  failed = [m.scenario for m in measurements if m.verdict != "holds"]
  if failed:
    print(f"\nFAILED: {failed}", file=sys.stderr)
  return 1 if failed else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  return _side_by_side() if _SIDE_BY_SIDE.value else _catalogue()


def run():
  app.run(main)
