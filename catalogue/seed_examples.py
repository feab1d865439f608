"""The seed answer's three examples, run as written, then corrected.

The popular answer to "why do add_metric and add_loss on the same tensor give
different values?" ships three snippets. `run_as_written` executes each one
verbatim (only `x_train` / `y_train`, which the snippets assume, are
supplied) in a fresh interpreter, once with TF 2.21's default Keras 3 and
once with Keras 2 (`TF_USE_LEGACY_KERAS=1`, tf_keras), and reports what
happened. `CORRECTED` holds a Keras 3 version of each that runs; the
catalogue scenario named next to it measures what really happens.

    python -m catalogue.seed_examples            # prints the outcomes
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

EXAMPLES = {
    "example_1_custom_mse": textwrap.dedent('''
        import tensorflow as tf
        from tensorflow import keras

        model = keras.Sequential([
            keras.layers.Dense(10, input_shape=(10,), activation='relu'),
            keras.layers.Dense(1)
        ])

        def custom_mse(y_true, y_pred):
            mse = tf.reduce_mean(tf.square(y_true - y_pred))
            model.add_loss(mse)  # Added as a loss
            model.add_metric(mse, name='custom_mse_metric') # Added as a metric
            return mse

        model.compile(optimizer='adam', loss=custom_mse, metrics=['mae'])
        model.fit(x_train, y_train, epochs=10)
        '''),
    "example_2_l1_norm": textwrap.dedent('''
        import tensorflow as tf
        from tensorflow import keras
        import numpy as np

        model = keras.Sequential([
            keras.layers.Dense(10, input_shape=(10,), kernel_regularizer=keras.regularizers.l1(0.01), activation='relu'),
            keras.layers.Dense(1)
        ])

        def l1_norm(w):
            l1 = tf.reduce_sum(tf.abs(w))
            model.add_loss(l1)
            model.add_metric(l1, name='l1_norm_metric')
            return l1

        # Assume x_train and y_train are defined
        model.compile(optimizer='adam', loss='mse') #mse loss is seperate
        model.fit(x_train, y_train, epochs=10)
        '''),
    "example_3_clipped_mse": textwrap.dedent('''
        import tensorflow as tf
        from tensorflow import keras

        model = keras.Sequential([
            keras.layers.Dense(10, input_shape=(10,), activation='relu'),
            keras.layers.Dense(1)
        ])

        def clipped_mse(y_true, y_pred):
          mse = tf.reduce_mean(tf.square(y_true - y_pred))
          model.add_loss(mse)
          model.add_metric(mse, name='unclipped_mse')
          return mse

        optimizer = tf.keras.optimizers.Adam(clipnorm=1.0) #Gradient Clipping

        model.compile(optimizer=optimizer, loss=clipped_mse, metrics=['mae'])
        model.fit(x_train, y_train, epochs=10)
        '''),
}

# What the catalogue measures in place of each example's claim.
CATALOGUE_SCENARIO = {
    "example_1_custom_mse": "same_tensor_partial_batch",
    "example_2_l1_norm": "regularizers",
    "example_3_clipped_mse": "clipping",
}

CORRECTED = {
    "example_1_custom_mse": textwrap.dedent('''
        import keras

        class SameTensor(keras.layers.Layer):
            """add_loss(t) and a Mean metric of the same t (Keras 3 has no add_metric)."""
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.t_metric = keras.metrics.Mean(name="custom_mse_metric")
            def call(self, inputs):
                y_pred, y_true = inputs
                t = keras.ops.mean(keras.ops.square(y_true - y_pred))
                self.add_loss(t)
                self.t_metric.update_state(t)
                return y_pred

        x = keras.Input((10,)); y = keras.Input((1,))
        y_pred = keras.layers.Dense(1)(keras.layers.Dense(10, activation="relu")(x))
        model = keras.Model([x, y], SameTensor()([y_pred, y]))
        model.compile(optimizer="adam", loss=None)
        history = model.fit([x_train, y_train], epochs=2, batch_size=32, verbose=0)
        '''),
    "example_2_l1_norm": textwrap.dedent('''
        import keras

        model = keras.Sequential([
            keras.Input((10,)),
            keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L1(0.01),
                               activation="relu"),
            keras.layers.Dense(1),
        ])
        # The regularizer already is a loss term (in model.losses); report the data
        # loss separately as a metric instead of add_loss-ing the norm again.
        model.compile(optimizer="adam", loss="mse", metrics=["mse"])
        history = model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
        '''),
    "example_3_clipped_mse": textwrap.dedent('''
        import keras

        model = keras.Sequential([
            keras.Input((10,)),
            keras.layers.Dense(10, activation="relu"),
            keras.layers.Dense(1),
        ])
        model.compile(optimizer=keras.optimizers.Adam(clipnorm=1.0), loss="mse",
                      metrics=["mse"])
        history = model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
        '''),
}

_PRELUDE = textwrap.dedent('''
    import os, sys, json, traceback
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(100, 10)).astype("float32")
    y_train = rng.normal(size=(100, 1)).astype("float32")
    code = sys.stdin.read()
    namespace = {"x_train": x_train, "y_train": y_train}
    try:
        exec(compile(code, "<example>", "exec"), namespace)
        history = namespace.get("history") or getattr(namespace.get("model"), "history", None)
        logs = {k: [float(v) for v in vals] for k, vals in getattr(history, "history", {}).items()}
        print(json.dumps({"ok": True, "history": logs}))
    except BaseException as error:  # the outcome to report, whatever it is
        # Graph-mode errors start with "in user code:" and a traceback; the
        # cause is the last line.
        lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
        message = lines[-1] if lines and lines[0].startswith("in user code") else (
            lines[0] if lines else "")
        prefix = type(error).__name__ + ": "
        message = message[len(prefix):] if message.startswith(prefix) else message
        print(json.dumps({"ok": False, "error": type(error).__name__,
                          "message": message[:300]}))
''')


@dataclasses.dataclass
class Outcome:
  example: str
  keras: str
  ok: bool
  error: str = ""
  message: str = ""
  history: dict = dataclasses.field(default_factory=dict)

  def summary(self):
    if not self.ok:
      return f"raises {self.error}: {self.message}"
    last = {k: round(v[-1], 6) for k, v in self.history.items()}
    return f"runs; last epoch {last}"


def run_code(code, legacy_keras=False, timeout=300):
  env = dict(os.environ)
  if legacy_keras:
    env["TF_USE_LEGACY_KERAS"] = "1"
  else:
    env.pop("TF_USE_LEGACY_KERAS", None)
  done = subprocess.run([sys.executable, "-c", _PRELUDE], input=code, env=env,
                        capture_output=True, text=True, timeout=timeout)
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if not lines:
    return {"ok": False, "error": f"exit {done.returncode}",
            "message": done.stderr.strip().splitlines()[-1][:300] if done.stderr else ""}
  return json.loads(lines[-1])


def run_as_written():
  """Runs every example under Keras 3 and Keras 2; returns a list of Outcomes."""
  outcomes = []
  for name, code in EXAMPLES.items():
    for legacy, label in ((False, "Keras 3 (tf.keras in TF 2.21)"),
                          (True, "Keras 2 (TF_USE_LEGACY_KERAS=1)")):
      outcomes.append(Outcome(example=name, keras=label, **run_code(code, legacy)))
  return outcomes


def run_corrected():
  return [Outcome(example=name, keras="Keras 3", **run_code(code))
          for name, code in CORRECTED.items()]


if __name__ == "__main__":
  for outcome in run_as_written() + run_corrected():
    print(f"{outcome.example} [{outcome.keras}]: {outcome.summary()}")
