"""Smoke test of the step-time benchmark: it runs and writes its outputs.

No timing assertions: the numbers depend on the machine.
"""

import json
import os

import pytest

from benchmarks import models, report, suite, timing, variants
from tests import fit_compare


def test_interleaved_rotates_and_respects_the_budget():
  calls = []
  fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
  samples = timing.interleaved(fns, repeats=3)
  assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
  assert all(len(s) == 3 for s in samples.values())
  capped = timing.interleaved({"slow": lambda: None}, repeats=4, budget_s=1e-12)
  assert len(capped["slow"]) == 1
  stats = timing.summarize([3.0, 1.0, 2.0, 4.0])
  assert (stats.median, stats.min, stats.max, stats.n) == (2.5, 1.0, 4.0, 4)


def test_a_sample_is_the_mean_of_its_back_to_back_calls_after_a_collection(monkeypatch):
  clock = iter(range(100))
  monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
  collected = []
  monkeypatch.setattr(timing.gc, "collect", lambda: collected.append(True))
  calls = []
  fns = {"fast": lambda: calls.append("fast"), "slow": lambda: calls.append("slow")}
  samples = timing.interleaved(fns, repeats=2, calls={"fast": 4})
  # Each sample reads the clock twice (start, end): one tick per sample.
  assert samples == {"fast": [1 / 4, 1 / 4], "slow": [1.0, 1.0]}
  assert calls == ["fast"] * 4 + ["slow", "slow"] + ["fast"] * 4
  assert len(collected) == 4
  assert timing.calls_for_duration(0.005, 0.05) == 10
  assert timing.calls_for_duration(0.2, 0.05) == 1
  assert timing.calls_for_duration(1e-9, 0.05) == 100
  assert timing.calls_for_duration(0.005, 0) == 1
  ran = []
  assert timing.calls_per_sample(lambda: ran.append(1), 0) == 1 and not ran
  assert timing.calls_per_sample(lambda: ran.append(1), 1e-12) == 1 and ran == [1]


def test_a_share_is_one_minus_the_ratio_of_two_rows_medians():
  model = {"variants": {"full/xla": {"us": {"median": 80.0}},
                        "bare/xla": {"us": {"median": 60.0}}}}
  assert report.share_pct(model, "full/xla", "bare/xla") == 100.0 * (1.0 - 60.0 / 80.0)
  assert report.share_pct(model, "full/xla", "missing/xla") is None


def test_flops_are_counted_from_the_layer_shapes():
  tiny = models.build_compiled(models.SPECS["tiny"])
  assert models.forward_macs_per_sample(tiny) == 32 * 64 + 64 * 64 + 64 * 1
  assert models.train_flops_per_step(tiny, 64) == 2 * 6208 * 3 * 64
  transformer = models.build_compiled(models.SPECS["transformer"])
  # QKV + scores + AV + output projection + FFN + classifier.
  expected = 3 * 32 * 64 * 64 + 2 * 4 * 32 * 32 * 16 + 32 * 64 * 64 + 2 * 32 * 64 * 128 + 64 * 10
  assert models.forward_macs_per_sample(transformer) == expected


def test_tiny_run_writes_json_markdown_and_chart(tmp_path):
  out_dir = str(tmp_path / "bench")
  config = suite.BenchConfig(models=("tiny",), repeats=1, warmup=1, steps=3, out_dir=out_dir,
                             xla="both", stages=True, stage_repeats=1, jax=True,
                             matmul_n=128)
  lines = []
  results = suite.run(config, log=lines.append)
  paths = report.write_outputs(results, out_dir, log=lines.append)

  expected = {f"{kind}/{xla}" for kind in variants.VARIANTS for xla in ("noxla", "xla")
              if xla == "xla" or kind not in variants.XLA_ONLY}
  with open(paths["json"], encoding="utf-8") as f:
    saved = json.load(f)
  got = set(saved["models"]["tiny"]["variants"])
  assert expected <= got
  # The hand-written TensorFlow loop, with and without clipping, tiny only.
  raw = {"tf_raw_loop/xla", "tf_raw_loop_noclip/xla"}
  assert raw <= got
  expected |= raw
  # Present only where jax is installed.
  assert got - expected <= {"jax_scan/xla", "jax_scan_bare/xla"}
  for entry in saved["models"]["tiny"]["variants"].values():
    assert len(entry["samples_s"]) == 1
    assert entry["us"]["n"] == 1
    assert entry["epochs_per_sample"] >= 1
  assert saved["config"]["models"] == ["tiny"]
  assert saved["matmul"]["gflops"] > 0
  assert saved["models"]["tiny"]["flops_per_step"] == 2 * 6208 * 3 * 64
  assert saved["models"]["tiny"]["matmul"]["gflops"] > 0  # Timed in the same rounds.
  assert saved["models"]["tiny"]["floor_us"] > 0
  # The timed fused configuration trains to fit's numbers (2 epochs, same weights).
  exact = saved["models"]["tiny"]["exactness"]
  assert set(exact) == {"noxla", "xla"}
  assert exact["noxla"]["holds"] and exact["noxla"]["bar"] == "bit-identical"
  assert exact["noxla"]["max_abs"] == {"history": 0.0, "evaluate": 0.0, "weights": 0.0}
  assert exact["xla"]["holds"] and exact["xla"]["max_rel"] <= fit_compare.XLA_REL_BOUND
  assert exact["xla"]["iterations"] == [2 * 3, 2 * 3]
  stage_names = {row["stage"] for row in saved["stages"]["tiny"]["rows"]}
  assert {"forward", "losses", "gradients", "clip_norm", "clip_value", "clip_global_norm",
          "apply", "metrics", "clipping + metrics + loss tracker"} <= stage_names

  with open(paths["markdown"], encoding="utf-8") as f:
    markdown = f.read()
  for kind, label in variants.VARIANT_LABELS.items():
    runs = 1 if kind in variants.XLA_ONLY else 2  # XLA on (and off).
    assert markdown.count(f"| tiny | {label} (spe=") == runs
  assert "## Stages of the fused XLA step" in markdown
  assert "| tiny | fixed cost of one compiled call (the full loop run for 0 steps" in markdown
  assert "| tiny | rest of trainer.fit's per-call cost" in markdown
  assert "## Numbers against Model.fit" in markdown
  assert markdown.count("| tiny | off | bit-identical | 0 | 0 | 0 | 0 | 6 / 6 | holds |") == 1
  assert "clipping + metrics + loss tracker" in markdown

  ratios = report.format_ratios(results)
  assert "tiny: tapefit fused" in ratios
  assert "numbers vs Model.fit (XLA off): holds (bit-identical" in ratios
  assert "the hand-written TensorFlow XLA loop spends" in ratios  # Its clipnorm share.
  assert "fit defaults" in ratios and "fit best" in ratios
  if results["jax"]["available"]:
    assert "the JAX peer spends" in ratios  # Its clipping + metrics share.
    assert "the hand-written TensorFlow XLA loop (no Keras, no metrics" in ratios
  else:
    assert "not measured: jax not installed" in ratios
    assert any("jax/optax not installed" in line for line in lines)
  # One progress line per measurement group.
  assert any(line.startswith("[tiny] round 1/1") for line in lines)
  assert any(line.startswith("[stages tiny] round 1/1") for line in lines)

  try:
    import matplotlib  # noqa: F401  pylint: disable=unused-import
  except ImportError:
    assert "png" not in paths
  else:
    assert os.path.getsize(paths["png"]) > 0
    with open(paths["png"], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("jit_compile, shift, holds", [
    (False, 0.0, True), (False, 1e-6, False), (True, 5e-7, True), (True, 2e-6, False)])
def test_check_numbers_applies_the_exactness_bar(monkeypatch, jit_compile, shift, holds):
  """Bit-identical with XLA off, within 1e-6 relative with XLA on: a weight moved
  by `shift` (relative) passes or fails accordingly."""
  def run_both(build, x, y, **kwargs):
    model = build()
    weights = [w.numpy() for w in model.weights]
    moved = [w * (1 + shift) if i == 0 else w for i, w in enumerate(weights)]
    history = {"loss": [1.0, 0.5]}
    return fit_compare.Comparison(history, dict(history), weights, moved, 6, 6, {}, {})

  monkeypatch.setattr(suite.compare, "run_both", run_both)
  config = suite.BenchConfig(models=("tiny",))
  check = suite.check_numbers(models.SPECS["tiny"], 3, jit_compile, config)
  assert check["holds"] is holds
  assert check["verdict"].startswith("holds" if holds else "FAILS")
  assert check["max_abs"]["weights"] > 0 or shift == 0


def test_check_numbers_fails_runs_that_cannot_be_compared(monkeypatch):
  """Another optimizer step count is a failure whatever the values say."""
  def run_both(build, x, y, **kwargs):
    weights = [w.numpy() for w in build().weights]
    history = {"loss": [1.0, 0.5]}
    return fit_compare.Comparison(history, dict(history), weights, weights, 6, 5, {}, {})

  monkeypatch.setattr(suite.compare, "run_both", run_both)
  check = suite.check_numbers(models.SPECS["tiny"], 3, False, suite.BenchConfig())
  assert check["holds"] is False
  assert check["verdict"] == "FAILS: iterations 6 vs 5"


def test_config_rejects_unknown_models_and_settings():
  with pytest.raises(ValueError, match="models"):
    suite.BenchConfig(models=("resnet",))
  with pytest.raises(ValueError, match="xla"):
    suite.BenchConfig(xla="sometimes")
  with pytest.raises(ValueError, match="repeats"):
    suite.BenchConfig(repeats=0)


def test_carry_probe_runs_both_loops():
  """Smoke only: both compiled loops run and report a time (no timing assertion)."""
  from benchmarks import raw_tf_loop
  result = raw_tf_loop.measure_carry(steps=3, repeats=1)
  assert set(result) == {"stateful", "functional"}
  assert all(value > 0 for value in result.values())


def test_clip_probe_runs_every_way_of_computing_the_norms():
  """Smoke, plus the share formula; no timing assertion."""
  from benchmarks import raw_tf_loop
  result = raw_tf_loop.measure_clips(steps=3, repeats=1, min_sample_s=0.0)
  assert set(result) == set(raw_tf_loop.CLIPS)
  assert all(value > 0 for value in result.values())
  shares = raw_tf_loop.clip_shares({"per_variable": 80.0, "concat_dot": 100.0, "none": 60.0})
  assert shares == {"per_variable": 25.0, "concat_dot": 40.0}


def test_raw_loop_norm_forms_clip_alike():
  """The fused norm forms compute the same clipped step as the per-variable one,
  up to summation order (float32 rounding), and clipping does change the step."""
  from benchmarks import raw_tf_loop
  totals = {clip: float(raw_tf_loop.build(5, clip=clip)[0]().numpy())
            for clip in raw_tf_loop.CLIPS}
  for clip in ("concat_dot", "segment_sum"):
    assert abs(totals[clip] - totals["per_variable"]) <= 1e-5 * abs(totals["per_variable"])
  assert totals["none"] != totals["per_variable"]
  with pytest.raises(ValueError, match="`clip`"):
    raw_tf_loop.build(1, clip="fused")


def test_conv_probe_counts_the_step_convolutions_and_gives_the_kernel_floor():
  import keras
  from benchmarks import floor
  inputs = keras.Input((8, 8, 2))
  hidden = keras.layers.Conv2D(4, 3, padding="same")(inputs)            # 8x8x4 out
  hidden = keras.layers.Conv2D(6, 3, strides=2, padding="valid")(hidden)  # 3x3x6 out
  model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(hidden)))
  probe = floor.ConvProbe.for_model(model, batch_size=4)
  first, second = 2 * 4 * (8 * 8 * 4) * (3 * 3 * 2), 2 * 4 * (3 * 3 * 6) * (3 * 3 * 4)
  assert probe.forward_flops == first + second
  # The first layer's input gradient is never computed by a training step.
  assert probe.flops == 2 * first + 3 * second
  rate = probe.rate([0.5, 0.25, 1.0])
  assert rate["median_s"] == 0.5 and rate["min_s"] == 0.25
  # Floor = convolutions at their measured time + the rest at the matmul rate.
  step_flops = 3 * (first + second) + 3 * 2 * 4 * 54
  expected_us = (0.5 + (3 * 2 * 4 * 54) / 1e9) * 1e6
  assert abs(floor.kernel_floor_us(step_flops, rate, 1.0) - expected_us) < 1e-6
  assert probe() == probe()  # Runs (deterministic inputs).
  dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  assert floor.ConvProbe.for_model(dense_only, batch_size=4) is None


def test_the_command_lines_define_their_flags_without_conflicts():
  # Every benchmark module a command line imports defines its absl flags at most
  # once per process (a second definition of a name aborts at import).
  import subprocess
  import sys
  for module, flag in (("benchmarks.step_time", "--min_sample_s"),
                       ("benchmarks.carry_probe", "--repeats"),
                       ("benchmarks.clip_probe", "--min_sample_s")):
    done = subprocess.run([sys.executable, "-m", module, "--helpshort"], capture_output=True,
                          text=True, timeout=300, check=False)
    # absl's --helpshort prints the module's flags and exits with status 1.
    assert "Traceback" not in done.stderr, (module, done.stderr[-2000:])
    assert flag in done.stdout, (module, done.stdout[-2000:])
