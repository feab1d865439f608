"""The training loops being timed, one object per (model, variant, XLA).

    fit_default    model.fit, steps_per_execution=1 (what `compile` gives you)
    fit_best       model.fit, steps_per_execution=min(32, batches per epoch)
    tapefit_step   trainer.fit over a tf.data pipeline: the CompiledStep
                   iterator path, one step per compiled call, like fit
    tapefit_fused  trainer.fit on in-memory arrays with steps_per_execution =
                   batches per epoch: one compiled call (FusedArraySteps) per epoch
    tapefit_fused_device
                   the same with x and y passed as tf.Tensors already on the
                   device (copied once at setup, as the JAX peer's arrays are);
                   XLA on only

Each variant owns a fresh model built from the same seed. `warmup()` runs
whole epochs that are not recorded (tracing, XLA compilation, first-call
allocation); `epoch()` is the timed unit: exactly one epoch, `verbose=0`,
`shuffle=False`.

Why `tapefit_step` feeds a `tf.data.Dataset`: with in-memory arrays,
`trainer.fit` takes the fused path on in-memory arrays whatever
`steps_per_execution` is; the "tapefit per-step" variant feeds a tf.data
pipeline instead so that it measures the iterator path, one step per call, as
`fit` defaults do. `--per_step_feed=arrays` times the fused path at
steps_per_execution=1 instead.
"""

import dataclasses

import tensorflow as tf

import trainer
from benchmarks import models
from trainer.functions import resolve_xla_scope

VARIANTS = ("fit_default", "fit_best", "tapefit_step", "tapefit_fused", "tapefit_fused_device")
# Variants timed only with XLA on: the device-tensor row exists for the
# comparison with the JAX peer, which is XLA-only.
XLA_ONLY = ("tapefit_fused_device",)

VARIANT_LABELS = {
    "fit_default": "fit defaults",
    "fit_best": "fit best",
    "tapefit_step": "tapefit per-step",
    "tapefit_fused": "tapefit fused",
    "tapefit_fused_device": "tapefit fused, device tensors",
}


def label(kind, steps_per_execution, xla_scope=None):
  """The table label of a variant, with its steps_per_execution (and XLA scope)."""
  if kind.startswith("tapefit_fused"):
    scope = f", XLA scope {xla_scope}" if xla_scope else ""
    return f"{VARIANT_LABELS[kind]} (spe={steps_per_execution}, 1 call/epoch{scope})"
  return f"{VARIANT_LABELS[kind]} (spe={steps_per_execution})"

FIT_BEST_SPE = 32


@dataclasses.dataclass
class Variant:
  """One timed training loop.

  Attributes:
    spec: the ModelSpec.
    kind: one of VARIANTS.
    jit_compile: XLA on or off.
    steps: optimizer steps per epoch (batches).
    per_step_feed: "dataset" or "arrays", for tapefit_step.
    seed: weights and data seed.
    xla_scope: `trainer.fit`'s xla_scope, for tapefit_fused.
  """

  spec: models.ModelSpec
  kind: str
  jit_compile: bool
  steps: int
  per_step_feed: str = "dataset"
  seed: int = 0
  xla_scope: str = "auto"

  def __post_init__(self):
    if self.kind not in VARIANTS:
      raise ValueError(f"Unknown variant {self.kind!r}; expected one of {VARIANTS}.")
    self.x, self.y = models.make_data(self.spec, self.steps, self.seed)
    self.model = None
    self.dataset = None

  @property
  def name(self):
    return f"{self.kind}/{'xla' if self.jit_compile else 'noxla'}"

  @property
  def steps_per_execution(self):
    if self.kind == "fit_best":
      return min(FIT_BEST_SPE, self.steps)
    if self.kind.startswith("tapefit_fused"):
      return self.steps
    return 1

  def setup(self):
    """Builds and compiles the model (no step runs)."""
    fit_spe = self.steps_per_execution if self.kind.startswith("fit") else 1
    self.model = models.build_compiled(self.spec, jit_compile=self.jit_compile,
                                       steps_per_execution=fit_spe, seed=self.seed)
    if self.kind == "tapefit_step" and self.per_step_feed == "dataset":
      self.dataset = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(
          self.spec.batch_size).prefetch(tf.data.AUTOTUNE)
    if self.kind == "tapefit_fused_device":
      # Copied to the device once, as the JAX peer's arrays are (jax.device_put).
      self.x, self.y = tf.constant(self.x), tf.constant(self.y)

  def resolved_xla_scope(self):
    """"loop" or "step" for the fused variant under XLA; else None."""
    if not self.kind.startswith("tapefit_fused") or not self.jit_compile:
      return None
    return resolve_xla_scope(self.model, self.xla_scope)

  def epoch(self):
    """One epoch of training: the timed unit."""
    bs = self.spec.batch_size
    if self.kind.startswith("fit"):
      self.model.fit(self.x, self.y, batch_size=bs, epochs=1, verbose=0, shuffle=False)
    elif self.dataset is not None:
      trainer.fit(self.model, self.dataset, epochs=1, verbose=0, shuffle=False,
                  jit_compile=self.jit_compile, steps_per_execution=1)
    else:
      trainer.fit(self.model, self.x, self.y, batch_size=bs, epochs=1, verbose=0,
                  shuffle=False, jit_compile=self.jit_compile,
                  steps_per_execution=self.steps_per_execution, xla_scope=self.xla_scope)

  def release(self):
    self.model = None
    self.dataset = None
