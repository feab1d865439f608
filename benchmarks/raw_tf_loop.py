"""The tiny MLP's training step in raw TensorFlow, no Keras: one XLA while loop.

    stateful, functional = build(steps)
    stateful().numpy()      # one call: `steps` optimizer steps

The step is the benchmark's tiny model (32->64->64->1, mse + L2 on the first
kernel, per-variable clipnorm, Adam) with a running loss sum and no metrics,
written directly with `tf.GradientTape`, in two forms:

  * stateful: weights, slots, step and loss total are resource variables read
    and assigned inside the loop body (what `FusedArraySteps` does through
    Keras);
  * functional: they are loop-carried values, written back once per call.

`benchmarks.carry_probe` compares the two forms; `benchmarks.suite` times
the stateful one next to tapefit and the JAX peer, as what TensorFlow's XLA
reaches on this step without any framework around it.
"""

BATCH, DIM, HIDDEN = 64, 32, 64
LR, BETA1, BETA2, EPSILON, CLIPNORM, L2 = 1e-3, 0.9, 0.999, 1e-7, 1.0, 1e-4


def build(steps, seed=0, clip=True):
  """Returns (stateful, functional) compiled loops over the same data and state.

  `clip=False` leaves out the per-variable clipnorm (the gradients go to Adam
  as they are), to measure what clipping costs TensorFlow's XLA itself.
  """
  import numpy as np
  import tensorflow as tf

  rng = np.random.default_rng(seed)
  xs = tf.constant(rng.normal(size=(steps, BATCH, DIM)).astype("float32"))
  ys = tf.constant(rng.normal(size=(steps, BATCH, 1)).astype("float32"))
  shapes = [(DIM, HIDDEN), (HIDDEN,), (HIDDEN, HIDDEN), (HIDDEN,), (HIDDEN, 1), (1,)]
  initial = [rng.normal(size=s).astype("float32") * 0.1 for s in shapes]

  def loss_and_grads(w, x, y):
    with tf.GradientTape() as tape:
      tape.watch(w)
      h = tf.nn.relu(x @ w[0] + w[1])
      h = tf.nn.relu(h @ w[2] + w[3])
      loss = tf.reduce_mean(tf.square(h @ w[4] + w[5] - y)) + L2 * tf.reduce_sum(
          tf.square(w[0]))
    return loss, tape.gradient(loss, w)

  def clip_one(g):
    if not clip:
      return g
    return g * CLIPNORM / tf.maximum(tf.sqrt(tf.reduce_sum(g * g)), CLIPNORM)

  def adam(w, m, v, g, t):
    m = [BETA1 * mi + (1 - BETA1) * gi for mi, gi in zip(m, g)]
    v = [BETA2 * vi + (1 - BETA2) * gi * gi for vi, gi in zip(v, g)]
    alpha = LR * tf.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)
    return [wi - alpha * mi / (tf.sqrt(vi) + EPSILON) for wi, mi, vi in zip(w, m, v)], m, v

  def state():
    return ([tf.Variable(a) for a in initial], [tf.Variable(tf.zeros_like(a)) for a in initial],
            [tf.Variable(tf.zeros_like(a)) for a in initial], tf.Variable(0.0),
            tf.Variable(0.0))

  w_s, m_s, v_s, t_s, total_s = state()

  @tf.function(jit_compile=True)
  def stateful():
    def body(i):
      t = t_s + 1.0
      t_s.assign(t)
      loss, g = loss_and_grads([a.read_value() for a in w_s], tf.gather(xs, i),
                               tf.gather(ys, i))
      new = adam([a.read_value() for a in w_s], [a.read_value() for a in m_s],
                 [a.read_value() for a in v_s], [clip_one(gi) for gi in g], t)
      for var, value in zip(w_s + m_s + v_s, new[0] + new[1] + new[2]):
        var.assign(value)
      total_s.assign_add(loss)
      return (i + 1,)
    tf.while_loop(lambda i: i < steps, body, (tf.constant(0),))
    return total_s.read_value()

  w_f, m_f, v_f, t_f, total_f = state()

  @tf.function(jit_compile=True)
  def functional():
    def body(i, w, m, v, t, total):
      t = t + 1.0
      loss, g = loss_and_grads(w, tf.gather(xs, i), tf.gather(ys, i))
      w, m, v = adam(w, m, v, [clip_one(gi) for gi in g], t)
      return i + 1, w, m, v, t, total + loss
    carried = tf.while_loop(
        lambda i, *rest: i < steps, body,
        (tf.constant(0), [a.read_value() for a in w_f], [a.read_value() for a in m_f],
         [a.read_value() for a in v_f], t_f.read_value(), total_f.read_value()))
    _, w, m, v, t, total = carried
    for var, value in zip(w_f + m_f + v_f, w + m + v):
      var.assign(value)
    t_f.assign(t)
    total_f.assign(total)
    return total

  return stateful, functional
