"""Can clipnorm's six per-variable norms be computed more cheaply under XLA?

    python -m benchmarks.clip_probe [--steps=100 --repeats=15]

The tiny-MLP step in raw TensorFlow (`benchmarks.raw_tf_loop`: 32->64->64->1,
mse + L2, clipnorm 1.0, Adam; one XLA `tf.while_loop` per call), with the
norms ||g_k|| computed four ways (`raw_tf_loop.CLIPS`):

  * per_variable: one reduce_sum(g_k * g_k) per variable, as Keras and tapefit
    compute them (six reductions, each its own small kernel on XLA's CPU
    backend);
  * concat_dot: every g_k * g_k in one row, times a constant 0/1 matrix that
    sums each variable's span: one matmul for all six;
  * segment_sum: the same row through one `unsorted_segment_sum`;
  * none: no clipping (the floor the other three are measured against).

The two fused forms change the summation order, so they could not be used
without giving up bit-identity with `fit`; this probe asks whether they would
even be faster. It prints the median µs per step of each, interleaved with
warm-up and garbage collection (`benchmarks.timing`), and each form's
clipping cost (its time minus the unclipped loop's) as a share of its step.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import raw_tf_loop  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 100, "Steps per compiled call.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 15, "Interleaved rounds.", lower_bound=1)
_MIN_SAMPLE_S = flags.DEFINE_float(
    "min_sample_s", 0.05, "A sample repeats a loop back to back for about this long.",
    lower_bound=0.0)


def main(argv):
  del argv
  result = raw_tf_loop.measure_clips(_STEPS.value, _REPEATS.value, _MIN_SAMPLE_S.value)
  shares = raw_tf_loop.clip_shares(result)
  for name, micros in result.items():
    share = f"  clipping {shares[name]:5.1f}% of the step" if name in shares else ""
    print(f"{name:13s} {micros:7.1f} µs/step{share}")


if __name__ == "__main__":
  app.run(main)
