"""Shared pytest setup: quiet TF logs, CPU only, fresh Keras state per test."""

import os
import sys

# Test modules import helpers as `tests.x` or plain `x`; both resolve.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
  """Each test starts with float32 policy and a clean Keras session."""
  keras.mixed_precision.set_dtype_policy("float32")
  keras.backend.clear_session()
  yield
  keras.mixed_precision.set_dtype_policy("float32")
