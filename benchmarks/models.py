"""The benchmark models, their synthetic data and their FLOP counts.

Four Keras 3 models, each with the compile arguments both loops train with:

    tiny         MLP 32 -> 64 -> 64 -> 1, batch 64; Adam(clipnorm=1.0), L2 1e-4
                 on the first kernel, mse, metrics ["mae"]
    medium       MLP 256 -> 1024 -> 1024 -> 10 (softmax), batch 256; Adam,
                 sparse_categorical_crossentropy, accuracy
    cnn          32x32x3 -> Conv 3x3x16 relu -> maxpool -> Conv 3x3x32 relu ->
                 maxpool -> flatten -> Dense(10) softmax, batch 128
    transformer  seq 32, d_model 64: MultiHeadAttention(4 heads, key_dim 16) +
                 residual + LayerNorm, FFN 128 + residual + LayerNorm, mean
                 pool, Dense(10) softmax, batch 64

Data is generated with NumPy from a seed; nothing is downloaded. The FLOP
count is analytic: 2 x multiply-adds of every Dense, Conv2D and
MultiHeadAttention layer (read off the built layers' shapes) for the forward
pass, times 3 for forward + backward. Element-wise work (activations,
LayerNorm, softmax, pooling, the optimizer update) is not counted: it is the
matmul/conv floor.
"""

import dataclasses
import math
from typing import Callable, Optional, Tuple

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One benchmark model.

  Attributes:
    name: the --models name.
    description: one line for the tables.
    batch_size: samples per optimizer step.
    default_steps: optimizer steps per epoch when --steps is not given.
    max_steps: cap on steps per epoch whatever --steps says (None: no cap);
      the CNN under XLA is slow on CPU.
    build: returns the (uncompiled) Keras model.
    data: (num_samples, seed) -> (x, y) NumPy arrays.
    optimizer: returns a fresh optimizer.
    loss, metrics: the compile arguments.
  """

  name: str
  description: str
  batch_size: int
  default_steps: int
  build: Callable[[], keras.Model]
  data: Callable[[int, int], Tuple[np.ndarray, np.ndarray]]
  optimizer: Callable[[], keras.optimizers.Optimizer]
  loss: str
  metrics: Tuple[str, ...]
  max_steps: Optional[int] = None

  def steps(self, requested=None):
    """Steps per epoch: `requested` (or the default), capped by `max_steps`."""
    steps = requested or self.default_steps
    if self.max_steps is not None:
      steps = min(steps, self.max_steps)
    return steps


def build_tiny_mlp():
  inputs = keras.Input((32,))
  hidden = keras.layers.Dense(64, activation="relu",
                              kernel_regularizer=keras.regularizers.L2(1e-4))(inputs)
  hidden = keras.layers.Dense(64, activation="relu")(hidden)
  outputs = keras.layers.Dense(1)(hidden)
  return keras.Model(inputs, outputs, name="tiny_mlp")


def build_medium_mlp():
  inputs = keras.Input((256,))
  hidden = keras.layers.Dense(1024, activation="relu")(inputs)
  hidden = keras.layers.Dense(1024, activation="relu")(hidden)
  outputs = keras.layers.Dense(10, activation="softmax")(hidden)
  return keras.Model(inputs, outputs, name="medium_mlp")


def build_small_cnn():
  inputs = keras.Input((32, 32, 3))
  hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
  hidden = keras.layers.MaxPooling2D()(hidden)
  hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(hidden)
  hidden = keras.layers.MaxPooling2D()(hidden)
  hidden = keras.layers.Flatten()(hidden)
  outputs = keras.layers.Dense(10, activation="softmax")(hidden)
  return keras.Model(inputs, outputs, name="small_cnn")


def build_transformer(seq_len=32, d_model=64, num_heads=4, ffn=128, num_classes=10):
  inputs = keras.Input((seq_len, d_model))
  attention = keras.layers.MultiHeadAttention(num_heads=num_heads,
                                              key_dim=d_model // num_heads)(inputs, inputs)
  hidden = keras.layers.LayerNormalization()(inputs + attention)
  ffn_out = keras.layers.Dense(ffn, activation="relu")(hidden)
  ffn_out = keras.layers.Dense(d_model)(ffn_out)
  hidden = keras.layers.LayerNormalization()(hidden + ffn_out)
  pooled = keras.layers.GlobalAveragePooling1D()(hidden)
  outputs = keras.layers.Dense(num_classes, activation="softmax")(pooled)
  return keras.Model(inputs, outputs, name="transformer_block")


def regression_data(num_samples, seed, num_features=32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_samples, num_features)).astype(np.float32)
  w = rng.normal(size=(num_features, 1)).astype(np.float32) / math.sqrt(num_features)
  y = x @ w + 0.1 * rng.normal(size=(num_samples, 1)).astype(np.float32)
  return x, y.astype(np.float32)


def classification_data(num_samples, seed, input_shape, num_classes=10):
  """Gaussian inputs; labels from a fixed random linear map (learnable)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_samples,) + tuple(input_shape)).astype(np.float32)
  flat = x.reshape(num_samples, -1)
  v = rng.normal(size=(flat.shape[1], num_classes)).astype(np.float32)
  labels = np.argmax(flat @ v, axis=-1).astype(np.int32)
  return x, labels


def _adam_clipnorm():
  return keras.optimizers.Adam(learning_rate=1e-3, clipnorm=1.0)


def _adam():
  return keras.optimizers.Adam(learning_rate=1e-3)


SPECS = {
    "tiny": ModelSpec(
        name="tiny", description="MLP 32-64-64-1, batch 64, Adam(clipnorm=1), L2, mse/mae",
        batch_size=64, default_steps=100, build=build_tiny_mlp,
        data=lambda n, seed: regression_data(n, seed, 32), optimizer=_adam_clipnorm,
        loss="mse", metrics=("mae",)),
    "medium": ModelSpec(
        name="medium", description="MLP 256-1024-1024-10, batch 256, Adam, sparse CE/accuracy",
        batch_size=256, default_steps=30, build=build_medium_mlp,
        data=lambda n, seed: classification_data(n, seed, (256,)), optimizer=_adam,
        loss="sparse_categorical_crossentropy", metrics=("accuracy",)),
    "cnn": ModelSpec(
        name="cnn", description="CNN 32x32x3, conv16-pool-conv32-pool-dense10, batch 128",
        batch_size=128, default_steps=10, max_steps=10, build=build_small_cnn,
        data=lambda n, seed: classification_data(n, seed, (32, 32, 3)), optimizer=_adam,
        loss="sparse_categorical_crossentropy", metrics=("accuracy",)),
    "transformer": ModelSpec(
        name="transformer", description="Transformer block seq 32, d 64, 4 heads, FFN 128, batch 64",
        batch_size=64, default_steps=30, build=build_transformer,
        data=lambda n, seed: classification_data(n, seed, (32, 64)), optimizer=_adam,
        loss="sparse_categorical_crossentropy", metrics=("accuracy",)),
}

MODEL_NAMES = tuple(SPECS)


def build_compiled(spec, *, jit_compile=False, steps_per_execution=1, seed=0):
  """A fresh model with the spec's compile arguments; same weights for a seed."""
  keras.utils.set_random_seed(seed)
  model = spec.build()
  model.compile(optimizer=spec.optimizer(), loss=spec.loss, metrics=list(spec.metrics),
                jit_compile=jit_compile, steps_per_execution=steps_per_execution)
  return model


def make_data(spec, steps, seed=0):
  """Exactly `steps` full batches (no partial batch)."""
  return spec.data(steps * spec.batch_size, seed)


# -- FLOPs ---------------------------------------------------------------------
def _shape(tensor):
  return tuple(int(d) if d is not None else 1 for d in tensor.shape)


def _layer_macs(layer, inputs, outputs):
  """Multiply-adds of one sample through `layer`; 0 for element-wise layers."""
  if isinstance(layer, keras.layers.Dense):
    out = _shape(outputs[0])
    return math.prod(out[1:-1]) * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
  if isinstance(layer, keras.layers.Conv2D):
    out = _shape(outputs[0])
    kernel = layer.kernel.shape  # (kh, kw, cin / groups, cout)
    return math.prod(out[1:]) * int(kernel[0]) * int(kernel[1]) * int(kernel[2])
  if isinstance(layer, keras.layers.MultiHeadAttention):
    query = _shape(inputs[0])
    value = _shape(inputs[1]) if len(inputs) > 1 else query
    tq, tk = math.prod(query[1:-1]), math.prod(value[1:-1])
    d_q, heads, key_dim = (int(s) for s in layer._query_dense.kernel.shape)
    d_k = int(layer._key_dense.kernel.shape[0])
    d_v, _, value_dim = (int(s) for s in layer._value_dense.kernel.shape)
    out_kernel = layer._output_dense.kernel.shape  # (heads, value_dim, d_out)
    d_out = int(out_kernel[-1])
    return (tq * d_q * heads * key_dim + tk * d_k * heads * key_dim
            + tk * d_v * heads * value_dim + heads * tq * tk * key_dim
            + heads * tq * tk * value_dim + tq * heads * value_dim * d_out)
  return 0


def forward_macs_per_sample(model):
  """Sum of `_layer_macs` over the functional model's layer calls."""
  total = 0
  for layer in model.layers:
    for node in layer._inbound_nodes:
      total += _layer_macs(layer, list(node.input_tensors), list(node.output_tensors))
  return total


def train_flops_per_step(model, batch_size):
  """2 * MACs (forward) * 3 (forward + backward) * batch size."""
  return 2 * forward_macs_per_sample(model) * 3 * batch_size
