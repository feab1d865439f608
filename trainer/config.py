"""What a compiled model asks of the step: read once, frozen, checked up front.

`StepConfig.from_model` reads the compiled model and its optimizer (never
absl flags) and rejects what the step cannot run, with the argument, the
value received and what was expected in the message.
"""

import dataclasses
from typing import Any, Optional

import keras


def unwrap_optimizer(optimizer):
  """Returns (loss-scale optimizer or None, the optimizer with the update rule)."""
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return optimizer, optimizer.inner_optimizer
  return None, optimizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
  """The options that decide the train step's graph.

  Attributes:
    jit_compile: compile the one-step function with XLA.
    steps_per_execution: optimizer steps per call of the compiled function.
    run_eagerly: run the step without `tf.function` (debugging).
    clipnorm, clipvalue, global_clipnorm: the optimizer's clipping, applied
      by `kernels.clipping`; at most one is set.
    gradient_accumulation_steps: micro-steps per update, or None.
    use_ema, ema_momentum, ema_overwrite_frequency: the optimizer's weight EMA.
    weight_decay: decoupled weight decay, or None.
    loss_scale_factor: a fixed loss scale, or None.
    dynamic_loss_scale: True when the model's optimizer is a
      `LossScaleOptimizer` (mixed_float16).
  """

  jit_compile: bool = False
  steps_per_execution: int = 1
  run_eagerly: bool = False
  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None
  gradient_accumulation_steps: Optional[int] = None
  use_ema: bool = False
  ema_momentum: float = 0.99
  ema_overwrite_frequency: Optional[int] = None
  weight_decay: Any = None
  loss_scale_factor: Optional[float] = None
  dynamic_loss_scale: bool = False

  def __post_init__(self):
    if not isinstance(self.steps_per_execution, int) or isinstance(
        self.steps_per_execution, bool) or self.steps_per_execution < 1:
      raise ValueError(
          f"`steps_per_execution` ({self.steps_per_execution!r}) must be a "
          "positive integer.")
    if self.jit_compile not in (True, False):
      raise ValueError(
          f"`jit_compile` ({self.jit_compile!r}) must be True or False "
          "(\"auto\" is resolved by `model.compile`).")
    if self.jit_compile and self.run_eagerly:
      raise ValueError(
          "`jit_compile=True` conflicts with `run_eagerly=True`: XLA needs a "
          "traced function. Set one of them to False.")
    for name in ("clipnorm", "clipvalue", "global_clipnorm"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"`{name}` ({value!r}) must be a positive number or None.")
    clips = [n for n in ("clipnorm", "clipvalue", "global_clipnorm")
             if getattr(self, n) is not None]
    if len(clips) > 1:
      raise ValueError(
          f"Only one clipping kind may be set; received {', '.join(clips)}.")
    steps = self.gradient_accumulation_steps
    if steps is not None and (not isinstance(steps, int) or steps < 2):
      raise ValueError(
          f"`gradient_accumulation_steps` ({steps!r}) must be an integer >= 2 or None.")

  @classmethod
  def from_model(cls, model, *, jit_compile=None, steps_per_execution=None):
    """Reads the configuration of a compiled Keras 3 model.

    Keyword arguments that are not None override what `model.compile` set.
    """
    loss_scaler, optimizer = unwrap_optimizer(model.optimizer)

    def positive_or_none(value):
      return value if value is not None and value > 0 else None

    return cls(
        jit_compile=bool(model.jit_compile if jit_compile is None else jit_compile),
        steps_per_execution=(model.steps_per_execution
                             if steps_per_execution is None else steps_per_execution),
        run_eagerly=bool(model.run_eagerly),
        clipnorm=positive_or_none(optimizer.clipnorm),
        clipvalue=positive_or_none(optimizer.clipvalue),
        global_clipnorm=positive_or_none(optimizer.global_clipnorm),
        gradient_accumulation_steps=optimizer.gradient_accumulation_steps or None,
        use_ema=bool(optimizer.use_ema),
        ema_momentum=optimizer.ema_momentum,
        ema_overwrite_frequency=optimizer.ema_overwrite_frequency,
        weight_decay=optimizer.weight_decay,
        loss_scale_factor=optimizer.loss_scale_factor,
        dynamic_loss_scale=loss_scaler is not None,
    )
