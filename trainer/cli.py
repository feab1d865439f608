"""The command line: flags in, a config out, the library does the rest.

    python -m trainer                         # the main job, default flags
    python -m trainer --optimizer=sgd --clipnorm=0.5 --jit_compile
    python -m trainer --report_out=report.json

Only this module reads flags.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", ["sgd", "adam", "adamw", "rmsprop"],
                               "Optimizer for both loops.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.01, "Learning rate.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000,
                                    "Synthetic samples (80% train, 20% validation).",
                                    lower_bound=2)
_CLIPNORM = flags.DEFINE_float("clipnorm", None, "Per-variable gradient norm clip.")
_CLIPVALUE = flags.DEFINE_float("clipvalue", None, "Gradient value clip.")
_GLOBAL_CLIPNORM = flags.DEFINE_float("global_clipnorm", None, "Global gradient norm clip.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA.")
_STEPS_PER_EXECUTION = flags.DEFINE_integer("steps_per_execution", 1,
                                            "Steps per compiled call.", lower_bound=1)
_DTYPE_POLICY = flags.DEFINE_enum("dtype_policy", "float32",
                                  ["float32", "mixed_float16", "mixed_bfloat16"],
                                  "Keras dtype policy.")
_SEED = flags.DEFINE_integer("seed", 0, "Data and initialisation seed.")
_REPORT_OUT = flags.DEFINE_string("report_out", None,
                                  "Also write the report here (.json or .md).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
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


def run():
  app.run(main)
