"""End-to-end smoke run of `python -m trainer` on tiny data."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "trainer", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_main_job_reports_bit_identical_history(tmp_path):
  out = tmp_path / "report.json"
  result = _run("--side_by_side", "--epochs=2", "--num_samples=120", "--batch_size=16",
                "--optimizer=sgd", "--clipnorm=0.5", f"--report_out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Verdict: bit-identical" in result.stdout
  report = json.loads(out.read_text())
  assert report["bit_identical"] is True
  losses = [r for r in report["rows"] if r["quantity"] == "loss"]
  assert len(losses) == 2 and all(r["fit"] == r["tapefit"] for r in losses)
  assert report["iterations"]["fit"] == report["iterations"]["tapefit"] == 2 * 6


def test_bad_flag_is_rejected_with_the_flag_name():
  result = _run("--side_by_side", "--batch_size=0")
  assert result.returncode != 0
  assert "batch_size" in result.stderr


def test_conflicting_clipping_flags_are_rejected():
  result = _run("--side_by_side", "--clipnorm=1", "--clipvalue=1", "--epochs=1",
                "--num_samples=64")
  assert result.returncode != 0
  assert "Only one clipping kind" in result.stderr


def test_catalogue_lists_and_runs_one_scenario(tmp_path):
  listing = _run("--list_scenarios")
  assert listing.returncode == 0, listing.stderr[-2000:]
  assert "same_tensor_partial_batch" in listing.stdout
  out = tmp_path / "catalogue.json"
  result = _run("--scenario=same_tensor_partial_batch", "--num_samples=200", "--epochs=2",
                f"--report_out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| same_tensor_partial_batch" in result.stdout
  assert "per epoch" in result.stdout
  (row,) = json.loads(out.read_text())
  assert row["verdict"] == "holds" and row["equals_fit"] is True
  assert abs(row["measured_diff"] - row["predicted_diff"]) <= row["tolerance"]


def test_unknown_scenario_is_rejected_with_the_choices():
  result = _run("--scenario=nope")
  assert result.returncode != 0
  assert "nope" in result.stderr and "same_tensor_full_batches" in result.stderr
