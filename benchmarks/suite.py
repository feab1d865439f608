"""The step-time benchmark as a library: a frozen config in, a results dict out.

    config = BenchConfig(models=("tiny",), repeats=1, steps=5)
    results = run(config)                  # prints one line per measurement group
    paths = report.write_outputs(results, config.out_dir)

For each model, every variant (benchmarks.variants, times XLA off/on, plus the
JAX peer when jax/optax are installed) is built, warmed up for `warmup`
epochs, then timed for `repeats` rounds, interleaved round-robin: round r
runs one epoch of each variant, so machine noise hits all of them alike.
Times are seconds per epoch in the raw results and microseconds per
optimizer step (epoch time / steps) in the summaries.
"""

import contextlib
import dataclasses
import os
import time
from typing import Callable, Optional, Tuple

import keras
import tensorflow as tf

from benchmarks import floor, jax_peer, models, raw_tf_loop, stages, timing, variants
from trainer import compare

XLA_CHOICES = ("both", "on", "off")
CONV = "__conv_probe__"
MATMUL = "matmul"  # The rate probe's name among each model's interleaved runners.
PER_STEP_FEEDS = ("dataset", "arrays")
# The model the hand-written TensorFlow loop (benchmarks.raw_tf_loop) implements.
RAW_TF_MODELS = ("tiny",)
# Epochs of the exactness check: the second reuses the first one's functions.
EXACTNESS_EPOCHS = 2


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What to measure.

  Attributes:
    models: names from benchmarks.models.SPECS.
    repeats: timed rounds (interleaved) per model.
    warmup: untimed epochs per variant before the rounds (>= 1: the first
      epoch traces and compiles).
    steps: optimizer steps per epoch; None uses each model's default. A
      model's `max_steps` (the CNN) caps it either way.
    out_dir: where results.json, results.md and step_time.png go.
    xla: "both", "on" or "off".
    stages: also run the stage timing (tiny and medium MLP, XLA).
    stage_repeats: rounds for the stage timing.
    jax: also time the JAX + optax peer when installed.
    budget_s: per-variant cap on recorded seconds; a variant past it skips
      the remaining rounds (at least one sample is kept).
    per_step_feed: "dataset" (CompiledStep iterator path) or "arrays"
      (trainer.fit's fused feed with steps_per_execution=1) for tapefit_step.
    matmul_n: size of the square matmul that measures the FLOP rate.
    device: e.g. "/GPU:0"; None leaves placement to TensorFlow.
    dtype_policy: Keras dtype policy for the Keras models ("float32",
      "mixed_bfloat16", ...). The JAX peer stays float32.
    seed: weights and data.
    fused_xla_scope: `trainer.fit`'s xla_scope in the tapefit fused variant.
    min_sample_s: a timed sample repeats a variant's epoch back to back until
      it lasts about this long (judged from one more untimed epoch after the
      warm-up; 0: one epoch per sample); the sample is the mean over those
      epochs.
    exactness: after the timing, train the tapefit fused configuration and
      `Model.fit` from the same weights for EXACTNESS_EPOCHS epochs, per XLA
      setting, and record how far apart their History, evaluate results and
      weights are (the speed is only worth quoting at fit's numbers).
  """

  models: Tuple[str, ...] = models.MODEL_NAMES
  repeats: int = 5
  warmup: int = 1
  steps: Optional[int] = None
  out_dir: str = "out/bench"
  xla: str = "both"
  stages: bool = True
  stage_repeats: int = 9
  jax: bool = True
  budget_s: Optional[float] = 30.0
  per_step_feed: str = "dataset"
  matmul_n: int = 1024
  device: Optional[str] = None
  dtype_policy: str = "float32"
  seed: int = 0
  fused_xla_scope: str = "auto"
  min_sample_s: float = 0.05
  exactness: bool = True

  def __post_init__(self):
    unknown = [m for m in self.models if m not in models.SPECS]
    if unknown or not self.models:
      raise ValueError(f"`models` ({list(self.models)!r}) must be a non-empty subset of "
                       f"{list(models.SPECS)}.")
    if self.xla not in XLA_CHOICES:
      raise ValueError(f"`xla` ({self.xla!r}) must be one of {XLA_CHOICES}.")
    if self.per_step_feed not in PER_STEP_FEEDS:
      raise ValueError(f"`per_step_feed` ({self.per_step_feed!r}) must be one of "
                       f"{PER_STEP_FEEDS}.")
    for name in ("repeats", "warmup", "stage_repeats", "matmul_n"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` ({value!r}) must be a positive integer.")
    if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
      raise ValueError(f"`steps` ({self.steps!r}) must be a positive integer or None.")
    if not (isinstance(self.min_sample_s, (int, float)) and self.min_sample_s >= 0):
      raise ValueError(f"`min_sample_s` ({self.min_sample_s!r}) must be a number >= 0.")
    if self.budget_s is not None and not self.budget_s > 0:
      raise ValueError(f"`budget_s` ({self.budget_s!r}) must be positive or None.")

  @property
  def xla_settings(self):
    return {"both": (False, True), "on": (True,), "off": (False,)}[self.xla]


def fit_default_xla():
  """What `model.compile()`'s jit_compile="auto" resolves to on this machine."""
  inputs = keras.Input((1,))
  model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
  model.compile(optimizer="sgd", loss="mse")
  return bool(model.jit_compile)


def _us(seconds, steps):
  return seconds / steps * 1e6


def _measure_model(spec, config, rate, log, jax_status):
  steps = spec.steps(config.steps)
  capped_steps = config.steps is not None and steps < config.steps
  probe = models.build_compiled(spec, seed=config.seed)
  flops = models.train_flops_per_step(probe, spec.batch_size)
  conv = floor.ConvProbe.for_model(probe, spec.batch_size, device=config.device)
  del probe
  log(f"[{spec.name}] {spec.description}; {steps} steps/epoch"
      f"{' (capped by the model)' if capped_steps else ''}; "
      f"{flops / 1e6:.2f} MFLOP/step; floor at the up-front matmul rate "
      f"{flops / (rate['gflops'] * 1e9) * 1e6:.1f} us/step")

  runners = {}
  entries = {}
  # Every model is built before any is warmed up: building calls
  # keras.utils.set_random_seed, which clears TensorFlow's kernel cache, so a
  # function warmed up before it would be instantiated again in round 1.
  built = []
  for jit in config.xla_settings:
    for kind in variants.VARIANTS:
      if kind in variants.XLA_ONLY and not jit:
        continue
      variant = variants.Variant(spec, kind, jit, steps, per_step_feed=config.per_step_feed,
                                 seed=config.seed, xla_scope=config.fused_xla_scope)
      variant.setup()
      built.append(variant)
  for variant in built:
    kind, jit = variant.kind, variant.jit_compile
    warm = [timing.time_call(variant.epoch) for _ in range(config.warmup)]
    log(f"[{spec.name}] warm-up {variant.name}: {sum(warm):.1f} s "
        f"(first epoch {warm[0]:.2f} s, last {warm[-1]:.2f} s)")
    runners[variant.name] = variant.epoch
    entries[variant.name] = {
        "kind": kind, "xla": jit,
        "label": variants.label(kind, variant.steps_per_execution,
                                variant.resolved_xla_scope()) + (
            " [arrays feed]" if kind == "tapefit_step" and config.per_step_feed == "arrays"
            else ""),
        "steps_per_execution": variant.steps_per_execution,
        "feed": config.per_step_feed if kind == "tapefit_step" else "arrays",
        "warmup_seconds": warm}

  if config.jax and spec.name in jax_peer.PEERS:
    if jax_status["available"]:
      try:
        x, y = models.make_data(spec, steps, config.seed)
        peer = jax_peer.Peer(jax_peer.PEERS[spec.name], x, y, spec.batch_size,
                             seed=config.seed)
        warm = [timing.time_call(peer.epoch) for _ in range(config.warmup)]
        log(f"[{spec.name}] warm-up jax_scan/xla: first epoch {warm[0]:.2f} s")
        runners["jax_scan/xla"] = peer.epoch
        entries["jax_scan/xla"] = {"kind": "jax_scan", "xla": True,
                                   "label": "JAX + optax lax.scan peer",
                                   "steps_per_execution": steps, "feed": "arrays",
                                   "warmup_seconds": warm}
        if jax_peer.PEERS[spec.name].clipnorm:
          # The same peer without clipping and running means: what XLA itself
          # spends on the work of tapefit's "clipping + metrics" stage share.
          bare = jax_peer.Peer(jax_peer.PEERS[spec.name], x, y, spec.batch_size,
                               seed=config.seed, bare=True)
          warm = [timing.time_call(bare.epoch) for _ in range(config.warmup)]
          runners["jax_scan_bare/xla"] = bare.epoch
          entries["jax_scan_bare/xla"] = {
              "kind": "jax_scan_bare", "xla": True,
              "label": "JAX peer without clipping and running means",
              "steps_per_execution": steps, "feed": "arrays", "warmup_seconds": warm}
      except Exception as error:  # pylint: disable=broad-except
        log(f"[{spec.name}] JAX peer failed, skipped: {type(error).__name__}: {error}")
        jax_status.setdefault("errors", {})[spec.name] = f"{type(error).__name__}: {error}"
    else:
      log(f"[{spec.name}] JAX peer {jax_peer.SKIP_MESSAGE}")

  if spec.name in RAW_TF_MODELS and True in config.xla_settings:
    # The same step in raw TensorFlow, no Keras and no metrics, in one XLA
    # while loop: what TensorFlow's XLA itself reaches, next to the JAX peer.
    # Without clipping too: what clipnorm costs TensorFlow's XLA itself.
    for kind, clip, label in (
        ("tf_raw_loop", "per_variable", "hand-written TensorFlow XLA loop (no Keras, no metrics)"),
        ("tf_raw_loop_noclip", "none", "hand-written TensorFlow XLA loop without clipping")):
      loop, _ = raw_tf_loop.build(steps, seed=config.seed, clip=clip)
      epoch = timing.numpy_call(loop)
      warm = [timing.time_call(epoch) for _ in range(config.warmup)]
      runners[f"{kind}/xla"] = epoch
      entries[f"{kind}/xla"] = {"kind": kind, "xla": True, "label": label,
                                "steps_per_execution": steps, "feed": "arrays",
                                "warmup_seconds": warm}

  # The matmul rate is timed in the same rounds, under the same load.
  matmul = floor.MatmulProbe(config.matmul_n, device=config.device)
  runners[MATMUL] = matmul
  if conv is not None:  # The model's convolutions alone, in the same rounds.
    runners[CONV] = conv

  def progress(round_index, this_round):
    parts = ", ".join(f"{name} {_us(s, steps):.0f}" for name, s in sorted(this_round.items())
                      if name not in (MATMUL, CONV))
    rate_text = (f"; matmul {matmul.flops / this_round[MATMUL] / 1e9:.0f} GFLOP/s"
                 if MATMUL in this_round else "")
    log(f"[{spec.name}] round {round_index + 1}/{config.repeats} (us/step): {parts}"
        f"{rate_text}")

  # One more untimed epoch per variant, after every warm-up, sets how many
  # epochs make one sample (the warm-up epochs include tracing and compiling).
  calls = {}
  for name, entry in entries.items():
    calls[name] = timing.calls_per_sample(runners[name], config.min_sample_s)
    entry["epochs_per_sample"] = calls[name]
  samples = timing.interleaved(runners, config.repeats, budget_s=config.budget_s,
                               progress=progress, calls=calls)
  model_rate = matmul.rate(samples.pop(MATMUL))
  floor_us = flops / (model_rate["gflops"] * 1e9) * 1e6
  conv_rate = conv.rate(samples.pop(CONV)) if conv is not None else None
  kernel_us = (floor.kernel_floor_us(flops, conv_rate, model_rate["gflops"])
               if conv_rate else None)
  for name, entry in entries.items():
    entry["samples_s"] = samples[name]
    stats = timing.summarize([_us(s, steps) for s in samples[name]])
    entry["us"] = stats.as_dict()
    entry["capped"] = len(samples[name]) < config.repeats
    entry["floor_ratio"] = stats.median / floor_us if floor_us else None
  for variant in built:
    variant.release()
  exactness = {}
  if config.exactness:
    for jit in config.xla_settings:
      check = check_numbers(spec, steps, jit, config)
      exactness["xla" if jit else "noxla"] = check
      log(f"[{spec.name}] numbers vs Model.fit, XLA {'on' if jit else 'off'}: "
          f"{check['verdict']}")
  notes = []
  if capped_steps:
    notes.append(f"{spec.name}: {steps} steps/epoch (capped from {config.steps}: slow "
                 "under XLA on CPU)")
  elif spec.max_steps is not None:
    notes.append(f"{spec.name}: {steps} steps/epoch (capped at {spec.max_steps}: slow "
                 "under XLA on CPU)")
  capped = [n for n, e in entries.items() if e["capped"]]
  if capped:
    notes.append(f"{spec.name}: {', '.join(capped)} stopped after --budget_s="
                 f"{config.budget_s:g} s of timed epochs (fewer than {config.repeats} samples)")
  return {"name": spec.name, "description": spec.description, "batch_size": spec.batch_size,
          "steps": steps, "flops_per_step": flops, "floor_us": floor_us,
          "matmul": model_rate, "conv": conv_rate, "kernel_floor_us": kernel_us,
          "variants": entries, "notes": notes, "exactness": exactness}


def check_numbers(spec, steps, jit_compile, config):
  """trainer.fit fused against Model.fit, in the timed configuration.

  Both models start from the same weights (`trainer.compare.run_both`) and
  train EXACTNESS_EPOCHS epochs on the benchmark's data with the fused
  variant's settings (steps_per_execution = batches per epoch, the run's
  xla_scope), then evaluate. Returns the max |keras - tapefit| per group,
  the max relative difference, the bar (bit-identical with XLA off, within
  `compare.XLA_REL_BOUND` relative with XLA on) and whether it holds.
  """
  x, y = models.make_data(spec, steps, config.seed)
  comparison = compare.run_both(
      lambda: models.build_compiled(spec, jit_compile=jit_compile,
                                    steps_per_execution=steps, seed=config.seed),
      x, y, batch_size=spec.batch_size, epochs=EXACTNESS_EPOCHS, shuffle=False,
      tapefit_kwargs={"xla_scope": config.fused_xla_scope})
  mismatch = comparison.structure_mismatch()
  if mismatch is not None:
    return {"epochs": EXACTNESS_EPOCHS, "holds": False, "verdict": f"FAILS: {mismatch}"}
  absolute, max_rel = comparison.measure()
  if jit_compile:
    bar, holds = f"within {compare.XLA_REL_BOUND:g} relative", max_rel <= compare.XLA_REL_BOUND
  else:
    bar, holds = "bit-identical", max(absolute.values()) == 0
  diff = compare.format_diff
  return {"epochs": EXACTNESS_EPOCHS, "max_abs": absolute, "max_rel": max_rel, "bar": bar,
          "holds": bool(holds),
          "iterations": [comparison.keras_iterations, comparison.tapefit_iterations],
          "verdict": (f"{'holds' if holds else 'FAILS'} ({bar}; max |diff| History "
                      f"{diff(absolute['history'])}, evaluate {diff(absolute['evaluate'])}, "
                      f"weights {diff(absolute['weights'])}; max rel {diff(max_rel)})")}


def run(config: BenchConfig, log: Optional[Callable[[str], None]] = print):
  """Measures everything `config` asks for; returns the results dict."""
  log = log or (lambda _: None)
  started = time.perf_counter()
  previous_policy = keras.mixed_precision.global_policy().name
  keras.mixed_precision.set_dtype_policy(config.dtype_policy)
  device = tf.device(config.device) if config.device else contextlib.nullcontext()
  try:
    with device:
      machine = floor.machine_info()
      machine["loadavg_start"] = _loadavg()
      log(f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, TF "
          f"{machine['tensorflow']}, Keras {machine['keras']}, devices {machine['devices']}, "
          f"load average {machine['loadavg_start']}")
      rate = floor.matmul_rate(n=config.matmul_n, device=config.device)
      log(f"Matmul rate ({config.matmul_n}^3 float32, median of {rate['repeats']}): "
          f"{rate['gflops']:.1f} GFLOP/s (best {rate['gflops_best']:.1f})")
      default_xla = fit_default_xla()
      ok, reason = jax_peer.available() if config.jax else (False, "disabled (--nojax)")
      jax_status = {"requested": config.jax, "available": ok, "reason": reason}
      if config.jax and not ok:
        log(f"JAX peer {jax_peer.SKIP_MESSAGE} ({reason})")
      results_models = {}
      for name in config.models:
        results_models[name] = _measure_model(models.SPECS[name], config, rate, log,
                                              jax_status)
        keras.backend.clear_session()
      stage_results = {}
      if config.stages and config.xla != "off":
        for name in config.models:
          if name not in stages.STAGE_MODELS:
            continue
          spec = models.SPECS[name]
          stage_results[name] = stages.run_stages(
              spec, spec.steps(config.steps), config.stage_repeats, config.warmup,
              min_sample_s=config.min_sample_s, log=log)
          keras.backend.clear_session()
      elif config.stages:
        log("Stage timing skipped: it runs under XLA and --xla=off.")
      machine["loadavg_end"] = _loadavg()
  finally:
    keras.mixed_precision.set_dtype_policy(previous_policy)
  return {
      "config": dataclasses.asdict(config),
      "machine": machine,
      "matmul": rate,
      "fit_default_xla": default_xla,
      "jax": jax_status,
      "models": results_models,
      "stages": stage_results,
      "seconds": time.perf_counter() - started,
  }


def _loadavg():
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None
