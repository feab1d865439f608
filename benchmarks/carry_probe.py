"""Should the fused loop carry weights and Adam slots as loop values?

    python -m benchmarks.carry_probe [--steps=100 --repeats=30]

The same tiny-MLP step (32->64->64->1, mse + L2, per-variable clipnorm, Adam)
written in raw TensorFlow, in one XLA `tf.while_loop`, two ways:

  * stateful: weights, slots, step and loss total are resource variables read
    and assigned inside the loop body (what `FusedArraySteps` does through
    Keras);
  * functional: they are loop-carried values, written back once per call.

It prints the median µs per step of each and their ratio, interleaved. The
issue asked for the functional variant only if measurement shows it wins.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from benchmarks import raw_tf_loop  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 100, "Steps per compiled call.", lower_bound=1)
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per variant.", lower_bound=1)


def main(argv):
  del argv
  result = raw_tf_loop.measure_carry(_STEPS.value, _REPEATS.value)
  for name, micros in result.items():
    print(f"{name:10s} {micros:7.1f} µs/step")
  print(f"functional / stateful = {result['functional'] / result['stateful']:.3f}")


if __name__ == "__main__":
  app.run(main)
