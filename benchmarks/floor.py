"""The FLOP floor: this machine's float32 matmul rate, and machine facts.

    rate = matmul_rate(n=1024, repeats=7)     # {"gflops": ..., ...}
    floor_seconds = flops_per_step / (rate["gflops"] * 1e9)

The rate is the median over timed calls of a compiled function that runs
`inner` chained n x n x n float32 `tf.matmul`s (2 n^3 FLOPs each), after one
warm-up call. The benchmark times it once up front and again inside every
model's interleaved rounds (`MatmulProbe`), and each model's floor uses the
rate from its own rounds. A training step cannot beat flops / rate, so the
ratio time / floor says how much of a step is not large matmuls.
"""

import contextlib
import math
import os
import platform
import statistics
import time

import tensorflow as tf


class MatmulProbe:
  """One call = `inner` chained n x n x n float32 matmuls, read back to the host.

  Call it among the timed variants (benchmarks.timing.interleaved) so the
  rate is measured under the same machine load as the steps it bounds.
  """

  def __init__(self, n=1024, inner=4, device=None):
    self.n, self.inner = n, inner
    self.flops = 2.0 * n ** 3 * inner

    @tf.function
    def chain(a, b):
      c = a
      for _ in range(inner):
        # Scaled so the values stay finite over the chain.
        c = tf.matmul(c, b) * (1.0 / n)
      return tf.reduce_sum(c)

    context = tf.device(device) if device else contextlib.nullcontext()
    with context:
      self.a = tf.random.stateless_normal((n, n), seed=(1, 2))
      self.b = tf.random.stateless_normal((n, n), seed=(3, 4))
    self._chain = chain
    self()  # Warm-up: trace, allocate.

  def __call__(self):
    return self._chain(self.a, self.b).numpy()

  def rate(self, seconds):
    """{"gflops": at the median time, "gflops_best": at the fastest, ...}."""
    return {"n": self.n, "inner": self.inner, "repeats": len(seconds),
            "seconds": list(seconds),
            "gflops": self.flops / statistics.median(seconds) / 1e9,
            "gflops_best": self.flops / min(seconds) / 1e9}


def matmul_rate(n=1024, repeats=7, inner=4, device=None):
  """Median GFLOP/s of float32 n x n @ n x n on the default (or given) device."""
  probe = MatmulProbe(n, inner, device)
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    probe()
    seconds.append(time.perf_counter() - start)
  return probe.rate(seconds)


def _cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine_info():
  """What the numbers were measured on."""
  import keras
  import numpy as np
  devices = [d.name for d in tf.config.list_logical_devices()]
  return {
      "platform": platform.platform(),
      "python": platform.python_version(),
      "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "tensorflow": tf.__version__,
      "keras": keras.__version__,
      "numpy": np.__version__,
      "devices": devices,
      "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
      "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
      "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
      "env": {k: os.environ[k] for k in ("XLA_FLAGS", "TF_GPU_ALLOCATOR", "TF_XLA_FLAGS",
                                         "CUDA_VISIBLE_DEVICES", "TF_ENABLE_ONEDNN_OPTS")
              if k in os.environ},
  }


class ConvProbe:
  """One call = every Conv2D of a model at its training shapes: forward,
  input gradient and kernel gradient, as TensorFlow's own kernels run them.

  The matmul rate overstates what convolutions with few channels can reach,
  so for a model with convolutions the benchmark also gives a kernel floor:
  the convolutions' FLOPs at this measured conv rate plus the rest at the
  matmul rate. (The first layer's input gradient, which no training step
  computes, is left out.) Returns None from `for_model` without Conv2D layers.
  """

  def __init__(self, layers, batch_size, device=None):
    context = tf.device(device) if device else contextlib.nullcontext()
    self.flops = 0.0
    self.forward_flops = 0.0
    self.shapes = []
    with context:
      self.inputs, self.kernels = [], []
      for i, (in_shape, kernel_shape, strides, padding, out_shape) in enumerate(layers):
        x_shape = (batch_size,) + tuple(in_shape)
        self.inputs.append(tf.random.stateless_normal(x_shape, seed=(i, 1)))
        self.kernels.append(tf.random.stateless_normal(kernel_shape, seed=(i, 2)))
        macs = batch_size * math.prod(out_shape) * math.prod(kernel_shape[:3])
        self.flops += 2.0 * macs * (3 if i > 0 else 2)
        self.forward_flops += 2.0 * macs
        self.shapes.append((x_shape, tuple(kernel_shape), strides, padding, i > 0))

    @tf.function
    def run(inputs, kernels):
      total = tf.constant(0.0)
      for x, k, (x_shape, k_shape, strides, padding, input_grad) in zip(
          inputs, kernels, self.shapes):
        y = tf.nn.conv2d(x, k, strides, padding)
        total += tf.reduce_sum(y)
        total += tf.reduce_sum(tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=k_shape, out_backprop=y, strides=[1, *strides, 1],
            padding=padding))
        if input_grad:
          total += tf.reduce_sum(tf.raw_ops.Conv2DBackpropInput(
              input_sizes=x_shape, filter=k, out_backprop=y, strides=[1, *strides, 1],
              padding=padding))
      return total

    self._run = run
    self()  # Warm-up.

  @classmethod
  def for_model(cls, model, batch_size, device=None):
    import keras  # pylint: disable=g-import-not-at-top
    layers = []
    for layer in model.layers:
      if type(layer) is not keras.layers.Conv2D or layer.groups != 1:
        continue
      for node in layer._inbound_nodes:
        in_shape = tuple(node.input_tensors[0].shape[1:])
        out_shape = tuple(node.output_tensors[0].shape[1:])
        layers.append((in_shape, tuple(layer.kernel.shape), tuple(layer.strides),
                       layer.padding.upper(), out_shape))
    return cls(layers, batch_size, device) if layers else None

  def __call__(self):
    return self._run(self.inputs, self.kernels).numpy()

  def rate(self, seconds):
    return {"flops": self.flops, "forward_flops": self.forward_flops,
            "repeats": len(seconds), "seconds": list(seconds),
            "median_s": statistics.median(seconds), "min_s": min(seconds),
            "gflops": self.flops / statistics.median(seconds) / 1e9,
            "gflops_best": self.flops / min(seconds) / 1e9}


def kernel_floor_us(flops, conv, matmul_gflops, stat="median"):
  """The step's floor with its convolutions at their measured rate (`conv`:
  `ConvProbe.rate(...)`) and everything else at the matmul rate, in µs."""
  conv_s = conv["median_s"] if stat == "median" else conv["min_s"]
  rest = flops - 3.0 * conv["forward_flops"]
  return (conv_s + rest / (matmul_gflops * 1e9)) * 1e6
