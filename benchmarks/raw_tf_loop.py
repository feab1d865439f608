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
reaches on this step without any framework around it. `benchmarks.clip_probe`
times the ways of computing the six clipnorm norms (`CLIPS`).
"""

BATCH, DIM, HIDDEN = 64, 32, 64
LR, BETA1, BETA2, EPSILON, CLIPNORM, L2 = 1e-3, 0.9, 0.999, 1e-7, 1.0, 1e-4

# How `build` computes clipnorm's per-variable norms ||g_k||:
#   per_variable   one reduce_sum(g_k * g_k) per variable (Keras's and tapefit's way)
#   concat_dot     all g_k * g_k flattened into one row, times a constant 0/1
#                  matrix whose column k selects variable k: one matmul
#   segment_sum    the same row summed by `unsorted_segment_sum` over variable ids
#   none           no clipping
# The last two change the summation order (so the numbers, by an ulp or so).
CLIPS = ("per_variable", "concat_dot", "segment_sum", "none")


def build(steps, seed=0, clip="per_variable"):
  """Returns (stateful, functional) compiled loops over the same data and state.

  `clip`: one of CLIPS. "none" leaves out clipnorm (the gradients go to Adam as they are), to measure
  what clipping costs TensorFlow's XLA itself.
  """
  import numpy as np
  import tensorflow as tf

  if clip not in CLIPS:
    raise ValueError(f"`clip` ({clip!r}) must be one of {CLIPS}.")

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

  sizes = [int(np.prod(shape)) for shape in shapes]
  variable_of = np.repeat(np.arange(len(sizes)), sizes)  # Variable id of each element.
  selector = np.zeros((sum(sizes), len(sizes)), np.float32)
  selector[np.arange(sum(sizes)), variable_of] = 1.0
  selector, variable_of = tf.constant(selector), tf.constant(variable_of)

  def squared_norms(g):
    """[||g_k||^2 for each variable k], the way `clip` asks for."""
    if clip == "per_variable":
      return [tf.reduce_sum(gi * gi) for gi in g]
    if clip == "concat_dot":
      row = tf.concat([tf.reshape(gi * gi, [1, -1]) for gi in g], axis=1)
      sums = tf.reshape(row @ selector, [-1])
    else:
      row = tf.concat([tf.reshape(gi * gi, [-1]) for gi in g], axis=0)
      sums = tf.math.unsorted_segment_sum(row, variable_of, len(sizes))
    return [sums[k] for k in range(len(sizes))]

  def clipped(g):
    if clip == "none":
      return list(g)
    return [gi * CLIPNORM / tf.maximum(tf.sqrt(sq), CLIPNORM)
            for gi, sq in zip(g, squared_norms(g))]

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
                 [a.read_value() for a in v_s], clipped(g), t)
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
      w, m, v = adam(w, m, v, clipped(g), t)
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


def measure_carry(steps, repeats):
  """{"stateful"|"functional": median µs per step}, interleaved (`benchmarks.carry_probe`)."""
  from benchmarks import timing
  loops = dict(zip(("stateful", "functional"), build(steps)))
  return timing.loop_medians(loops, steps, repeats, min_sample_s=0.0)


def measure_clips(steps, repeats, min_sample_s=0.05):
  """{form in CLIPS: median µs per step} of the stateful loop, interleaved
  (`benchmarks.clip_probe`)."""
  from benchmarks import timing
  loops = {clip: build(steps, clip=clip)[0] for clip in CLIPS}
  return timing.loop_medians(loops, steps, repeats, min_sample_s)


def clip_shares(result):
  """{form: 100 * (1 - unclipped / clipped)}: the share of each step spent clipping."""
  return {name: 100.0 * (1.0 - result["none"] / micros)
          for name, micros in result.items() if name != "none"}
