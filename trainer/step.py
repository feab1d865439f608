"""The train and test steps of `Model.fit` (Keras 3, TF backend), stage by stage.

One train step, in order:

    forward    y_pred = model(x, training=True)
    losses     L = sum_o lambda_o * C_o + sum_k sum(A_k)      (kernels.loss_reduction)
    scale      L * S  (mixed_float16 dynamic scale, or loss_scale_factor)
    gradients  dL*S / dw  (tape.gradient)
    transform  unscale -> finite check -> accumulate -> clip   (kernels.*)
    apply      weight decay -> all-reduce -> update rule -> EMA -> constraints
               -> iterations += 1 -> loss-scale update
    metrics    loss tracker, <output>_loss trackers, compiled metrics

Keras supplies the layers, the per-sample loss functions (`Loss.call`), the
metrics' `update_state` and the optimizer's `update_step`. Everything between
them is here, so each stage can be called and timed on its own:

    step = TrainStep(model)
    y_pred = step.forward(x)
    terms = step.losses(x, y, y_pred, sample_weight)

Every stage reads the replica count from the current `tf.distribute`
strategy, so the same code runs under one device or several.
"""

import dataclasses
from typing import Any, List, Optional

import keras
import tensorflow as tf
from keras import tree

import kernels
from trainer import structure
from trainer.config import StepConfig, unwrap_optimizer


def _keras_mask(tensor):
  return getattr(tensor, "_keras_mask", None)


def _num_replicas():
  return tf.distribute.get_strategy().num_replicas_in_sync


@dataclasses.dataclass
class LossTerms:
  """What the losses stage computed, for the scale and metrics stages.

  Attributes:
    total: the step loss L (scaled by 1/R per term under R replicas).
    output_losses: each output's compiled loss C_o before its `loss_weights`
      factor, in the order of the `<output>_loss` trackers.
    output_batch_weights: the weight each `<output>_loss` tracker gives this
      batch: the static batch size of that output, or 1 when unknown.
  """

  total: Any
  output_losses: List[Any]
  output_batch_weights: List[Any]


@dataclasses.dataclass
class TransformedGradients:
  """The transform stage's result.

  Attributes:
    grads: what an update applies: unscaled, averaged over the accumulation
      window when accumulating, then clipped.
    micro_grads: this micro-step's unscaled gradients (what the accumulator
      adds on a step that does not update).
    finite: scalar bool, all gradients finite (None without loss scaling).
    update_now: scalar bool, this micro-step applies an update (None without
      accumulation).
  """

  grads: List[Any]
  micro_grads: List[Any]
  finite: Optional[Any] = None
  update_now: Optional[Any] = None


class _Stages:
  """Stages shared by the train and test steps: forward, losses, metrics."""

  def __init__(self, model):
    if not getattr(model, "compiled", False):
      raise ValueError(
          f"`model` ({model.name!r}) is not compiled; call `model.compile(...)` "
          "before `trainer.fit` or `trainer.evaluate`.")
    self.model = model
    self._call_has_training_arg = getattr(model, "_call_has_training_arg", True)

  # -- forward ---------------------------------------------------------------
  def forward(self, x, training):
    """Reproduces `fit`'s forward pass: `model(x, training=...)`.

    Layers that call `add_loss` or update their own metrics do so here, at the
    pre-update weights; Dropout draws from its layer's seed generator, so the
    number of calls decides the mask, as under `fit`.
    """
    if self._call_has_training_arg:
      return self.model(x, training=training)
    return self.model(x)

  # -- losses ----------------------------------------------------------------
  def output_loss(self, loss_fn, y_true, y_pred, sample_weight):
    """One output's compiled loss C_o, from the loss object's per-sample values.

    Reproduces `keras.losses.Loss.__call__`: cast y_true and y_pred to the
    loss dtype (float32 even under mixed precision), call `loss_fn.call` for
    the per-sample values, then weight and reduce with
    `kernels.reduce_weighted_loss` (sum(w*l)/n, times 1/R).
    """
    in_mask = _keras_mask(y_pred)
    dtype = loss_fn.dtype
    y_pred = tree.map_structure(lambda t: tf.cast(t, dtype) if t.dtype != dtype else t, y_pred)
    y_true = tree.map_structure(
        lambda t: tf.cast(tf.convert_to_tensor(t), dtype)
        if tf.convert_to_tensor(t).dtype != dtype else t, y_true)
    values = loss_fn.call(y_true, y_pred)
    out_mask = _keras_mask(values)
    if in_mask is not None and out_mask is not None:
      mask = in_mask & out_mask
    else:
      mask = in_mask if in_mask is not None else out_mask
    values = tf.convert_to_tensor(values, dtype)
    return kernels.reduce_weighted_loss(
        values, sample_weight, mask, loss_fn.reduction, _num_replicas())

  def losses(self, x, y, y_pred, sample_weight):
    """The step loss L, as `Model.compute_loss` defines it.

    L = sum_o lambda_o * C_o + sum_k sum(A_k), where C_o is each output's
    compiled loss (`output_loss`), lambda_o its `loss_weights` entry, and A_k
    every entry of `model.losses`: the `add_loss` values of this forward pass
    and each weight regularizer evaluated now, at the pre-update weights.
    Under R replicas each C_o and each A_k carries a factor 1/R.
    """
    del x  # The compiled loss does not read the inputs.
    model = self.model
    compile_loss = model._compile_loss
    terms, output_losses, batch_weights = [], [], []
    if compile_loss is not None and y is not None:
      y_true = structure.align_targets(y, y_pred, getattr(model, "output_names", None))
      if not compile_loss.built:  # First use outside `trainer.fit`, which builds.
        compile_loss.build(y_true, y_pred)
      # The compiled loss resolved its (path, loss, weight) triples against the
      # structure it was built with; repack both sides into it.
      y_pred_s = y_pred
      y_true_s = y_true
      if tree.is_nested(y_pred) or tree.is_nested(y_true):
        y_pred_s = tree.pack_sequence_as(compile_loss._y_pred_build_structure,
                                         tree.flatten(y_pred))
        y_true_s = tree.pack_sequence_as(compile_loss._y_true_build_structure,
                                         tree.flatten(y_true))
      weighted = []
      for path, loss_fn, loss_weight, _ in compile_loss._flat_losses:
        y_t = structure.resolve_path(path, y_true_s)
        y_p = structure.resolve_path(path, y_pred_s)
        sw = sample_weight
        if sample_weight is not None and tree.is_nested(sample_weight):
          sw = structure.resolve_path(path, sample_weight)
        value = tf.cast(self.output_loss(loss_fn, y_t, y_p, sw), compile_loss.dtype)
        output_losses.append(value)
        batch_weights.append(kernels.static_batch_weight(tree.flatten(y_p)[0]))
        if loss_weight is not None:
          value = value * loss_weight
        weighted.append(value)
      if weighted:
        compiled = weighted[0]
        for value in weighted[1:]:
          compiled = compiled + value
        terms.append(compiled)
    for extra in model.losses:
      if not extra.dtype.is_floating:
        extra = tf.cast(extra, keras.config.floatx())
      terms.append(kernels.replica_scale(tf.reduce_sum(extra), _num_replicas()))
    if not terms:
      raise ValueError(
          f"No loss to compute for model {model.name!r}: `model.compile` got no "
          "`loss` (or `y` was not given) and the model has no `add_loss` terms "
          "or regularizers. Pass `loss=` to `model.compile`.")
    return LossTerms(kernels.sum_loss_terms(terms), output_losses, batch_weights)

  # -- metrics ---------------------------------------------------------------
  def metrics(self, x, y, y_pred, sample_weight, terms):
    """Updates every metric `fit` reports and returns their results.

    * `loss`: weighted by the dynamic batch size n_b (kernels.metric_updates);
      the value is L times R, undoing the per-replica 1/R.
    * `<output>_loss` (several compiled losses): C_o times R, weighted by the
      static batch size or 1.
    * compiled `metrics`: unweighted; `weighted_metrics`: with sample_weight.
    * metrics owned by layers were updated during the forward pass.
    """
    model = self.model
    replicas = _num_replicas()
    tracker = model._loss_tracker
    _assign_mean(tracker, kernels.weighted_mean_update(
        tracker.total, tracker.count, _unscale(terms.total, replicas),
        structure.batch_size_of(x)))
    if model._compile_loss is not None:
      for tracker, value, weight in zip(model._compile_loss.metrics,
                                        terms.output_losses, terms.output_batch_weights):
        _assign_mean(tracker, kernels.weighted_mean_update(
            tracker.total, tracker.count, _unscale(value, replicas), weight))
    compile_metrics = model._compile_metrics
    if compile_metrics is not None and y is not None:
      if not compile_metrics.built:  # First use outside `trainer.fit`, which builds.
        compile_metrics.build(y, y_pred)
      names = getattr(compile_metrics, "_resolved_output_names", None)
      ys = structure.flatten_outputs(y, names)
      preds = structure.flatten_outputs(y_pred, names)
      for metrics_list, y_t, y_p in zip(compile_metrics._flat_metrics, ys, preds):
        for metric in (metrics_list.metrics if metrics_list else []):
          metric.update_state(y_t, y_p)
      weights = [None] * len(ys)
      if sample_weight is not None:
        weights = structure.flatten_outputs(sample_weight, names)
        if len(weights) < len(ys):
          weights = [weights[0]] * len(ys)
      for metrics_list, y_t, y_p, sw in zip(compile_metrics._flat_weighted_metrics,
                                            ys, preds, weights):
        for metric in (metrics_list.metrics if metrics_list else []):
          metric.update_state(y_t, y_p, sample_weight=sw)
    return results(model)


def results(model):
  """`{name: value}` for every metric in `model.metrics`, as `fit` logs them."""
  logs = {}
  for metric in model.metrics:
    value = metric.result()
    if isinstance(value, dict):
      logs.update(value)
    else:
      logs[metric.name] = value
  return logs


def reset_metrics(model):
  for metric in model.metrics:
    metric.reset_state()


def _unscale(value, replicas):
  return value * tf.cast(replicas, value.dtype) if replicas > 1 else value


def _assign_mean(metric, total_and_count):
  total, count = total_and_count
  metric.total.assign(total)
  metric.count.assign(count)


def split_optimizer(model, unwrap):
  """(model.optimizer, its loss scaler or None, the optimizer with the update rule).

  `unwrap` is the Keras version's `unwrap_optimizer`. Fails without an optimizer.
  """
  loss_scaler, optimizer = unwrap(model.optimizer)
  if optimizer is None:
    raise ValueError(
        f"`model` ({model.name!r}) was compiled without an optimizer; "
        "`trainer.fit` needs `model.compile(optimizer=...)`.")
  return model.optimizer, loss_scaler, optimizer


class TestStep(_Stages):
  """`Model.evaluate`'s step: forward (inference mode), losses, metrics."""

  def __call__(self, data):
    x, y, sample_weight = structure.unpack_batch(data)
    y_pred = self.forward(x, training=False)
    terms = self.losses(x, y, y_pred, sample_weight)
    return self.metrics(x, y, y_pred, sample_weight, terms)


class TrainStep(_Stages):
  """`Model.fit`'s train step, one named stage per method.

  Args:
    model: a compiled Keras 3 model.
    config: a `StepConfig`; by default read from the model and its optimizer.
  """

  def __init__(self, model, config=None):
    super().__init__(model)
    self.config = config or StepConfig.from_model(model)
    self.model_optimizer, self.loss_scaler, self.optimizer = split_optimizer(
        model, unwrap_optimizer)

  @property
  def trainable_variables(self):
    return self.model.trainable_variables

  def __call__(self, data):
    x, y, sample_weight = structure.unpack_batch(data)
    with tf.GradientTape() as tape:
      y_pred = self.forward(x, training=True)
      terms = self.losses(x, y, y_pred, sample_weight)
      scaled = self.scale(terms.total)
    grads = self.gradients(tape, scaled)
    self.apply(self.transform(grads))
    return self.metrics(x, y, y_pred, sample_weight, terms)

  # -- scale -----------------------------------------------------------------
  def scale(self, loss):
    """Multiplies the loss by the loss scale before differentiation.

    Reproduces `optimizer.scale_loss`: the LossScaleOptimizer's current
    `dynamic_scale` (mixed_float16), else `loss_scale_factor`, else nothing.
    The reported loss is the unscaled L; the 1/R replica factor was already
    applied per term by the losses stage, exactly where Keras applies it.
    """
    if self.loss_scaler is not None:
      return kernels.scale_loss(loss, self.loss_scaler.dynamic_scale)
    if self.config.loss_scale_factor is not None:
      return kernels.scale_loss(loss, self.config.loss_scale_factor)
    return loss

  # -- gradients -------------------------------------------------------------
  def gradients(self, tape, scaled_loss):
    """`tape.gradient` of the scaled loss w.r.t. the trainable variables."""
    return tape.gradient(scaled_loss, self.trainable_variables)

  # -- transform -------------------------------------------------------------
  def transform(self, grads):
    """Gradient processing in the optimizer's order, as pure tensor math.

    1. unscale: divide by the dynamic loss scale or `loss_scale_factor`, and
       check that every gradient is finite (dynamic scaling only);
    2. accumulate: with `gradient_accumulation_steps` k, the update uses
       (g + acc) / k, so the averaging happens *before* clipping;
    3. clip: `clipnorm` per variable, `global_clipnorm`, or `clipvalue`, in
       `kernels.clipping` (the optimizer's own clipping never runs).
    Weight decay, which Keras applies after clipping, writes the variables, so
    it opens the apply stage.
    """
    cfg = self.config
    if not self.model.optimizer.built:  # First use outside `trainer.fit`, which builds.
      self.model.optimizer.build(self.trainable_variables)
    finite = None
    if self.loss_scaler is not None:
      finite = kernels.all_finite(grads)
      grads = kernels.unscale_gradients(grads, self.loss_scaler.dynamic_scale)
    elif cfg.loss_scale_factor is not None:
      grads = kernels.unscale_gradients(grads, cfg.loss_scale_factor)
    micro_grads = list(grads)
    update_now = None
    if cfg.gradient_accumulation_steps:
      steps = cfg.gradient_accumulation_steps
      update_now = kernels.is_update_step(self.optimizer._iterations, steps)
      grads = kernels.accumulated_mean(grads, self._accumulators(), steps)
    grads = kernels.clip_gradients(grads, clipnorm=cfg.clipnorm, clipvalue=cfg.clipvalue,
                                   global_clipnorm=cfg.global_clipnorm)
    return TransformedGradients(grads, micro_grads, finite, update_now)

  def _accumulators(self):
    opt = self.optimizer
    return [opt._accumulated_gradients[opt._get_variable_index(v)]
            for v in self.trainable_variables]

  # -- apply -----------------------------------------------------------------
  def apply(self, transformed):
    """Writes the update, reproducing `optimizer.apply_gradients` in order.

    With dynamic loss scaling the whole update is skipped when a gradient is
    not finite; the scale is halved instead (`iterations` does not move).
    Otherwise: weight decay, all-reduce over replicas (after clipping, so
    clipping is per replica, as in Keras 3), the optimizer's `update_step`,
    the EMA, variable constraints, `iterations += 1`, then the loss-scale
    growth counter.
    """
    if self.loss_scaler is None:
      self._apply_finite(transformed)
      return
    scaler = self.loss_scaler

    def skip():
      scaler.step_counter.assign(0)
      scaler.dynamic_scale.assign(scaler.dynamic_scale * 0.5)

    def step():
      self._apply_finite(transformed)
      scale, counter = kernels.next_loss_scale(
          scaler.dynamic_scale, scaler.step_counter, tf.constant(True),
          scaler.dynamic_growth_steps)
      scaler.dynamic_scale.assign(scale)
      scaler.step_counter.assign(counter)

    tf.cond(transformed.finite, step, skip)

  def _apply_finite(self, transformed):
    variables = self.trainable_variables
    pairs = [(g, v) for g, v in zip(transformed.grads, variables) if g is not None]
    if transformed.update_now is None:
      self._update(pairs)
    else:
      accumulators = self._accumulators()

      def update():
        self._update(pairs)
        for acc in accumulators:
          acc.assign(tf.zeros_like(acc))

      def accumulate():
        for acc, new in zip(accumulators, kernels.accumulate(
            transformed.micro_grads, accumulators)):
          if new is not None:
            acc.assign(new)

      tf.cond(transformed.update_now, update, accumulate)
    if self.config.use_ema:
      self._update_ema()
    for v in variables:
      if v.constraint is not None:
        v.assign(v.constraint(v))
    self.optimizer._iterations.assign_add(1)

  def _update(self, pairs):
    """Weight decay, cross-replica sum, then the optimizer's update rule."""
    opt = self.optimizer
    learning_rate = opt.learning_rate
    strategy = tf.distribute.get_strategy()
    if self.config.weight_decay is not None:
      for _, v in pairs:
        var = v.value
        if opt._use_weight_decay(var):
          lr = tf.cast(learning_rate, var.dtype)
          wd = tf.cast(self.config.weight_decay, var.dtype)
          strategy.extended.update(var, lambda w: w.assign_sub(w * wd * lr), group=False)
    grads = [g for g, _ in pairs]
    context = tf.distribute.get_replica_context()
    if context is not None and grads:
      # Summed across replicas after clipping; with one replica this is the
      # identity, and it also fixes the graph that grappler sees, as in fit.
      grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

    def update_all(distribution, grads_and_vars):
      for g, var in grads_and_vars:
        distribution.extended.update(
            var, lambda w, g: opt.update_step(g, w, learning_rate), args=(g,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        update_all, strategy, [(g, v.value) for g, (_, v) in zip(grads, pairs)])

  def _update_ema(self):
    opt, cfg = self.optimizer, self.config
    iterations = opt.iterations
    for var, average in zip(opt._trainable_variables, opt._model_variables_moving_average):
      if average is None:
        continue
      momentum = kernels.ema_momentum(iterations, cfg.ema_momentum, var.dtype)
      average.assign(kernels.ema_update(average, var, momentum))
    if cfg.ema_overwrite_frequency:
      overwrite = tf.equal((iterations + 1) % cfg.ema_overwrite_frequency, 0)

      def copy():
        for var, average in zip(opt._trainable_variables,
                                opt._model_variables_moving_average):
          if average is not None:
            var.assign(average)

      tf.cond(overwrite, copy, lambda: None)

  def finalize(self):
    """At the end of `fit`: copy the EMA into the weights (`use_ema`)."""
    if self.config.use_ema:
      opt = self.optimizer
      for var, average in zip(opt._trainable_variables, opt._model_variables_moving_average):
        if average is not None:
          var.assign(average)
