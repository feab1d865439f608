"""Step time of Model.fit vs tapefit (per-step and fused), XLA off/on, and a FLOP floor.

    python -m benchmarks.step_time                       # everything (~10 min on 2 CPUs)
    python -m benchmarks.step_time --models=tiny,medium --repeats=9
    python -m benchmarks.step_time --xla=on --nostages --nojax
    make bench ARGS="--models=tiny"

Writes <out_dir>/results.json (raw timings, config, machine), results.md (the
tables) and step_time.png, prints the Markdown tables and then, last, the
ratios of tapefit fused to fit defaults, fit best and the JAX peer.

Only this module reads flags; the work is in benchmarks.suite.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import models, suite  # noqa: E402

_MODELS = flags.DEFINE_list("models", list(models.MODEL_NAMES),
                            f"Models to time, from {list(models.MODEL_NAMES)}.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (variants interleaved).",
                                lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed epochs per variant first.",
                               lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", None,
                              "Optimizer steps per epoch (default: per model: tiny 100, "
                              "medium 30, transformer 30, cnn 10; the CNN is capped at 10).",
                              lower_bound=1)
_OUT_DIR = flags.DEFINE_string("out_dir", "out/bench", "Where the outputs go.")
_XLA = flags.DEFINE_enum("xla", "both", list(suite.XLA_CHOICES), "jit_compile settings.")
_STAGES = flags.DEFINE_bool("stages", True,
                            "Also time each stage of the fused XLA step (tiny, medium).")
_STAGE_REPEATS = flags.DEFINE_integer("stage_repeats", 9, "Rounds for the stage timing.",
                                      lower_bound=1)
_JAX = flags.DEFINE_bool("jax", True, "Also time the JAX + optax peer when installed.")
_BUDGET_S = flags.DEFINE_float("budget_s", 30.0,
                               "Per-variant cap on timed seconds: past it a variant skips "
                               "the remaining rounds (0: no cap).", lower_bound=0.0)
_PER_STEP_FEED = flags.DEFINE_enum("per_step_feed", "dataset", list(suite.PER_STEP_FEEDS),
                                   "tapefit per-step input: a tf.data pipeline (CompiledStep) "
                                   "or in-memory arrays (fused feed, 1 step per call).")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 1024, "n of the n^3 matmul timing the floor.",
                                 lower_bound=16)
_DEVICE = flags.DEFINE_string("device", None, "Device to place everything on, e.g. /GPU:0.")
_DTYPE_POLICY = flags.DEFINE_enum("dtype_policy", "float32",
                                  ["float32", "mixed_bfloat16", "mixed_float16"],
                                  "Keras dtype policy of the Keras models.")
_SEED = flags.DEFINE_integer("seed", 0, "Weights and data seed.")
_FUSED_XLA_SCOPE = flags.DEFINE_enum(
    "fused_xla_scope", "auto", ["auto", "loop", "step"],
    "What XLA compiles in the tapefit fused variant (trainer.fit's xla_scope): the whole "
    "loop, each step, or auto (step for convolution models on CPU).")
_MIN_SAMPLE_S = flags.DEFINE_float(
    "min_sample_s", 0.05,
    "A timed sample repeats a variant's epoch back to back until it lasts about this "
    "long, and records the mean (0: one epoch per sample).", lower_bound=0.0)

_EXACTNESS = flags.DEFINE_bool(
    "exactness", True,
    "After the timing, also train the tapefit fused configuration and Model.fit from the "
    "same weights and report how far apart their numbers are.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}")
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  config = suite.BenchConfig(
      models=tuple(_MODELS.value), repeats=_REPEATS.value, warmup=_WARMUP.value,
      steps=_STEPS.value, out_dir=_OUT_DIR.value, xla=_XLA.value, stages=_STAGES.value,
      stage_repeats=_STAGE_REPEATS.value, jax=_JAX.value,
      budget_s=_BUDGET_S.value or None, per_step_feed=_PER_STEP_FEED.value,
      matmul_n=_MATMUL_N.value, device=_DEVICE.value, dtype_policy=_DTYPE_POLICY.value,
      seed=_SEED.value, fused_xla_scope=_FUSED_XLA_SCOPE.value,
      min_sample_s=_MIN_SAMPLE_S.value, exactness=_EXACTNESS.value)
  print(f"Step-time benchmark: {config}", flush=True)
  results = suite.run(config, log=lambda line: print(line, flush=True))
  paths = report.write_outputs(results, config.out_dir)
  print()
  print(report.format_markdown(results))
  print()
  print(f"Wrote {', '.join(paths.values())} ({results['seconds']:.0f} s in all)")
  print()
  print(report.format_ratios(results), flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
