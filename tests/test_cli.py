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
  result = _run("--epochs=2", "--num_samples=120", "--batch_size=16",
                "--optimizer=sgd", "--clipnorm=0.5", f"--report_out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Verdict: bit-identical" in result.stdout
  report = json.loads(out.read_text())
  assert report["bit_identical"] is True
  losses = [r for r in report["rows"] if r["quantity"] == "loss"]
  assert len(losses) == 2 and all(r["fit"] == r["tapefit"] for r in losses)
  assert report["iterations"]["fit"] == report["iterations"]["tapefit"] == 2 * 6


def test_bad_flag_is_rejected_with_the_flag_name():
  result = _run("--batch_size=0")
  assert result.returncode != 0
  assert "batch_size" in result.stderr


def test_conflicting_clipping_flags_are_rejected():
  result = _run("--clipnorm=1", "--clipvalue=1", "--epochs=1", "--num_samples=20")
  assert result.returncode != 0
  assert "Only one clipping kind" in result.stderr
