"""Writes docs/loss_vs_metric.md from a real run of the catalogue and the seed examples.

    python -m catalogue.docs --out docs/loss_vs_metric.md

Every number in the file comes from this run; the prose says what each
scenario shows and which stage of the step is responsible.
"""

import datetime
import sys

from absl import app, flags

_OUT = flags.DEFINE_string("out", "docs/loss_vs_metric.md", "Where to write the document.")
_SEED_EXAMPLES = flags.DEFINE_bool("seed_examples", True,
                                   "Also run the seed answer's examples (about a minute).")

REGENERATE = "python -m catalogue.docs --out docs/loss_vs_metric.md"

# scenario name -> (heading, paragraph, [(label, link to the responsible code)])
CAUSES = {
    "same_tensor_full_batches": (
        "The same tensor, all batches full: they agree",
        "A layer passes t = mean((y_pred - y)^2) both to `add_loss` and to a "
        "`keras.metrics.Mean` it updates in `call()`, and the model is compiled with "
        "`loss=None`. Both see the very same tensor, in the same forward pass, before the "
        "update. The loss tracker adds t_b * n_b and counts n_b; the `Mean` adds t_b and "
        "counts 1. With every n_b equal the two means are equal, and what remains is "
        "float32 accumulation rounding.",
        [("metrics stage", "../trainer/step.py"),
         ("weighted_mean_update", "../kernels/metric_updates.py")]),
    "same_tensor_partial_batch": (
        "The same tensor, a partial last batch: they differ by a predicted amount",
        "The same model with a batch size that leaves a short last batch. The loss "
        "tracker weights each batch by its size, so `loss` = sum n_b t_b / N; the "
        "`Mean` weights every batch by 1, so the metric = mean_b t_b. The short batch "
        "counts less in the loss than in the metric. The difference is predicted from the "
        "per-batch t_b recorded in the same forward passes, and matches to rounding.",
        [("metrics stage", "../trainer/step.py"),
         ("weighted_mean_update", "../kernels/metric_updates.py")]),
    "regularizers": (
        "Weight regularizers: the loss includes them, the metric does not",
        "Every entry of `model.losses` (here an L1 and an L2 kernel regularizer) is "
        "evaluated at the step's pre-update weights and added to the step loss. The `mse` "
        "metric sees only the data term. So loss - mse = the batch-weighted mean of the "
        "regularization term over the epoch's steps, computed independently from the "
        "weights captured at the start of every batch.",
        [("losses stage", "../trainer/step.py"),
         ("sum_loss_terms", "../kernels/loss_reduction.py")]),
    "clipping": (
        "Gradient clipping does not change the reported loss",
        "The loss is computed before the gradients exist, so clipping them cannot change "
        "it: the first batch's loss is bit-identical with and without `clipnorm`, "
        "`clipvalue` or `global_clipnorm`, and the loss/metric relation of the first "
        "scenario still holds. Clipping changes only the trajectory, so later epochs "
        "differ. This refutes the seed answer's third example.",
        [("transform stage", "../trainer/step.py"),
         ("clipping kernels", "../kernels/clipping.py")]),
    "weights": (
        "Sample and class weights",
        "The compiled loss divides sum(w * l) by the number of samples n, not by sum(w). "
        "Plain `metrics` ignore the weights (sum(l) / n); `weighted_metrics` divide by "
        "sum(w). So loss, metric and weighted metric are three different numbers, each "
        "recomputed here in float64 from the recorded predictions. `class_weight` becomes "
        "per-sample weights in training only; `evaluate` is unweighted.",
        [("losses stage", "../trainer/step.py"),
         ("reduce_weighted_loss", "../kernels/loss_reduction.py"),
         ("class weights", "../trainer/data.py")]),
    "loss_weights": (
        "Several outputs with loss_weights",
        "The loss is sum_o lambda_o * C_o, weighted by batch size. Each `<output>_loss` "
        "tracker records C_o before lambda_o and weights a batch by the static batch "
        "dimension, which is unknown when the last batch is partial: then each batch "
        "counts once. So loss != sum_o lambda_o * `<output>_loss`, by a gap predicted "
        "from the recorded per-batch C_o.",
        [("losses and metrics stages", "../trainer/step.py"),
         ("static_batch_weight", "../kernels/metric_updates.py")]),
    "dropout": (
        "Training mode versus inference mode, and moving weights",
        "History's loss is measured in training mode (Dropout active) and averaged over an "
        "epoch during which the weights keep changing; `evaluate` runs in inference mode "
        "at the final weights. The gap splits into a dropout part (training-mode minus "
        "inference-mode loss along the same trajectory) and a moving-weights part "
        "(inference-mode loss along the trajectory minus at the end).",
        [("forward stage", "../trainer/step.py")]),
    "mixed_precision": (
        "Loss scaling and mixed precision",
        "Under `mixed_float16` the loss is multiplied by a dynamic scale before "
        "differentiation, but History reports the unscaled loss. A step whose scaled "
        "gradients overflow is skipped (the scale halves): it is counted in History but "
        "not in `iterations`. Under `mixed_bfloat16` the loss is computed in float32 "
        "while compiled metrics run in bfloat16, so they differ by a bounded rounding "
        "amount.",
        [("scale and transform stages", "../trainer/step.py"),
         ("loss scaling kernels", "../kernels/loss_scaling.py")]),
    "accumulation_ema": (
        "Gradient accumulation and the weight EMA: what moves and what stays",
        "With `gradient_accumulation_steps=2` every micro-batch's loss is reported at the "
        "current weights, but the weights move only on every second step and "
        "`iterations` counts updates. With `use_ema=True` History is unchanged, while the "
        "final weights (and a later `evaluate`) are the moving average.",
        [("transform and apply stages", "../trainer/step.py"),
         ("accumulation and EMA kernels", "../kernels/accumulation.py")]),
    "keras2_add_metric": (
        "Keras 2's add_metric versus Keras 3",
        "Keras 2 still has `add_metric`. With no compiled loss its loss tracker has no "
        "batch dimension to weight by, so `loss` and an `add_metric` of the same tensor "
        "are both per-batch means and agree exactly. Keras 3 weights the loss by batch "
        "size, so the same model and data report a different loss when the last batch is "
        "partial. The same network under both, side by side.",
        [("Keras 2 stages", "../trainer/keras2.py"),
         ("Keras 3 metrics stage", "../trainer/step.py")]),
}


def _row_for(measurement, table_lines):
  prefix = f"| {measurement.scenario}:"
  return next(line for line in table_lines if line.startswith(prefix))


def render(measurements, outcomes, corrected, command, seconds):
  import catalogue
  table = catalogue.format_markdown(measurements).splitlines()
  header = table[:2]
  lines = [
      "# Loss versus metric, measured",
      "",
      f"Generated by `{command}` on {datetime.date.today().isoformat()} "
      f"({seconds:.0f} s); every number below comes from that run. The main job "
      "(`python -m trainer`) prints the same table.",
      "",
      "Each scenario trains one small model on synthetic data with `Model.fit` and with "
      "`trainer.fit` from identical weights, predicts the gap between the reported loss "
      "and a metric from independent records (per-batch values, pre-update weights, "
      "float64 recomputation), and compares. *tapefit vs fit* is the largest difference "
      "between the two loops over every History value, evaluate result and final weight.",
      "",
      *table,
      "",
  ]
  missing = [m.scenario for m in measurements if m.scenario not in CAUSES]
  if missing:
    raise ValueError(f"No explanation written for scenario(s) {missing} in CAUSES.")
  for m in measurements:
    heading, paragraph, links = CAUSES[m.scenario]
    code = ", ".join(f"[{label}]({path})" for label, path in links)
    lines += [f"## {heading}", "", paragraph, "", f"Relation: `{m.relation}`. Code: {code}.",
              "", *header, _row_for(m, table), ""]
  if outcomes:
    lines += [
        "## The seed answer's three examples",
        "",
        "The answer this project started from claims that clipping and the optimizer "
        "change the loss, and that metrics are computed after the optimizer. Its three "
        "snippets, run verbatim (only `x_train` and `y_train` supplied) by "
        "`python -m catalogue.seed_examples`:",
        "",
        "| example | Keras | what happens |",
        "|---|---|---|",
    ]
    from catalogue import seed_examples
    for outcome in outcomes:
      lines.append(f"| {outcome.example} | {outcome.keras} | "
                   f"{outcome.summary().replace('|', '/')} |")
    lines += ["", "Corrected for Keras 3 (the code is in `catalogue/seed_examples.py`), "
              "and what the catalogue measures in their place:", "",
              "| example | corrected version | catalogue scenario |", "|---|---|---|"]
    verdicts = {m.scenario: m.verdict for m in measurements}
    for outcome in corrected:
      name = seed_examples.CATALOGUE_SCENARIO[outcome.example]
      lines.append(f"| {outcome.example} | {outcome.summary().replace('|', '/')} | "
                   f"`{name}`: {verdicts.get(name, 'not run')} |")
    lines += [
        "",
        "- Example 1 (`add_loss` and `add_metric` inside a loss function) fails under "
        "both versions: Keras 3 has no `add_metric`, and Keras 2 refuses a loss tensor "
        "created inside the loss function. Its question is answered by "
        "`same_tensor_full_batches` / `same_tensor_partial_batch` (and, for Keras 2, "
        "`keras2_add_metric`): the two agree unless batch sizes differ.",
        "- Example 2 runs, but its `l1_norm` function is never called, so no "
        "`l1_norm_metric` exists. The regularizer it configures is in `model.losses`; "
        "`regularizers` measures exactly how much it adds to the loss.",
        "- Example 3 fails like example 1. Its claim, that the reported loss reflects "
        "clipping, is refuted by `clipping`: the first batch's loss is bit-identical "
        "with and without clipping.",
        "",
    ]
  lines += [f"Regenerate: `{REGENERATE}`.", ""]
  return "\n".join(lines)


def main(argv):
  del argv
  import time

  import catalogue
  from catalogue import seed_examples
  started = time.perf_counter()
  measurements = catalogue.run_catalogue()
  outcomes, corrected = [], []
  if _SEED_EXAMPLES.value:
    print("Running the seed examples as written and corrected ...")
    outcomes = seed_examples.run_as_written()
    corrected = seed_examples.run_corrected()
  text = render(measurements, outcomes, corrected, REGENERATE,
                time.perf_counter() - started)
  with open(_OUT.value, "w") as f:
    f.write(text)
  print(f"Wrote {_OUT.value}")
  failed = [m.scenario for m in measurements if m.verdict != "holds"]
  if failed:
    print(f"FAILED: {failed}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
