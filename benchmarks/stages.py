"""Where the time of one fused XLA train step goes, stage by stage.

Two measurements per model, all interleaved round-robin (benchmarks.timing):

ALONE: each stage in its own `tf.function(jit_compile=True)` that runs it
`steps` times in a `tf.while_loop`, on batch i of device-resident data (so XLA
cannot hoist the work out of the loop):

    forward      y_pred = step.forward(x_i)                  (sum of y_pred kept)
    losses       step.losses(x_i, y_i, y_pred_i)              (y_pred precomputed)
    gradients    forward + losses + tape.gradient             (sum of grads kept)
    clip_*       kernels.clip_each_by_norm / clip_by_value / clip_by_global_norm
                 on loop-carried gradients (the output feeds the next iteration)
    apply        step.apply on fixed gradients times (1 + 1e-9 i) (one fused
                 multiply, so the update's inputs vary per iteration)
    metrics      step.metrics: loss tracker + compiled metrics (terms precomputed)

BY DIFFERENCE: the full fused step (a `tf.while_loop` over `TrainStep`, the
same structure as `trainer.functions.FusedArraySteps`, XLA over the whole loop)
minus the same loop with one stage removed by subclassing `TrainStep`:

    no_clip          StepConfig with clipnorm / clipvalue / global_clipnorm None
    no_metrics       `metrics` returns {} without updating anything
    no_clip_metrics  both (the "clipping + metrics + loss tracker" share)
    no_apply         `apply` only adds sum(g) to a sink variable (keeps the
                     gradients live, so XLA does not drop the backward pass)

Every loop is also called with 0 iterations in each round; that time (the
fixed cost of one call: dispatch, launch, reading the result) is subtracted
round by round, so the per-step numbers are the loop body's cost. A stage's
cost by difference is the median over rounds of the paired difference
(full - ablated, both from the same round).

Also timed, for reference: `trainer.fit` itself on the fused path (one call
per epoch), which adds `fit`'s per-epoch work (Python, callbacks, copying the
arrays to the device, the 0-iteration overhead) to the same steps.
"""

import dataclasses
from typing import Callable, Dict, Optional

import tensorflow as tf

import kernels
import trainer
from benchmarks import models, timing
from trainer.step import LossTerms, TransformedGradients, results

STAGE_MODELS = ("tiny", "medium")

EMPTY = "@0"  # Suffix of the 0-iteration call of each loop.
CLIP_NORM = 1.0
CLIP_VALUE = 0.01


class NoMetricsStep(trainer.TrainStep):
  """The train step without the metrics stage (no tracker or metric update)."""

  def metrics(self, x, y, y_pred, sample_weight, terms):
    del x, y, y_pred, sample_weight, terms
    return {}


class NoApplyStep(trainer.TrainStep):
  """The train step without the optimizer update; the gradients stay live."""

  def __init__(self, model, config=None, sink=None):
    super().__init__(model, config)
    self.sink = sink

  def apply(self, transformed):
    self.sink.assign_add(tf.add_n([tf.reduce_sum(g) for g in transformed.grads
                                   if g is not None]))


class NoApplyNoMetricsStep(NoApplyStep):

  def metrics(self, x, y, y_pred, sample_weight, terms):
    del x, y, y_pred, sample_weight, terms
    return {}


def _no_clip(config):
  return dataclasses.replace(config, clipnorm=None, clipvalue=None, global_clipnorm=None)


def _has_clip(config):
  return any(getattr(config, n) is not None
             for n in ("clipnorm", "clipvalue", "global_clipnorm"))


def _loop(body, count, carry):
  """tf.while_loop of `body(i, carry) -> carry` for i in 0..count-1."""
  def loop_body(i, c):
    return i + 1, body(i, c)
  return tf.while_loop(lambda i, c: i < count, loop_body, (tf.constant(0), carry))[1]


def _sum_all(tensors):
  return tf.add_n([tf.reduce_sum(t) for t in tensors if t is not None])


class _FusedLoop:
  """`count` train steps over batches i = 0.. of pre-batched data, in one while loop.

  The structure of `trainer.functions.FusedArraySteps`' loop, for any step
  object. (A class, not a closure: tf.function keys its retracing warning on
  the Python code object, and every instance here is meant to trace once.)
  """

  def __init__(self, step, model, xs, ys):
    self.step, self.model, self.xs, self.ys = step, model, xs, ys

  def __call__(self, count):
    def body(i):
      self.step((tf.gather(self.xs, i), tf.gather(self.ys, i)))
      return i + 1
    tf.while_loop(lambda i: i < count, body, (tf.constant(0),))
    return results(self.model)


class StageBench:
  """The compiled loops of one model; each callable runs one epoch of `steps`."""

  def __init__(self, spec, steps, seed=0):
    self.spec = spec
    self.steps = steps
    bs = spec.batch_size
    self.model = models.build_compiled(spec, jit_compile=True, steps_per_execution=steps,
                                       seed=seed)
    self.x, self.y = models.make_data(spec, steps, seed)
    self.sink = tf.Variable(0.0, trainable=False, name="stage_sink")
    self.functions = {}
    self.groups = {}
    model = self.model
    # trainer.fit's fused path (one call per epoch): builds the model, the
    # compiled loss/metrics and the optimizer before anything is traced here.
    self.functions["trainer_fit_fused"] = self._trainer_fit
    self.build_seconds = timing.time_call(self._trainer_fit)

    def batched(a):
      return tf.constant(a.reshape((steps, bs) + a.shape[1:]))

    self.xs, self.ys = batched(self.x), batched(self.y)
    self.step = trainer.TrainStep(model)
    config = self.step.config
    self.has_clip = _has_clip(config)
    preds, totals, outs = [], [], []
    for i in range(steps):
      y_pred = self.step.forward(self.xs[i], training=True)
      terms = self.step.losses(self.xs[i], self.ys[i], y_pred, None)
      preds.append(y_pred)
      totals.append(terms.total)
      outs.append(tf.stack(terms.output_losses))
    self.preds, self.totals, self.outs = tf.stack(preds), tf.stack(totals), tf.stack(outs)
    self.batch_weights = terms.output_batch_weights
    with tf.GradientTape() as tape:
      y_pred = self.step.forward(self.xs[0], training=True)
      loss = self.step.losses(self.xs[0], self.ys[0], y_pred, None).total
    self.grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    # -- alone ---------------------------------------------------------------
    self._add_alone("forward", self._forward)
    self._add_alone("losses", self._losses)
    self._add_alone("gradients", self._gradients)
    self._add_alone("clip_norm", self._clip(lambda g: kernels.clip_each_by_norm(g, CLIP_NORM)))
    self._add_alone("clip_value", self._clip(lambda g: kernels.clip_by_value(g, CLIP_VALUE)))
    self._add_alone("clip_global_norm",
                    self._clip(lambda g: kernels.clip_by_global_norm(g, CLIP_NORM)))
    self._add_alone("apply", self._apply)
    self._add_alone("metrics", self._metrics)
    # -- by difference -------------------------------------------------------
    self._add_fused("full", self.step)
    if self.has_clip:
      self._add_fused("no_clip", trainer.TrainStep(model, _no_clip(config)))
      self._add_fused("no_clip_metrics", NoMetricsStep(model, _no_clip(config)))
    self._add_fused("no_metrics", NoMetricsStep(model, config))
    self._add_fused("no_apply", NoApplyStep(model, config, sink=self.sink))

  # -- the timed callables ---------------------------------------------------
  def _trainer_fit(self):
    trainer.fit(self.model, self.x, self.y, batch_size=self.spec.batch_size, epochs=1,
                verbose=0, shuffle=False, jit_compile=True, steps_per_execution=self.steps)

  def _add_loop(self, name, group, compiled):
    """Registers `name` (steps iterations) and `name@0` (the same call, 0 iterations).

    The 0-iteration call is the fixed cost of one call (dispatch, launch,
    reading the result back); run_stages subtracts it, round by round, so
    the per-step numbers are the loop body's cost alone.
    """
    full, empty = tf.constant(self.steps), tf.constant(0)
    self.groups[name] = group
    self.functions[name] = lambda: tf.nest.map_structure(lambda t: t.numpy(), compiled(full))
    self.functions[name + EMPTY] = lambda: tf.nest.map_structure(lambda t: t.numpy(),
                                                                 compiled(empty))

  def _add_alone(self, name, body):
    self._add_loop(name, "alone", tf.function(body, jit_compile=True, autograph=False))

  def _add_fused(self, name, step):
    self._add_loop(name, "fused", tf.function(
        _FusedLoop(step, self.model, self.xs, self.ys), jit_compile=True, autograph=False))

  def _forward(self, count):
    def body(i, acc):
      return acc + tf.reduce_sum(self.step.forward(tf.gather(self.xs, i), training=True))
    return _loop(body, count, tf.constant(0.0))

  def _losses(self, count):
    def body(i, acc):
      terms = self.step.losses(tf.gather(self.xs, i), tf.gather(self.ys, i),
                               tf.gather(self.preds, i), None)
      return acc + terms.total
    return _loop(body, count, tf.constant(0.0))

  def _gradients(self, count):
    def body(i, acc):
      x, y = tf.gather(self.xs, i), tf.gather(self.ys, i)
      with tf.GradientTape() as tape:
        y_pred = self.step.forward(x, training=True)
        terms = self.step.losses(x, y, y_pred, None)
        scaled = self.step.scale(terms.total)
      return acc + _sum_all(self.step.gradients(tape, scaled))
    return _loop(body, count, tf.constant(0.0))

  def _clip(self, clip):
    def run(count):
      out = _loop(lambda i, grads: list(clip(grads)), count, list(self.grads))
      return _sum_all(out)
    return run

  def _apply(self, count):
    def body(i, acc):
      factor = 1.0 + 1e-9 * tf.cast(i, tf.float32)
      grads = [g * factor for g in self.grads]
      self.step.apply(TransformedGradients(grads, grads))
      return acc + 1.0
    return _loop(body, count, tf.constant(0.0))

  def _metrics(self, count):
    def body(i, acc):
      outs = tf.gather(self.outs, i)
      terms = LossTerms(tf.gather(self.totals, i),
                        [outs[k] for k in range(len(self.batch_weights))],
                        self.batch_weights)
      self.step.metrics(tf.gather(self.xs, i), tf.gather(self.ys, i),
                        tf.gather(self.preds, i), None, terms)
      return acc + 1.0
    return _loop(body, count, tf.constant(0.0))


def run_stages(spec, steps, repeats, warmup=1, *, min_sample_s=0.0,
               log: Optional[Callable[[str], None]] = print) -> Dict:
  """Times every stage of `spec`'s fused XLA step; returns raw seconds and summaries.

  A stage's cost by difference is the median over rounds of the paired
  difference (full loop - ablated loop, both timed in the same round), which
  cancels noise that drifts slower than a round; its spread is the IQR of
  those paired differences. `min_sample_s`: each sample repeats a loop
  back to back until it lasts about this long (benchmarks.timing).
  """
  log = log or (lambda _: None)
  log(f"[stages {spec.name}] building and compiling the stage loops (XLA, "
      f"{steps} steps per call)")
  bench = StageBench(spec, steps)
  log(f"[stages {spec.name}] trainer.fit fused, first epoch (builds, compiles): "
      f"{bench.build_seconds:.1f} s")
  compile_seconds = {}
  for name, fn in bench.functions.items():
    seconds = [timing.time_call(fn) for _ in range(max(1, warmup))]
    compile_seconds[name] = seconds[0]
    if not name.endswith(EMPTY):
      log(f"[stages {spec.name}] warm-up {name}: {seconds[0]:.1f} s")

  def progress(round_index, this_round):
    full = this_round.get("full")
    text = "" if full is None else f" (full fused step {full / steps * 1e6:.0f} us/step)"
    log(f"[stages {spec.name}] round {round_index + 1}/{repeats}{text}")

  calls = {name: timing.calls_per_sample(fn, min_sample_s)
           for name, fn in bench.functions.items()}
  # No budget: every loop runs every round, so the differences stay paired.
  samples = timing.interleaved(bench.functions, repeats, progress=progress, calls=calls)
  # Per round: (time of `steps` iterations - time of 0 iterations) / steps.
  per_round = {"trainer_fit_fused": [s / steps * 1e6 for s in samples["trainer_fit_fused"]]}
  for name in bench.groups:
    per_round[name] = [(s - s0) / steps * 1e6
                       for s, s0 in zip(samples[name], samples[name + EMPTY])]
  per_step = {name: timing.summarize(values) for name, values in per_round.items()}
  call_overhead_us = {name: timing.summarize([s * 1e6 for s in samples[name + EMPTY]]).median
                      for name in bench.groups}
  full = per_step["full"].median
  rows = []
  for name in bench.functions:
    if bench.groups.get(name) != "alone":
      continue
    stats = per_step[name]
    rows.append({"stage": name, "method": "alone", "us": stats.median,
                 "pct": 100.0 * stats.median / full, "q1": stats.q1, "q3": stats.q3})

  def paired(ablated):
    return timing.summarize([f - a for f, a in zip(per_round["full"], per_round[ablated])])

  diffs = {"clipping": "no_clip", "metrics (loss tracker + compiled metrics)": "no_metrics",
           "clipping + metrics + loss tracker": "no_clip_metrics",
           "apply (optimizer update)": "no_apply"}
  for label, ablated in diffs.items():
    if ablated not in per_round:
      rows.append({"stage": label, "method": "difference", "us": None, "pct": None,
                   "note": "no clipping configured"})
      continue
    stats = paired(ablated)
    rows.append({"stage": label, "method": "difference", "us": stats.median,
                 "pct": 100.0 * stats.median / full, "q1": stats.q1, "q3": stats.q3,
                 "ablated": ablated})
  target = paired("no_clip_metrics" if "no_clip_metrics" in per_round else "no_metrics")
  clip_stage = _CLIP_STAGE.get(_clip_kind(spec) or "", None)
  alone_sum = per_step["metrics"].median + (
      per_step[clip_stage].median if clip_stage else 0.0)
  del bench
  return {
      "model": spec.name,
      "steps": steps,
      "clip": _clip_kind(spec),
      "clip_stage_alone": clip_stage,
      "full_us": full,
      "trainer_fit_fused_us": per_step["trainer_fit_fused"].median,
      "per_step_us": {k: v.as_dict() for k, v in per_step.items()},
      "raw_seconds": samples,
      "call_overhead_us": call_overhead_us,
      "compile_seconds": compile_seconds,
      "rows": rows,
      "clip_metrics_pct_difference": 100.0 * target.median / full,
      "clip_metrics_pct_difference_iqr": [100.0 * target.q1 / full, 100.0 * target.q3 / full],
      "clip_metrics_pct_alone": 100.0 * alone_sum / full,
  }


_CLIP_STAGE = {"clipnorm": "clip_norm", "clipvalue": "clip_value",
               "global_clipnorm": "clip_global_norm"}


def _clip_kind(spec):
  """The clipping the spec's optimizer is configured with ("clipnorm", ...), or None."""
  optimizer = spec.optimizer()
  for name in _CLIP_STAGE:
    if getattr(optimizer, name, None):
      return name
  return None
