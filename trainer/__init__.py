"""tapefit's trainer: `Model.fit` as a readable, stage-by-stage GradientTape loop.

    history = trainer.fit(model, x, y, batch_size=32, epochs=3)
    logs = trainer.evaluate(model, x, y)

`TrainStep(model)` exposes the stages (forward, losses, scale, gradients,
transform, apply, metrics); `CompiledStep` turns a step into the compiled
multi-step function.
"""

from trainer.config import StepConfig
from trainer.functions import CompiledStep
from trainer.loop import evaluate, fit
from trainer.step import LossTerms, TestStep, TrainStep, TransformedGradients

__all__ = ["CompiledStep", "LossTerms", "StepConfig", "TestStep", "TrainStep",
           "TransformedGradients", "evaluate", "fit"]
