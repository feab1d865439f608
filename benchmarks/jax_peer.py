"""The JAX + optax peer: the same MLPs trained with `lax.scan` over the epoch.

Optional: jax and optax are imported inside `load()`; when they are missing
the benchmark prints why and goes on without this row.

The peer matches the Keras models layer for layer: Glorot-uniform kernels,
zero biases, ReLU hidden layers; the tiny MLP's loss is mse + 1e-4 * sum(W1^2)
with per-variable clipnorm 1.0 before Adam, the medium MLP's is sparse
categorical cross-entropy on the softmax output (computed as log_softmax of
the logits). Adam(1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7). It also
keeps the same running means the Keras metrics keep (loss weighted by batch
size, mae or accuracy), so it does the work `fit` reports.

One epoch is one jitted call: `lax.scan` over the pre-batched arrays
(steps, batch, features), already on the device; the timed unit is that call
plus `block_until_ready`.

`Peer(..., bare=True)` drops the clipping and the running means (the loss is
still computed, for its gradient): the difference to the full peer is what
XLA itself spends on the work tapefit's clipping + metrics share measures.
"""

import dataclasses
from typing import Optional, Tuple

SKIP_MESSAGE = "skipped: jax/optax not installed (pip install -e '.[bench]', or make bench)"


@dataclasses.dataclass(frozen=True)
class PeerSpec:
  """The architecture and training setup of a peer MLP."""

  layer_sizes: Tuple[int, ...]
  task: str                      # "regression" (mse, mae) or "classification"
  clipnorm: Optional[float] = None
  l2_first_kernel: float = 0.0
  learning_rate: float = 1e-3


PEERS = {
    "tiny": PeerSpec(layer_sizes=(32, 64, 64, 1), task="regression", clipnorm=1.0,
                     l2_first_kernel=1e-4),
    "medium": PeerSpec(layer_sizes=(256, 1024, 1024, 10), task="classification"),
}


def load():
  """(jax, optax) or raises ImportError with the reason."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return jax, optax


def available():
  """(True, None) when jax and optax import; else (False, the reason)."""
  try:
    load()
  except Exception as error:  # pylint: disable=broad-except  (ImportError, or a broken install)
    return False, f"{type(error).__name__}: {error}"
  return True, None


class Peer:
  """One model's jitted epoch; `epoch()` is the timed unit.

  Args:
    peer: a PeerSpec.
    x, y: NumPy arrays with steps * batch_size samples.
    batch_size: samples per step.
    seed: initialisation seed.
    bare: no clipping and no running loss/metric means.
  """

  def __init__(self, peer, x, y, batch_size, seed=0, bare=False):
    jax, optax = load()
    jnp = jax.numpy
    self.jax = jax
    steps = x.shape[0] // batch_size
    self.steps = steps
    xs = x[: steps * batch_size].reshape((steps, batch_size) + x.shape[1:])
    ys = y[: steps * batch_size].reshape((steps, batch_size) + y.shape[1:])
    self.xs = jax.device_put(jnp.asarray(xs))
    self.ys = jax.device_put(jnp.asarray(ys))

    key = jax.random.PRNGKey(seed)
    params = []
    sizes = peer.layer_sizes
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
      key, sub = jax.random.split(key)
      limit = (6.0 / (fan_in + fan_out)) ** 0.5
      params.append({
          "kernel": jax.random.uniform(sub, (fan_in, fan_out), jnp.float32, -limit, limit),
          "bias": jnp.zeros((fan_out,), jnp.float32),
      })

    def logits_fn(params, inputs):
      hidden = inputs
      for layer in params[:-1]:
        hidden = jax.nn.relu(hidden @ layer["kernel"] + layer["bias"])
      return hidden @ params[-1]["kernel"] + params[-1]["bias"]

    regression = peer.task == "regression"

    def loss_fn(params, inputs, targets):
      out = logits_fn(params, inputs)
      if regression:
        loss = jnp.mean(jnp.mean(jnp.square(targets - out), axis=-1))
        metric = jnp.sum(jnp.mean(jnp.abs(targets - out), axis=-1))       # mae, summed
      else:
        log_probs = jax.nn.log_softmax(out, axis=-1)
        labels = targets.astype(jnp.int32)
        picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
        loss = -jnp.mean(picked)
        metric = jnp.sum((jnp.argmax(out, axis=-1) == labels).astype(jnp.float32))
      if peer.l2_first_kernel:
        loss = loss + peer.l2_first_kernel * jnp.sum(jnp.square(params[0]["kernel"]))
      return loss, metric

    transforms = []
    if peer.clipnorm and not bare:
      clip = float(peer.clipnorm)

      def clip_each(updates, params=None):
        del params

        def one(g):
          norm = jnp.sqrt(jnp.sum(g * g))
          return g * clip / jnp.maximum(norm, clip)

        return jax.tree_util.tree_map(one, updates)

      transforms.append(optax.stateless(clip_each))
    transforms.append(optax.adam(peer.learning_rate, b1=0.9, b2=0.999, eps=1e-7))
    tx = optax.chain(*transforms)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    batch = float(batch_size)

    def bare_epoch(params, opt_state, xs, ys):
      def body(carry, data):
        params, opt_state = carry
        inputs, targets = data
        grads = jax.grad(lambda p: loss_fn(p, inputs, targets)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

      (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), (xs, ys))
      zero = jnp.zeros((), jnp.float32)
      return params, opt_state, zero, zero

    def train_epoch(params, opt_state, xs, ys):
      def body(carry, data):
        params, opt_state, loss_total, metric_total, count = carry
        inputs, targets = data
        (loss, metric), grads = grad_fn(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, loss_total + loss * batch, metric_total + metric,
                count + batch), None

      zero = jnp.zeros((), jnp.float32)
      carry, _ = jax.lax.scan(body, (params, opt_state, zero, zero, zero), (xs, ys))
      params, opt_state, loss_total, metric_total, count = carry
      return params, opt_state, loss_total / count, metric_total / count

    self.params = params
    self.opt_state = tx.init(params)
    self.train_epoch = jax.jit(bare_epoch if bare else train_epoch)
    self.logs = None

  def epoch(self):
    params, opt_state, loss, metric = self.train_epoch(self.params, self.opt_state,
                                                       self.xs, self.ys)
    self.jax.block_until_ready((params, opt_state, loss, metric))
    self.params, self.opt_state, self.logs = params, opt_state, (loss, metric)
