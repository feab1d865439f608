"""The benchmark's outputs: JSON (everything), Markdown tables, a PNG chart, ratios.

    paths = write_outputs(results, "out/bench")   # results.json, results.md, step_time.png
    print(format_markdown(results))
    print(format_ratios(results))                  # the summary, printed last

Speed-ups are "x faster": the baseline's median time / this row's median
time (> 1 means this row is faster). The floor ratio is this row's median
time / (FLOPs per step / measured matmul rate) (>= 1; 1 would be pure matmul
at the measured rate).
"""

import json
import os

from benchmarks import floor, jax_peer, variants
from trainer import compare

TARGETS = {
    "tiny": {"vs_fit_default": 20.0, "vs_fit_best": 5.0, "vs_jax": 1.3},
    "medium": {"vs_fit_best": 1.0, "floor": 1.5},
    "cnn": {"vs_fit_best": 1.0, "floor": 1.5},
}
STAGE_TARGET_PCT = 10.0
VARIANT_HELP = {
    "fit_default": "`model.fit`, steps_per_execution=1",
    "fit_best": "`model.fit`, steps_per_execution=min(32, batches per epoch)",
    "tapefit_step": "`trainer.fit` over a tf.data pipeline, one step per compiled call "
                    "(CompiledStep, the iterator path)",
    "tapefit_fused": "`trainer.fit` on in-memory arrays, steps_per_execution = batches "
                     "per epoch (FusedArraySteps: one compiled call per epoch)",
    "tapefit_fused_device": "the same, with x and y passed as tf.Tensors already on "
                            "the device (copied once, as the JAX peer's arrays are)",
}
KIND_ORDER = variants.VARIANTS + ("tf_raw_loop", "tf_raw_loop_noclip", "jax_scan",
                                   "jax_scan_bare")


def _fmt_us(us):
  """A per-step time with its unit: 89.6 µs, 1.78 ms, 1.62 s."""
  if us is None:
    return "n/a"
  if abs(us) >= 1e6:
    return f"{us / 1e6:.2f} s"
  if abs(us) >= 1000:
    return f"{us / 1000:.2f} ms"
  if abs(us) >= 100:
    return f"{us:.0f} µs"
  return f"{us:.1f} µs"


def _fmt_x(value):
  return "n/a" if value is None else f"{value:.2f}x"


def _median(entry, stat="median"):
  return entry["us"][stat] if entry and entry.get("us") else None


def _entry(model, kind, xla):
  return model["variants"].get(f"{kind}/{'xla' if xla else 'noxla'}")


def _best_of_xla(model, kind, stat="median"):
  """(us, xla) of the faster XLA setting of `kind` by `stat`, or (None, None)."""
  best = (None, None)
  for xla in (False, True):
    us = _median(_entry(model, kind, xla), stat)
    if us is not None and (best[0] is None or us < best[0]):
      best = (us, xla)
  return best


def _ordered_rows(model):
  def key(item):
    name, entry = item
    return (KIND_ORDER.index(entry["kind"]) if entry["kind"] in KIND_ORDER else 99,
            entry["xla"], name)
  return sorted(model["variants"].items(), key=key)


def main_table(results):
  lines = [
      "| model | variant | XLA | time/step (median) | spread min–max [IQR] | n × epochs "
      "| speed-up vs fit defaults | speed-up vs fit best | FLOPs/step | × floor |",
      "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
  ]
  for name, model in results["models"].items():
    for _, entry in _ordered_rows(model):
      stats = entry["us"]
      us = stats["median"]
      base_default = _median(_entry(model, "fit_default", entry["xla"]))
      base_best = _median(_entry(model, "fit_best", entry["xla"]))
      spread = (f"{_fmt_us(stats['min'])}–{_fmt_us(stats['max'])} "
                f"[{_fmt_us(stats['q1'])}–{_fmt_us(stats['q3'])}]")
      capped = " (budget-capped)" if entry.get("capped") else ""
      lines.append(
          f"| {name} | {entry['label']}{capped} | {'on' if entry['xla'] else 'off'} "
          f"| {_fmt_us(us)} | {spread} | {stats['n']}×{entry.get('epochs_per_sample', 1)} "
          f"| {_fmt_x(base_default / us if base_default else None)} "
          f"| {_fmt_x(base_best / us if base_best else None)} "
          f"| {model['flops_per_step'] / 1e6:.2f} M "
          f"| {_fmt_x(entry.get('floor_ratio'))} |")
  return "\n".join(lines)


def stage_table(results):
  if not results.get("stages"):
    return ""
  lines = [
      "| model | stage | measured | time/step (median) | % of fused step | spread [IQR] |",
      "|---|---|---|---:|---:|---|",
  ]
  for name, stage in results["stages"].items():
    per_step = stage["per_step_us"]
    full = per_step["full"]
    lines.append(f"| {name} | full fused step (XLA, own loop over TrainStep) | whole "
                 f"| {_fmt_us(full['median'])} | 100% "
                 f"| {_fmt_us(full['q1'])}–{_fmt_us(full['q3'])} |")
    fit = per_step["trainer_fit_fused"]
    lines.append(f"| {name} | trainer.fit fused (adds fit's per-epoch Python) | whole "
                 f"| {_fmt_us(fit['median'])} | {100 * fit['median'] / full['median']:.0f}% "
                 f"| {_fmt_us(fit['q1'])}–{_fmt_us(fit['q3'])} |")
    call_us = (stage.get("call_overhead_us") or {}).get("full")
    if call_us is not None:
      steps = stage["steps"]
      per = call_us / steps
      rest = fit["median"] - full["median"] - per
      lines.append(f"| {name} | fixed cost of one compiled call (the full loop run for 0 "
                   f"steps: {_fmt_us(call_us)} per call, over {steps} steps) | whole "
                   f"| {_fmt_us(per)} | {100 * per / full['median']:.1f}% | |")
      lines.append(f"| {name} | rest of trainer.fit's per-call cost (trainer.fit fused - "
                   f"full step - fixed cost: {_fmt_us(rest * steps)} per call; its Python, "
                   f"copying x and y to the device, reading a fresh copy of the data where "
                   f"the own loop rereads cached constants) | difference "
                   f"| {_fmt_us(rest)} | {100 * rest / full['median']:.1f}% | |")
    for row in stage["rows"]:
      if row["us"] is None:
        lines.append(f"| {name} | {row['stage']} | {row['method']} | n/a "
                     f"| n/a ({row.get('note', '')}) | |")
        continue
      lines.append(f"| {name} | {row['stage']} | {row['method']} | {_fmt_us(row['us'])} "
                   f"| {row['pct']:.1f}% | {_fmt_us(row['q1'])}–{_fmt_us(row['q3'])} |")
  return "\n".join(lines)


def exactness_table(results):
  """trainer.fit fused vs Model.fit in the timed configuration; '' when not checked."""
  rows = [(name, key, check) for name, m in results["models"].items()
          for key, check in m.get("exactness", {}).items()]
  if not rows:
    return ""
  lines = ["| model | XLA | bar | max abs diff History | evaluate | weights | max rel diff "
           "| iterations (fit / tapefit) | result |",
           "|---|---|---|---:|---:|---:|---:|---|---|"]
  for name, key, check in rows:
    xla = "on" if key == "xla" else "off"
    if "max_abs" not in check:
      lines.append(f"| {name} | {xla} | | | | | | | {check['verdict']} |")
      continue
    a = check["max_abs"]
    lines.append(
        f"| {name} | {xla} | {check['bar']} | {compare.format_diff(a['history'])} "
        f"| {compare.format_diff(a['evaluate'])} | {compare.format_diff(a['weights'])} "
        f"| {compare.format_diff(check['max_rel'])} | {check['iterations'][0]} / "
        f"{check['iterations'][1]} | {'holds' if check['holds'] else 'FAILS'} |")
  return "\n".join(lines)


def format_markdown(results):
  cfg = results["config"]
  rate = results["matmul"]
  parts = [
      "## Step time",
      "",
      f"Median time per optimizer step over {cfg['repeats']} interleaved rounds "
      f"({cfg['warmup']} warm-up epoch(s) excluded); a round's sample is the mean over "
      f"back-to-back epochs lasting at least {cfg.get('min_sample_s', 0):g} s together "
      f"('n × epochs': rounds × epochs per sample), with Python's garbage collected "
      f"before each sample; spread is min–max [IQR] over rounds. Speed-ups are fit's time / this row's "
      f"time at the same XLA setting. Floor = FLOPs per step / the float32 "
      f"{rate['n']}^3 matmul rate measured in the same rounds (median; "
      + ", ".join(f"{name} {m['matmul']['gflops']:.0f}" for name, m in results["models"].items()
                  if m.get("matmul"))
      + f" GFLOP/s; {rate['gflops']:.0f} up front); × floor = time / floor.",
      "",
      main_table(results),
  ]
  parts += ["", "Variants: " + "; ".join(f"**{variants.VARIANT_LABELS[k]}**: {text}"
                                        for k, text in VARIANT_HELP.items())
            + "; **hand-written TensorFlow XLA loop**: the tiny MLP's step (clipnorm, "
            "Adam, L2, loss sum) in raw TensorFlow, one `tf.function(jit_compile=True)` "
            "while loop per epoch, no Keras and no metrics (`benchmarks.raw_tf_loop`), "
            "also timed without clipping"
            "; **JAX + optax lax.scan peer**: the same MLP in JAX, one jitted "
            "lax.scan per epoch; **JAX peer without clipping and running means**: the "
            "same peer minus the work of tapefit's clipping + metrics stage share."]
  notes = [n for m in results["models"].values() for n in m["notes"]]
  if results["jax"]["requested"] and not results["jax"]["available"]:
    notes.append(f"JAX peer {jax_peer.SKIP_MESSAGE}.")
  if notes:
    parts += ["", "Notes:", ""] + [f"- {n}" for n in notes]
  exact_md = exactness_table(results)
  if exact_md:
    epochs = next(c["epochs"] for m in results["models"].values()
                  for c in m.get("exactness", {}).values())
    parts += ["", "## Numbers against Model.fit", "",
              f"The tapefit fused configuration (steps_per_execution = batches per epoch, "
              f"the run's XLA scope) and `Model.fit` trained from the same weights for "
              f"{epochs} epochs on the benchmark's data, then evaluated "
              f"(`benchmarks.suite.check_numbers`). Columns: max |fit - tapefit| over "
              f"every History value, the evaluate results and the final weights; 0 is "
              f"bit-identical. The bar is the exactness matrix's: bit-identical with XLA "
              f"off, within {compare.XLA_REL_BOUND:g} relative with XLA on.", "", exact_md]
  stages_md = stage_table(results)
  if stages_md:
    parts += ["", "## Stages of the fused XLA step", "",
              "'alone': the stage by itself in its own XLA while-loop; 'difference': "
              "full fused step minus the fused step with that stage removed (median of "
              "the per-round paired differences; spread is their IQR).",
              "", stages_md]
  return "\n".join(parts)


def _verdict(ok):
  return "MET" if ok else "NOT MET"


def summary_ratios(results, stat="median"):
  """The per-model comparison of tapefit fused (best of XLA) with the baselines.

  `stat` is "median" (the headline) or "min" (each variant's fastest round:
  less sensitive to other processes on the machine).
  """
  out = {}
  default_xla = results.get("fit_default_xla", False)
  for name, model in results["models"].items():
    floor_us = model["floor_us"]
    rate = model.get("matmul") or results["matmul"]
    if stat == "min" and floor_us:  # Fastest rounds against the fastest matmul round.
      floor_us = floor_us * rate["gflops"] / rate["gflops_best"]
    fused_us, fused_xla = _best_of_xla(model, "tapefit_fused", stat)
    if fused_us is None:
      continue
    default_us = _median(_entry(model, "fit_default", default_xla), stat)
    default_used = default_xla
    if default_us is None:  # --xla restricted to the other setting
      default_us, default_used = _best_of_xla(model, "fit_default", stat)
    best_us, best_xla = _best_of_xla(model, "fit_best", stat)
    jax_us = _median(model["variants"].get("jax_scan/xla"), stat)
    # The JAX peer's arrays are on the device before its timed call, so it is
    # compared with the fused row whose x and y are too (when measured).
    device_us = _median(model["variants"].get("tapefit_fused_device/xla"), stat)
    raw_tf_us = _median(model["variants"].get("tf_raw_loop/xla"), stat)
    row = {
        "tapefit_fused_us": fused_us, "tapefit_fused_xla": fused_xla,
        "fit_default_us": default_us, "fit_default_xla": default_used,
        "fit_best_us": best_us, "fit_best_xla": best_xla,
        "jax_us": jax_us, "tapefit_device_us": device_us,
        "vs_fit_default": default_us / fused_us if default_us else None,
        "vs_fit_best": best_us / fused_us if best_us else None,
        "vs_jax": (device_us or fused_us) / jax_us if jax_us else None,
        "raw_tf_us": raw_tf_us,
        "raw_tf_vs_jax": raw_tf_us / jax_us if raw_tf_us and jax_us else None,
        "floor_ratio": fused_us / floor_us if floor_us else None,
        "kernel_floor_ratio": None,
    }
    if model.get("kernel_floor_us"):
      kernel_us = floor.kernel_floor_us(model["flops_per_step"], model["conv"],
                                        rate["gflops_best" if stat == "min" else "gflops"],
                                        stat)
      row["kernel_floor_us"] = kernel_us
      row["kernel_floor_ratio"] = fused_us / kernel_us
    out[name] = row
  return out


def format_ratios(results):
  """Plain-text summary, printed last."""
  lines = ["Ratios: tapefit fused (best of XLA on/off) vs fit defaults (jit_compile as "
           "compile's \"auto\" resolves here), vs fit best (spe=min(32, batches), best of XLA on/off), "
           "vs the JAX lax.scan peer"]
  if not results["jax"]["requested"]:
    jax_note = "not measured (--nojax)"
  elif not results["jax"]["available"]:
    jax_note = "not measured: jax not installed"
  else:
    jax_note = "not measured"
  fastest = summary_ratios(results, "min")
  lines[0] += (". Speed-up = baseline time / tapefit time (> 1: tapefit faster); "
               "time ratio = tapefit time / other (< 1: tapefit faster). By medians; in "
               "brackets, by each variant's fastest round (and the fastest matmul round)")

  def also(name, key, fmt="{:.2f}x"):
    value = fastest.get(name, {}).get(key)
    return "" if value is None else " (" + fmt.format(value) + ")"

  for name, row in summary_ratios(results).items():
    target = TARGETS.get(name, {})
    parts = [f"{name}: tapefit fused {_fmt_us(row['tapefit_fused_us'])}/step "
             f"(XLA {'on' if row['tapefit_fused_xla'] else 'off'})"]
    if row["vs_fit_default"] is not None:
      text = (f"vs fit defaults ({_fmt_us(row['fit_default_us'])}, XLA "
              f"{'on' if row['fit_default_xla'] else 'off'}): speed-up "
              f"{row['vs_fit_default']:.2f}x{also(name, 'vs_fit_default')}")
      if "vs_fit_default" in target:
        text += (f" [target >= {target['vs_fit_default']:g}x: "
                 f"{_verdict(row['vs_fit_default'] >= target['vs_fit_default'])}]")
      parts.append(text)
    if row["vs_fit_best"] is not None:
      text = (f"vs fit best ({_fmt_us(row['fit_best_us'])}, XLA "
              f"{'on' if row['fit_best_xla'] else 'off'}): speed-up "
              f"{row['vs_fit_best']:.2f}x{also(name, 'vs_fit_best')}")
      if "vs_fit_best" in target:
        goal = target["vs_fit_best"]
        label = "never slower" if goal == 1.0 else f">= {goal:g}x"
        text += f" [target {label}: {_verdict(row['vs_fit_best'] >= goal)}]"
      parts.append(text)
    if row["vs_jax"] is not None:
      which = ("tapefit fused on device tensors "
               f"{_fmt_us(row['tapefit_device_us'])}" if row["tapefit_device_us"]
               else "tapefit fused")
      text = (f"{which} vs the JAX peer ({_fmt_us(row['jax_us'])}, data on the device "
              f"for both): time ratio {row['vs_jax']:.2f}x{also(name, 'vs_jax')}")
      if "vs_jax" in target:
        text += (f" [target within {target['vs_jax']:g}x: "
                 f"{_verdict(row['vs_jax'] <= target['vs_jax'])}]")
      if row["raw_tf_vs_jax"] is not None:
        text += (f"; the hand-written TensorFlow XLA loop (no Keras, no metrics; "
                 f"{_fmt_us(row['raw_tf_us'])}) vs the JAX peer: time ratio "
                 f"{row['raw_tf_vs_jax']:.2f}x{also(name, 'raw_tf_vs_jax')}")
      parts.append(text)
    elif name in jax_peer.PEERS:
      parts.append(f"JAX peer: {jax_note}")
    if row["kernel_floor_ratio"] is not None:
      conv = results["models"][name]["conv"]
      parts.append(
          f"vs the FLOP floor: time ratio {row['floor_ratio']:.2f}x{also(name, 'floor_ratio')} "
          f"(convolutions at the matmul rate, which they cannot reach: TensorFlow's own "
          f"conv kernels for this model's shapes run at {conv['gflops']:.0f} GFLOP/s, vs "
          f"{rate_of(results, name):.0f} for 1024^3 matmuls); vs the kernel floor "
          f"({_fmt_us(row['kernel_floor_us'])}: the convolutions at their measured rate, the "
          f"rest at the matmul rate): time ratio {row['kernel_floor_ratio']:.2f}x"
          f"{also(name, 'kernel_floor_ratio')}"
          + (f" [target within {target['floor']:g}x: "
             f"{_verdict(row['kernel_floor_ratio'] <= target['floor'])}]"
             if "floor" in target else ""))
    elif "floor" in target and row["floor_ratio"] is not None:
      parts.append(f"vs the FLOP floor: time ratio {row['floor_ratio']:.2f}x"
                   f"{also(name, 'floor_ratio')} [target within "
                   f"{target['floor']:g}x: {_verdict(row['floor_ratio'] <= target['floor'])}]")
    elif row["floor_ratio"] is not None:
      parts.append(f"vs the FLOP floor: time ratio {row['floor_ratio']:.2f}x"
                   f"{also(name, 'floor_ratio')}")
    for key, check in results["models"][name].get("exactness", {}).items():
      parts.append(f"numbers vs Model.fit (XLA {'on' if key == 'xla' else 'off'}): "
                   f"{check['verdict']}")
    lines.append("  " + "; ".join(parts))
  for name, stage in (results.get("stages") or {}).items():
    pct = stage["clip_metrics_pct_difference"]
    what = ("clipping + metrics + loss tracker" if stage["clip"]
            else "metrics + loss tracker (no clipping configured)")
    low, high = stage["clip_metrics_pct_difference_iqr"]
    text = (f"  {name}: {what} = {pct:.1f}% of the fused XLA step by difference "
            f"(IQR {low:.1f}–{high:.1f}%), {stage['clip_metrics_pct_alone']:.1f}% timed alone "
            f"[target <= {STAGE_TARGET_PCT:g}%: {_verdict(pct <= STAGE_TARGET_PCT)}]")
    model = results["models"].get(name, {})
    jax_pct = share_pct(model, "jax_scan/xla", "jax_scan_bare/xla")
    if jax_pct is not None:
      text += (f"; the JAX peer spends {jax_pct:.1f}% of its step on the same work "
               "(1 - bare peer / full peer, same rounds)")
    raw_pct = share_pct(model, "tf_raw_loop/xla", "tf_raw_loop_noclip/xla")
    if raw_pct is not None:
      text += (f"; the hand-written TensorFlow XLA loop spends {raw_pct:.1f}% of its step "
               "on clipnorm alone (1 - without clipping / with, same rounds)")
    lines.append(text)
  return "\n".join(lines)


def rate_of(results, name):
  model = results["models"][name]
  return (model.get("matmul") or results["matmul"])["gflops"]


def share_pct(model, full_name, bare_name):
  """100 * (1 - bare / full) of two rows' medians, or None when not measured."""
  variants_ = model.get("variants", {})
  full = _median(variants_.get(full_name))
  bare = _median(variants_.get(bare_name))
  if not full or not bare:
    return None
  return 100.0 * (1.0 - bare / full)


def write_json(results, path):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, default=_json_default)


def _json_default(value):
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)


def write_chart(results, path):
  """Horizontal bars per model (log scale), whiskers min–max. False if no matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  names = list(results["models"])
  heights = [1.0 + 0.3 * len(results["models"][n]["variants"]) for n in names]
  fig, axes = plt.subplots(len(names), 1, figsize=(9, sum(heights)), squeeze=False,
                           gridspec_kw={"height_ratios": heights})
  colors = {"fit_default": "#b0b0b0", "fit_best": "#707070", "tapefit_step": "#7fb3e0",
            "tapefit_fused": "#1f66b0", "tapefit_fused_device": "#0b3d73",
            "jax_scan": "#e0902f", "jax_scan_bare": "#f5c38a"}
  for ax, name in zip(axes[:, 0], names):
    model = results["models"][name]
    rows = _ordered_rows(model)
    labels, medians, lows, highs, cols, hatches = [], [], [], [], [], []
    for _, entry in rows:
      stats = entry["us"]
      labels.append(f"{entry['label']} / XLA {'on' if entry['xla'] else 'off'}")
      medians.append(stats["median"])
      lows.append(stats["median"] - stats["min"])
      highs.append(stats["max"] - stats["median"])
      cols.append(colors.get(entry["kind"], "#999999"))
      hatches.append("//" if entry["xla"] else "")
    positions = list(range(len(rows)))[::-1]
    bars = ax.barh(positions, medians, xerr=[lows, highs], color=cols, capsize=2)
    for bar, hatch in zip(bars, hatches):
      bar.set_hatch(hatch)
    ax.axvline(model["floor_us"], color="#c03030", linestyle="--", linewidth=1,
               label=f"FLOP floor {_fmt_us(model['floor_us'])}")
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("µs per optimizer step (log scale; median, whiskers min–max)", fontsize=8)
    ax.set_title(f"{name}: {model['description']}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def write_outputs(results, out_dir, log=print):
  """Writes results.json, results.md and step_time.png; returns their paths."""
  log = log or (lambda _: None)
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "results.json"),
           "markdown": os.path.join(out_dir, "results.md")}
  write_json(results, paths["json"])
  with open(paths["markdown"], "w", encoding="utf-8") as f:
    f.write(format_markdown(results) + "\n\n```text\n" + format_ratios(results) + "\n```\n")
  chart = os.path.join(out_dir, "step_time.png")
  if write_chart(results, chart):
    paths["png"] = chart
  else:
    log("Chart skipped: matplotlib is not installed (pip install '.[bench]').")
  return paths
