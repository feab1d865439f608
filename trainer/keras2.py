"""The train and test steps of `tf_keras.Model.fit` (Keras 2), stage by stage.

Same stage names as the Keras 3 step (`trainer.step`), with Keras 2's rules:

    forward    y_pred = model(x, training=True)
    losses     gradient loss  L = add_n(lambda_o * C_o (x 1/R) ..., add_n(A_k) (x 1/R))
               tracked loss   T = add_n(lambda_o * C_o ..., add_n(A_k))
                                                       (kernels.keras2_reduction)
    scale      L * S  (LossScaleOptimizer, mixed_float16)
    gradients  dL*S / dw  (tape.gradient)
    transform  unscale (x 1/S) -> all-reduce SUM -> finite check -> clip
                                                       (kernels.keras2_clipping)
    apply      [loss-scale update] -> learning-rate schedule -> weight decay
               -> update rule -> EMA (+ overwrite) -> iterations += 1
               -> constraints
    metrics    loss tracker, <output>_loss trackers, compiled metrics

What differs from Keras 3, and is reproduced here:

  * The `loss` tracker is weighted by n_b = tf.shape(y_true)[0] of the first
    compiled output, and only when a compiled loss ran; with `loss=None` and
    only `add_loss` / regularizers every batch counts once (a per-batch mean,
    like a scalar `add_metric`). `<output>_loss` trackers use the same dynamic
    n_b (Keras 3 uses the static batch dimension or 1).
  * `add_loss` and regularization terms are summed first, then added to the
    compiled terms with `tf.add_n`; they enter the tracked loss unscaled and
    the gradient loss scaled by 1/R.
  * Gradients are all-reduced *before* clipping (Keras 3 clips per replica).
  * EMA: average <- m * average + (1 - m) * w with m the Python float
    `ema_momentum` from the first step on (Keras 3 uses m = 0 on step one);
    constraints run after `iterations += 1`.
  * mixed_float16: the loss scale is updated before the update is applied,
    and a skipped step still increments `iterations`.

Keras supplies the layers, the per-sample loss functions (`Loss.call`), the
metrics' `update_state`, the structure mapping of targets to outputs
(`_conform_to_outputs`) and each optimizer's `update_step`.
"""

import dataclasses
from typing import Any, List, Optional

import tensorflow as tf
import tf_keras

import kernels
from kernels import keras2_clipping, keras2_loss_scaling, keras2_reduction
from trainer import semantics as semantics_module
from trainer import step as step_module
from trainer import structure
from trainer.config import StepConfig
from trainer.step import TransformedGradients

_LossScaleOptimizer = tf_keras.mixed_precision.LossScaleOptimizer
_NewOptimizer = tf_keras.optimizers.Optimizer
_Schedule = tf_keras.optimizers.schedules.LearningRateSchedule


def _num_replicas():
  return tf.distribute.get_strategy().num_replicas_in_sync


def _mask(tensor):
  return getattr(tensor, "_keras_mask", None)


def unwrap_optimizer(optimizer):
  """Returns (tf_keras loss-scale optimizer or None, the optimizer with the update rule)."""
  if isinstance(optimizer, _LossScaleOptimizer):
    return optimizer, optimizer.inner_optimizer
  return None, optimizer


@dataclasses.dataclass
class Keras2LossTerms:
  """What the Keras 2 losses stage computed, for the scale and metrics stages.

  Attributes:
    total: the gradient loss L (compiled terms and the summed extras each
      times 1/R under R replicas).
    tracked: what the `loss` tracker records: the same sum with the extras
      unscaled (and `"sum"`-reduced compiled terms times R).
    batch_weight: the tracker weight, tf.shape(y_true)[0] of the first
      compiled output, or None when no compiled loss ran (weight 1).
    output_losses: (tracker, value) for each compiled output that has a
      `<output>_loss` tracker; value before `loss_weights`.
  """

  total: Any
  tracked: Any
  batch_weight: Optional[Any]
  output_losses: List[Any]


class _Stages:
  """Stages shared by the Keras 2 train and test steps: forward, losses, metrics."""

  def __init__(self, model):
    if not getattr(model, "_is_compiled", False):
      raise ValueError(
          f"`model` ({model.name!r}) is not compiled; call `model.compile(...)` "
          "before `trainer.fit` or `trainer.evaluate`.")
    self.model = model

  # -- forward ---------------------------------------------------------------
  def forward(self, x, training):
    """Reproduces tf_keras `train_step` / `test_step`'s `self(x, training=...)`.

    Layers' `add_loss` values (collected for this call only) and `add_metric`
    updates happen here, at the pre-update weights.
    """
    return self.model(x, training=training)

  # -- losses ----------------------------------------------------------------
  def output_loss(self, loss_fn, y_true, y_pred, sample_weight):
    """One output's compiled loss C_o, from the loss object's per-sample values.

    Reproduces tf_keras `LossesContainer.__call__`'s per-output preparation
    (`match_dtype_and_rank`: targets cast to the prediction's dtype; the
    prediction's mask folded into the weights) and `Loss.__call__`
    (`loss_fn.call`, the loss's own mask with size/valid up-weighting,
    `compute_weighted_loss`: sum(w * l) / size(l), weight 1.0 when absent).
    The loss is computed in the prediction's dtype (float16 under
    mixed_float16), as in tf_keras.
    """
    y_true, y_pred, sample_weight = keras2_reduction.match_dtype_and_rank(
        y_true, y_pred, sample_weight)
    sample_weight = keras2_reduction.apply_mask(y_pred, sample_weight, _mask(y_pred))
    values = loss_fn.call(y_true, y_pred)
    in_mask, out_mask = _mask(y_pred), _mask(values)
    if in_mask is not None and out_mask is not None:
      mask = in_mask & out_mask
    else:
      mask = in_mask if in_mask is not None else out_mask
    reduction = loss_fn.reduction
    sample_weight = keras2_reduction.apply_valid_mask(values, sample_weight, mask, reduction)
    return keras2_reduction.compute_weighted_loss(values, sample_weight, reduction)

  def losses(self, x, y, y_pred, sample_weight):
    """Both losses of tf_keras `compute_loss` (`LossesContainer.__call__`).

    For each output with a target and a loss: C_o (`output_loss`); the
    tracked value is C_o (times R for a `"sum"` reduction), recorded for its
    `<output>_loss` tracker before `loss_weights`; both values are then
    multiplied by lambda_o, and the gradient value of a mean-reduced loss by
    1/R. The extras A_k (`model.losses`: this pass's `add_loss` values and
    the regularizers at the pre-update weights) are summed with `add_n`;
    that sum enters the tracked loss as is and the gradient loss times 1/R.
    Both totals are one `add_n` over the terms.

    Returns None when there is no term at all (what `test_step` tolerates).
    """
    del x  # The compiled loss does not read the inputs.
    model = self.model
    container = model.compiled_loss
    replicas = _num_replicas()
    grad_terms, tracked_terms, output_losses = [], [], []
    batch_weight = None
    if container is not None:
      if not container.built:  # First use outside `trainer.fit`, which builds.
        container.build(y_pred)
      y_true = container._conform_to_outputs(y_pred, y)
      weights = container._conform_to_outputs(y_pred, sample_weight)
      for y_t, y_p, sw, loss_fn, loss_weight, tracker in zip(
          tf.nest.flatten(y_true), tf.nest.flatten(y_pred), tf.nest.flatten(weights),
          container._losses, container._loss_weights, container._per_output_metrics):
        if y_t is None or loss_fn is None:
          continue
        value = self.output_loss(loss_fn, y_t, y_p, sw)
        tracked = value
        if loss_fn.reduction == keras2_reduction.SUM and replicas > 1:
          tracked = tracked * replicas
        if batch_weight is None:
          batch_weight = (y_t.nrows() if isinstance(y_t, tf.RaggedTensor)
                          else tf.shape(y_t)[0])
        if tracker is not None:
          output_losses.append((tracker, tracked))
        if loss_weight is not None:
          value = value * loss_weight
          tracked = tracked * loss_weight
        if loss_fn.reduction in (keras2_reduction.SUM_OVER_BATCH_SIZE, keras2_reduction.AUTO):
          value = kernels.replica_scale(value, replicas)
        grad_terms.append(value)
        tracked_terms.append(tracked)
    extras = list(model.losses)
    if extras:
      extra = keras2_reduction.add_terms(extras)
      tracked_terms.append(extra)
      grad_terms.append(kernels.replica_scale(extra, replicas))
    if not grad_terms:
      return None
    return Keras2LossTerms(
        total=keras2_reduction.add_terms(grad_terms),
        tracked=keras2_reduction.add_terms(tracked_terms),
        batch_weight=batch_weight, output_losses=output_losses)

  # -- metrics ---------------------------------------------------------------
  def metrics(self, x, y, y_pred, sample_weight, terms):
    """Updates every metric tf_keras `fit` reports and returns their results.

    * `loss`: total += T * n_b, count += n_b with n_b the dynamic batch size
      of the first compiled output's target; with no compiled loss n_b = 1
      (kernels.weighted_mean_update, tf_keras `Mean.update_state`).
    * `<output>_loss` (several outputs): C_o (before lambda_o), same n_b.
    * compiled `metrics`: sample weight = the prediction's mask (usually
      None); `weighted_metrics`: the sample weight times that mask, after
      `match_dtype_and_rank` (tf_keras `MetricsContainer.update_state`).
    * metrics owned by layers (`add_metric`) were updated in the forward pass.
    """
    del x
    model = self.model
    if terms is not None:
      weight = 1 if terms.batch_weight is None else terms.batch_weight
      _assign_mean(model.compiled_loss._total_loss_mean, terms.tracked, weight)
      for tracker, value in terms.output_losses:
        _assign_mean(tracker, value, weight)
    container = model.compiled_metrics
    if container is not None:
      y_true = container._conform_to_outputs(y_pred, y)
      weights = container._conform_to_outputs(y_pred, sample_weight)
      if not container.built:  # First use outside `trainer.fit`, which builds.
        container.build(y_pred, y_true)
      flat_true = tf.nest.flatten(y_true) if y_true is not None else []
      for y_t, y_p, sw, plain, weighted in zip(
          flat_true, tf.nest.flatten(y_pred), tf.nest.flatten(weights),
          container._metrics, container._weighted_metrics):
        if y_t is None or (all(m is None for m in plain)
                           and all(m is None for m in weighted)):
          continue
        y_t, y_p, sw = keras2_reduction.match_dtype_and_rank(y_t, y_p, sw)
        mask = _mask(y_p)
        sw = keras2_reduction.apply_mask(y_p, sw, mask)
        for metric in plain:
          if metric is not None:
            metric.update_state(y_t, y_p, sample_weight=mask)
        for metric in weighted:
          if metric is not None:
            metric.update_state(y_t, y_p, sample_weight=sw)
    return results(model)


def results(model):
  """`{name: value}` for every metric in `model.metrics` (tf_keras `get_metrics_result`)."""
  return step_module.results(model)


def reset_metrics(model):
  for metric in model.metrics:
    metric.reset_state()


def _assign_mean(metric, value, weight):
  total, count = kernels.weighted_mean_update(metric.total, metric.count, value, weight)
  metric.total.assign(total)
  metric.count.assign(count)


class Keras2TestStep(_Stages):
  """tf_keras `Model.evaluate`'s step: forward (inference), losses, metrics.

  Reproduces `test_step` plus `make_test_function`'s `_test_counter += 1`.
  """

  def __call__(self, data):
    x, y, sample_weight = structure.unpack_batch(data)
    y_pred = self.forward(x, training=False)
    terms = self.losses(x, y, y_pred, sample_weight)
    logs = self.metrics(x, y, y_pred, sample_weight, terms)
    self.model._test_counter.assign_add(1)
    return logs


class Keras2TrainStep(_Stages):
  """tf_keras `Model.fit`'s train step, one named stage per method.

  Args:
    model: a compiled tf_keras model whose optimizer is a (new, 2.11+)
      `tf_keras.optimizers.Optimizer`, optionally in a `LossScaleOptimizer`.
    config: a `StepConfig`; by default read by `KERAS2.config(model)`.
  """

  def __init__(self, model, config=None):
    super().__init__(model)
    self.config = config or KERAS2.config(model)
    self.model_optimizer, self.loss_scaler, self.optimizer = step_module.split_optimizer(
        model, unwrap_optimizer)

  @property
  def trainable_variables(self):
    return self.model.trainable_variables

  def __call__(self, data):
    x, y, sample_weight = structure.unpack_batch(data)
    with tf.GradientTape() as tape:
      y_pred = self.forward(x, training=True)
      terms = self.losses(x, y, y_pred, sample_weight)
      self._check_loss(y, terms)
      scaled = self.scale(terms.total)
    grads = self.gradients(tape, scaled)
    self.apply(self.transform(grads))
    logs = self.metrics(x, y, y_pred, sample_weight, terms)
    self.model._train_counter.assign_add(1)
    return logs

  def _check_loss(self, y, terms):
    """tf_keras `_validate_target_and_loss`: targets for a compiled loss; some loss."""
    if self.model.loss and y is None:
      raise ValueError(
          f"Target data is missing: model {self.model.name!r} was compiled with "
          f"loss={self.model.loss!r}, so `trainer.fit` needs targets `y`.")
    if terms is None:
      raise ValueError(
          f"No loss to compute for model {self.model.name!r}: `model.compile` got no "
          "`loss` and the model has no `add_loss` terms or regularizers. Pass "
          "`loss=` to `model.compile`.")

  # -- scale -----------------------------------------------------------------
  def scale(self, loss):
    """Reproduces `LossScaleOptimizer.get_scaled_loss`: L * cast(S, L.dtype).

    Without a loss-scale optimizer the loss is returned as is.
    """
    if self.loss_scaler is not None:
      return keras2_loss_scaling.scale_loss(loss, self.loss_scaler.loss_scale)
    return loss

  # -- gradients -------------------------------------------------------------
  def gradients(self, tape, scaled_loss):
    """`tape.gradient` of the scaled loss w.r.t. the trainable variables."""
    return tape.gradient(scaled_loss, self.trainable_variables)

  # -- transform -------------------------------------------------------------
  def transform(self, grads):
    """Gradient processing in tf_keras's order, as pure tensor math.

    1. unscale: g * (1/S) (`LossScaleOptimizer.get_unscaled_gradients`);
    2. all-reduce SUM over replicas (`Optimizer.aggregate_gradients`), so
       clipping sees the summed gradient, unlike Keras 3;
    3. finite check on the summed gradients (dynamic loss scaling only);
    4. clip: clipnorm, else global_clipnorm, else clipvalue
       (`kernels.keras2_clipping`; the optimizer's own clipping never runs);
    5. duplicate indices of sparse gradients summed.
    """
    cfg = self.config
    grads = list(grads)
    if self.loss_scaler is not None:
      grads = keras2_loss_scaling.unscale_gradients(grads, self.loss_scaler.loss_scale)
    grads = _all_reduce_sum(grads)
    finite = None
    if self.loss_scaler is not None and self.loss_scaler.dynamic:
      finite = keras2_loss_scaling.all_finite(grads)
    micro_grads = list(grads)
    grads = keras2_clipping.clip_gradients(
        grads, clipnorm=cfg.clipnorm, clipvalue=cfg.clipvalue,
        global_clipnorm=cfg.global_clipnorm)
    grads = [_deduplicate(g) for g in grads]
    return TransformedGradients(grads, micro_grads, finite, None)

  # -- apply -----------------------------------------------------------------
  def apply(self, transformed):
    """Writes the update, reproducing tf_keras `apply_gradients` in order.

    With dynamic loss scaling the scale is updated first (grow after
    `growth_steps` good steps, halve but not below 1 on a non-finite
    gradient); a non-finite step only increments `iterations`. Otherwise:
    the learning-rate schedule's current value, weight decay
    (w -= w * wd * lr), the optimizer's update rule per variable, the EMA
    and its periodic overwrite, `iterations += 1`, then constraints.
    """
    opt = self.optimizer
    if not getattr(opt, "_built", False):
      # apply_gradients builds the optimizer on first use, from the weights
      # at that time (the EMA starts from them); lifted out of the graph.
      with tf.init_scope():
        opt.build(self.trainable_variables)
    if transformed.finite is None:
      self._apply_finite(transformed)
      return
    state = self.loss_scaler._loss_scale
    scale, counter = keras2_loss_scaling.next_loss_scale(
        state.current_loss_scale, state.counter, transformed.finite,
        state.growth_steps, state.multiplier)
    state.current_loss_scale.assign(scale)
    state.counter.assign(counter)

    def step():
      self._apply_finite(transformed)
      return tf.constant(True)

    def skip():
      opt.iterations.assign_add(1, read_value=False)
      return tf.constant(False)

    tf.cond(transformed.finite, step, skip)

  def _apply_finite(self, transformed):
    opt, cfg = self.optimizer, self.config
    if isinstance(opt._learning_rate, _Schedule):
      opt._current_learning_rate.assign(opt._learning_rate(opt.iterations))
    pairs = [(g, v) for g, v in zip(transformed.grads, self.trainable_variables)
             if g is not None]
    if not pairs:
      raise ValueError(
          "No gradients provided for any variable: the loss does not depend on "
          f"the trainable variables of model {self.model.name!r}.")
    variables = [v for _, v in pairs]
    strategy = tf.distribute.get_strategy()
    if cfg.weight_decay is not None:
      self._weight_decay(strategy, variables)

    def update_all(distribution, grads_and_vars):
      def update(var, grad):
        if opt.jit_compile:
          return opt._update_step_xla(grad, var, id(opt._var_key(var)))
        return opt._update_step(grad, var)

      for grad, var in grads_and_vars:
        distribution.extended.update(var, update, args=(grad,), group=False)
      if cfg.use_ema:
        self._update_ema([v for _, v in grads_and_vars])
      return opt.iterations.assign_add(1)

    tf.__internal__.distribute.interim.maybe_merge_call(update_all, strategy, pairs)
    for var in variables:
      if var.constraint is not None:
        var.assign(var.constraint(var))

  def _weight_decay(self, strategy, variables):
    """w -= w * wd * lr for each variable not excluded from weight decay."""
    opt, wd_value = self.optimizer, self.config.weight_decay

    def decay_all(distribution, variables):
      def decay(var):
        if opt._use_weight_decay(var):
          lr = tf.cast(opt.learning_rate, var.dtype)
          wd = tf.cast(wd_value, var.dtype)
          var.assign_sub(var * wd * lr)

      for var in variables:
        distribution.extended.update(var, decay, group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(decay_all, strategy, variables)

  def _average_of(self, var):
    opt = self.optimizer
    return opt._model_variables_moving_average[opt._index_dict[opt._var_key(var)]]

  def _update_ema(self, variables):
    """average <- m * average + w * (1 - m), m the Python float `ema_momentum`."""
    cfg = self.config
    for var in variables:
      average = self._average_of(var)
      average.assign(kernels.ema_update(average, var, cfg.ema_momentum))
    if cfg.ema_overwrite_frequency:
      overwrite = (self.optimizer.iterations + 1) % cfg.ema_overwrite_frequency == 0

      def copy():
        self._copy_averages(variables)

      tf.cond(tf.cast(overwrite, tf.bool), copy, lambda: None)

  def _copy_averages(self, variables):
    strategy = tf.distribute.get_strategy()
    for var in variables:
      strategy.extended.update(var, lambda a, b: a.assign(b), args=(self._average_of(var),))

  def finalize(self):
    """End of `fit`: `optimizer.finalize_variable_values` copies the EMA in (`use_ema`)."""
    if self.config.use_ema and getattr(self.optimizer, "_built", False):
      self._copy_averages(self.trainable_variables)


def _all_reduce_sum(grads):
  """tf_keras `all_reduce_sum_gradients`: SUM over replicas, `None`s kept.

  With one replica this is the identity, but it puts the same ops in the
  graph as fit does (what grappler sees decides the last bit).
  """
  present = [g for g in grads if g is not None]
  if not present:
    return list(grads)
  if not tf.__internal__.distribute.strategy_supports_no_merge_call():
    raise NotImplementedError(
        "Strategies that need `merge_call` for gradient aggregation are not "
        "supported by the Keras 2 step; use the default strategy or "
        "MirroredStrategy.")
  reduced = list(tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, present))
  return [None if g is None else reduced.pop(0) for g in grads]


def _deduplicate(grad):
  """Sums the values of repeated indices of a sparse gradient (tf_keras does)."""
  if not isinstance(grad, tf.IndexedSlices):
    return grad
  unique, positions = tf.unique(grad.indices)
  summed = tf.math.unsorted_segment_sum(grad.values, positions, tf.shape(unique)[0])
  return tf.IndexedSlices(summed, unique, grad.dense_shape)


class Keras2Semantics:
  """`tf_keras.Model.fit` (Keras 2, the 2.11+ optimizers)."""

  name = "keras2"
  TrainStep = Keras2TrainStep
  TestStep = Keras2TestStep
  callbacks = tf_keras.callbacks
  # tf_keras's default (legacy) random ops keep their state per traced graph,
  # so Dropout masks depend on how steps are grouped into functions; the
  # iterator path groups them as `fit` does (exact with steps_per_execution=1).
  fused_inputs = False

  @staticmethod
  def matches(model):
    return isinstance(model, tf_keras.Model)

  @staticmethod
  def config(model, *, jit_compile=None, steps_per_execution=None):
    """Reads the configuration of a compiled tf_keras model and its optimizer.

    Keyword arguments that are not None override what `model.compile` set.
    Only the clipping tf_keras actually applies is kept (clipnorm, else
    global_clipnorm, else clipvalue).
    """
    loss_scaler, optimizer = unwrap_optimizer(model.optimizer)
    if optimizer is not None and not isinstance(optimizer, _NewOptimizer):
      raise ValueError(
          f"`model.optimizer` ({type(optimizer).__name__}) is a legacy tf_keras "
          "optimizer (`tf_keras.optimizers.legacy.*`); the Keras 2 step reproduces "
          "the 2.11+ optimizers only. Compile with e.g. "
          "`tf_keras.optimizers.SGD(...)` instead.")
    if getattr(model, "_autotune_steps_per_execution", False):
      raise ValueError(
          "`steps_per_execution=\"auto\"` (tf_keras autotuning) is not supported; "
          "pass a positive integer to `model.compile` or `trainer.fit`.")
    if steps_per_execution is None:
      counter = getattr(model, "_steps_per_execution", None)
      steps_per_execution = 1 if counter is None else int(counter.numpy())

    def positive_or_none(value):
      return value if value is not None and value > 0 else None

    clipnorm = clipvalue = global_clipnorm = None
    if optimizer is not None:
      clipnorm = positive_or_none(optimizer.clipnorm)
      global_clipnorm = None if clipnorm else positive_or_none(optimizer.global_clipnorm)
      clipvalue = (None if clipnorm or global_clipnorm
                   else positive_or_none(optimizer.clipvalue))
    fixed_scale = None
    if loss_scaler is not None and not loss_scaler.dynamic:
      fixed_scale = float(loss_scaler.initial_scale)
    return StepConfig(
        jit_compile=bool(model._jit_compile if jit_compile is None else jit_compile),
        steps_per_execution=steps_per_execution,
        run_eagerly=bool(model.run_eagerly),
        clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
        use_ema=bool(optimizer is not None and optimizer.use_ema),
        ema_momentum=optimizer.ema_momentum if optimizer is not None else 0.99,
        ema_overwrite_frequency=(optimizer.ema_overwrite_frequency
                                 if optimizer is not None else None),
        weight_decay=optimizer.weight_decay if optimizer is not None else None,
        loss_scale_factor=fixed_scale,
        dynamic_loss_scale=bool(loss_scaler is not None and loss_scaler.dynamic),
    )

  @staticmethod
  def build(model, element_spec):
    """Creates the model's and the compiled containers' variables before tracing.

    tf_keras creates them during the first trace of its train function;
    here one throwaway trace (nothing runs) builds the layers, the
    `LossesContainer` (its `<output>_loss` trackers) and the
    `MetricsContainer` from the batch signature. The optimizer is built by
    the first train step, from the weights at that time, as
    `apply_gradients` does.
    """
    containers = [c for c in (model.compiled_loss, model.compiled_metrics) if c is not None]
    if model.built and all(c.built for c in containers):
      return

    def probe(batch):
      x, y, _ = structure.unpack_batch(batch)
      y_pred = model(x, training=False)
      if model.compiled_loss is not None and not model.compiled_loss.built:
        model.compiled_loss.build(y_pred)
      metrics = model.compiled_metrics
      if metrics is not None and not metrics.built:
        metrics.build(y_pred, metrics._conform_to_outputs(y_pred, y))
      return tf.constant(0)

    tf.function(probe, autograph=False).get_concrete_function(element_spec)

  @staticmethod
  def output_shapes(model, x):
    """Per-output shapes of `model` on inputs shaped like `x`, without running it."""
    def spec(a):
      a = a if hasattr(a, "shape") and hasattr(a, "dtype") else tf.convert_to_tensor(a)
      dtype = tf.as_dtype(a.dtype)
      if dtype.is_floating:
        dtype = tf.as_dtype(tf_keras.backend.floatx())
      return tf.TensorSpec((None,) + tuple(a.shape[1:]), dtype)

    x = tf.nest.map_structure(spec, _lists_to_tuples(x))
    traced = tf.function(lambda inputs: model(inputs, training=False),
                         autograph=False).get_concrete_function(x)
    return [tuple(t.shape) for t in tf.nest.flatten(traced.structured_outputs)]

  @staticmethod
  def begin_run(model, training):
    """Start of a `fit` (training=True) or of an evaluation: zero the step counter.

    tf_keras `fit` sets `_train_counter` and `evaluate` (also the validation
    inside `fit`) `_test_counter` to 0; the steps count up from there, and
    tf_keras's TensorBoard callback reads them as the summary step.
    """
    (model._train_counter if training else model._test_counter).assign(0)

  results = staticmethod(results)
  reset_metrics = staticmethod(reset_metrics)

  @staticmethod
  def metric_names(model):
    """`model.metrics_names` (the order `evaluate(return_dict=False)` uses)."""
    return list(model.metrics_names)


def _lists_to_tuples(value):
  if isinstance(value, (list, tuple)):
    return tuple(_lists_to_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  return value


KERAS2 = Keras2Semantics()
semantics_module.register(KERAS2)
